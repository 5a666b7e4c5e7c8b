"""The shipped anatomical head phantom and its susceptibility map.

The phantom is the whole-head label model of the QSM reconstruction challenge
2.0 geometry (Marques et al., MRM 2021), published by NeuroPoly under the MIT
licence, reduced to 1 mm isotropic labels by ``tools/build_head_phantom.py``.
Per-tissue susceptibility, R2* at 3 T and proton density live in
``qsmlib/data/head_phantom_tissues.csv``.

Voxel order is (i, j, k) = (left->right, posterior->anterior,
inferior->superior); the affine is RAS with the grid centre near the origin.
"""

import csv
import io
from dataclasses import dataclass
from importlib import resources
from typing import Mapping, NamedTuple, Tuple

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp

from ..errors import QSMInputError
from ..validation import as_voxel_size

#: Package data files of the shipped phantom.
LABELS_FILE = "head_phantom_1mm_labels.nii.gz"
BRAIN_MASK_FILE = "head_phantom_1mm_brainmask.nii.gz"
TISSUES_FILE = "head_phantom_tissues.csv"

#: Tissues that receive texture in :func:`susceptibility_map`: brain parenchyma
#: (names as in the tissues table, compared case-insensitively). CSF, vessels
#: and calcifications stay uniform.
TEXTURED_TISSUES = frozenset(
    {"caudate", "gp", "putamen", "rn", "dn", "snandstn", "thalamus", "wm", "gm"})

#: Correlation length of the texture: standard deviation of the Gaussian filter, in mm.
TEXTURE_SIGMA_MM = 1.5

#: Deep grey matter labels of the shipped phantom.
DEEP_GREY_MATTER = {"caudate": 1, "GP": 2, "Putamen": 3, "RN": 4, "DN": 5,
                    "SNandSTN": 6, "Thalamus": 7}


class Tissue(NamedTuple):
    """Properties of one tissue class of the phantom.

    Attributes
    ----------
    name : str
        Tissue name.
    chi_ppm : float
        Volume susceptibility relative to water, in ppm.
    r2star_3t_hz : float
        Transverse relaxation rate R2* at 3 T, in 1/s.
    m0 : float
        Relative proton density (water = 1).
    """

    name: str
    chi_ppm: float
    r2star_3t_hz: float
    m0: float


@dataclass
class HeadPhantom:
    """A labelled head model on a voxel grid.

    Attributes
    ----------
    labels : ndarray of uint8, shape (X, Y, Z)
        Tissue label per voxel (keys of ``tissues``).
    brain_mask : ndarray of bool, shape (X, Y, Z)
        Brain mask of the model.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS, mm) affine.
    voxel_size_mm : tuple of 3 float
        Voxel size in mm.
    tissues : mapping int -> Tissue
        Properties of every label.
    """

    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    voxel_size_mm: Tuple[float, float, float]
    tissues: Mapping[int, Tissue]

    def lookup(self, attribute):
        """Per-label lookup table (float64, indexed by label) of one Tissue attribute."""
        table = np.zeros(256, dtype=np.float64)
        for label, tissue in self.tissues.items():
            table[int(label)] = float(getattr(tissue, attribute))
        return table

    def label_of(self, name):
        """Label number of the tissue called ``name`` (case-insensitive)."""
        for label, tissue in self.tissues.items():
            if tissue.name.lower() == name.lower():
                return int(label)
        raise QSMInputError(f"phantom: no tissue called {name!r} among "
                            f"{sorted(t.name for t in self.tissues.values())}")


def read_tissues_csv(text):
    """Parse a tissues table (label, name, chi_ppm, r2star_3t_hz, m0; '#' starts a comment)."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    tissues = {}
    for row in csv.DictReader(io.StringIO("\n".join(rows))):
        tissues[int(row["label"])] = Tissue(row["name"].strip(), float(row["chi_ppm"]),
                                            float(row["r2star_3t_hz"]), float(row["m0"]))
    return tissues


def load_head_phantom(voxel_size_mm=1.0):
    """Load the shipped head phantom, optionally resampled to another voxel size.

    Parameters
    ----------
    voxel_size_mm : float or sequence of 3 float, optional
        Voxel size of the returned phantom in mm. The shipped grid is 1 mm
        isotropic (164 x 205 x 205); other sizes are resampled by majority vote
        of the label occupancy, the brain mask by occupancy > 0.5, keeping the
        centre of the field of view in place.

    Returns
    -------
    HeadPhantom

    Raises
    ------
    QSMInputError
        If the voxel size is not valid.

    References
    ----------
    Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
    A realistic in silico head phantom for MRI data simulation and evaluation
    of susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.
    """
    target = as_voxel_size(voxel_size_mm, "voxel_size_mm")
    data = resources.files("qsmlib") / "data"
    with resources.as_file(data / LABELS_FILE) as path:
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj, dtype=np.uint8)
        affine = np.array(image.affine, dtype=np.float64)
    with resources.as_file(data / BRAIN_MASK_FILE) as path:
        brain_mask = np.asarray(nib.load(str(path)).dataobj) > 0
    tissues = read_tissues_csv((data / TISSUES_FILE).read_text(encoding="utf-8"))
    source = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    if not np.allclose(target, source):
        air = next(label for label, t in tissues.items() if t.name.lower() == "air")
        labels, brain_mask, affine = resample_labels(labels, brain_mask, affine, target,
                                                     fill_label=air)
        source = target
    return HeadPhantom(labels=labels, brain_mask=brain_mask, affine=affine,
                       voxel_size_mm=tuple(float(v) for v in source), tissues=tissues)


def overlap_matrix(n_in, size_in, size_out):
    """Sparse (n_out, n_in) matrix of the fraction of each output voxel covered by each input voxel.

    Both grids share their centre; ``n_out = round(n_in * size_in / size_out)``.
    Rows sum to the covered fraction of the output voxel (1 inside the input
    field of view). Returns the matrix and the output-to-input index map
    ``(scale, offset)``: output index ``o`` sits at input index ``scale * o + offset``.
    """
    n_out = max(1, int(np.floor(n_in * size_in / size_out + 0.5)))
    start = 0.5 * (n_in * size_in - n_out * size_out)
    out_lo = start + size_out * np.arange(n_out)[:, None]
    in_lo = size_in * np.arange(n_in)[None, :]
    overlap = np.minimum(out_lo + size_out, in_lo + size_in) - np.maximum(out_lo, in_lo)
    weights = sp.csr_matrix(np.clip(overlap, 0.0, None) / size_out)
    scale = size_out / size_in
    offset = (start + 0.5 * size_out) / size_in - 0.5
    return weights, (scale, offset)


def area_average(volume, matrices):
    """Apply one overlap matrix per axis (from :func:`overlap_matrix`) to a 3D volume (float32)."""
    out = np.asarray(volume, dtype=np.float32)
    for axis, weights in enumerate(matrices):
        moved = np.moveaxis(out, axis, 0)
        flat = np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
        reduced = np.asarray(weights @ flat, dtype=np.float32)
        out = np.moveaxis(reduced.reshape((weights.shape[0],) + moved.shape[1:]), 0, axis)
    return np.ascontiguousarray(out)


def resample_labels(labels, mask, affine, voxel_size_mm, *, fill_label):
    """Resample a label map and its mask to a new voxel size by majority vote.

    Each output voxel takes the label with the largest occupancy (the volume
    fraction it covers, box-filter average). The mask is occupancy > 0.5, and
    voxels inside it take the best label among those found inside the input
    mask, so the mask never holds a non-brain label. Parts of an output voxel
    outside the input field of view count as ``fill_label``.

    Returns
    -------
    labels : ndarray of uint8
    mask : ndarray of bool
    affine : ndarray (4, 4)
        Input affine composed with the output-to-input voxel map; the centre of
        the field of view stays in place.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    affine = np.asarray(affine, dtype=np.float64)
    size_in = np.linalg.norm(affine[:3, :3], axis=0)
    size_out = as_voxel_size(voxel_size_mm, "voxel_size_mm")
    matrices, voxel_map = [], np.eye(4)
    for axis in range(3):
        weights, (scale, offset) = overlap_matrix(labels.shape[axis], size_in[axis], size_out[axis])
        matrices.append(weights)
        voxel_map[axis, axis], voxel_map[axis, 3] = scale, offset
    coverage = area_average(np.ones(labels.shape, dtype=np.float32), matrices)
    mask_out = area_average(mask, matrices) > 0.5
    in_mask_labels = set(np.unique(labels[mask]).tolist())
    best_any = np.full(coverage.shape, -1.0, dtype=np.float32)
    best_brain = np.full(coverage.shape, -1.0, dtype=np.float32)
    label_any = np.full(coverage.shape, fill_label, dtype=np.uint8)
    label_brain = np.full(coverage.shape, fill_label, dtype=np.uint8)
    for label in np.unique(labels).tolist():
        occupancy = area_average(labels == label, matrices)
        if label == fill_label:
            occupancy += 1.0 - coverage
        better = occupancy > best_any
        best_any[better], label_any[better] = occupancy[better], label
        if label in in_mask_labels:
            better = occupancy > best_brain
            best_brain[better], label_brain[better] = occupancy[better], label
    labels_out = np.where(mask_out, label_brain, label_any).astype(np.uint8)
    return labels_out, mask_out, affine @ voxel_map


def susceptibility_map(phantom, *, texture_ppm=0.01, seed=0):
    """Susceptibility (ppm, relative to water) of every voxel of the phantom.

    Each label gets its tissue value; brain parenchyma inside the brain mask
    (the tissues in :data:`TEXTURED_TISSUES`) also gets a smooth texture:
    Gaussian-filtered white noise (filter SD :data:`TEXTURE_SIGMA_MM`), with
    its mean removed per tissue so that the tissue means keep their table
    values, scaled so that its SD over those voxels is ``texture_ppm``.

    Parameters
    ----------
    phantom : HeadPhantom
    texture_ppm : float, optional
        SD of the texture in ppm; 0 gives a piecewise-constant map.
    seed : int, optional
        Seed of the texture noise.

    Returns
    -------
    ndarray of float32, shape of ``phantom.labels``

    Raises
    ------
    QSMInputError
        If ``texture_ppm`` is negative or not finite.

    References
    ----------
    Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
    A realistic in silico head phantom for MRI data simulation and evaluation
    of susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.
    """
    texture_ppm = float(texture_ppm)
    if not np.isfinite(texture_ppm) or texture_ppm < 0:
        raise QSMInputError(f"texture_ppm: {texture_ppm} must be a finite number >= 0 (ppm)")
    chi = phantom.lookup("chi_ppm").astype(np.float32)[phantom.labels]
    if texture_ppm > 0:
        chi += _texture(phantom, np.random.default_rng(seed), texture_ppm)
    return chi


def _texture(phantom, rng, texture_ppm):
    """Zero-mean-per-tissue smooth noise of SD ``texture_ppm`` inside the brain parenchyma."""
    textured = [label for label, t in phantom.tissues.items() if t.name.lower() in TEXTURED_TISSUES]
    region = phantom.brain_mask & np.isin(phantom.labels, textured)
    texture = np.zeros(phantom.labels.shape, dtype=np.float32)
    if not region.any():
        return texture
    sigma = [TEXTURE_SIGMA_MM / v for v in phantom.voxel_size_mm]
    # Work on the bounding box of the region plus a filter margin.
    box = tuple(slice(max(int(idx.min()) - int(4 * s) - 1, 0), int(idx.max()) + int(4 * s) + 2)
                for idx, s in zip(np.nonzero(region), sigma))
    noise = rng.standard_normal(texture[box].shape, dtype=np.float32)
    smooth = ndi.gaussian_filter(noise, sigma, mode="reflect", truncate=3.0)
    local_labels = phantom.labels[box]
    inside = region[box]
    counts = np.bincount(local_labels[inside], minlength=256)
    sums = np.bincount(local_labels[inside], weights=smooth[inside], minlength=256)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    smooth -= means[local_labels]
    smooth[~inside] = 0.0
    sd = float(np.sqrt(np.mean(np.square(smooth[inside], dtype=np.float64))))
    texture[box] = smooth * np.float32(texture_ppm / sd)
    return texture
