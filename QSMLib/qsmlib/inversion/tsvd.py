"""Truncated singular value decomposition (TSVD) of the dipole operator.

On the periodic working grid the dipole convolution is a circulant operator:
its singular vectors are the Fourier modes and its singular values are the
kernel magnitudes |D(k)|. Truncating the SVD keeps the modes whose singular
value exceeds a threshold and drops the others:

    chi = IFFT( F(k) / D(k) )  where |D(k)| > t,   0 elsewhere.

This differs from truncated k-space division (:func:`qsmlib.inversion.tkd`),
which keeps the cone's modes with the clamped gain sign(D) / t. TSVD
therefore removes everything near the zero cone: fewer streaks and less
noise than TKD at the same threshold, and more underestimation of extended
structures (their cone content is lost, not damped).
"""

import numpy as np

from ..dipole import dipole_kernel
from ..validation import check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .lcurve import choose_regularisation

#: Default truncation level. Zeroing loses more contrast than TKD's clamp, so
#: the TSVD threshold is set lower than TKD's 0.19: at 0.1 the uniform 8-16 mm
#: ellipsoids of the test phantom keep 82-84 % of their contrast, as TKD does
#: at 0.19 (TSVD at 0.19 keeps only 62-66 %). The cone |D| < 0.1 still holds
#: about 17 % of the directions of k-space.
DEFAULT_TSVD_THRESHOLD = 0.1


def tsvd(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), threshold=DEFAULT_TSVD_THRESHOLD,
         pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by truncated SVD (k-space division with the cone removed).

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
        B0 direction in voxel coordinates.
    threshold : float or "auto", optional
        Smallest kernel magnitude (singular value) kept, in (0, 2/3]. Larger
        values remove more of the cone: less noise and streaking, more
        underestimation. ``"auto"`` picks it at the corner of the L-curve
        (:func:`qsmlib.inversion.lcurve.choose_regularisation`; call that
        function directly to learn the chosen value).
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
    .. [1] Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the
       human brain using threshold-based k-space division. Magn Reson Med
       2010;63:1292-1304.
    .. [2] Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH.
       Magnetic susceptibility mapping of brain tissue in vivo using MRI phase
       data. Magn Reson Med 2009;62:1510-1522.
    .. [3] Hansen PC. Rank-deficient and discrete ill-posed problems.
       SIAM, Philadelphia, 1998 (truncated SVD as a regularisation method).
    """
    if isinstance(threshold, str) and threshold == "auto":
        threshold = choose_regularisation("tsvd", field_ppm, mask, voxel_size, b0_dir=b0_dir,
                                          pad_voxels=pad_voxels).value
    threshold = check_number(threshold, "threshold", strict=True, maximum=2.0 / 3.0)
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    return grid.filtered_image(truncated_svd_inverse(grid.shape, grid.voxel_size, grid.b0_dir, threshold))


def truncated_svd_inverse(shape, voxel_size, b0_dir, threshold):
    """``1 / D`` where ``|D| > threshold`` and 0 elsewhere, on the rfft grid (float32)."""
    kernel = dipole_kernel(shape, voxel_size, b0_dir)
    kept = np.abs(kernel) > threshold
    inverse = np.zeros(kernel.shape, dtype=np.float32)
    np.divide(np.float32(1), kernel, out=inverse, where=kept)
    return inverse
