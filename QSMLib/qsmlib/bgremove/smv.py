"""The spherical mean value (SMV) kernel, shared by SHARP, V-SHARP and mask erosion.

The SMV of a function at a voxel is its mean over a sphere of radius ``r``
centred there. A harmonic function equals its own SMV (mean value property),
so ``f - SMV(f)`` removes a harmonic background field wherever the sphere lies
inside the region where the background is harmonic (Li & Leigh, J Magn Reson
2001; Schweser et al., NeuroImage 2011).

The sphere is sampled on the voxel grid (the voxels whose centre lies within
``r`` mm of the centre voxel) and normalised to sum to one. Its FFT is real,
because the sphere is symmetric, and is cached per (padded shape, voxel size,
radius). Filtering is done on a zero-padded fast FFT grid with the data at
its start (see :mod:`qsmlib.fourier`); the padding must be at least the
sphere's half-width in voxels (:func:`smv_padding`) so that the circular
convolution never wraps across the volume.

Mask erosion uses the same kernel: a voxel survives when the SMV of the mask
is 1, i.e. when every voxel of its sphere is in the mask. Erosion and
filtering therefore agree voxel for voxel.
"""

from functools import lru_cache

import numpy as np

from .. import fourier
from ..errors import QSMInputError
from ..validation import as_voxel_size

#: Relative slack when deciding whether a grid point lies on the sphere's surface.
_SURFACE_TOLERANCE = 1e-6


def smv_half_width(voxel_size, radius_mm):
    """Half-width in voxels, per axis, of the sampled sphere of ``radius_mm``."""
    voxel_size = as_voxel_size(voxel_size)
    radius_mm = _as_radius(radius_mm)
    return tuple(int(np.floor(radius_mm / d * (1 + _SURFACE_TOLERANCE))) for d in voxel_size)


def smv_padding(voxel_size, radius_mm):
    """Zero padding (voxels per axis) that keeps an SMV filter of ``radius_mm`` from wrapping."""
    return tuple(h + 1 for h in smv_half_width(voxel_size, radius_mm))


def smv_padded_shape(shape, voxel_size, radius_mm):
    """Fast FFT grid for SMV filtering of a volume of ``shape`` without wrap-around.

    The volume sits at the start of the grid, followed by at least
    :func:`smv_padding` zeros per axis; the grid is also large enough to
    hold the whole sphere.
    """
    half = smv_half_width(voxel_size, radius_mm)
    pads = [max(h + 1, 2 * h + 1 - int(n)) for h, n in zip(half, shape)]
    return fourier.padded_shape(shape, pads)


def sphere_structure(voxel_size, radius_mm):
    """The sampled sphere as a boolean array of shape ``2 * half_width + 1`` per axis.

    A voxel belongs to the sphere when its centre lies within ``radius_mm`` of
    the centre voxel (anisotropic voxels give an ellipsoid of voxel indices).
    """
    voxel_size = as_voxel_size(voxel_size)
    radius_mm = _as_radius(radius_mm)
    return _sphere_structure(voxel_size, radius_mm)


@lru_cache(maxsize=32)
def _sphere_structure(voxel_size, radius_mm):
    half = smv_half_width(voxel_size, radius_mm)
    axes = [np.arange(-h, h + 1) * d for h, d in zip(half, voxel_size)]
    dx, dy, dz = np.meshgrid(*axes, indexing="ij", sparse=True)
    ball = dx ** 2 + dy ** 2 + dz ** 2 <= (radius_mm * (1 + _SURFACE_TOLERANCE)) ** 2
    ball.setflags(write=False)
    return ball


def smv_kernel(shape, voxel_size, radius_mm):
    """FFT of the normalised sampled sphere on the rfft grid of real-space ``shape``.

    Parameters
    ----------
    shape : sequence of 3 int
        Real-space shape of the (padded) FFT grid.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float
        Sphere radius in mm.

    Returns
    -------
    ndarray, float32, shape ``(X, Y, Z // 2 + 1)``
        Read-only kernel ``S(k)``, with ``S(0) = 1``. Cached per arguments.

    Raises
    ------
    QSMInputError
        If the sphere does not fit in ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    voxel_size = as_voxel_size(voxel_size)
    radius_mm = _as_radius(radius_mm)
    half = smv_half_width(voxel_size, radius_mm)
    if len(shape) != 3 or any(2 * h + 1 > n for h, n in zip(half, shape)):
        raise QSMInputError(f"radius_mm: a sphere of {radius_mm} mm ({2 * half[0] + 1} x "
                            f"{2 * half[1] + 1} x {2 * half[2] + 1} voxels) does not fit in a "
                            f"grid of shape {shape}; use a smaller radius")
    return _smv_kernel(shape, voxel_size, radius_mm)


@lru_cache(maxsize=16)
def _smv_kernel(shape, voxel_size, radius_mm):
    ball = _sphere_structure(voxel_size, radius_mm)
    half = [(n - 1) // 2 for n in ball.shape]
    offsets = [idx - h for idx, h in zip(np.nonzero(ball), half)]
    # Sphere centred on voxel 0, wrapped around the periodic grid.
    sphere = np.zeros(shape, dtype=np.float32)
    sphere[tuple(o % n for o, n in zip(offsets, shape))] = 1.0 / offsets[0].size
    kernel = fourier.rfft(sphere).real.astype(np.float32)
    kernel.setflags(write=False)
    return kernel


def sphere_voxel_count(voxel_size, radius_mm):
    """Number of voxels in the sampled sphere of ``radius_mm``."""
    return int(sphere_structure(voxel_size, radius_mm).sum())


def smv_filter(array, kernel_ft, padded_shape, *, spectrum=None):
    """SMV of a real ``array``: ``IFFT(S * FFT(array))`` cropped back to ``array.shape``.

    Parameters
    ----------
    array : ndarray, shape (X, Y, Z)
        Real volume; values outside the region of interest should be zero.
    kernel_ft : ndarray
        Kernel from :func:`smv_kernel` on ``padded_shape``.
    padded_shape : tuple of 3 int
        FFT grid, for example from :func:`smv_padded_shape`.
    spectrum : ndarray, optional
        ``fourier.rfft(array, padded_shape)`` when already computed, so that
        several radii reuse one forward transform.

    Returns
    -------
    ndarray, float32, shape (X, Y, Z)
    """
    if spectrum is None:
        spectrum = fourier.rfft(np.asarray(array, dtype=np.float32), padded_shape)
    out = fourier.irfft(spectrum * kernel_ft, padded_shape)
    return np.ascontiguousarray(fourier.crop(out, np.shape(array)), dtype=np.float32)


def erode_mask(mask, voxel_size, radius_mm, *, padded_shape=None, mask_ft=None):
    """Erode a boolean mask by the sampled sphere of ``radius_mm``.

    A voxel is kept when the SMV of the mask equals 1, i.e. when the whole
    sphere around it lies inside the mask. This is the morphological erosion
    by :func:`sphere_structure` with the volume surrounded by background.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float
        Sphere radius in mm.
    padded_shape : tuple of 3 int, optional
        FFT grid; default :func:`smv_padded_shape`.
    mask_ft : ndarray, optional
        ``fourier.rfft(mask, padded_shape)`` when already computed.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    mask = np.asarray(mask, dtype=bool)
    if padded_shape is None:
        padded_shape = smv_padded_shape(mask.shape, voxel_size, radius_mm)
    kernel = smv_kernel(padded_shape, voxel_size, radius_mm)
    if mask_ft is None:
        mask_ft = fourier.rfft(mask.astype(np.float32), padded_shape)
    mean = smv_filter(mask, kernel, padded_shape, spectrum=mask_ft)
    # Missing one voxel of the sphere lowers the mean by 1 / count: keep half of that as slack.
    count = sphere_voxel_count(voxel_size, radius_mm)
    return (mean > 1.0 - 0.5 / count) & mask


def smv_highpass(spectrum, kernel_ft, padded_shape, shape):
    """``f - SMV(f)`` cropped to ``shape``, from ``spectrum = fourier.rfft(f, padded_shape)``.

    This removes any field that is harmonic over each sphere (float32 result).
    """
    out = fourier.irfft(spectrum * (1.0 - kernel_ft), padded_shape)
    return np.ascontiguousarray(fourier.crop(out, shape), dtype=np.float32)


def truncated_inverse(kernel_ft, threshold):
    """Truncated inverse of ``1 - S``: ``1 / (1 - S)`` where ``|1 - S| >= threshold``, else 0.

    This is the regularised deconvolution of SHARP (Schweser et al.,
    NeuroImage 2011). Frequencies below the threshold, which include k = 0,
    cannot be recovered and are set to zero. Returns float32.
    """
    threshold = check_threshold(threshold)
    one_minus_s = 1.0 - kernel_ft
    keep = np.abs(one_minus_s) >= threshold
    inverse = np.zeros(one_minus_s.shape, dtype=np.float32)
    np.divide(1.0, one_minus_s, out=inverse, where=keep)
    return inverse


def smv_deconvolve(highpassed, kernel_ft, padded_shape, threshold):
    """Undo ``f - SMV(f)`` by the truncated inverse (:func:`truncated_inverse`).

    ``highpassed`` must be zero outside the region where it is valid; the
    result is float32, cropped to ``highpassed.shape``.
    """
    spectrum = fourier.rfft(highpassed, padded_shape)
    spectrum *= truncated_inverse(kernel_ft, threshold)
    out = fourier.irfft(spectrum, padded_shape)
    return np.ascontiguousarray(fourier.crop(out, highpassed.shape), dtype=np.float32)


def check_threshold(threshold):
    """Return the deconvolution truncation level as a float in (0, 1)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or not 0.0 < value < 1.0:
        raise QSMInputError(f"threshold: {threshold!r} is outside (0, 1); "
                            "give a small truncation level such as 0.05")
    return value


def check_not_empty(eroded, what):
    """Refuse an eroded mask with no voxel left."""
    if not eroded.any():
        raise QSMInputError(f"mask: no voxel is left after erosion by the SMV sphere ({what}); "
                            "the mask is too small or too thin for this radius: "
                            "give a smaller radius or a larger mask")


def bounding_box(mask):
    """Slices of the smallest box holding every voxel of a non-empty boolean ``mask``.

    The background removal methods work on this box (padded), not on the
    whole field of view, which saves FFT time when the brain is small.
    """
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(slices)


def uncrop(array, box, shape):
    """Place ``array`` at ``box`` in a zero array of ``shape`` (the inverse of ``array[box]``)."""
    out = np.zeros(shape, dtype=array.dtype)
    out[box] = array
    return out


def _as_radius(radius_mm):
    try:
        radius = float(radius_mm)
    except (TypeError, ValueError):
        raise QSMInputError(f"radius_mm: {radius_mm!r} is not a number; "
                            "give a radius in mm") from None
    if not np.isfinite(radius) or radius <= 0:
        raise QSMInputError(f"radius_mm: {radius_mm!r} is not a positive radius; "
                            "give a radius in mm")
    return radius
