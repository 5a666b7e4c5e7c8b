"""V-SHARP: SHARP with a variable sphere radius (Wu et al., 2012; Li et al., 2011)."""

import numpy as np

from .. import fourier
from ..errors import QSMInputError
from ..validation import as_mask, as_volume, as_voxel_size
from ..masking import bounding_box, erode_mask, sphere_padded_shape, uncrop
from . import smv

#: Largest default sphere radius in mm. On the simulated 1 mm head (3 T and
#: 7 T, B0 straight or tilted) 18 mm instead of 12 mm cuts the worst deep grey
#: matter error after TV inversion from about 0.02 to 0.008 ppm and the mean
#: one by half, because the truncated deconvolution then loses only
#: wavelengths above about 160 mm instead of 110 mm; brain NRMSE rises by
#: 2-3 points (more voxels near the edge use the mismatched smaller radii).
#: SHARP-type tools use largest radii of 12 to 25 mm.
DEFAULT_MAX_RADIUS_MM = 18.0
#: Default step between radii in mm (at least one voxel).
DEFAULT_RADIUS_STEP_MM = 2.0


def default_radii_mm(voxel_size):
    """Default V-SHARP radii in mm, largest first.

    From 18 mm down to the largest voxel dimension (one voxel, so that the
    smallest sphere still reaches a neighbour along every axis), in steps of
    2 mm or one voxel, whichever is larger: 18, 16, ..., 4, 2 and 1 mm for
    1 mm voxels. Finer steps change the result little but cost one more pair
    of inverse FFTs per radius.
    """
    voxel_size = as_voxel_size(voxel_size)
    smallest = max(voxel_size)
    step = max(DEFAULT_RADIUS_STEP_MM, smallest)
    radii = []
    radius = DEFAULT_MAX_RADIUS_MM
    while radius > smallest * (1 + 1e-6):
        radii.append(round(radius, 6))
        radius -= step
    radii.append(smallest)
    return tuple(radii)


def vsharp(field, mask, voxel_size, *, radii_mm=None, threshold=0.05):
    """Remove the background field with V-SHARP.

    Like SHARP, but the high-pass field ``f - SMV_r(f)`` of each voxel uses
    the largest radius ``r`` whose eroded mask still holds the voxel, so
    that large spheres remove the background deep in the brain and small
    ones keep the voxels near its edge. The combined high-pass field is
    deconvolved with the largest kernel's truncated inverse.

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (Hz or ppm; the result has the same unit).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask, the region where the background field is harmonic.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radii_mm : sequence of float, optional
        Sphere radii in mm, in any order. Default :func:`default_radii_mm`:
        18 mm down to one voxel in 2 mm steps.
    threshold : float, optional
        Truncation level of the deconvolution with the largest kernel:
        frequencies where ``|1 - S(k)| < threshold`` are set to zero.

    Returns
    -------
    local_field : ndarray, float32, shape (X, Y, Z)
        Local field, 0 outside ``mask_out``. Its mean (and the lowest
        frequencies) is not identifiable and should be removed or referenced.
    mask_out : ndarray of bool, shape (X, Y, Z)
        ``mask`` eroded by the smallest sphere: where ``local_field`` is valid.

    Raises
    ------
    QSMInputError
        If the field is not a finite 3D volume, the mask does not match it or
        is empty, the voxel size, radii or threshold are invalid, or the
        smallest sphere erodes the whole mask.

    Notes
    -----
    Costs one inverse FFT of the field and one of the mask per radius, plus
    three transforms shared by all radii; kernels are cached per shape.

    References
    ----------
    .. [1] Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using
       compressed sensing. Magn Reson Med 2012;67:137-147.
    .. [2] Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain
       reflects spatial variation in tissue composition. NeuroImage
       2011;55:1645-1656.
    """
    field = as_volume(field, "field")
    mask = as_mask(mask, field.shape)
    voxel_size = as_voxel_size(voxel_size)
    threshold = smv.check_threshold(threshold)
    radii = _check_radii(default_radii_mm(voxel_size) if radii_mm is None else radii_mm)

    # Work on the mask's bounding box, padded so that no sphere wraps around.
    box = bounding_box(mask)
    box_mask = mask[box]
    shape = box_mask.shape
    padded = sphere_padded_shape(shape, voxel_size, radii[0])
    spectrum = fourier.rfft(np.where(box_mask, field[box], np.float32(0)), padded)
    mask_ft = fourier.rfft(box_mask.astype(np.float32), padded)
    combined = np.zeros(shape, dtype=np.float32)
    assigned = np.zeros(shape, dtype=bool)
    for radius in radii:
        kernel = smv.smv_kernel(padded, voxel_size, radius)
        eroded = erode_mask(box_mask, voxel_size, radius, padded_shape=padded,
                                mask_ft=mask_ft)
        # Spheres are nested, so each erosion holds those by larger radii.
        new = eroded & ~assigned
        if new.any():
            combined[new] = smv.smv_highpass(spectrum, kernel, padded, shape)[new]
            assigned |= new
    del spectrum, mask_ft
    mask_out = eroded  # the erosion by the smallest radius
    smv.check_not_empty(mask_out, f"smallest radius {radii[-1]} mm")

    largest = smv.smv_kernel(padded, voxel_size, radii[0])
    local = smv.smv_deconvolve(combined, largest, padded, threshold)
    local *= mask_out
    return uncrop(local, box, field.shape), uncrop(mask_out, box, field.shape)


def _check_radii(radii_mm):
    try:
        radii = np.asarray(radii_mm, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        radii = np.array([np.nan])
    if radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise QSMInputError(f"radii_mm: {radii_mm!r} are not valid radii; "
                            "give one or more positive radii in mm, for example 12 10 8 6 4 2")
    return tuple(float(r) for r in sorted(set(radii.tolist()), reverse=True))
