"""iLSQR: LSQR inversion with estimation and removal of streaking artifacts.

The four steps of Li et al. (2015), with their published constants:

1. LSQR solution of the weighted least-squares fit ``min ||W^1/2 (D chi - f)||``
   (W from the field's Laplacian: voxels with an extreme Laplacian, that is
   unreliable phase, weigh less: weight 1 below the 60th percentile of
   ``|lap f|``, 0 above the 99.9th, linear between; W = 0 outside the mask),
   early-stopped at tolerance 0.01 / 50 iterations.
2. A streak-free but biased "fast QSM" estimate in k-space:
   ``X = sign(D) F`` (that is ``|D| chi``), smoothed towards the cone with a
   3 mm spherical mean value kernel weighted by a ramp in ``|D|^0.001``
   between its 1st and 30th percentiles, applied twice with masking; then
   scaled and offset by a linear fit to the TKD map at threshold 1/8.
3. The streaking artifact: the map with k-space support on the
   ill-conditioned cone ``|D| < 0.1`` whose gradients match those of the
   LSQR map where the fast QSM has no edge (gradient weights 1 below the
   50th percentile of the fast QSM's |gradient|, 0 above the 70th), by
   LSQR at tolerance 0.01 / 50 iterations.
4. chi = chi_LSQR - artifact, inside the mask.

Simplifications and choices (documented here because the paper leaves them
open or we could not verify them): percentiles are taken of absolute
values (|Laplacian|, |gradient| per axis) inside the mask; k-space
percentiles are over the padded rfft grid; LSQR is applied to the weighted
least-squares problem itself rather than to its normal equations (same
solution, better-conditioned iterates); the fields at the mask edge are not
eroded.
"""

import numpy as np

from .. import fourier
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..masking import sphere_spectrum
from ..validation import check_count, check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import backward_divergence, forward_differences

# Published constants (Li et al. 2015).
LAPLACIAN_PERCENTILES = (60.0, 99.9)
GRADIENT_PERCENTILES = (50.0, 70.0)
KSPACE_PERCENTILES = (1.0, 30.0)
KSPACE_EXPONENT = 0.001
SMV_RADIUS_MM = 3.0
FAST_QSM_TKD_THRESHOLD = 1.0 / 8.0
ILL_CONDITIONED_THRESHOLD = 0.1
DEFAULT_ILSQR_TOL = 1e-2
DEFAULT_ILSQR_MAX_ITER = 50


def ilsqr(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), max_iter=DEFAULT_ILSQR_MAX_ITER,
          tol=DEFAULT_ILSQR_TOL, threshold=ILL_CONDITIONED_THRESHOLD, callback=None,
          pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by iLSQR (LSQR plus streaking-artifact removal).

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
    max_iter : int, optional
        Iteration limit of each of the two LSQR solves (step 1 and step 3).
    tol : float, optional
        LSQR stopping tolerance of both solves: relative residual, or relative
        normal-equation residual ``||A^T r|| / (||A|| ||r||)``, below ``tol``.
    threshold : float, optional
        Kernel magnitude below which k-space is ill-conditioned and carries the
        streaking artifact, in (0, 2/3).
    callback : callable, optional
        ``callback(iteration, residual)`` after every LSQR iteration; the
        count runs on from step 1 into step 3 and ``residual`` is the stopping
        measure compared with ``tol``. It may raise :class:`qsmlib.Cancelled`;
        the exception propagates.
    pad_voxels : int or sequence of 3 int, optional
        Zero margin added to the mask's bounding box (per axis) before
        rounding up to a fast FFT size.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. Reference the map before
        reading values.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched or empty mask, an invalid
        voxel size, B0 direction, padding or option.
    Cancelled
        When raised by ``callback``.

    References
    ----------
    .. [1] Li W, Wang N, Yu F, Han H, Cao W, Romero R, Tantiwongkosi B,
       Duong TQ, Liu C. A method for estimating and removing streaking
       artifacts in quantitative susceptibility mapping. NeuroImage
       2015;108:111-122.
    .. [2] Paige CC, Saunders MA. LSQR: an algorithm for sparse linear
       equations and sparse least squares. ACM Trans Math Softw
       1982;8:43-71.
    """
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    threshold = check_number(threshold, "threshold", strict=True, maximum=2.0 / 3.0)
    if callback is not None and not callable(callback):
        raise QSMInputError(f"callback: {callback!r} is not callable; "
                            "give a function callback(iteration, residual) or None")
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    kernel = dipole_kernel(grid.shape, grid.voxel_size, grid.b0_dir)
    inside = grid.inside()
    counter = _Counter(callback)

    chi_lsqr = _weighted_lsqr(grid, kernel, inside, max_iter, tol, counter)
    chi_fast = _fast_qsm(grid, kernel, inside)
    artifact = _streaking_artifact(grid, kernel, inside, chi_lsqr, chi_fast, threshold,
                                   max_iter, tol, counter)
    return grid.to_image(chi_lsqr - artifact)


class _Counter:
    """Numbers the LSQR iterations of both solves for one callback."""

    def __init__(self, callback):
        self.callback = callback
        self.iteration = 0

    def __call__(self, residual):
        self.iteration += 1
        if self.callback is not None:
            self.callback(self.iteration, float(residual))


def lsqr(forward, adjoint, rhs, *, max_iter, tol, report=None):
    """Minimise ``||forward(x) - rhs||`` by LSQR (Paige & Saunders 1982), from x = 0.

    ``forward`` and ``adjoint`` map float32 arrays (of any fixed shapes) to
    float32 arrays; ``report(measure)`` is called after every iteration with
    the stopping measure ``min(||r|| / ||b||, ||A^T r|| / (||A|| ||r||))``.
    Stops when the measure falls below ``tol`` or after ``max_iter``.
    """
    u = rhs.astype(np.float32, copy=True)
    beta = _norm(u)
    if beta == 0:
        return np.zeros_like(adjoint(u))
    u /= beta
    v = adjoint(u)
    alpha = _norm(v)
    x = np.zeros_like(v)
    if alpha == 0:
        return x
    v /= alpha
    w = v.copy()
    phibar, rhobar = beta, alpha
    anorm2 = 0.0
    for _ in range(max_iter):
        u = forward(v) - alpha * u
        beta = _norm(u)
        if beta > 0:
            u /= beta
        anorm2 += alpha * alpha + beta * beta
        v = adjoint(u) - beta * v
        alpha = _norm(v)
        if alpha > 0:
            v /= alpha
        rho = np.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        x += np.float32(phi / rho) * w
        w = v - np.float32(theta / rho) * w
        relative_residual = phibar / (_norm(rhs) or 1.0)
        normal_residual = abs(phibar * alpha * c) / (np.sqrt(anorm2) * phibar) if phibar > 0 else 0.0
        measure = min(relative_residual, normal_residual)
        if report is not None:
            report(measure)
        if measure < tol or alpha == 0 or beta == 0:
            break
    return x


def _norm(a):
    return float(np.sqrt(np.vdot(a.ravel(), a.ravel()).real))


def _convolve(x, kernel, shape):
    return fourier.irfft(kernel * fourier.rfft(x), shape).astype(np.float32)


def _ramp_weights(values, low, high):
    """1 below ``low``, 0 above ``high``, linear between (float32)."""
    if high <= low:
        return (values <= low).astype(np.float32)
    return np.clip((high - values) / (high - low), 0.0, 1.0).astype(np.float32)


def _weighted_lsqr(grid, kernel, inside, max_iter, tol, counter):
    """Step 1: LSQR on min ||W^1/2 (D chi - f)|| with Laplacian-based weights."""
    shape, field = grid.shape, grid.field
    laplacian = np.abs(_laplacian(field, grid.voxel_size))
    low, high = np.percentile(laplacian[inside], LAPLACIAN_PERCENTILES)
    root_weight = np.sqrt(_ramp_weights(laplacian, low, high)) * inside

    def forward(x):
        return _convolve(x, kernel, shape) * root_weight

    def adjoint(r):
        return _convolve(r * root_weight, kernel, shape)

    chi = lsqr(forward, adjoint, field * root_weight, max_iter=max_iter, tol=tol, report=counter)
    return chi * inside


def _laplacian(x, voxel_size):
    out = np.zeros_like(x)
    for axis, h in enumerate(voxel_size):
        out += (np.roll(x, 1, axis) - 2 * x + np.roll(x, -1, axis)) / np.float32(h * h)
    return out


def _fast_qsm(grid, kernel, inside):
    """Step 2: the streak-free estimate |D| chi, smoothed in the cone and calibrated on TKD."""
    shape = grid.shape
    spectrum = fourier.rfft(grid.field)
    magnitude = np.abs(kernel)
    ramp = magnitude.astype(np.float64) ** KSPACE_EXPONENT
    low, high = np.percentile(ramp, KSPACE_PERCENTILES)
    weight = 1.0 - _ramp_weights(ramp, low, high)          # 0 in the cone, 1 far from it
    smv = sphere_spectrum(shape, grid.voxel_size, SMV_RADIUS_MM, normalized=True)
    blend = (weight + (1.0 - weight) * smv).astype(np.float32)
    x = np.sign(kernel) * spectrum
    fast = fourier.irfft(blend * x, shape).astype(np.float32) * inside
    fast = fourier.irfft(blend * fourier.rfft(fast), shape).astype(np.float32) * inside

    clamped = np.where(magnitude > FAST_QSM_TKD_THRESHOLD, kernel,
                       np.where(kernel < 0, -FAST_QSM_TKD_THRESHOLD, FAST_QSM_TKD_THRESHOLD))
    clamped[0, 0, 0] = 1.0
    tkd_spectrum = spectrum / clamped
    tkd_spectrum[0, 0, 0] = 0
    tkd_map = fourier.irfft(tkd_spectrum, shape).astype(np.float32)
    a = np.stack([fast[inside], np.ones(int(inside.sum()), dtype=np.float32)], axis=1)
    (slope, offset), *_ = np.linalg.lstsq(a.astype(np.float64), tkd_map[inside].astype(np.float64),
                                          rcond=None)
    return ((slope * fast + offset) * inside).astype(np.float32)


def _streaking_artifact(grid, kernel, inside, chi_lsqr, chi_fast, threshold, max_iter, tol,
                        counter):
    """Step 3: the cone-supported map whose gradients match the LSQR map's away from true edges."""
    shape = grid.shape
    inv_h = [1.0 / h for h in grid.voxel_size]
    cone = (np.abs(kernel) < threshold).astype(np.float32)
    fast_gradient = np.abs(forward_differences(chi_fast, np.empty((3,) + shape, np.float32), inv_h))
    weights = np.empty((3,) + shape, dtype=np.float32)
    for d in range(3):
        low, high = np.percentile(fast_gradient[d][inside], GRADIENT_PERCENTILES)
        weights[d] = _ramp_weights(fast_gradient[d], low, high) * inside
    scratch = np.empty(shape, dtype=np.float32)

    def forward(x):              # W G P x
        out = np.empty((3,) + shape, dtype=np.float32)
        forward_differences(_convolve(x, cone, shape), out, inv_h)
        out *= weights
        return out

    def adjoint(y):              # P G^T W y = -P div(W y)
        div = np.empty(shape, dtype=np.float32)
        backward_divergence(y * weights, div, inv_h, scratch)
        return -_convolve(div, cone, shape)

    target = forward_differences(chi_lsqr, np.empty((3,) + shape, np.float32), inv_h) * weights
    artifact = lsqr(forward, adjoint, target, max_iter=max_iter, tol=tol, report=counter)
    return _convolve(artifact, cone, shape) * inside
