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
sphere's half-width in voxels (:func:`qsmlib.masking.sphere_padded_shape`)
so that the circular convolution never wraps across the volume.

The sampled sphere is :func:`qsmlib.masking.sphere_structure`, the same one
that erodes masks (:func:`qsmlib.masking.erode_mask`), so erosion and
filtering agree voxel for voxel.
"""

import numpy as np

from .. import fourier
from ..errors import QSMInputError
from ..masking import sphere_spectrum


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
    try:
        radius = float(radius_mm)
    except (TypeError, ValueError):
        radius = float("nan")
    if not np.isfinite(radius) or radius <= 0:
        raise QSMInputError(f"radius_mm: {radius_mm!r} is not a positive radius; give a radius in mm")
    return sphere_spectrum(shape, voxel_size, radius, normalized=True)


def smv_filter(array, kernel_ft, padded_shape, *, spectrum=None):
    """SMV of a real ``array``: ``IFFT(S * FFT(array))`` cropped back to ``array.shape``.

    Parameters
    ----------
    array : ndarray, shape (X, Y, Z)
        Real volume; values outside the region of interest should be zero.
    kernel_ft : ndarray
        Kernel from :func:`smv_kernel` on ``padded_shape``.
    padded_shape : tuple of 3 int
        FFT grid, for example from :func:`qsmlib.masking.sphere_padded_shape`.
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
