"""Segment a subject with a labelled template: the step behind ``qsm segment``, ``qsm run --atlas``
and ``qsm batch --atlas``.

:func:`segment_arrays` registers a loaded template to a subject's arrays;
:func:`write_segmentation` writes what it found (labels, label table, QC
picture, transform, report) through a staging function; :func:`run_segment`
is the file-level command.
"""

import json

import numpy as np

from ..errors import QSMInputError
from .registration import (RegistrationOptions, register_template, save_transform, transform_summary)
from .template import format_color, load_template, write_label_table

#: What a segmentation writes, relative to its folder (``prefix`` goes before each name).
SEGMENT_OUTPUTS = ("labels.nii.gz", "labels.tsv", "atlas_qc.png", "atlas_transform.h5", "atlas_registration.json")
#: Colours for labels whose table gives none (RGB 0-255), in turn.
FALLBACK_COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                   (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def label_colors(table):
    """``{label: (r, g, b)}``: the table's colours, else a fixed palette in turn."""
    colors = {}
    for n, (value, info) in enumerate(sorted(table.items())):
        colors[value] = info.color if info.color is not None else FALLBACK_COLORS[n % len(FALLBACK_COLORS)]
    return colors


def segment_arrays(template, *, chi_ppm=None, magnitude=None, affine, mask=None, options=None, progress=None,
                   check=True):
    """Register ``template`` (an :class:`~qsmlib.atlas.AtlasTemplate`) to one subject's arrays.

    Parameters
    ----------
    template : AtlasTemplate
    chi_ppm, magnitude : ndarray (X, Y, Z), optional
        The subject's susceptibility map (ppm) and a magnitude image, on one
        grid; at least one. The labels come out on this grid.
    affine : ndarray (4, 4)
        The subject's grid.
    mask : ndarray of bool, optional
        The subject's brain mask (default: where ``chi_ppm`` is non-zero).
    options : RegistrationOptions, optional
    progress : callable(stage, fraction), optional
    check : bool
        Raise :class:`~qsmlib.atlas.RegistrationFailed` on an implausible result.

    Returns
    -------
    RegistrationResult
    """
    images = {k: v for k, v in (("susceptibility", chi_ppm), ("magnitude", magnitude)) if v is not None}
    if not images:
        raise QSMInputError("atlas segmentation needs the subject's susceptibility map (--chi) or a magnitude "
                            "image (--mag), or both")
    return register_template(images, affine, template.images, template.affine, template.labels,
                             subject_mask=mask, template_mask=template.mask, label_values=sorted(template.table),
                             label_names=template.label_names(), options=options, progress=progress, check=check)


def qc_picture(labels, colors, affine, *, chi_ppm=None, magnitude=None):
    """QC montage: label outlines on the susceptibility map (top) and on the magnitude (bottom).

    Slices pass through the centre of the labels; columns axial, coronal,
    sagittal. Returns an RGB uint8 array.
    """
    from ..dipole import voxel_size_from_affine
    from ..report import CHI_WINDOW_PPM, diverging_rgb, grey_rgb, montage, orthogonal_slices

    voxel_size = voxel_size_from_affine(affine)
    coords = np.argwhere(labels > 0)
    centre = coords.mean(axis=0) if coords.size else np.array(labels.shape) / 2
    label_tiles = orthogonal_slices(labels, centre, voxel_size)
    rows = []
    for kind, volume in (("chi", chi_ppm), ("grey", magnitude)):
        if volume is None:
            continue
        tiles = orthogonal_slices(volume, centre, voxel_size)
        if kind == "chi":
            pictures = [diverging_rgb(t, CHI_WINDOW_PPM) for t in tiles]
        else:
            values = volume[volume > 0] if np.any(volume > 0) else volume.ravel()
            low, high = np.percentile(values, [1, 99.5])
            pictures = [grey_rgb(t, low, high) for t in tiles]
        for picture, tile in zip(pictures, label_tiles):
            edge = np.zeros(tile.shape, bool)
            edge[1:, :] |= tile[1:, :] != tile[:-1, :]
            edge[:-1, :] |= tile[1:, :] != tile[:-1, :]
            edge[:, 1:] |= tile[:, 1:] != tile[:, :-1]
            edge[:, :-1] |= tile[:, 1:] != tile[:, :-1]
            for value, rgb in colors.items():
                picture[edge & (tile == value)] = rgb
        rows.append(pictures)
    picture = montage(rows)
    factor = max(1, int(np.ceil(240 / picture.shape[0])))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def write_segmentation(path_for, result, template, affine, *, chi_ppm=None, magnitude=None, prefix=""):
    """Write a segmentation: labels, label table, QC montage, transform and registration report.

    ``path_for(name)`` gives where to write each of :data:`SEGMENT_OUTPUTS`
    (with ``prefix``), for example an :class:`~qsmlib.io.OutputDirectory`'s ``path``.
    """
    from ..io import save_nifti
    from ..report import write_png

    dtype = np.uint8 if max(template.table) < 256 else np.uint16
    save_nifti(path_for(prefix + "labels.nii.gz"), result.labels, affine, dtype=dtype)
    write_label_table(path_for(prefix + "labels.tsv"), template.table)
    write_png(path_for(prefix + "atlas_qc.png"), qc_picture(result.labels, label_colors(template.table), affine,
                                                            chi_ppm=chi_ppm, magnitude=magnitude))
    save_transform(result, path_for(prefix + "atlas_transform.h5"))
    summary = transform_summary(result)
    summary["template"] = {"name": template.name, "folder": template.folder,
                           "license": template.metadata.get("license", "not stated")}
    summary["label_names"] = {str(k): v.name for k, v in sorted(template.table.items())}
    summary["transform_file"] = prefix + "atlas_transform.h5"
    summary["transform_convention"] = ("ITK: maps subject points to template points in LPS mm (the transform that "
                                       "resamples template images onto the subject grid)")
    summary["label_colors"] = {str(k): format_color(c) for k, c in label_colors(template.table).items()}
    with open(path_for(prefix + "atlas_registration.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=float)
        f.write("\n")


def region_statistics(chi_ppm, labels, names, mask=None):
    """Per-label susceptibility statistics: mean, median, SD (ppm) and voxel count, inside ``mask``.

    The rows have the layout of :func:`qsmlib.batch.write_regions_csv`.
    """
    from ..batch import label_statistics

    mask = np.ones(chi_ppm.shape, bool) if mask is None else np.asarray(mask, bool)
    return label_statistics(chi_ppm, labels, mask, names)


def run_segment(out_dir, *, atlas_dir, chi_file=None, magnitude_file=None, mask_file=None, options=None,
                force=False, progress=None):
    """``qsm segment``: labels of a template on a subject's grid, with the region statistics.

    Writes :data:`SEGMENT_OUTPUTS` and, with a susceptibility map,
    ``regions.csv`` (one row per label: mean, median, SD in ppm and voxels).

    Parameters
    ----------
    out_dir : path
    atlas_dir : path
        The template folder (see :mod:`qsmlib.atlas.template`).
    chi_file, magnitude_file : path, optional
        The subject's susceptibility map (ppm) and a magnitude image (3D, or 4D:
        the first echo is used), on one grid; at least one.
    mask_file : path, optional
        Brain mask (default: where the susceptibility map is non-zero).
    options : RegistrationOptions, optional
    force : bool

    Returns
    -------
    RegistrationResult
    """
    from ..batch import write_regions_csv
    from ..io import OutputDirectory, load_field, load_mask, load_nifti

    if chi_file is None and magnitude_file is None:
        raise QSMInputError("give the subject's susceptibility map (--chi) or a magnitude image (--mag), or both")
    template = load_template(atlas_dir)
    chi, affine, magnitude = None, None, None
    if chi_file is not None:
        chi, affine = load_field(chi_file)
    if magnitude_file is not None:
        magnitude, mag_affine = load_nifti(magnitude_file)
        if magnitude.ndim == 4:
            magnitude = magnitude[..., 0]
        if magnitude.ndim != 3:
            raise QSMInputError(f"{magnitude_file}: shape {magnitude.shape} is not a 3D or 4D image; give the "
                                "magnitude (first echo)")
        if not np.all(np.isfinite(magnitude)):
            raise QSMInputError(f"{magnitude_file}: holds NaN or infinite values; replace them with 0")
        if affine is not None and (magnitude.shape != chi.shape or not np.allclose(mag_affine, affine, atol=1e-3)):
            raise QSMInputError(f"{magnitude_file}: not on the grid of {chi_file} (shape {magnitude.shape} vs "
                                f"{chi.shape}, or the affine); give the magnitude of the same acquisition")
        affine = mag_affine if affine is None else affine
    shape = (chi if chi is not None else magnitude).shape
    mask = load_mask(mask_file, shape, affine) if mask_file is not None else None
    if mask is None and chi is not None and not np.any(chi != 0):
        raise QSMInputError(f"{chi_file}: the susceptibility map is all 0; give the map written by qsm run")
    names = list(SEGMENT_OUTPUTS) + (["regions.csv"] if chi is not None else [])
    inputs = [path for path in (chi_file, magnitude_file, mask_file) if path is not None]
    with OutputDirectory(out_dir, names, force=force, inputs=inputs + [template.folder]) as stage:
        result = segment_arrays(template, chi_ppm=chi, magnitude=magnitude, affine=affine, mask=mask,
                                options=options, progress=progress)
        write_segmentation(stage.path, result, template, affine, chi_ppm=chi, magnitude=magnitude)
        if chi is not None:
            brain = mask if mask is not None else chi != 0
            regions = region_statistics(chi, result.labels, template.label_names(), brain)
            write_regions_csv(stage.path("regions.csv"), [{"subject": "", "session": None, "regions": regions}])
    return result


def options_from(deformable="auto", label_interpolation="gaussian"):
    """RegistrationOptions from the command line's choices."""
    return RegistrationOptions(deformable=deformable, label_interpolation=label_interpolation).validate()




#: What ``qsm run --atlas`` adds to the run's outputs.
ATLAS_RUN_OUTPUTS = SEGMENT_OUTPUTS + ("regions.csv",)


def segment_run(path_for, template, *, chi_file, mask, magnitude=None, subject="", session=None, options=None,
                progress=None):
    """The atlas step of ``qsm run --atlas``: segment the map just written and tabulate its regions.

    ``chi_file`` is the susceptibility map the run wrote (its affine is the
    grid of the labels), ``mask`` the run's brain mask, ``magnitude`` the
    first echo when the run had one. Writes :data:`ATLAS_RUN_OUTPUTS` through
    ``path_for``. Raises :class:`~qsmlib.atlas.RegistrationFailed` when the
    registration is implausible.
    """
    from ..batch import write_regions_csv
    from ..io import load_nifti

    chi, affine = load_nifti(chi_file)
    result = segment_arrays(template, chi_ppm=chi, magnitude=magnitude, affine=affine, mask=mask, options=options,
                            progress=progress)
    write_segmentation(path_for, result, template, affine, chi_ppm=chi, magnitude=magnitude)
    regions = region_statistics(chi, result.labels, template.label_names(), mask)
    write_regions_csv(path_for("regions.csv"), [{"subject": subject or "", "session": session, "regions": regions}])
    return result


__all__ = ["ATLAS_RUN_OUTPUTS", "SEGMENT_OUTPUTS", "label_colors", "options_from", "qc_picture", "region_statistics",
           "run_segment", "segment_arrays", "segment_run", "write_segmentation"]
