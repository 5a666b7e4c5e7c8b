"""Total-variation dipole inversion by ADMM with a closed-form k-space update.

Solves

    min_chi  0.5 ||M (D chi - f)||^2 + lam sum_n |(G chi)[n]|

with isotropic TV (the Euclidean norm of the gradient at each voxel), ``G``
the circulant forward differences of :mod:`.gradient` and ``M`` the mask.
ADMM splits ``z = G chi`` with scaled dual ``u`` (Goldstein & Osher 2009;
Bilgic et al. 2014):

    chi <- IFFT( (D FFT(g) + rho E^H FFT(z - u)) / (D^2 + rho sum_d |E_d|^2) )
    z   <- shrink(G chi + u, lam / rho)
    u   <- u + G chi - z

The denominator is built once. After the update ``u`` is the projection of
``G chi + u`` onto the ball of radius ``lam / rho``, so ``z`` is never stored.

``g`` is the field that the x-update fits on the whole padded grid:

- ``free_exterior=True`` (default): the field outside the mask is unknown.
  A second split ``y = D chi`` with unit penalty (the weighted-data ADMM of
  Milovic et al. 2018, with binary weights ``M``) reduces exactly to
  ``g = f`` inside the mask and ``g = D chi`` (the current model's field)
  outside. Sources outside the brain may then explain the field near its
  edge, instead of being forced to produce none. Two real FFT pairs per
  iteration.
- ``free_exterior=False``: ``g = f`` inside and 0 outside, the closed form of
  Bilgic et al. (2014). One FFT pair per iteration, but the forced zero field
  around the brain biases the cortex and, through the whole-brain
  reference, every regional mean (1 mm head model, 0.002 ppm noise: brain
  NRMSE 34 % against 26 %, worst deep-grey-matter error 0.014 against
  0.005 ppm).
"""

import numpy as np

from .. import fourier
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..validation import as_mask, check_count, check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import gradient_norm_squared, shrink_gradient_dual
from .tv_weight import field_noise_sd, tv_weight_from_noise

#: TV weight of the bare function in ppm mm (field in ppm, gradient in ppm/mm).
#: The pipeline, ``qsm`` and Slicer default to ``lam="auto"`` instead (from the
#: measured noise, :mod:`.tv_weight`). Published
#: weights for ppm fields at about 1 mm run from 2.5e-4 (QSMxT's use of
#: QSM.jl) to 1e-3 (QSM.jl's default), both with anisotropic TV, whose
#: norm is 1 to 1.7 times the isotropic norm used here. On the 1 mm head
#: model the NRMSE optimum is 1e-4 at 0.002 ppm noise and 5e-4 at 0.005 ppm;
#: 3e-4 stays within 3 % NRMSE of both and leaves in vivo model errors
#: (background remnants, anisotropy) some room.
DEFAULT_TV_LAMBDA = 3e-4
#: Default ADMM penalty in mm^2. It changes the speed, not the solution: at
#: 1 mm, 0.005-0.02 reach the final accuracy in 10-30 iterations for TV
#: weights from 1e-4 to 1e-3 (QSM.jl's 100 lam is 3 times slower here).
DEFAULT_TV_RHO = 0.01
DEFAULT_TV_MAX_ITER = 100
#: Stop at 0.5 % relative change inside the mask (FANSI stops at 1 %).
DEFAULT_TV_TOL = 5e-3


def tv_admm(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), lam=DEFAULT_TV_LAMBDA, noise_sd_ppm=None,
            rho=DEFAULT_TV_RHO, max_iter=DEFAULT_TV_MAX_ITER, tol=DEFAULT_TV_TOL, callback=None,
            pad_voxels=DEFAULT_PAD_VOXELS, free_exterior=True, data_mask=None):
    """Susceptibility by total-variation regularised inversion (ADMM).

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local (background-free) field in ppm of B0.
    mask : ndarray, shape (X, Y, Z)
        Region where the field is valid (brain mask). Values outside it are
        ignored.
    voxel_size : sequence of 3 float
        Voxel size in mm. The gradient is in ppm/mm (differences divided by
        the voxel size), so ``lam`` is in ppm mm and ``rho`` in mm^2 whatever
        the resolution or anisotropy; at 1 mm isotropic they equal the
        per-voxel values of the literature.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    lam : float or "auto", optional
        TV weight in ppm mm; larger is smoother and flatter. ``"auto"`` (the
        pipeline's default): from the field's noise SD by
        :func:`~qsmlib.inversion.tv_weight.tv_weight_from_noise`.
    noise_sd_ppm : float, optional
        Typical noise SD of the field (ppm) for ``lam="auto"``, for example
        the median of the echo fit's field SD. Default: measured from the
        field itself (:func:`~qsmlib.inversion.tv_weight.field_noise_sd`).
    rho : float, optional
        ADMM penalty in mm^2. It sets the speed of convergence, not the
        solution: the first iterate is the closed-form gradient-L2 solution
        (:func:`qsmlib.inversion.tikhonov`) with ``lam = rho``.
    max_iter : int, optional
        Iteration limit.
    tol : float, optional
        Stop when ``||chi_k - chi_{k-1}|| / ||chi_k||`` inside the mask falls
        below this.
    callback : callable, optional
        ``callback(iteration, relative_change)`` after every iteration
        (iteration counted from 1). It may raise :class:`qsmlib.Cancelled`
        to stop; the exception propagates.
    pad_voxels : int or sequence of 3 int, optional
        Zero margin added to the mask's bounding box (per axis) before
        rounding up to a fast FFT size.
    free_exterior : bool, optional
        Fit the field inside the mask only (default; two FFT pairs per
        iteration), or take it as zero outside the mask (the one-FFT-pair
        closed form of Bilgic et al.; faster per iteration, less accurate).
    data_mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels of ``mask`` whose field is trusted (default: all of them).
        With ``free_exterior`` the others are fitted like the exterior: the
        map is still estimated there, but their field does not pull on it.
        Use it for voxels without signal (calcification, haemorrhage, large
        veins at late echoes) whose field estimate is noise.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. The k = 0 term is not
        determined and is set to zero: reference the map before reading values.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched or empty mask, an invalid
        voxel size, B0 direction, padding, ``lam``, ``rho``, ``max_iter``,
        ``tol`` or ``callback``.
    Cancelled
        When raised by ``callback``.

    References
    ----------
    .. [1] Bilgic B, Fan AP, Polimeni JR, Cauley SF, Bianciardi M,
       Adalsteinsson E, Wald LL, Setsompop K. Fast quantitative susceptibility
       mapping with L1-regularization and automatic parameter selection.
       Magn Reson Med 2014;72:1444-1459.
    .. [2] Goldstein T, Osher S. The split Bregman method for L1-regularized
       problems. SIAM J Imaging Sci 2009;2:323-343.
    .. [3] Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast
       nonlinear susceptibility inversion with variational regularization.
       Magn Reson Med 2018;80:814-821.
    """
    if isinstance(lam, str) and lam == "auto":
        if noise_sd_ppm is None:
            noise_sd_ppm = field_noise_sd(field_ppm, mask)
        lam = tv_weight_from_noise(noise_sd_ppm, voxel_size)
    lam = check_number(lam, "lam", strict=True)
    rho = check_number(rho, "rho", strict=True)
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    if callback is not None and not callable(callback):
        raise QSMInputError(f"callback: {callback!r} is not callable; "
                            "give a function callback(iteration, residual) or None")
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    trusted = grid.inside()
    if data_mask is not None:
        if not free_exterior:
            raise QSMInputError("data_mask: needs free_exterior=True (untrusted voxels are fitted "
                                "like the exterior)")
        trusted &= grid.on_grid(as_mask(data_mask, grid.full_shape, name="data_mask"))
        grid.field[~trusted] = 0
    chi = _solve(grid, lam, rho, max_iter, tol, callback, bool(free_exterior), trusted)
    return grid.to_image(chi)


def _solve(grid, lam, rho, max_iter, tol, callback, free_exterior, trusted):
    shape = grid.shape
    spacing = grid.voxel_size
    if len(set(spacing)) == 1:
        # Isotropic voxels: run on unit differences, z' = h z, which saves the
        # scaling passes; lam and rho are rescaled so the iterates are identical.
        h = spacing[0]
        lam, rho, spacing = lam / h, rho / (h * h), (1.0, 1.0, 1.0)
    inv_h = [1.0 / s for s in spacing]

    kernel = dipole_kernel(shape, grid.voxel_size, grid.b0_dir)
    denominator = kernel * kernel + np.float32(rho) * gradient_norm_squared(shape, spacing)
    denominator[0, 0, 0] = 1.0  # both numerator terms vanish at k = 0
    # chi_hat = field_gain * FFT(f) - penalty_gain * FFT(div(z - u)),
    # since E^H FFT(w) = -FFT(div w) for the circulant differences.
    field_gain = (kernel / denominator).astype(np.float32)
    penalty_gain = (np.float32(rho) / denominator).astype(np.float32)
    del denominator
    data_term = fourier.rfft(grid.field)
    data_term *= field_gain
    inside = grid.inside()
    in_mask = inside.astype(np.float32)
    model_field = None

    threshold = np.float32(lam / rho)
    dual = np.zeros((3,) + shape, dtype=np.float32)      # u
    work = np.empty((3,) + shape, dtype=np.float32)      # z - u
    divergence = np.empty(shape, dtype=np.float32)       # div(z - u)
    scratch = np.empty(shape, dtype=np.float32)

    chi_prev = None
    for iteration in range(1, max_iter + 1):
        if chi_prev is None:
            spectrum = data_term.copy()
        else:
            if free_exterior:
                # measured field inside the mask, the current model's field outside
                data_term = fourier.rfft(model_field)
                data_term *= field_gain
            spectrum = fourier.rfft(divergence)
            spectrum *= penalty_gain
            np.subtract(data_term, spectrum, out=spectrum)
        chi = fourier.irfft(spectrum, shape).astype(np.float32, copy=False)

        change = _relative_change(chi, chi_prev, in_mask, scratch)
        if callback is not None:
            callback(iteration, change)
        if change < tol or iteration == max_iter:
            break
        chi_prev = chi

        if free_exterior:
            spectrum *= kernel
            model_field = fourier.irfft(spectrum, shape).astype(np.float32, copy=False)
            np.copyto(model_field, grid.field, where=trusted)
        del spectrum

        # v = G chi + u; u <- projection of v on the lam/rho ball; work <- z - u = v - 2u, and its divergence
        shrink_gradient_dual(chi, dual, threshold, inv_h, work, divergence, scratch)
    return chi


def _relative_change(chi, chi_prev, weight, scratch):
    """``||chi - chi_prev|| / ||chi||`` over the voxels where ``weight`` (0/1 float32) is 1."""
    flat_w = weight.ravel()
    np.multiply(chi, chi, out=scratch)
    norm = float(np.sqrt(np.dot(scratch.ravel(), flat_w)))
    if chi_prev is None:
        return 1.0
    np.subtract(chi, chi_prev, out=scratch)
    np.multiply(scratch, scratch, out=scratch)
    change = float(np.sqrt(np.dot(scratch.ravel(), flat_w)))
    return change / norm if norm > 0 else 0.0
