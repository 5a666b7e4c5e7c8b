"""SHARP: sophisticated harmonic artifact reduction for phase data (Schweser et al., 2011)."""

import numpy as np

from .. import fourier
from ..validation import as_mask, as_volume, as_voxel_size
from ..masking import bounding_box, erode_mask, sphere_padded_shape, uncrop
from . import smv


def sharp(field, mask, voxel_size, *, radius_mm=6.0, threshold=0.05):
    """Remove the background field with SHARP.

    The background field is harmonic inside the brain, so it equals its own
    spherical mean value (SMV). SHARP forms ``f - SMV(f)`` inside the mask
    eroded by the sphere, where the background cancels, and undoes the
    high-pass filter by a truncated deconvolution of ``1 - S``.

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (Hz or ppm; the result has the same unit).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask, the region where the background field is harmonic.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float, optional
        SMV sphere radius in mm (6 mm as in the reference paper's in vivo data
        is a common choice; larger removes more background, erodes more brain).
    threshold : float, optional
        Truncation level of the deconvolution: frequencies where
        ``|1 - S(k)| < threshold`` are set to zero.

    Returns
    -------
    local_field : ndarray, float32, shape (X, Y, Z)
        Local field, 0 outside ``mask_out``. Its mean (and the lowest
        frequencies) is not identifiable and should be removed or referenced.
    mask_out : ndarray of bool, shape (X, Y, Z)
        ``mask`` eroded by the sphere: where ``local_field`` is valid.

    Raises
    ------
    QSMInputError
        If the field is not a finite 3D volume, the mask does not match it or
        is empty, the voxel size, radius or threshold is invalid, or the
        erosion leaves no voxel.

    References
    ----------
    .. [1] Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging
       of intrinsic magnetic tissue properties using MRI signal phase: an
       approach to in vivo brain iron metabolism? NeuroImage 2011;54:2789-2807.
    """
    field = as_volume(field, "field")
    mask = as_mask(mask, field.shape)
    voxel_size = as_voxel_size(voxel_size)
    threshold = smv.check_threshold(threshold)

    # Work on the mask's bounding box, padded so that the sphere never wraps around.
    box = bounding_box(mask)
    box_mask = mask[box]
    padded = sphere_padded_shape(box_mask.shape, voxel_size, radius_mm)
    kernel = smv.smv_kernel(padded, voxel_size, radius_mm)
    eroded = erode_mask(box_mask, voxel_size, radius_mm, padded_shape=padded)
    smv.check_not_empty(eroded, f"radius_mm={radius_mm}")

    spectrum = fourier.rfft(np.where(box_mask, field[box], np.float32(0)), padded)
    highpassed = smv.smv_highpass(spectrum, kernel, padded, box_mask.shape)
    del spectrum
    highpassed *= eroded
    local = smv.smv_deconvolve(highpassed, kernel, padded, threshold)
    local *= eroded
    return uncrop(local, box, field.shape), uncrop(eroded, box, field.shape)
