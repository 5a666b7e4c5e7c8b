"""Morphology enabled dipole inversion (MEDI-L1), nonlinear data term, optional MEDI+0.

Liu et al. (2012, 2013) minimise

    E(chi) = sum_n w_n^2 (1 - cos(r ((D chi)_n - f_n))) / r^2
             + lam sum_n M_n |(G chi)[n]|
             + lam_csf / 2 ||M_csf (chi - mean_csf(chi))||^2          (MEDI+0 only)

The first term is ``0.5 ||W (exp(i r D chi) - exp(i r f))||^2 / r^2``, the
complex-exponential fit of the phase ``r f`` (``r`` = rad_per_ppm); dividing by
``r^2`` keeps the units of the linear problem, so that ``lam`` is in ppm mm
like the TV weight of :func:`~qsmlib.inversion.tv_admm`. ``M`` is 0 on the
edges of the magnitude image and 1 elsewhere (:func:`magnitude_edges`): the
map may change where the anatomy does, and is smooth elsewhere. The MEDI+0
term (Liu Z et al. 2018) pulls the cerebrospinal fluid towards a uniform value,
which makes it a consistent zero reference.

Solver, as in the papers: Gauss-Newton. At ``chi_k`` the data term is
linearised, ``|(G chi)[n]|`` is replaced by ``|G chi|^2 / (2 sqrt(|G chi_k|^2 + eps^2))``
(lagged diffusivity), and the update ``dx`` solves

    (D W^2 D + lam G^T P_k G + lam_csf C) dx = -grad E(chi_k),   P_k = M / sqrt(|G chi_k|^2 + eps^2)

with ``C x = M_csf (x - mean_csf(x))``, by conjugate gradients. The map is
estimated on the whole padded grid, with no data outside the mask (free
exterior). Two changes from the papers:

- The conjugate gradients are preconditioned with the circulant approximation
  ``D^2 + lam p G^T G`` (``p`` the median of ``P_k`` in the mask), one FFT pair;
  on the ellipsoid phantom this halves the work for the same accuracy.
- The first Gauss-Newton steps fit the (unwrapped) field linearly, until the
  relative update falls below 0.1; then the complex-exponential term takes
  over. Started from ``chi = 0``, the periodic term pulls the field of a strong
  source (beyond ``pi / r``: 0.2 ppm at 3 T and TE = 20 ms) towards the wrong
  whole turn: on the 1 mm head model (no magnitude edges) the -3.3 ppm
  calcification comes out at -0.24 ppm and the brain NRMSE rises from 27 % to 40 %. ``linear_start=False``
  restores the papers' start, which ignores whole-turn errors in scattered
  voxels of a badly unwrapped field.

Units of ``lam``: the MEDI toolbox weighs ``lambda_MEDI ||W(...)||^2 + ||M G chi_rad||_1``
with the map in radians of phase, ``chi_rad = r_MEDI chi``. Dividing by
``2 lambda_MEDI r_MEDI^2`` gives ``lam = 1 / (2 lambda_MEDI r_MEDI)`` in ppm mm here: the
published ``lambda_MEDI = 1000`` is ``lam = 1.6e-4`` at ``r_MEDI = 3.2`` rad/ppm (echo
spacing 4 ms at 3 T) and ``3.1e-5`` at 16 rad/ppm (TE 20 ms). Likewise
MEDI+0's ``lambda_CSF = 100`` is ``lam_csf = lambda_CSF / lambda_MEDI = 0.1`` here.
The toolbox's L1 norm is anisotropic (per gradient component) and its edge
mask per component; here both are per voxel (isotropic), as in tv_admm.
"""

import numpy as np

from .. import fourier
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..solvers import conjugate_gradient
from ..validation import as_mask, as_volume, as_voxel_size, check_count, check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import backward_divergence, forward_differences, gradient_norm_squared
from .nltv import DEFAULT_RAD_PER_PPM, _check_callback, _check_rad_per_ppm, _squared_weights

#: Default L1 weight in ppm mm (see the module docstring for the conversion
#: from the MEDI toolbox's lambda). On the 1 mm head model (SNR-100 magnitude
#: edges) the brain NRMSE optimum is 3e-4 or less at 0.002 ppm field noise
#: (22.1 %) and 1e-3 at 0.005 ppm (33.8 %); 5e-4 gives 24.1 % and 35.7 %, with
#: the worst deep-grey-matter error 0.005 ppm at both (tv_admm: 26.7 %, 38.0 %).
#: Larger than tv_admm's 3e-4 because the edge voxels (30 %) are not penalised.
DEFAULT_MEDI_LAMBDA = 5e-4
#: Fraction of the mask voxels treated as magnitude edges (Liu J et al. 2012 use
#: the threshold that leaves 30 % of the brain voxels as edges).
DEFAULT_EDGE_FRACTION = 0.3
#: MEDI+0 weight: lambda_CSF / lambda_MEDI = 100 / 1000 of Liu Z et al. (2018).
DEFAULT_LAM_CSF = 0.1
#: Smoothing of the L1 norm, in ppm/mm. Below it the penalty is quadratic
#: (weight lam / epsilon), so it must sit below the gradients of tissue
#: texture. On the 1 mm head 1e-4 and 3e-4 give brain NRMSEs within 0.2 %
#: (3e-5: 0.6 % worse at the same iteration count); 3e-4 needs the fewest
#: conjugate-gradient steps.
DEFAULT_EPSILON = 3e-4
#: Gauss-Newton iterations and their stopping rule (relative update ||dx|| / ||chi||),
#: as in the MEDI toolbox (10 and 0.1 there).
DEFAULT_MEDI_MAX_ITER = 10
DEFAULT_MEDI_TOL = 0.02
#: Inner conjugate-gradient limits (relative residual).
DEFAULT_CG_MAX_ITER = 30
DEFAULT_CG_TOL = 0.01
#: Relative update below which the Gauss-Newton steps switch from the linear
#: fit of the (unwrapped) field to the complex-exponential fit.
LINEAR_START_TOL = 0.1


def medi(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), magnitude=None, weights=None,
         lam=DEFAULT_MEDI_LAMBDA, rad_per_ppm=DEFAULT_RAD_PER_PPM,
         edge_fraction=DEFAULT_EDGE_FRACTION, csf_mask=None, lam_csf=DEFAULT_LAM_CSF,
         epsilon=DEFAULT_EPSILON, max_iter=DEFAULT_MEDI_MAX_ITER, tol=DEFAULT_MEDI_TOL,
         cg_max_iter=DEFAULT_CG_MAX_ITER, cg_tol=DEFAULT_CG_TOL, linear_start=True,
         callback=None, pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility by morphology enabled dipole inversion (MEDI-L1, and MEDI+0 with a CSF mask).

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local field in ppm of B0 (only ``exp(i rad_per_ppm field_ppm)`` is fitted).
    mask : ndarray, shape (X, Y, Z)
        Region where the field is valid (brain mask).
    voxel_size : sequence of 3 float
        Voxel size in mm (the gradient is in ppm/mm).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    magnitude : ndarray, shape (X, Y, Z), optional
        Magnitude image whose edges (:func:`magnitude_edges`) are left out of the
        L1 penalty. Without it every voxel is penalised (a nonlinear TV).
    weights : ndarray, shape (X, Y, Z), optional
        Non-negative data weights ``W`` (1 / field SD, or the magnitude),
        normalised to median 1 in the mask. Default: 1 in the mask.
    lam : float, optional
        L1 weight in ppm mm. The MEDI toolbox's ``lambda`` converts as
        ``lam = 1 / (2 lambda r)`` with ``r`` its phase scale in rad/ppm.
    rad_per_ppm : float, optional
        Phase in radians of a 1 ppm field (``2 pi gamma B0 TE``; default 16.05,
        3 T and 20 ms). The pipeline sets it from the acquisition.
    edge_fraction : float, optional
        Fraction of mask voxels taken as edges, in [0, 1).
    csf_mask : ndarray, shape (X, Y, Z), optional
        Cerebrospinal fluid voxels: adds the MEDI+0 term, which makes the CSF
        uniform (a zero reference).
    lam_csf : float, optional
        MEDI+0 weight (dimensionless, relative to the data term).
    epsilon : float, optional
        Smoothing of the L1 norm in ppm/mm.
    max_iter : int, optional
        Gauss-Newton iterations.
    tol : float, optional
        Stop when ``||dx|| / ||chi||`` inside the mask falls below this.
    cg_max_iter : int, optional
        Conjugate-gradient iterations per Gauss-Newton step.
    cg_tol : float, optional
        Relative residual at which the conjugate gradients stop.
    linear_start : bool, optional
        Fit the field linearly until the map settles, then the complex
        exponential (default; needs an unwrapped field, recovers strong
        sources), or fit the complex exponential from ``chi = 0`` as in the
        papers (ignores whole-turn errors in scattered voxels, but misses
        sources whose field exceeds ``pi / rad_per_ppm``).
    callback : callable, optional
        ``callback(iteration, relative_update)`` after every Gauss-Newton step;
        it may raise :class:`qsmlib.Cancelled`, which propagates.
    pad_voxels : int or sequence of 3 int, optional
        Zero margin around the mask's bounding box before rounding up to a
        fast FFT size.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. Without ``csf_mask`` the
        k = 0 term is not determined: reference the map before reading values.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched or empty mask, an invalid
        voxel size, B0 direction, padding, magnitude, weights, CSF mask, or any
        invalid number, count or callback.
    Cancelled
        When raised by ``callback``.

    References
    ----------
    .. [1] Liu J, Liu T, de Rochefort L, Ledoux J, Khalidov I, Chen W,
       Tsiouris AJ, Wisnieff C, Spincemaille P, Prince MR, Wang Y. Morphology
       enabled dipole inversion for quantitative susceptibility mapping using
       structural consistency between the magnitude image and the
       susceptibility map. NeuroImage 2012;59:2560-2568.
    .. [2] Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear
       formulation of the magnetic field to source relationship for robust
       quantitative susceptibility mapping. Magn Reson Med 2013;69:467-476.
    .. [3] Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: Morphology
       enabled dipole inversion with automatic uniform cerebrospinal fluid
       zero reference for quantitative susceptibility mapping. Magn Reson Med
       2018;79:2795-2803.
    """
    lam = check_number(lam, "lam", strict=True)
    rad_per_ppm = _check_rad_per_ppm(rad_per_ppm)
    edge_fraction = check_number(edge_fraction, "edge_fraction", maximum=0.99)
    lam_csf = check_number(lam_csf, "lam_csf")
    epsilon = check_number(epsilon, "epsilon", strict=True, unit=" ppm/mm")
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    cg_max_iter = check_count(cg_max_iter, "cg_max_iter")
    cg_tol = check_number(cg_tol, "cg_tol", strict=True, maximum=1.0)
    _check_callback(callback)
    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    w2 = _squared_weights(grid, weights)
    penalised = np.ones(grid.shape, dtype=np.float32)
    if magnitude is not None:
        edges = magnitude_edges(magnitude, grid.mask, grid.voxel_size, edge_fraction=edge_fraction)
        penalised[grid.on_grid(edges)] = 0
    csf = None
    if csf_mask is not None:
        csf = grid.on_grid(as_mask(csf_mask, grid.full_shape, name="csf_mask"))
        if not csf.any():
            raise QSMInputError("csf_mask: no CSF voxel inside the brain mask; give a CSF mask "
                                "that overlaps the brain mask, or none")
    problem = _Problem(grid, w2, penalised, csf, lam, lam_csf, rad_per_ppm, epsilon)
    chi = np.zeros(grid.shape, dtype=np.float32)
    in_mask = grid.inside()
    linear = bool(linear_start)
    for iteration in range(1, max_iter + 1):
        step = problem.gauss_newton_step(chi, cg_max_iter, cg_tol, linear)
        chi += step
        norm = float(np.linalg.norm(chi[in_mask]))
        change = float(np.linalg.norm(step[in_mask])) / norm if norm > 0 else 0.0
        if callback is not None:
            callback(iteration, change)
        if change < tol and not linear:
            break
        # the unwrapped field is fitted linearly until the map has settled, so that
        # the periodic data term then starts on the right branch near strong sources
        linear = linear and change >= LINEAR_START_TOL
    return grid.to_image(chi)


def magnitude_edges(magnitude, mask, voxel_size, *, edge_fraction=DEFAULT_EDGE_FRACTION):
    """The voxels of ``mask`` on edges of the magnitude image (MEDI's morphology mask).

    The magnitude gradient is taken with forward differences in units per mm,
    counting only differences between two mask voxels (the mask's own border is
    not an edge). A voxel is an edge when the norm of its gradient exceeds the
    ``1 - edge_fraction`` quantile over the mask, so that ``edge_fraction`` of
    the mask voxels are edges; fewer where the magnitude is flat (voxels with
    zero gradient are never edges).

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z)
        Magnitude image (any scale).
    mask : ndarray, shape (X, Y, Z)
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    edge_fraction : float, optional
        Fraction of mask voxels to flag, in [0, 1).

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        True on edges (where MEDI does not penalise the susceptibility gradient).

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite magnitude, a mismatched or empty mask, an
        invalid voxel size or edge fraction.
    """
    mag = as_volume(magnitude, "magnitude")
    if mag.shape != np.shape(mask):
        raise QSMInputError(f"magnitude: shape {mag.shape} does not match the mask's "
                            f"{np.shape(mask)}; give the magnitude on the same voxel grid")
    mask = as_mask(mask, mag.shape)
    spacing = as_voxel_size(voxel_size)
    edge_fraction = check_number(edge_fraction, "edge_fraction", maximum=0.99)
    inv_h = [1.0 / h for h in spacing]
    grad = np.empty((3,) + mag.shape, dtype=np.float32)
    forward_differences(np.where(mask, mag, np.float32(0)), grad, inv_h)
    norm = np.zeros(mag.shape, dtype=np.float32)
    for d in range(3):
        both = mask & np.roll(mask, -1, axis=d)   # the forward neighbour is in the mask too
        norm += np.where(both, grad[d], np.float32(0)) ** 2
    np.sqrt(norm, out=norm)
    values = norm[mask]
    if edge_fraction == 0 or not np.any(values > 0):
        return np.zeros(mag.shape, dtype=bool)
    threshold = np.quantile(values, 1.0 - edge_fraction)
    return mask & (norm > threshold)


class _Problem:
    """The MEDI objective on the padded grid, its Gauss-Newton system and a preconditioned CG."""

    def __init__(self, grid, w2, penalised, csf, lam, lam_csf, r, epsilon):
        self.shape = grid.shape
        self.inv_h = [1.0 / s for s in grid.voxel_size]
        self.kernel = dipole_kernel(grid.shape, grid.voxel_size, grid.b0_dir)
        self.e2 = gradient_norm_squared(grid.shape, grid.voxel_size)
        self.w2 = w2
        self.fitted = np.flatnonzero(w2 > 0)
        self.w2_fit = w2.ravel()[self.fitted]
        self.field_fit = grid.field.ravel()[self.fitted]
        self.penalised = penalised
        self.csf = csf
        self.lam = np.float32(lam)
        self.lam_csf = np.float32(lam_csf) if csf is not None else np.float32(0)
        self.r = np.float32(r)
        self.eps2 = np.float32(epsilon * epsilon)
        self.inside = grid.inside()
        self.grad = np.empty((3,) + self.shape, dtype=np.float32)
        self.div = np.empty(self.shape, dtype=np.float32)
        self.scratch = np.empty(self.shape, dtype=np.float32)

    # --- operators
    def dipole(self, x):
        spectrum = fourier.rfft(x)
        spectrum *= self.kernel
        return fourier.irfft(spectrum, self.shape).astype(np.float32, copy=False)

    def regulariser(self, x, diffusivity, out):
        """``lam G^T P G x = -lam div(P G x)`` into ``out``."""
        forward_differences(x, self.grad, self.inv_h)
        self.grad *= diffusivity
        backward_divergence(self.grad, out, self.inv_h, self.scratch)
        out *= -self.lam
        return out

    def add_csf(self, x, out):
        if self.csf is not None and self.lam_csf > 0:
            values = x[self.csf]
            out[self.csf] += self.lam_csf * (values - values.mean(dtype=np.float64))
        return out

    def normal(self, x, diffusivity):
        """The Gauss-Newton matrix ``D W^2 D + lam G^T P G + lam_csf C`` applied to ``x``."""
        field = self.dipole(x)
        field *= self.w2
        out = self.dipole(field)
        out += self.regulariser(x, diffusivity, self.div)
        return self.add_csf(x, out)

    # --- one Gauss-Newton step
    def gauss_newton_step(self, chi, cg_max_iter, cg_tol, linear):
        # data gradient: D W^2 sin(r (D chi - f)) / r, or D W^2 (D chi - f) when linear
        model = self.dipole(chi)
        residual = np.zeros(self.shape, dtype=np.float32)
        misfit = model.ravel()[self.fitted] - self.field_fit
        if not linear:
            misfit = np.sin(self.r * misfit) / self.r
        residual.ravel()[self.fitted] = self.w2_fit * misfit
        gradient = self.dipole(residual)
        del model, residual, misfit

        # lagged diffusivity P = M / sqrt(|G chi|^2 + eps^2)
        forward_differences(chi, self.grad, self.inv_h)
        diffusivity = np.full(self.shape, self.eps2, dtype=np.float32)
        for d in range(3):
            np.multiply(self.grad[d], self.grad[d], out=self.scratch)
            diffusivity += self.scratch
        np.sqrt(diffusivity, out=diffusivity)
        np.divide(self.penalised, diffusivity, out=diffusivity)
        gradient += self.regulariser(chi, diffusivity, self.div)
        self.add_csf(chi, gradient)
        np.negative(gradient, out=gradient)

        typical = float(np.median(diffusivity[self.inside & (self.penalised > 0)])) \
            if np.any(self.penalised[self.inside] > 0) else 0.0
        precondition = self._preconditioner(typical)
        return conjugate_gradient(lambda x: self.normal(x, diffusivity), np.zeros_like(gradient), gradient,
                                  max_iter=cg_max_iter, tol=cg_tol, precondition=precondition)

    def _preconditioner(self, typical_diffusivity):
        # circulant model of the normal matrix: unit weights, the median diffusivity;
        # the floor keeps k = 0 (not determined by the data) bounded.
        denominator = self.kernel * self.kernel + np.float32(self.lam * typical_diffusivity) * self.e2
        floor = np.float32(1e-3 * float(denominator.max()))
        inverse = (1.0 / np.maximum(denominator, floor)).astype(np.float32)

        def apply(x):
            spectrum = fourier.rfft(x)
            spectrum *= inverse
            return fourier.irfft(spectrum, self.shape).astype(np.float32, copy=False)
        return apply
