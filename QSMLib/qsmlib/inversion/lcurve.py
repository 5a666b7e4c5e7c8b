"""Automatic choice of the regularisation parameter of the one-parameter inversions (L-curve, discrepancy, GCV).

For a family of regularised solutions chi(p), the L-curve plots the size of
the solution (or of the penalised quantity) against the size of the data
misfit, both on logarithmic axes (Hansen 1992). Too little regularisation
gives a near-vertical branch (the misfit barely falls while noise inflates
the solution), too much a near-horizontal one (the solution shrinks while
the misfit grows). The parameter at the corner, the point of maximum
curvature, balances the two.

The direct inversions are diagonal in k-space, so both norms of every
candidate are evaluated from one FFT of the field, without inverse FFTs:

- ``tikhonov`` (``lam``): misfit ``||D chi - f||`` and penalty ``||G chi||``,
  the selection of Bilgic et al. (2014);
- ``tkd`` and ``tsvd`` (``threshold``): misfit ``||D chi - f||`` and solution
  norm ``||chi||``.

Norms are taken over the padded working grid on which the methods solve
their problem (the field is zero outside the mask there). Log axes make the
curvature independent of units and of any constant factor in the norms.

``rule="discrepancy"`` applies Morozov's discrepancy principle instead: the
most regularised candidate whose misfit inside the mask, ``||M (D chi - f)||``
with the map as the method returns it (zero outside the mask), does not
exceed the noise, ``sqrt(sum_mask sigma^2)``, with ``sigma`` the field's noise
SD (the echo fit gives it). It needs three FFTs per candidate but tracks the
noise level: on the ellipsoid test phantom it stays within 20 % of the
RMSE-optimal choice from 0.002 to 0.02 ppm of noise, where the L-curve corner
does not.

``rule="gcv"`` applies generalised cross-validation (Golub, Heath & Wahba
1979): the candidate that minimises ``n ||M (D chi - f)||^2 / (n - t)^2``,
with ``n`` the voxels in the mask and ``t`` the trace of the operator that
maps the field to its prediction ``M D chi``. It needs no noise level: the
misfit that the data cannot explain, noise and model error alike, sets the
weight. The trace is taken as ``n / N`` times the trace of the unmasked
filter ``sum_k D(k) H(k)`` on the ``N``-voxel working grid (the mask keeps
that share of every mode's diagonal on average); on the 1 mm realistic head
it is within 1.5 % of a random-probe (Hutchinson) estimate of the masked
operator's trace at every candidate.

``rule="auto"`` is each method's rule in :data:`AUTO_RULES`.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import fourier
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..validation import check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .gradient import gradient_norm_squared

#: Which keyword of each method ``"auto"`` applies to.
AUTO_PARAMETERS = {"tikhonov": "lam", "tkd": "threshold", "tsvd": "threshold"}

#: The rule ``"auto"`` stands for, per method. GCV for Tikhonov: within 1.9 NRMSE points of the
#: truth-tuned weight on every row of the realistic head, where the L-curve corner falls 13 points
#: behind at 0.64 mm (Testing/benchmarks/regularisation_rules.py). The L-curve for the thresholds:
#: GCV truncates TKD far past its best threshold there (0.42 against 0.24 at 1 mm), with a larger
#: deep grey matter bias (0.053 against 0.034 ppm).
AUTO_RULES = {"tikhonov": "gcv", "tkd": "lcurve", "tsvd": "lcurve"}

#: The rules of a parameter choice, by name: ``rule`` here, or the parameter's value in the pipeline.
PARAMETER_RULES = ("auto", "lcurve", "discrepancy", "gcv")

#: Default candidates. Tikhonov's ``lam`` (mm^2) spans four decades around the
#: default 0.01; thresholds span the useful range of TKD/TSVD (below 0.02 the
#: division amplifies noise by more than 50, above 0.5 most of k-space is
#: altered).
DEFAULT_VALUES = {
    "tikhonov": tuple(float(v) for v in np.geomspace(1e-4, 1.0, 25)),
    "tkd": tuple(float(v) for v in np.geomspace(0.02, 0.5, 25)),
    "tsvd": tuple(float(v) for v in np.geomspace(0.02, 0.5, 25)),
}


@dataclass(frozen=True)
class RegularisationChoice:
    """The outcome of an automatic parameter choice.

    Attributes
    ----------
    method : str
        Inversion method (``"tikhonov"``, ``"tkd"`` or ``"tsvd"``).
    parameter : str
        Name of the keyword chosen (``"lam"`` or ``"threshold"``).
    value : float
        The chosen value: pass it as ``method(..., **{parameter: value})``.
    values, residual_norms, solution_norms, curvature : tuple of float
        The L-curve: candidates in increasing order, their data misfit and
        solution (or penalty) norms, and the signed curvature of the log-log
        curve at each candidate (0 at both ends).
    rule : str
        ``"lcurve"``, ``"discrepancy"`` (then ``curvature`` is empty and
        ``target_residual`` is the noise norm the misfit was held under) or
        ``"gcv"`` (then ``gcv_scores`` holds the GCV function per candidate).
    target_residual : float or None
    gcv_scores : tuple of float
    """

    method: str
    parameter: str
    value: float
    values: tuple
    residual_norms: tuple
    solution_norms: tuple
    curvature: tuple
    rule: str = "lcurve"
    target_residual: Optional[float] = None
    gcv_scores: tuple = ()

    def as_record(self):
        """A JSON-ready dict for provenance records."""
        return {"rule": self.rule, "method": self.method, "parameter": self.parameter,
                "value": self.value, "values": list(self.values),
                "residual_norms": list(self.residual_norms),
                "solution_norms": list(self.solution_norms), "curvature": list(self.curvature),
                "target_residual": self.target_residual, "gcv_scores": list(self.gcv_scores)}


def lcurve_curvature(residual_norms, solution_norms):
    """Signed curvature of the log-log L-curve at each point (0 at both ends).

    The curvature at point ``i`` is that of the circle through points
    ``i - 1``, ``i`` and ``i + 1`` of ``(log residual, log solution)``. Points
    must be ordered by increasing regularisation (residual growing, solution
    shrinking); the corner of an L then has positive curvature.

    Parameters
    ----------
    residual_norms, solution_norms : sequence of float
        Positive norms, one per candidate, at least 3.

    Returns
    -------
    ndarray of float64
    """
    x, y = _log_points(residual_norms, solution_norms)
    kappa = np.zeros(x.size)
    ax, ay = x[1:-1] - x[:-2], y[1:-1] - y[:-2]        # from i-1 to i
    bx, by = x[2:] - x[1:-1], y[2:] - y[1:-1]          # from i to i+1
    cx, cy = x[2:] - x[:-2], y[2:] - y[:-2]            # from i-1 to i+1
    cross = ax * by - ay * bx
    lengths = np.hypot(ax, ay) * np.hypot(bx, by) * np.hypot(cx, cy)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa[1:-1] = np.where(lengths > 0, 2.0 * cross / lengths, 0.0)
    return kappa


def lcurve_corner(residual_norms, solution_norms):
    """Index of the L-curve corner: the interior point of sharpest bend.

    The log-log curve of a square, Fourier-diagonal problem such as the dipole
    inversion need not bend the way of Hansen's textbook L (down, then right):
    its residual has no noise floor, so its corner is where the residual
    saturates and the curve turns down instead. The corner is therefore taken
    as the maximum of the curvature signed by the curve's overall turning
    direction (the sign of its total turning angle), which is Hansen's
    maximum curvature for a textbook L and the sharpest bend for the mirrored
    shape.

    Parameters
    ----------
    residual_norms, solution_norms : sequence of float
        Positive norms ordered by increasing regularisation, at least 3.

    Returns
    -------
    int

    Raises
    ------
    QSMInputError
        On fewer than 3 points, non-positive or non-finite norms, or a
        straight curve (no bend among the candidates): widen the range.
    """
    x, y = _log_points(residual_norms, solution_norms)
    kappa = lcurve_curvature(residual_norms, solution_norms)
    heading = np.unwrap(np.arctan2(np.diff(y), np.diff(x)))
    turning = heading[-1] - heading[0]
    interior = kappa[1:-1] * np.sign(turning)
    best = int(np.argmax(interior)) + 1
    if not interior[best - 1] > 0:
        raise QSMInputError("L-curve: no corner among the candidates (the curve does not bend "
                            "over this range); give a wider range of values")
    return best


def lcurve_choice(residual_norms, solution_norms, parameters):
    """The parameter at the corner of the L-curve (maximum log-log curvature; Hansen 1992).

    Parameters
    ----------
    residual_norms : sequence of float
        Data misfit ``||A x(p) - b||`` of each candidate.
    solution_norms : sequence of float
        Solution (semi)norm ``||L x(p)||`` of each candidate.
    parameters : sequence of float
        The candidates ``p``, in any order; larger means more regularisation.

    Returns
    -------
    float
        The candidate at maximum curvature.

    Raises
    ------
    QSMInputError
        On mismatched lengths, fewer than 3 candidates, repeated candidates,
        invalid norms, or no corner.

    References
    ----------
    .. [1] Hansen PC. Analysis of discrete ill-posed problems by means of the
       L-curve. SIAM Rev 1992;34:561-580.
    """
    p = np.asarray(parameters, dtype=np.float64).ravel()
    r = np.asarray(residual_norms, dtype=np.float64).ravel()
    s = np.asarray(solution_norms, dtype=np.float64).ravel()
    if not (p.size == r.size == s.size):
        raise QSMInputError(f"L-curve: {p.size} parameters, {r.size} residual norms and {s.size} "
                            "solution norms; give one norm of each kind per parameter")
    if not np.all(np.isfinite(p)):
        raise QSMInputError("L-curve: the parameters must be finite numbers")
    order = np.argsort(p, kind="stable")
    if np.any(np.diff(p[order]) == 0):
        raise QSMInputError("L-curve: repeated parameter values; give distinct candidates")
    return float(p[order][lcurve_corner(r[order], s[order])])


def choose_regularisation(method, field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), values=None,
                          pad_voxels=DEFAULT_PAD_VOXELS, rule="auto", noise_sd_ppm=None):
    """Choose the regularisation parameter of a direct inversion (L-curve corner, discrepancy or GCV).

    Parameters
    ----------
    method : {"tikhonov", "tkd", "tsvd"}
        The inversion whose parameter is chosen (``lam`` for Tikhonov,
        ``threshold`` for TKD and TSVD).
    field_ppm : ndarray, shape (X, Y, Z)
        Local field in ppm of B0.
    mask : ndarray, shape (X, Y, Z)
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    values : sequence of float, optional
        Candidates (at least 3, distinct); default :data:`DEFAULT_VALUES`.
        Use a log-spaced sequence: the curvature is taken between neighbours.
    pad_voxels : int or sequence of 3 int, optional
        As for the inversion itself (the same working grid is used).
    rule : {"auto", "lcurve", "discrepancy", "gcv"}, optional
        L-curve corner (Hansen 1992), discrepancy principle (Morozov 1966) or
        generalised cross-validation (Golub et al. 1979); ``"auto"`` (default)
        is the method's rule in :data:`AUTO_RULES`.
    noise_sd_ppm : float or ndarray, optional
        Noise SD of the field (ppm), a number or a map; required by
        ``rule="discrepancy"``.

    Returns
    -------
    RegularisationChoice
        ``.value`` is the chosen parameter; ``.as_record()`` gives the whole
        curve for provenance.

    Raises
    ------
    QSMInputError
        On an unknown method, invalid candidates or inputs, or no corner.

    References
    ----------
    .. [1] Hansen PC. Analysis of discrete ill-posed problems by means of the
       L-curve. SIAM Rev 1992;34:561-580.
    .. [2] Bilgic B, Chatnuntawech I, Fan AP, Setsompop K, Cauley SF, Wald LL,
       Adalsteinsson E. Fast image reconstruction with L2-regularization.
       J Magn Reson Imaging 2014;40:181-191.
    .. [3] Morozov VA. On the solution of functional equations by the method
       of regularization. Soviet Math Dokl 1966;7:414-417.
    .. [4] Golub GH, Heath M, Wahba G. Generalized cross-validation as a
       method for choosing a good ridge parameter. Technometrics
       1979;21:215-223.
    """
    if rule not in PARAMETER_RULES:
        raise QSMInputError(f"rule: {rule!r} is unknown; choose one of {', '.join(PARAMETER_RULES)}")
    if method not in AUTO_PARAMETERS:
        raise QSMInputError(f"method: {method!r} has no automatic parameter choice; "
                            f"use one of {', '.join(sorted(AUTO_PARAMETERS))}")
    if rule == "auto":
        rule = AUTO_RULES[method]
    parameter = AUTO_PARAMETERS[method]
    if values is None:
        values = DEFAULT_VALUES[method]
    maximum = None if method == "tikhonov" else 2.0 / 3.0
    candidates = sorted(check_number(v, parameter, strict=True, maximum=maximum)
                        for v in np.atleast_1d(np.asarray(values, dtype=object)).ravel())
    if len(candidates) < 3 or len(set(candidates)) != len(candidates):
        raise QSMInputError(f"values: give at least 3 distinct candidates for {parameter}, "
                            f"got {list(values)!r}")

    grid = WorkGrid(field_ppm, mask, voxel_size, b0_dir, pad_voxels)
    if rule == "discrepancy":
        return _discrepancy_choice(method, parameter, grid, candidates, noise_sd_ppm)
    if rule == "gcv":
        return _gcv_choice(method, parameter, grid, candidates)
    spectrum = fourier.rfft(grid.field)
    power = (spectrum.real ** 2 + spectrum.imag ** 2) * _rfft_weights(grid.shape)
    kernel = dipole_kernel(grid.shape, grid.voxel_size, grid.b0_dir).astype(np.float64)
    d2 = kernel * kernel
    power[0, 0, 0] = 0.0  # the k = 0 term is set to zero by every method: no misfit, no solution
    residuals, solutions = [], []
    if method == "tikhonov":
        e2 = gradient_norm_squared(grid.shape, grid.voxel_size).astype(np.float64)
        for lam in candidates:
            denominator = d2 + lam * e2
            denominator[0, 0, 0] = 1.0
            # residual D chi - f = -lam E2 F / den; penalty G chi = E D F / den
            residuals.append(np.sum(power * (lam * e2 / denominator) ** 2))
            solutions.append(np.sum(power * e2 * d2 / denominator ** 2))
    else:
        magnitude = np.abs(kernel)
        with np.errstate(divide="ignore"):
            inverse_d2 = np.where(magnitude > 0, 1.0 / np.maximum(d2, 1e-30), 0.0)
        for t in candidates:
            small = magnitude <= t
            if method == "tsvd":
                # kept modes are fitted exactly; dropped modes leave the whole field as misfit
                residuals.append(np.sum(power[small]))
                solutions.append(np.sum(power[~small] * inverse_d2[~small]))
            else:
                # clamped modes: chi = sign(D) F / t, misfit (|D| / t - 1) F
                residuals.append(np.sum(power[small] * (magnitude[small] / t - 1.0) ** 2))
                solutions.append(np.sum(power[~small] * inverse_d2[~small]) + np.sum(power[small]) / t ** 2)
    residuals = np.sqrt(np.asarray(residuals))
    solutions = np.sqrt(np.asarray(solutions))
    index = lcurve_corner(residuals, solutions)
    return RegularisationChoice(
        method=method, parameter=parameter, value=float(candidates[index]),
        values=tuple(float(v) for v in candidates),
        residual_norms=tuple(float(v) for v in residuals),
        solution_norms=tuple(float(v) for v in solutions),
        curvature=tuple(float(v) for v in lcurve_curvature(residuals, solutions)))


def _masked_misfits(method, grid, candidates):
    """Each candidate's map as the method returns it, measured inside the mask.

    Returns the misfit norms ``||M (D chi - f)||`` (their mean removed: the
    k = 0 term is not determined), the map norms ``||M chi||`` and the traces
    of the field-to-prediction operator (``n / N`` times ``sum_k D H``).
    """
    from .tikhonov import tikhonov_filter  # these modules import this one for "auto"
    from .tkd import truncated_inverse
    from .tsvd import truncated_svd_inverse

    filters = {"tikhonov": tikhonov_filter, "tkd": truncated_inverse, "tsvd": truncated_svd_inverse}
    inside = grid.inside()
    share = float(inside.sum()) / float(np.prod(grid.shape))
    kernel = dipole_kernel(grid.shape, grid.voxel_size, grid.b0_dir)
    weights = _rfft_weights(grid.shape)
    spectrum = fourier.rfft(grid.field)
    residuals, solutions, traces = [], [], []
    for value in candidates:
        kspace_filter = filters[method](grid.shape, grid.voxel_size, grid.b0_dir, value)
        chi = fourier.irfft(spectrum * kspace_filter, grid.shape)
        chi[~inside] = 0
        misfit = fourier.irfft(fourier.rfft(chi) * kernel, grid.shape)[inside] - grid.field[inside]
        misfit -= misfit.mean()
        residuals.append(float(np.linalg.norm(misfit)))
        solutions.append(float(np.linalg.norm(chi[inside])))
        traces.append(share * float(np.sum(weights * kspace_filter * kernel, dtype=np.float64)))
    return residuals, solutions, traces


def _discrepancy_choice(method, parameter, grid, candidates, noise_sd_ppm):
    if noise_sd_ppm is None:
        raise QSMInputError("the discrepancy rule needs the field's noise SD (noise_sd_ppm); it comes from "
                            "the multi-echo fit, so start from magnitude and phase, or use a rule without it "
                            "('gcv', 'lcurve')")
    inside = grid.inside()
    sigma = np.asarray(noise_sd_ppm, dtype=np.float64)
    if sigma.ndim == 0:
        noise_sq = float(sigma) ** 2 * int(inside.sum())
    else:
        sigma = grid.on_grid_values(sigma)
        noise_sq = float(np.sum(sigma[inside] ** 2))
    if not np.isfinite(noise_sq) or noise_sq <= 0:
        raise QSMInputError("noise_sd_ppm: give a positive, finite noise SD in ppm")
    target = float(np.sqrt(noise_sq))
    residuals, solutions, _ = _masked_misfits(method, grid, candidates)
    # the misfit grows with the regularisation: the last candidate still under the noise
    below = [i for i, r in enumerate(residuals) if r <= target]
    index = below[-1] if below else 0
    return RegularisationChoice(
        method=method, parameter=parameter, value=float(candidates[index]),
        values=tuple(float(v) for v in candidates), residual_norms=tuple(residuals),
        solution_norms=tuple(solutions), curvature=(), rule="discrepancy", target_residual=target)


def _gcv_choice(method, parameter, grid, candidates):
    n = float(grid.inside().sum())
    residuals, solutions, traces = _masked_misfits(method, grid, candidates)
    scores = [n * r * r / (n - t) ** 2 for r, t in zip(residuals, traces)]
    index = int(np.argmin(scores))
    return RegularisationChoice(
        method=method, parameter=parameter, value=float(candidates[index]),
        values=tuple(float(v) for v in candidates), residual_norms=tuple(residuals),
        solution_norms=tuple(solutions), curvature=(), rule="gcv", gcv_scores=tuple(scores))


def _log_points(residual_norms, solution_norms):
    r = np.asarray(residual_norms, dtype=np.float64).ravel()
    s = np.asarray(solution_norms, dtype=np.float64).ravel()
    if r.size != s.size or r.size < 3:
        raise QSMInputError(f"L-curve: need at least 3 points with one residual and one solution "
                            f"norm each, got {r.size} and {s.size}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(s)) and np.all(r > 0) and np.all(s > 0)):
        raise QSMInputError("L-curve: norms must be positive finite numbers (a zero residual means "
                            "the candidates do not regularise; widen the range)")
    return np.log(r), np.log(s)


def _rfft_weights(shape):
    """Parseval weights of the rfft half-spectrum: 2 for columns that stand for a conjugate pair."""
    n = shape[-1]
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return weights.reshape((1,) * (len(shape) - 1) + (-1,))
