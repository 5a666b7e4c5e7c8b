"""Labelled templates: a folder with template image(s), a label image and a label table.

A template folder holds::

    template.json          optional: name, licence, source, and the file names below
    template_chi.nii.gz    susceptibility template (ppm)        } at least one image;
    template_magnitude.nii.gz  GRE magnitude template            } the contrast decides
    template_T1w.nii.gz    T1-weighted template                 } the metric
    labels.nii.gz          label image (integers, 0 = background), on the images' grid
    labels.tsv             label table: index, name [, abbreviation, color (#RRGGBB)]
    brain_mask.nii.gz      optional brain mask (non-zero inside)

``template.json`` may name other files (``{"images": {"susceptibility":
"MuSus100_chi.nii.gz"}, "labels": "...", "table": "...", "mask": "..."}``), so
that a downloaded atlas is used where it lies. The label table is a BIDS
``dseg.tsv`` (tab separated) or the same columns comma separated (``.csv``);
``label`` is accepted for ``index``.

This module reads and writes template folders (the only file access of the
atlas code); :func:`write_head_model_template` writes QSMLib's own head model
as one, the demonstration and test template.
"""

import csv
import dataclasses
import hashlib
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import QSMInputError

TEMPLATE_JSON = "template.json"
#: Default file names of a template folder.
DEFAULT_IMAGES = {"susceptibility": "template_chi.nii.gz", "magnitude": "template_magnitude.nii.gz",
                  "T1w": "template_T1w.nii.gz", "R2star": "template_R2star.nii.gz"}
DEFAULT_LABELS = "labels.nii.gz"
DEFAULT_TABLES = ("labels.tsv", "labels.csv")
DEFAULT_MASK = "brain_mask.nii.gz"
#: Largest difference (mm) between two affines that still counts as one grid.
GRID_ATOL_MM = 1e-3

#: The deep grey matter structures, their names and colours (RGB 0-255), as ROI Susceptibility
#: creates them. The paired nuclei use the FreeSurfer colour table's colours for caudate,
#: putamen, pallidum and thalamus; the midbrain and cerebellar nuclei get distinct colours.
DEEP_GREY_MATTER_SEGMENTS = (
    ("Left caudate", (122, 186, 220)),
    ("Right caudate", (122, 186, 220)),
    ("Left putamen", (236, 13, 176)),
    ("Right putamen", (236, 13, 176)),
    ("Left globus pallidus", (12, 48, 255)),
    ("Right globus pallidus", (12, 48, 255)),
    ("Left thalamus", (0, 118, 14)),
    ("Right thalamus", (0, 118, 14)),
    ("Substantia nigra", (130, 60, 20)),
    ("Red nucleus", (220, 20, 60)),
    ("Dentate nucleus", (255, 165, 0)),
)

#: The head model's tissues behind each deep grey matter segment: (tissue name, side) where side
#: is "left", "right" or None (both sides in one label). The head model's substantia nigra label
#: also holds the subthalamic nucleus.
HEAD_MODEL_SEGMENTS = (
    ("caudate", "left"), ("caudate", "right"), ("Putamen", "left"), ("Putamen", "right"),
    ("GP", "left"), ("GP", "right"), ("Thalamus", "left"), ("Thalamus", "right"),
    ("SNandSTN", None), ("RN", None), ("DN", None),
)
#: Echo time (s) of the head model's magnitude template.
HEAD_MODEL_TE_S = 0.010


@dataclasses.dataclass
class LabelInfo:
    """One row of a label table: name, optional abbreviation and colour (RGB 0-255)."""

    name: str
    abbreviation: str = ""
    color: Optional[Tuple[int, int, int]] = None


@dataclasses.dataclass
class AtlasTemplate:
    """A loaded template.

    Attributes
    ----------
    folder : str
    name : str
    images : dict str -> ndarray
        Template images by contrast (``susceptibility``, ``magnitude``, ``T1w``, ``R2star``), float32, (i, j, k).
    affine : ndarray (4, 4)
        The grid of the images and labels (voxel -> RAS mm).
    labels : ndarray of int32
    table : dict int -> LabelInfo
    mask : ndarray of bool or None
    metadata : dict
        ``template.json`` as read (licence, source, ...).
    files : list of str
        Every file the template consists of (for content hashes).
    warnings : list of str
        What :func:`check_template` reports without refusing the template.
    """

    folder: str
    name: str
    images: Dict[str, np.ndarray]
    affine: np.ndarray
    labels: np.ndarray
    table: Dict[int, LabelInfo]
    mask: Optional[np.ndarray]
    metadata: dict
    files: list
    warnings: list

    def label_names(self):
        """``{label value: name}`` for every label in the table."""
        return {value: info.name for value, info in self.table.items()}

    def digest(self):
        """SHA-256 over the template's files (names and bytes): changes whenever the template does."""
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(os.path.basename(path).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(2 ** 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def parse_color(text, *, where):
    """``#RRGGBB`` (or ``R G B`` / ``R,G,B`` in 0-255) to an RGB tuple; empty gives None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[n:n + 2], 16) for n in (1, 3, 5))
        parts = [int(float(p)) for p in text.replace(",", " ").split()]
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return tuple(parts)
    except ValueError:
        pass
    raise QSMInputError(f"{where}: colour {text!r} is not #RRGGBB or three numbers 0-255; fix the label table")


def format_color(rgb):
    return "" if rgb is None else "#" + "".join(f"{int(c):02x}" for c in rgb)


def read_label_table(path):
    """Read a label table (.tsv or .csv): ``{index: LabelInfo}``.

    Raises
    ------
    QSMInputError
        If the file is missing, has no ``index`` (or ``label``) and ``name``
        columns, or holds a bad or repeated index.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise QSMInputError(f"{path}: label table not found; give a .tsv or .csv with the columns index and name")
    delimiter = "," if path.lower().endswith(".csv") else "\t"
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(rows, delimiter=delimiter)
    fields = {(name or "").strip().lower(): name for name in (reader.fieldnames or [])}
    index_key = fields.get("index") or fields.get("label")
    name_key = fields.get("name")
    if index_key is None or name_key is None:
        raise QSMInputError(f"{path}: the label table needs the columns index (or label) and name "
                            f"({'tab' if delimiter == chr(9) else 'comma'} separated); it has "
                            f"{', '.join(reader.fieldnames or []) or 'none'}")
    table = {}
    for line, row in enumerate(reader, start=2):
        where = f"{path}, line {line}"
        try:
            value = float(row[index_key])
        except (TypeError, ValueError):
            raise QSMInputError(f"{where}: index {row[index_key]!r} is not a number; give integer labels") from None
        if value != int(value) or value <= 0:
            raise QSMInputError(f"{where}: index {row[index_key]!r} must be a positive integer (0 is background)")
        value = int(value)
        if value in table:
            raise QSMInputError(f"{where}: index {value} appears twice; give each label one row")
        name = (row[name_key] or "").strip()
        if not name:
            raise QSMInputError(f"{where}: label {value} has no name; give every label a name")
        table[value] = LabelInfo(name=name, abbreviation=(row.get(fields.get("abbreviation", ""), "") or "").strip(),
                                 color=parse_color(row.get(fields.get("color", ""), ""), where=where))
    if not table:
        raise QSMInputError(f"{path}: the label table has no rows; list every label with its index and name")
    names = [info.name for info in table.values()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise QSMInputError(f"{path}: label name(s) {', '.join(repeated)} appear more than once; give every label "
                            "its own name")
    return table


def write_label_table(path, table, *, extra_columns=None):
    """Write ``{index: LabelInfo}`` as a BIDS dseg-style TSV (index, name, abbreviation, color[, extra])."""
    extra_columns = extra_columns or {}
    header = ["index", "name", "abbreviation", "color"] + list(extra_columns)
    lines = ["\t".join(header)]
    for value in sorted(table):
        info = table[value]
        row = [str(value), info.name, info.abbreviation, format_color(info.color)]
        row += [str(extra_columns[column].get(value, "")) for column in extra_columns]
        lines.append("\t".join(row))
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _template_files(folder):
    """The template's files as named by template.json or the defaults; and the metadata."""
    metadata = {}
    json_path = os.path.join(folder, TEMPLATE_JSON)
    if os.path.exists(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                metadata = json.load(f)
        except (OSError, ValueError) as exc:
            raise QSMInputError(f"{json_path}: cannot be read as JSON ({exc}); fix or remove it") from None
        if not isinstance(metadata, dict):
            raise QSMInputError(f"{json_path}: must hold a JSON object (name, images, labels, table, mask)")
    images = metadata.get("images")
    if images is None:
        images = {c: n for c, n in DEFAULT_IMAGES.items() if os.path.exists(os.path.join(folder, n))}
    elif not isinstance(images, dict):
        raise QSMInputError(f"{json_path}: 'images' must map a contrast (susceptibility, magnitude, T1w, R2star) "
                            "to a file name")
    unknown = sorted(set(images) - set(DEFAULT_IMAGES))
    if unknown:
        raise QSMInputError(f"{json_path}: image contrast(s) {', '.join(unknown)} unknown; use "
                            f"{', '.join(DEFAULT_IMAGES)}")
    table = metadata.get("table")
    if table is None:
        table = next((n for n in DEFAULT_TABLES if os.path.exists(os.path.join(folder, n))), DEFAULT_TABLES[0])
    mask = metadata.get("mask")
    if mask is None and os.path.exists(os.path.join(folder, DEFAULT_MASK)):
        mask = DEFAULT_MASK
    files = {"images": {c: os.path.join(folder, n) for c, n in images.items()},
             "labels": os.path.join(folder, metadata.get("labels", DEFAULT_LABELS)),
             "table": os.path.join(folder, table),
             "mask": None if mask is None else os.path.join(folder, mask)}
    return files, metadata, json_path if os.path.exists(json_path) else None


def _load_volume(path, what):
    from ..io import load_nifti

    data, affine = load_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise QSMInputError(f"{path}: the template {what} has shape {data.shape}; give a 3D volume")
    return data, affine


def load_template(folder):
    """Read and validate a template folder.

    Parameters
    ----------
    folder : path

    Returns
    -------
    AtlasTemplate

    Raises
    ------
    QSMInputError
        Naming the file, the problem and the fix: a missing folder or file, no
        image, images and labels on different grids, non-integer or negative
        labels, NaN in an image, labels missing from the table, an empty mask.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise QSMInputError(f"{folder}: atlas template folder not found; give a folder with a template image, "
                            f"{DEFAULT_LABELS} and {DEFAULT_TABLES[0]} (qsm atlas head-model --out DIR writes one)")
    files, metadata, json_path = _template_files(folder)
    if not files["images"]:
        raise QSMInputError(f"{folder}: no template image; add {' or '.join(list(DEFAULT_IMAGES.values())[:3])}, "
                            f"or name the images in {TEMPLATE_JSON}")
    for path in list(files["images"].values()) + [files["labels"], files["table"]]:
        if not os.path.isfile(path):
            raise QSMInputError(f"{path}: file of the atlas template not found; add it, or fix the names in "
                                f"{TEMPLATE_JSON}")
    labels, affine = _load_volume(files["labels"], "label image")
    if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
        raise QSMInputError(f"{files['labels']}: the label image must hold non-negative integers (0 = background); "
                            "save it with an integer data type and nearest-neighbour resampling")
    labels = labels.astype(np.int32)
    if not labels.any():
        raise QSMInputError(f"{files['labels']}: the label image is empty (all 0); give the template's labels")

    def on_grid(path, data, data_affine, what):
        if data.shape != labels.shape or not np.allclose(data_affine, affine, atol=GRID_ATOL_MM):
            raise QSMInputError(f"{path}: the template {what} (shape {data.shape}) is not on the grid of the label "
                                f"image {files['labels']} (shape {labels.shape}, and the affine); resample them "
                                "onto one grid")

    images = {}
    for contrast, path in files["images"].items():
        data, data_affine = _load_volume(path, f"{contrast} image")
        on_grid(path, data, data_affine, f"{contrast} image")
        if not np.all(np.isfinite(data)):
            raise QSMInputError(f"{path}: the template {contrast} image holds NaN or infinite values; replace "
                                "them with 0")
        if not np.any(data):
            raise QSMInputError(f"{path}: the template {contrast} image is all 0; give the template image")
        images[contrast] = data.astype(np.float32)
    mask = None
    if files["mask"] is not None:
        data, data_affine = _load_volume(files["mask"], "brain mask")
        on_grid(files["mask"], data, data_affine, "brain mask")
        mask = data > 0.5
        if not mask.any():
            raise QSMInputError(f"{files['mask']}: the template brain mask is empty; give a mask that covers the "
                                "brain, or remove it")
    table = read_label_table(files["table"])
    present = sorted(set(np.unique(labels).tolist()) - {0})
    missing = [v for v in present if v not in table]
    if missing:
        raise QSMInputError(f"{files['table']}: label(s) {', '.join(map(str, missing[:10]))} of "
                            f"{os.path.basename(files['labels'])} have no row; list every label with its index "
                            "and name")
    warnings = []
    absent = [v for v in table if v not in present]
    if absent:
        warnings.append(f"{os.path.basename(files['table'])}: label(s) {', '.join(map(str, absent))} have a row but "
                        "no voxel; they are left out")
        table = {v: info for v, info in table.items() if v in present}
    if mask is not None:
        outside = [v for v in present if np.mean(mask[labels == v]) < 0.5]
        if outside:
            warnings.append(f"label(s) {', '.join(map(str, outside))} lie mostly outside the template brain mask")
    paths = list(files["images"].values()) + [files["labels"], files["table"]]
    paths += [p for p in (files["mask"], json_path) if p is not None]
    return AtlasTemplate(folder=folder, name=str(metadata.get("name") or os.path.basename(folder)), images=images,
                         affine=affine, labels=labels, table=table, mask=mask, metadata=metadata, files=paths,
                         warnings=warnings)


def check_template(folder):
    """Validate a template folder and describe it (what ``qsm atlas check DIR`` prints).

    Returns
    -------
    dict
        ``name``, ``folder``, ``images`` (contrasts), ``shape``, ``voxel_size_mm``,
        ``labels`` (index -> name, voxel count, volume in mm3), ``mask``,
        ``license``, ``warnings``.

    Raises
    ------
    QSMInputError
        As :func:`load_template`.
    """
    from ..dipole import voxel_size_from_affine

    template = load_template(folder)
    voxel_mm3 = float(np.prod(voxel_size_from_affine(template.affine)))
    counts = np.bincount(template.labels.ravel())
    labels = {value: {"name": info.name, "voxels": int(counts[value]), "volume_mm3": float(counts[value]) * voxel_mm3,
                      "color": format_color(info.color)}
              for value, info in sorted(template.table.items())}
    return {"name": template.name, "folder": template.folder, "images": sorted(template.images),
            "shape": list(template.labels.shape), "voxel_size_mm": list(voxel_size_from_affine(template.affine)),
            "labels": labels, "mask": template.mask is not None,
            "license": template.metadata.get("license", "not stated"), "warnings": template.warnings}


def deep_grey_matter_colors():
    """``{name: (r, g, b)}`` of :data:`DEEP_GREY_MATTER_SEGMENTS`."""
    return dict(DEEP_GREY_MATTER_SEGMENTS)


def head_model_segments(phantom):
    """The head model's deep grey matter split into :data:`DEEP_GREY_MATTER_SEGMENTS` labels.

    Paired nuclei are split at the midline: the sagittal plane through the
    centre of mass of the paired nuclei together, left being world x below it
    (RAS). The model's nuclei are symmetric to within a voxel or so (its left
    thalamus is about 10 % larger than the right).

    Returns
    -------
    labels : ndarray of int32
        1..11 in :data:`DEEP_GREY_MATTER_SEGMENTS` order, 0 elsewhere.
    table : dict int -> LabelInfo
    sources : dict int -> str
        The head model tissue behind each label.
    """
    labels = np.zeros(phantom.labels.shape, dtype=np.int32)
    i = np.arange(phantom.labels.shape[0], dtype=np.float64)
    x_of_i = phantom.affine[0, 0] * i  # world x (RAS) along i, up to a constant
    paired = {tissue for tissue, side in HEAD_MODEL_SEGMENTS if side is not None}
    centre = np.argwhere(np.isin(phantom.labels, [phantom.label_of(t) for t in paired])).mean(axis=0)
    midline = phantom.affine[0, 0] * centre[0]
    left_of_i = (x_of_i < midline)[:, None, None] if phantom.affine[0, 0] > 0 else (x_of_i > midline)[:, None, None]
    table, sources = {}, {}
    for value, ((name, color), (tissue, side)) in enumerate(zip(DEEP_GREY_MATTER_SEGMENTS, HEAD_MODEL_SEGMENTS),
                                                            start=1):
        region = phantom.labels == phantom.label_of(tissue)
        if side == "left":
            region &= left_of_i
        elif side == "right":
            region &= ~left_of_i
        labels[region] = value
        table[value] = LabelInfo(name=name, abbreviation=tissue if side is None else f"{side[0].upper()}{tissue}",
                                 color=color)
        sources[value] = tissue
    return labels, table, sources


def head_model_images(phantom, *, texture_ppm=0.0, seed=0):
    """The head model's susceptibility (ppm, brain only) and magnitude template images.

    The susceptibility is the tissue table's value per label inside the brain
    mask (with ``texture_ppm`` of smooth texture, 0 by default: a template is an
    average). The magnitude is proton density times exp(-R2* TE) at
    :data:`HEAD_MODEL_TE_S`, over the whole head, with no noise or bias.
    """
    from ..simulation import susceptibility_map

    chi = np.where(phantom.brain_mask, susceptibility_map(phantom, texture_ppm=texture_ppm, seed=seed), 0)
    magnitude = (phantom.lookup("m0")[phantom.labels]
                 * np.exp(-phantom.lookup("r2star_3t_hz")[phantom.labels] * HEAD_MODEL_TE_S))
    return {"susceptibility": chi.astype(np.float32), "magnitude": magnitude.astype(np.float32)}


def template_names():
    """The files :func:`write_head_model_template` writes."""
    return [TEMPLATE_JSON, DEFAULT_IMAGES["susceptibility"], DEFAULT_IMAGES["magnitude"], DEFAULT_LABELS,
            DEFAULT_TABLES[0], DEFAULT_MASK]


def write_head_model_template(out_dir, *, voxel_size_mm=1.0, force=False):
    """Write QSMLib's head model as a template folder: the demonstration and test template.

    The folder gets a susceptibility and a magnitude template image, the deep
    grey matter labels split left and right (:func:`head_model_segments`), the
    label table with names and colours, the brain mask and ``template.json``.

    Parameters
    ----------
    out_dir : path
    voxel_size_mm : float or 3 floats
        Grid of the template (the model ships at 1 mm; other sizes are resampled).
    force : bool
        Overwrite an existing template there.

    Returns
    -------
    str
        The folder.

    References
    ----------
    Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
    A realistic in silico head phantom for MRI data simulation and evaluation
    of susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.
    """
    from .. import __version__
    from ..io import OutputDirectory, save_nifti
    from ..simulation import load_head_phantom

    phantom = load_head_phantom(voxel_size_mm)
    labels, table, sources = head_model_segments(phantom)
    images = head_model_images(phantom)
    names = template_names()
    with OutputDirectory(out_dir, names, force=force) as stage:
        save_nifti(stage.path(DEFAULT_IMAGES["susceptibility"]), images["susceptibility"], phantom.affine,
                   description="head model susceptibility (ppm)")
        save_nifti(stage.path(DEFAULT_IMAGES["magnitude"]), images["magnitude"], phantom.affine,
                   description=f"head model GRE magnitude, TE {HEAD_MODEL_TE_S * 1000:g} ms")
        save_nifti(stage.path(DEFAULT_LABELS), labels, phantom.affine, dtype=np.uint8)
        save_nifti(stage.path(DEFAULT_MASK), phantom.brain_mask, phantom.affine, dtype=np.uint8)
        write_label_table(stage.path(DEFAULT_TABLES[0]), table, extra_columns={"head_model_tissue": sources})
        metadata = {"name": "QSMLib head model",
                    "description": "Deep grey matter of the QSMLib head model (QSM challenge 2.0 geometry), paired "
                                   "nuclei split at the midline; the substantia nigra label includes the "
                                   "subthalamic nucleus.",
                    "license": "MIT (head model: NeuroPoly, QSM reconstruction challenge 2.0 geometry; see "
                               "qsmlib/data/LICENSE-head-phantom.txt)",
                    "citation": "Marques JP et al. Magn Reson Med 2021;86:526-542",
                    "generated_by": f"QSMLib {__version__}",
                    "voxel_size_mm": list(phantom.voxel_size_mm),
                    "images": {"susceptibility": DEFAULT_IMAGES["susceptibility"],
                               "magnitude": DEFAULT_IMAGES["magnitude"]},
                    "labels": DEFAULT_LABELS, "table": DEFAULT_TABLES[0], "mask": DEFAULT_MASK}
        with open(stage.path(TEMPLATE_JSON), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
            f.write("\n")
    return os.path.abspath(os.fspath(out_dir))
