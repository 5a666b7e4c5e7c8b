"""STAR-QSM: streaking artifact reduction by two-level sparse inversion.

Wei et al. (2015) reconstruct maps with a large dynamic range (haemorrhage,
calcification, large veins next to 0.01 ppm tissue contrast) in two levels, so
that the strong sources are found with a heavy sparsity weight, which does not
let their field leak into streaks, and the rest with a light one:

1. Strong sources. ``chi_L = argmin 0.5 ||W (D chi - f)||^2 + lam_strong ||chi||_1``:
   the L1 norm of the map itself keeps only the voxels whose field cannot be
   explained otherwise, the few strong sources, and sets the rest to exactly zero.
2. The rest. Their field is removed, ``f_S = f - D chi_L`` in the mask, and
   ``chi_S = argmin 0.5 ||W (D chi - f_S)||^2 + lam ||G chi||_1`` (total variation,
   tissue contrast). The map is ``chi_L + chi_S``.

Both levels are solved by ADMM with closed-form FFT updates (Bilgic et al.
2014), with the data split ``y = D chi`` of Milovic et al. (2018) so that the
field outside the mask is free, as in :func:`~qsmlib.inversion.tv_admm`.

Simplifications. This follows the two-level scheme of the paper (strong
sources under a heavy sparsity weight, their field removed, the rest under a
light one). It does not reproduce the paper's exact cost functions, solver or
its automatic adjustment of the regularisation parameter to the data: here
the two weights are fixed numbers in physical units (``lam_strong`` in ppm,
``lam`` in ppm mm, the latter tv_admm's default), level 1 penalises the L1 norm
of the map and level 2 isotropic total variation, and the data weights ``W``
apply to both levels.
"""

import numpy as np

from .. import fourier
from ..dipole import dipole_kernel
from ..validation import check_count, check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import gradient_norm_squared, shrink_dual, shrink_gradient_dual
from .nltv import _check_callback, _squared_weights
from .tv_admm import DEFAULT_TV_LAMBDA, DEFAULT_TV_RHO, DEFAULT_TV_TOL, _relative_change

#: Level-1 (strong source) L1 weight in ppm. A voxel enters level 1 when the
#: field it alone would explain outweighs this. On the ellipsoid phantom (1 mm)
#: 0.03 keeps a 1 ppm sphere (at 65 % of its value; level 2 adds the rest) and
#: nothing of 0.05-0.2 ppm regions; 0.01 already takes in part of a 0.2 ppm
#: region, 0.1 keeps a quarter of the 1 ppm sphere's voxels.
DEFAULT_STAR_LAMBDA_STRONG = 0.03
#: Level-1 ADMM penalty (dimensionless, like D^2): about the squared
#: dipole kernel's mean (4/45), for a well-balanced split.
DEFAULT_STAR_RHO_STRONG = 0.1
DEFAULT_STAR_MAX_ITER = 100
#: Data-split penalty, relative to the median data weight 1.
DATA_SPLIT_PENALTY = 1.0


def star(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), lam=DEFAULT_TV_LAMBDA,
         lam_strong=DEFAULT_STAR_LAMBDA_STRONG, weights=None, rho=DEFAULT_TV_RHO,
         rho_strong=DEFAULT_STAR_RHO_STRONG, max_iter=DEFAULT_STAR_MAX_ITER, tol=DEFAULT_TV_TOL,
         callback=None, pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by two-level sparse inversion (STAR-QSM).

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local (background-free) field in ppm of B0.
    mask : ndarray, shape (X, Y, Z)
        Region where the field is valid (brain mask).
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    lam : float, optional
        Level-2 total-variation weight in ppm mm (as in :func:`~qsmlib.inversion.tv_admm`).
    lam_strong : float, optional
        Level-1 L1 weight on the map, in ppm. Larger keeps fewer, stronger
        sources in level 1.
    weights : ndarray, shape (X, Y, Z), optional
        Non-negative data weights (1 / field SD), normalised to median 1 in the
        mask; zero leaves a voxel's field out. Default: 1 in the mask.
    rho : float, optional
        Level-2 ADMM penalty in mm^2 (speed, not the solution).
    rho_strong : float, optional
        Level-1 ADMM penalty (dimensionless; speed, not the solution).
    max_iter : int, optional
        Iteration limit of each level.
    tol : float, optional
        Each level stops when ``||chi_k - chi_{k-1}|| / ||chi_k||`` in the mask falls below this.
    callback : callable, optional
        ``callback(iteration, relative_change)`` after every iteration of either
        level, counted on from level 1 into level 2; it may raise
        :class:`qsmlib.Cancelled`, which propagates.
    pad_voxels : int or sequence of 3 int, optional
        Zero margin around the mask's bounding box before rounding up to a
        fast FFT size.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. The level-2 map's k = 0
        term is not determined: reference the map before reading values.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched or empty mask, an invalid
        voxel size, B0 direction, padding, weights, ``lam``, ``lam_strong``,
        ``rho``, ``rho_strong``, ``max_iter``, ``tol`` or ``callback``.
    Cancelled
        When raised by ``callback``.

    References
    ----------
    .. [1] Wei H, Dibb R, Zhou Y, Sun Y, Xu J, Wang N, Liu C. Streaking
       artifact reduction for quantitative susceptibility mapping of sources
       with large dynamic range. NMR Biomed 2015;28:1294-1303.
    .. [2] Bilgic B, Fan AP, Polimeni JR, Cauley SF, Bianciardi M,
       Adalsteinsson E, Wald LL, Setsompop K. Fast quantitative susceptibility
       mapping with L1-regularization and automatic parameter selection.
       Magn Reson Med 2014;72:1444-1459.
    .. [3] Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast
       nonlinear susceptibility inversion with variational regularization.
       Magn Reson Med 2018;80:814-821.
    """
    lam = check_number(lam, "lam", strict=True)
    lam_strong = check_number(lam_strong, "lam_strong", strict=True)
    rho = check_number(rho, "rho", strict=True)
    rho_strong = check_number(rho_strong, "rho_strong", strict=True)
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    _check_callback(callback)
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    w2 = _squared_weights(grid, weights)
    kernel = dipole_kernel(grid.shape, grid.voxel_size, grid.b0_dir)
    inside = grid.inside()

    counter = _Counter(callback)
    strong = _sparse_admm(grid.field, w2, kernel, grid, lam_strong, rho_strong, "identity",
                          max_iter, tol, counter)
    strong[~inside] = 0
    spectrum = fourier.rfft(strong)
    spectrum *= kernel
    rest_field = grid.field - fourier.irfft(spectrum, grid.shape).astype(np.float32, copy=False)
    rest_field[~inside] = 0
    rest = _sparse_admm(rest_field, w2, kernel, grid, lam, rho, "gradient", max_iter, tol, counter)
    return grid.to_image(strong + rest)


class _Counter:
    """Numbers the iterations of both levels in one sequence for the user's callback."""

    def __init__(self, callback):
        self.callback = callback
        self.iteration = 0

    def __call__(self, change):
        self.iteration += 1
        if self.callback is not None:
            self.callback(self.iteration, change)


def _sparse_admm(field, w2, kernel, grid, lam, rho, transform, max_iter, tol, report):
    """``argmin 0.5 ||W (D chi - field)||^2 + lam ||T chi||_1`` by ADMM, T the identity or the gradient.

    Splits ``y = D chi`` (penalty ``mu``, free where ``W = 0``) and ``z = T chi``
    (penalty ``rho``). With the identity the sparse variable ``z`` (exactly
    zero off the sources) is returned; with the gradient, ``chi``.
    """
    shape = grid.shape
    mu = np.float32(DATA_SPLIT_PENALTY)
    gradient = transform == "gradient"
    inv_h = [1.0 / s for s in grid.voxel_size]
    if gradient:
        penalty_eig = np.float32(rho) * gradient_norm_squared(shape, grid.voxel_size)
    else:
        penalty_eig = np.float32(rho)
    denominator = mu * kernel * kernel + penalty_eig
    if gradient:
        denominator[0, 0, 0] = 1.0  # both numerator terms vanish at k = 0
    data_gain = (mu * kernel / denominator).astype(np.float32)
    penalty_gain = (np.float32(rho) / denominator).astype(np.float32)
    del denominator, penalty_eig

    weighted_field = w2 * field
    data_denominator = w2 + mu
    in_mask = grid.inside().astype(np.float32)
    y = field.copy()
    s = np.zeros(shape, dtype=np.float32)
    components = (3,) if gradient else ()
    dual = np.zeros(components + shape, dtype=np.float32)
    work = np.zeros(components + shape, dtype=np.float32)      # z - u
    scratch = np.empty(shape, dtype=np.float32)
    radius = np.empty(shape, dtype=np.float32)                 # div(z - u) for the gradient
    threshold = np.float32(lam / rho)

    chi_prev = None
    for iteration in range(1, max_iter + 1):
        np.subtract(y, s, out=scratch)
        spectrum = fourier.rfft(scratch)
        spectrum *= data_gain
        if iteration > 1:
            if gradient:
                penalty = fourier.rfft(radius)
                penalty *= penalty_gain
                spectrum -= penalty
            else:
                penalty = fourier.rfft(work)
                penalty *= penalty_gain
                spectrum += penalty
            del penalty
        chi = fourier.irfft(spectrum, shape).astype(np.float32, copy=False)

        change = _relative_change(chi, chi_prev, in_mask, scratch)
        report(change)
        if change < tol or iteration == max_iter:
            break
        chi_prev = chi

        # y <- (W^2 f + mu (D chi + s)) / (W^2 + mu); s <- s + D chi - y
        spectrum *= kernel
        model = fourier.irfft(spectrum, shape).astype(np.float32, copy=False)
        del spectrum
        np.add(model, s, out=y)
        y *= mu
        y += weighted_field
        y /= data_denominator
        s += model
        s -= y
        del model

        # z <- shrink(T chi + u, lam / rho); u <- T chi + u - z (the projection); work <- z - u
        if gradient:
            shrink_gradient_dual(chi, dual, threshold, inv_h, work, radius, scratch)
        else:
            np.add(chi, dual, out=work)
            shrink_dual(work, dual, threshold, radius, scratch)
    if gradient:
        return chi
    # the sparse split variable: exactly zero off the strong sources
    return (work + dual).astype(np.float32, copy=False) if iteration > 1 else np.zeros(shape, np.float32)
