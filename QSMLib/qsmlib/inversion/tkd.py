"""Truncated k-space division (TKD).

The field is divided by the dipole kernel in k-space, with the kernel's
magnitude clamped from below by a threshold near its zero cone:

    chi = IFFT( F(k) / D_t(k) ),   D_t = D where |D| > t, sign(D) t elsewhere.

The clamp removes the noise amplification of the cone, at the price of
streaking and of an underestimation that grows with the threshold
(Schweser et al. 2013). At t = 0.19 uniform ellipsoids of 8-16 mm keep
82-83 % of their contrast, and the deep grey matter of the 1 mm head model
reads 0.004-0.026 ppm low. The map is not rescaled to hide this.
"""

import numpy as np

from ..dipole import dipole_kernel
from ..validation import check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .lcurve import choose_regularisation


def tkd(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), threshold=0.19,
        pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by truncated k-space division.

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local (background-free) field in ppm of B0.
    mask : ndarray, shape (X, Y, Z)
        Region where the field is valid (brain mask); the field is set to zero
        outside it.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates (see
        :func:`qsmlib.dipole.b0_direction_from_affine`).
    threshold : float or "auto", optional
        Smallest kernel magnitude kept, in (0, 2/3]. Larger values give less
        noise and streaking and more underestimation. The default 0.19 is in
        the range studied by Wharton et al. (2010); on the 1 mm head model
        0.15-0.25 give brain NRMSE within 1.5 % of each other at 0.002 ppm
        noise, and 0.25 is better at 0.005 ppm. ``"auto"`` picks it at the
        corner of the L-curve (:func:`qsmlib.inversion.lcurve.choose_regularisation`;
        call that function directly to learn the chosen value).
    pad_voxels : int or sequence of 3 int, optional
        Zero margin added to the mask's bounding box (per axis) before
        rounding up to a fast FFT size.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. The k = 0 term is not
        determined and is set to zero: reference the map before reading values.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched or empty mask, an invalid
        voxel size, B0 direction, threshold or padding.

    References
    ----------
    .. [1] Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH.
       Magnetic susceptibility mapping of brain tissue in vivo using MRI phase
       data. Magn Reson Med 2009;62:1510-1522.
    .. [2] Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the
       human brain using threshold-based k-space division. Magn Reson Med
       2010;63:1292-1304.
    .. [3] Schweser F, Deistung A, Sommer K, Reichenbach JR. Toward online
       reconstruction of quantitative susceptibility maps: superfast dipole
       inversion. Magn Reson Med 2013;69:1582-1594.
    """
    if isinstance(threshold, str) and threshold == "auto":
        threshold = choose_regularisation("tkd", field_ppm, mask, voxel_size, b0_dir=b0_dir,
                                          pad_voxels=pad_voxels).value
    threshold = check_number(threshold, "threshold", strict=True, maximum=2.0 / 3.0)
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    return grid.filtered_image(truncated_inverse(grid.shape, grid.voxel_size, grid.b0_dir, threshold))


def truncated_inverse(shape, voxel_size, b0_dir, threshold):
    """``1 / D`` where ``|D| > threshold``, ``sign(D) / threshold`` elsewhere, on the rfft grid (float32)."""
    kernel = dipole_kernel(shape, voxel_size, b0_dir)
    small = np.abs(kernel) <= threshold
    with np.errstate(divide="ignore"):
        inverse = np.where(small, np.sign(kernel) / np.float32(threshold), 1.0 / kernel)
    return inverse.astype(np.float32)
