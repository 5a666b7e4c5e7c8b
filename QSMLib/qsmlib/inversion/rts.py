"""Rapid two-step (RTS) dipole inversion with a sparsity prior.

Step 1 estimates the well-conditioned part of k-space by a few LSMR
iterations on the masked least-squares problem

    min_chi || M (IFFT(D FFT(chi)) - f) ||^2,

stopped early so that the ill-conditioned cone is barely touched; the
result is restricted to the mask.

Step 2 keeps that estimate on the well-conditioned set W = {|D| > delta} and
fills the ill-conditioned cone with the image of least anisotropic total
variation:

    min_x  (mu / 2) || W (FFT_u(x) - FFT_u(chi_1)) ||^2 + || G x ||_1,

with ``FFT_u`` the unitary transform, solved by ADMM with the split z = G x
(scaled dual u):

    x <- IFFT( (mu W X_1 + rho E^H FFT(z - u)) / (mu W + rho sum_d |E_d|^2) )
    z <- soft(G x + u, 1 / rho)         (component by component)
    u <- u + G x - z

Because mu is large, the well-conditioned k-space stays at its step-1 value
and only the cone is shaped by the prior.
"""

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsmr

from .. import fourier
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..validation import check_count, check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import backward_divergence, forward_differences, gradient_norm_squared
from .tv_admm import _relative_change

#: Published defaults (Kames et al. 2018, and the authors' QSM.jl): kernel
#: threshold 0.15, data weight 1e5, ADMM penalty 10, 4 LSMR iterations, at
#: most 20 ADMM iterations stopped at 1 % relative change. Our gradient is in
#: ppm/mm (see :mod:`.gradient`): at 1 mm these are the published values; at
#: other voxel sizes the shrinkage threshold 1 / rho = 0.1 ppm/mm keeps its
#: physical meaning.
DEFAULT_RTS_DELTA = 0.15
DEFAULT_RTS_MU = 1e5
DEFAULT_RTS_RHO = 10.0
DEFAULT_RTS_LSMR_ITER = 4
DEFAULT_RTS_MAX_ITER = 20
DEFAULT_RTS_TOL = 1e-2
#: Penalty update of the authors' implementation (QSM.jl): when the primal
#: residual falls by less than a factor 0.7 in an iteration, rho grows 5-fold.
RHO_TOLERANCE = 0.7
RHO_GROWTH = 5.0


def rts(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), delta=DEFAULT_RTS_DELTA,
        mu=DEFAULT_RTS_MU, rho=DEFAULT_RTS_RHO, lsmr_iter=DEFAULT_RTS_LSMR_ITER,
        max_iter=DEFAULT_RTS_MAX_ITER, tol=DEFAULT_RTS_TOL, callback=None,
        pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by rapid two-step inversion (LSMR, then TV fill-in of the cone).

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local (background-free) field in ppm of B0.
    mask : ndarray, shape (X, Y, Z)
        Region where the field is valid (brain mask). Values outside it are
        ignored.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    delta : float, optional
        Kernel magnitude below which k-space is ill-conditioned and filled
        by the prior, in (0, 2/3).
    mu : float, optional
        Weight of the well-conditioned data relative to the TV term, in
        1/(ppm mm). Large values hold the well-conditioned k-space fixed.
    rho : float, optional
        ADMM penalty in mm/ppm; ``1 / rho`` (ppm/mm) is the gradient
        magnitude shrunk to zero per iteration.
    lsmr_iter : int, optional
        LSMR iterations of step 1 (early stopping is the regulariser).
    max_iter : int, optional
        ADMM iteration limit of step 2.
    tol : float, optional
        Stop step 2 when ``||x_k - x_{k-1}|| / ||x_k||`` inside the mask falls
        below this.
    callback : callable, optional
        ``callback(iteration, relative_change)`` after every ADMM iteration
        (from 1). It may raise :class:`qsmlib.Cancelled`; the exception
        propagates.
    pad_voxels : int or sequence of 3 int, optional
        Zero margin added to the mask's bounding box (per axis) before
        rounding up to a fast FFT size.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. Reference the map
        before reading values.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched or empty mask, an invalid
        voxel size, B0 direction, padding, or option.
    Cancelled
        When raised by ``callback``.

    References
    ----------
    .. [1] Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion
       for susceptibility mapping with sparsity priors. NeuroImage
       2018;167:276-283.
    .. [2] Fong DC-L, Saunders M. LSMR: an iterative algorithm for sparse
       least-squares problems. SIAM J Sci Comput 2011;33:2950-2971.
    """
    delta = check_number(delta, "delta", strict=True, maximum=2.0 / 3.0)
    mu = check_number(mu, "mu", strict=True)
    rho = check_number(rho, "rho", strict=True)
    lsmr_iter = check_count(lsmr_iter, "lsmr_iter")
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    if callback is not None and not callable(callback):
        raise QSMInputError(f"callback: {callback!r} is not callable; "
                            "give a function callback(iteration, residual) or None")
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    kernel = dipole_kernel(grid.shape, grid.voxel_size, grid.b0_dir)
    inside = grid.inside()
    chi1 = _well_conditioned_estimate(grid, kernel, inside, lsmr_iter)
    chi = _tv_fill_in(grid, kernel, inside, chi1, delta, mu, rho, max_iter, tol, callback)
    return grid.to_image(chi)


def _well_conditioned_estimate(grid, kernel, inside, iterations):
    """Step 1: early-stopped LSMR on the k-space system D X = F, restricted to the mask.

    The operator is diagonal, so LSMR's iterate is a low-degree polynomial
    filter of D applied to the field's spectrum: close to 1/D where |D| is
    large, damped near the cone. The rfft half-spectrum is weighted so that
    the inner products are those of the full spectrum.
    """
    shape = grid.shape
    weight = np.sqrt(_rfft_weights(shape, kernel.shape)).astype(np.float32)
    diagonal = kernel.astype(np.complex128).ravel()  # scipy's LSMR overflows in complex64

    def apply(x):
        return diagonal * x

    size = diagonal.size
    operator = LinearOperator((size, size), matvec=apply, rmatvec=apply, dtype=np.complex128)
    rhs = (fourier.rfft(grid.field) * weight).astype(np.complex128).ravel()
    solution = lsmr(operator, rhs, atol=0.0, btol=0.0, maxiter=iterations)[0]
    spectrum = solution.reshape(kernel.shape) / weight
    chi = fourier.irfft(spectrum, shape).astype(np.float32)
    chi *= inside
    return chi


def _tv_fill_in(grid, kernel, inside, chi1, delta, mu, rho, max_iter, tol, callback):
    """Step 2: ADMM for anisotropic TV with the well-conditioned k-space held by weight mu."""
    shape = grid.shape
    inv_h = [1.0 / h for h in grid.voxel_size]
    well = np.abs(kernel) > delta
    well[0, 0, 0] = True  # keep step 1's mean (k = 0 is not determined by the data)
    data_weight = np.where(well, np.float32(mu), np.float32(0))
    e2 = gradient_norm_squared(shape, grid.voxel_size)
    chi1_spectrum = fourier.rfft(chi1)

    def gains(rho):
        # chi_hat = data_gain * FFT(chi1) - penalty_gain * FFT(div(z - u)): E^H FFT(w) = -FFT(div w)
        denominator = data_weight + np.float32(rho) * e2
        data_term = chi1_spectrum * (data_weight / denominator).astype(np.float32)
        return data_term, (np.float32(rho) / denominator).astype(np.float32)

    data_term, penalty_gain = gains(rho)
    in_mask = inside.astype(np.float32)
    x = chi1
    dual = np.zeros((3,) + shape, dtype=np.float32)      # u
    work = np.empty((3,) + shape, dtype=np.float32)      # v = G x + u, then z - u
    divergence = np.empty(shape, dtype=np.float32)
    scratch = np.empty(shape, dtype=np.float32)
    primal = np.inf
    for iteration in range(1, max_iter + 1):
        # v = G x + u; u <- v - soft(v, 1/rho) = clip(v); z - u = v - 2u; G x - z = u_new - u_old
        threshold = np.float32(1.0 / rho)
        forward_differences(x, work, inv_h)
        work += dual
        previous_dual = dual.copy()
        np.clip(work, -threshold, threshold, out=dual)
        work -= dual
        work -= dual
        if iteration > 1:
            previous_dual -= dual
            primal_prev, primal = primal, float(np.sqrt(np.vdot(previous_dual, previous_dual)))
            if primal > RHO_TOLERANCE * primal_prev:
                # residual balancing as in the authors' implementation: a slowly falling
                # primal residual raises the penalty; the scaled dual shrinks by the same factor
                rho *= RHO_GROWTH
                data_term, penalty_gain = gains(rho)
                work += dual                      # back to v - u
                dual /= np.float32(RHO_GROWTH)
                work -= dual                      # z - u with the rescaled dual
        del previous_dual
        backward_divergence(work, divergence, inv_h, scratch)
        spectrum = fourier.rfft(divergence)
        spectrum *= penalty_gain
        np.subtract(data_term, spectrum, out=spectrum)
        x_new = fourier.irfft(spectrum, shape).astype(np.float32, copy=False)
        change = _relative_change(x_new, x, in_mask, scratch)
        x = x_new
        if callback is not None:
            callback(iteration, change)
        if change < tol:
            break
    return x


def _rfft_weights(shape, spectrum_shape):
    """Parseval weights of the rfft half-spectrum (2 where a column stands for a conjugate pair)."""
    n = shape[-1]
    weights = np.full(spectrum_shape[-1], 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return weights.reshape((1,) * (len(shape) - 1) + (-1,))
