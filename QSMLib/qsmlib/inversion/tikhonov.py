"""Closed-form L2 dipole inversion with a gradient penalty.

The minimiser of ``0.5 ||D chi - f||^2 + 0.5 lam ||G chi||^2`` with a
circulant finite-difference gradient ``G`` (see :mod:`.gradient`) is one
division in k-space:

    chi = IFFT( D F / (D^2 + lam sum_d |E_d|^2) ).
"""

import numpy as np

from ..dipole import dipole_kernel
from ..validation import check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import gradient_norm_squared
from .lcurve import choose_regularisation

#: Gradient weight in mm^2 of a bare call. The pipeline and the ``qsm``
#: commands choose it from the data instead (``lam="auto"``, generalised
#: cross-validation), because no one number fits: on the realistic head's
#: rows the best weight lies between 0.01 and 0.1, and 0.01 is up to 22
#: NRMSE points worse than it (Testing/benchmarks/regularisation_rules.py).
DEFAULT_TIKHONOV_LAMBDA = 0.01


def tikhonov(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), lam=DEFAULT_TIKHONOV_LAMBDA,
             pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by closed-form L2 inversion with gradient regularisation.

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local (background-free) field in ppm of B0.
    mask : ndarray, shape (X, Y, Z)
        Region where the field is valid (brain mask); the field is set to zero
        outside it.
    voxel_size : sequence of 3 float
        Voxel size in mm. The gradient is in ppm/mm (differences divided by
        the voxel size), so ``lam`` is in mm^2 and means the same smoothing
        length at every resolution.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    lam : float or "auto", optional
        Weight of ``0.5 ||grad chi||^2`` relative to ``0.5 ||D chi - f||^2``,
        in mm^2. Larger is smoother. ``"auto"`` picks it by generalised
        cross-validation (:func:`qsmlib.inversion.lcurve.choose_regularisation`,
        which also offers the L-curve and the discrepancy rule; call it
        directly to learn the chosen value).
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
        voxel size, B0 direction, ``lam`` or padding.

    References
    ----------
    .. [1] Bilgic B, Chatnuntawech I, Fan AP, Setsompop K, Cauley SF, Wald LL,
       Adalsteinsson E. Fast image reconstruction with L2-regularization.
       J Magn Reson Imaging 2014;40:181-191.
    """
    if isinstance(lam, str) and lam == "auto":
        lam = choose_regularisation("tikhonov", field_ppm, mask, voxel_size, b0_dir=b0_dir,
                                    pad_voxels=pad_voxels).value
    lam = check_number(lam, "lam", strict=True)
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    return grid.filtered_image(tikhonov_filter(grid.shape, grid.voxel_size, grid.b0_dir, lam))


def tikhonov_filter(shape, voxel_size, b0_dir, lam):
    """``D / (D^2 + lam |E|^2)`` on the rfft grid of ``shape`` (float32), 0 at k = 0."""
    kernel = dipole_kernel(shape, voxel_size, b0_dir)
    e2 = gradient_norm_squared(shape, voxel_size)
    denominator = kernel * kernel + np.float32(lam) * e2
    denominator[0, 0, 0] = 1.0  # D = E = 0 at k = 0: the mean is left at zero
    return (kernel / denominator).astype(np.float32, copy=False)
