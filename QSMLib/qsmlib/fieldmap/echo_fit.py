"""Total field from multi-echo gradient-echo phase: a magnitude-weighted fit over TE.

Signal model per voxel and echo time ``t``::

    S(t) = |S(t)| exp(i (phi0 + 2 pi f t)) + noise,

with f the total field (Hz) and phi0 the echo-independent phase offset of
the receive chain. The phase sign is the library's default: phase rises
with the field (paramagnetic sources give positive f).

The linear fit follows the multi-echo reviews (Robinson et al., NMR Biomed
2017), linearised so that it is exact and fast:

1. The phase difference of echoes 1 and 2, ``angle(S2 conj(S1))``, is free
   of phi0; it is unwrapped in space once and gives a first field.
2. Each later echo is unwrapped in time: its phase is predicted from the
   current fit, ``phi0 + 2 pi f t``, and the wrapped difference to the
   measured phase is added; the fit is then repeated with that echo.
3. A weighted least-squares line with intercept over all echoes gives
   ``f = slope / (2 pi)`` and ``phi0``. The weights are ``|S|^2``, the
   inverse of the phase noise variance (which is ``sigma^2 / |S|^2``), so the
   fit is the maximum-likelihood one at moderate SNR.

Options: ``model="nonlinear"`` refines that fit by Gauss-Newton on the
complex signal (Liu et al., MRM 2013; :mod:`.nonlinear_fit`), and
``phase_offset="mcpc3ds"`` removes a smooth offset estimated by MCPC-3D-S
(Eckstein et al., MRM 2018; :mod:`.mcpc3ds`) first and fits a line through
the origin. :func:`residual_exclusion_mask` shrinks the brain mask by the
fit residual.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from ..errors import QSMInputError
from ..phase import TWO_PI, wrap_to_pi
from ..unwrap.reliability import unwrap_reliability
from ..validation import as_mask, as_voxel_size, check_count, check_echo_times, check_number
from ._inputs import as_echo_volumes, unwrap_checked
from .mcpc3ds import MCPC_SIGMA_MM, smooth_phase
from .nonlinear_fit import complex_gauss_newton

#: Weights are floored at this fraction of the median first-echo |S|^2 in the mask,
#: so that voxels without signal still get a (very uncertain) finite fit.
WEIGHT_FLOOR = 1e-6
#: Voxels fitted at once (bounds the float64 work arrays to some tens of MB).
CHUNK_VOXELS = 1 << 18
#: SNR assumed for the noise SD when it can be estimated neither from the fit
#: residual (fewer than three echoes) nor from background voxels.
ASSUMED_SNR = 100.0
#: Fewest background voxels used to estimate the noise SD from the magnitude.
MIN_BACKGROUND_VOXELS = 1000
#: Histogram bins for the mode of the background magnitude.
MODE_BINS = 128
#: The background estimate is used only when it is below this fraction of the
#: median first-echo magnitude in the mask (else there is no real background).
BACKGROUND_FRACTION = 0.1
#: Gauss-Newton steps of the nonlinear fit. From the linear fit, voxels with
#: phase noise below ~0.3 rad converge in 3-5 steps; only voxels without signal use more.
NONLINEAR_MAX_ITER = 20
#: A voxel stops iterating when its field step is below this (Hz): far below the
#: field noise of any real scan (>= 0.05 Hz).
NONLINEAR_TOL_HZ = 1e-3

MODELS = ("linear", "nonlinear")
PHASE_OFFSETS = ("intercept", "mcpc3ds")


@dataclass
class EchoFitResult:
    """Result of :func:`fit_multi_echo_field`; every map is float32 and 0 outside the mask.

    Attributes
    ----------
    field_hz : ndarray, shape (X, Y, Z)
        Total field in Hz.
    phase_offset_rad : ndarray, shape (X, Y, Z)
        Echo-independent phase offset phi0 in radians, wrapped to [-pi, pi)
        (0 for single-echo data, where it cannot be separated from the field;
        the smoothed MCPC-3D-S offset with ``phase_offset="mcpc3ds"``).
    field_sd_hz : ndarray, shape (X, Y, Z)
        Standard deviation of ``field_hz`` due to noise, from the weighted
        least-squares covariance: ``sigma / (2 pi sqrt(sum_n |S_n|^2 (t_n - tbar)^2))``
        with ``tbar`` the weighted mean echo time (``tbar = 0`` without
        intercept, ``phase_offset="mcpc3ds"``).
    residual : ndarray, shape (X, Y, Z)
        Relative fit residual ``sqrt(sum_n |S_n e^{i psi_n} - |S_n| e^{i (phi0 + 2 pi f t_n)}|^2
        / sum_n |S_n|^2)``: 0 for a perfect fit, up to 2; large where the
        phase does not evolve linearly (flow, fat, no signal). 0 when the
        model has as many parameters as echoes.
    noise_sd : float
        Noise SD per real and imaginary channel (magnitude units) used for
        ``field_sd_hz``.
    noise_sd_source : str
        Where ``noise_sd`` came from: ``"given"``, ``"residual"`` (pooled fit
        residual, more echoes than parameters), ``"background"`` (magnitude
        outside the mask) or ``"assumed"`` (SNR of 100 in the first echo).
    """

    field_hz: np.ndarray
    phase_offset_rad: np.ndarray
    field_sd_hz: np.ndarray
    residual: np.ndarray
    noise_sd: float
    noise_sd_source: str


def fit_multi_echo_field(magnitude, phase, te_s, mask, voxel_size, *, unwrap=unwrap_reliability,
                         noise_sd=None, model="linear", phase_offset="intercept",
                         offset_sigma_mm=MCPC_SIGMA_MM, max_iter=NONLINEAR_MAX_ITER,
                         tol=NONLINEAR_TOL_HZ, callback=None):
    """Fit the total field (Hz) and phase offset to multi-echo phase, weighted by magnitude.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E) or (X, Y, Z) for one echo
        Magnitude per echo (any positive scale).
    phase : ndarray, same shape as ``magnitude``
        Phase per echo in radians (wrapped or not). Phase rises with the
        field: ``phase = phi0 + 2 pi f TE``.
    te_s : sequence of float
        Echo times in seconds, increasing, one per echo.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain (or head) mask; the fit is done inside it only.
    voxel_size : sequence of 3 float
        Voxel size in mm (passed to ``unwrap``).
    unwrap : callable, optional
        Spatial unwrapper ``unwrap(phase, mask, voxel_size) -> ndarray``,
        applied once to the phase difference of echoes 1 and 2 (to the phase
        of a single echo). Default :func:`qsmlib.unwrap.unwrap_reliability`,
        which is exact; :func:`qsmlib.unwrap.unwrap_laplacian` is faster,
        exact where no neighbour step of the difference exceeds pi and
        smoothly wrong elsewhere. None: ``phase`` is already unwrapped in
        space and time (for example by another tool) and is fitted as it is.
    noise_sd : float, optional
        Noise SD per real and imaginary channel, in magnitude units, for
        ``field_sd_hz``. Default: estimated (see Notes).
    model : {"linear", "nonlinear"}, optional
        ``"linear"``: the weighted least-squares line through the unwrapped
        phases. ``"nonlinear"``: that line refined by Gauss-Newton on the
        complex signal (Liu et al. 2013, see :mod:`.nonlinear_fit`), the
        maximum-likelihood fit for complex Gaussian noise, which is
        insensitive to wrong temporal unwraps.
    phase_offset : {"intercept", "mcpc3ds"}, optional
        ``"intercept"``: phi0 is fitted per voxel. ``"mcpc3ds"``: a smooth
        phi0 is estimated from echoes 1 and 2 by MCPC-3D-S (Eckstein et al.
        2018, see :func:`mcpc3ds_phase_offset`, reusing this fit's spatial
        unwrap), removed from every echo, and the field is fitted through the
        origin: one parameter less per voxel, so a smaller field noise SD
        (about half for 5 evenly spaced echoes), at the price of a small
        smooth bias where the smoothing misses the offset's curvature. Needs
        two echoes or more.
    offset_sigma_mm : float, optional
        SD (mm) of the Gaussian smoothing of the MCPC-3D-S offset.
    max_iter : int, optional
        Most Gauss-Newton steps of the nonlinear model.
    tol : float, optional
        The nonlinear model stops a voxel once its field step is below ``tol`` Hz.
    callback : callable, optional
        ``callback(iteration, step_hz)`` after each Gauss-Newton step, with
        the largest field step (Hz) among the voxels still iterating. It may
        raise :class:`qsmlib.errors.Cancelled`.

    Returns
    -------
    EchoFitResult
        ``field_hz``, ``phase_offset_rad``, ``field_sd_hz``, ``residual``
        (float32 maps, 0 outside the mask) and the noise SD used.

    Raises
    ------
    QSMInputError
        If the arrays are not finite 3D/4D volumes of the same shape, the
        phase holds integers (unscaled scanner phase), the magnitude is
        negative, the echo times are not one increasing value in seconds per
        echo, the mask does not match or is empty, ``unwrap`` returns
        something that is not a volume of the right shape, ``model`` or
        ``phase_offset`` is unknown, or ``"mcpc3ds"`` is asked for one echo.

    Notes
    -----
    - The 2 pi ambiguity of the spatial unwrap is resolved by putting the
      median phase difference of echoes 1 and 2 in the mask in [-pi, pi), so
      the median field lies within +-1 / (2 (TE2 - TE1)) Hz (+-83 Hz for
      6 ms): true after any shim, which centres the frequency on the brain.
      With equally spaced echoes a field offset of k / (TE2 - TE1) Hz fits
      the wrapped phases equally well, so this rule, not the fit, decides it.
    - The nonlinear model starts from the linear fit, whose field is
      unwrapped in space and time, and only descends the (2 pi periodic)
      complex misfit from there, so its field keeps that spatial unwrap.
    - Single echo: ``field_hz = unwrap(phase) / (2 pi TE)``. The phase offset
      cannot be separated and is left in the field; it is smooth, so
      background field removal takes most of it away. ``model`` has no
      effect there.
    - Two echoes with an intercept: the line through both echoes (exact, no
      residual).
    - The noise SD ``sigma`` is, in order: ``noise_sd`` when given; with more
      echoes than parameters (p = 2 with an intercept, 1 without), the median
      over the mask of the weighted residual sum of squares
      ``sum_n |S_n|^2 r_n^2`` divided by the median of the chi-square
      distribution with E - p degrees of freedom (a robust pooled estimate; it
      assumes a spatially uniform noise level); otherwise the mode of the
      non-zero first-echo magnitude outside the mask (the mode of Rayleigh
      noise is sigma; at least 1000 voxels, and below 10 % of the median
      magnitude in the mask); otherwise 1 % of the median first-echo
      magnitude in the mask. ``field_sd_hz`` leaves out the (smoothed, small)
      noise of the MCPC-3D-S offset.
    - Voxels with almost no signal keep a weight floor (1e-6 of the median
      first-echo ``|S|^2``), so that the fit stays finite there and
      ``field_sd_hz`` reports them as very uncertain.

    References
    ----------
    Robinson SD, Bredies K, Khabipova D, Dymerska B, Marques JP, Schweser F.
    An illustrated comparison of processing methods for MR phase imaging and
    QSM: combining array coil signals and phase unwrapping. NMR Biomed
    2017;30:e3601.

    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear
    formulation of the magnetic field to source relationship for robust
    quantitative susceptibility mapping. Magn Reson Med 2013;69:467-476.

    Eckstein K, Dymerska B, Bachrata B, Bogner W, Poljanc K, Trattnig S,
    Robinson SD. Computationally efficient combination of multi-channel phase
    data from multi-echo acquisitions (ASPIRE). Magn Reson Med 2018;79:2996-3006.

    Wu B, Li W, Avram AV, Gho SM, Liu C. Fast and tissue-optimized mapping of
    magnetic susceptibility and T2* with multi-echo and multi-shot spirals.
    NeuroImage 2012;59:297-305.
    """
    magnitude, phase = as_echo_volumes(magnitude, phase)
    shape = magnitude.shape[:3]
    n_echoes = magnitude.shape[3]
    te = check_echo_times(te_s, n_echoes=n_echoes, name="te_s")
    mask = as_mask(mask, shape)
    voxel_size = as_voxel_size(voxel_size)
    if unwrap is not None and not callable(unwrap):
        raise QSMInputError(f"unwrap: {unwrap!r} is not a function; give an unwrapper such as "
                            "qsmlib.unwrap.unwrap_reliability, or None for unwrapped phase")
    if noise_sd is not None:
        noise_sd = float(noise_sd)
        if not np.isfinite(noise_sd) or noise_sd <= 0:
            raise QSMInputError(f"noise_sd: {noise_sd} must be a positive number "
                                "(the noise SD per channel, in magnitude units), or None")
    if model not in MODELS:
        raise QSMInputError(f"model: '{model}' is unknown; choose one of {', '.join(MODELS)}")
    if phase_offset not in PHASE_OFFSETS:
        raise QSMInputError(f"phase_offset: '{phase_offset}' is unknown; choose one of "
                            f"{', '.join(PHASE_OFFSETS)}")
    use_mcpc = phase_offset == "mcpc3ds"
    if use_mcpc:
        if n_echoes < 2:
            raise QSMInputError("phase_offset 'mcpc3ds' needs at least two echoes; use "
                                "'intercept' (the offset then stays in a single-echo field)")
        offset_sigma_mm = check_number(offset_sigma_mm, "offset_sigma_mm", strict=True, unit=" mm")
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol", strict=True, unit=" Hz")

    mag = magnitude[mask]                             # (N, E) float32
    phases = phase[mask]
    first_weight = np.median(mag[:, 0].astype(np.float64) ** 2)
    weight_floor = WEIGHT_FLOOR * (first_weight if first_weight > 0 else 1.0)

    if unwrap is None:
        # Phase given unwrapped in space and time: fit it as it is.
        step = None
    elif n_echoes == 1:
        # No intercept: field = phase / (2 pi TE), var(f) = sigma^2 / (|S|^2 (2 pi TE)^2).
        step = unwrap_checked(unwrap, phase[..., 0], mask, voxel_size, magnitude[..., 0])[mask]
    else:
        # Step 1: echo-difference phase (no offset), unwrapped in space once.
        difference = wrap_to_pi(phase[..., 1] - phase[..., 0])
        step = unwrap_checked(unwrap, difference, mask, voxel_size, magnitude[..., 0])[mask]
        del difference

    offset = None
    if use_mcpc:
        offset = _mcpc3ds_offset(phases, step, te, mag[:, 0], mask, voxel_size, offset_sigma_mm)

    n_voxels = mag.shape[0]
    field, intercept = np.zeros(n_voxels), np.zeros(n_voxels)
    for start in range(0, n_voxels, CHUNK_VOXELS):
        part = slice(start, start + CHUNK_VOXELS)
        field[part], intercept[part] = _fit_voxels(
            mag[part].astype(np.float64), phases[part], None if step is None else step[part], te,
            weight_floor, None if offset is None else offset[part])
    del step
    if use_mcpc:
        intercept = offset
    if model == "nonlinear" and n_echoes > 1:
        field, intercept, _ = complex_gauss_newton(
            mag, phases, te, field, intercept, weight_floor, fit_offset=not use_mcpc,
            max_iter=max_iter, tol=tol, callback=callback)

    n_parameters = 1 if use_mcpc or n_echoes == 1 else 2
    residual, rss, spread = (np.zeros(n_voxels) for _ in range(3))
    for start in range(0, n_voxels, CHUNK_VOXELS):
        part = slice(start, start + CHUNK_VOXELS)
        residual[part], rss[part], spread[part] = _fit_quality(
            mag[part].astype(np.float64), phases[part], field[part], intercept[part], te,
            weight_floor, with_intercept=n_parameters == 2)
    del phases

    sigma, source = _noise_sd(noise_sd, rss if n_echoes > n_parameters else None,
                              n_echoes - n_parameters, magnitude[..., 0], mask, mag[:, 0])
    field_sd = sigma / (TWO_PI * np.sqrt(spread))

    return EchoFitResult(
        field_hz=_to_volume(field, mask), phase_offset_rad=_to_volume(wrap_to_pi(intercept), mask),
        field_sd_hz=_to_volume(field_sd, mask), residual=_to_volume(residual, mask),
        noise_sd=float(sigma), noise_sd_source=source)


def _mcpc3ds_offset(phases, step, te, first_magnitude, mask, voxel_size, sigma_mm):
    """Per-voxel MCPC-3D-S offset (N,), snapped to the whole turn of its raw estimate.

    Reuses the fit's spatially unwrapped echo difference ``step`` (None: the
    phases are unwrapped already). Snapping the smoothed offset to within pi
    of the raw one, ``phi1 - TE1 step / dTE``, makes ``phi1 - offset`` equal
    ``TE1 step / dTE`` up to the smoothing error: unwrapped, with no turn to guess.
    """
    if step is None:
        first = phases[:, 0].astype(np.float64)
        step = phases[:, 1] - first
    else:
        first = wrap_to_pi(phases[:, 0].astype(np.float64))
    raw = first - te[0] * step / (te[1] - te[0])
    smoothed = smooth_phase(_to_volume(raw, mask, np.float64), _to_volume(first_magnitude, mask),
                            mask, voxel_size, sigma_mm)[mask]
    return raw + wrap_to_pi(smoothed - raw)


def _fit_voxels(mag, phases, step, te, weight_floor, offset=None):
    """Steps 2 and 3 for a block of voxels: field (Hz) and intercept (rad, not wrapped).

    ``mag``, ``phases``: (N, E) magnitude and phase; ``step``: the spatially
    unwrapped phase of echo 1 (one echo) or of echo 2 minus echo 1, or None
    when ``phases`` are unwrapped already. ``offset``: a known phase offset
    per voxel, removed from every echo; the line then goes through the origin
    and the returned intercept is 0.
    """
    n_echoes = te.size
    weights = np.maximum(mag ** 2, weight_floor)
    if n_echoes == 1:
        unwrapped = phases[:, 0].astype(np.float64) if step is None else step
        return unwrapped / (TWO_PI * te[0]), np.zeros_like(unwrapped)
    line = _RunningLine(te, intercept=offset is None)
    if step is None:
        psi = phases.astype(np.float64)
        if offset is not None:
            psi = psi - offset[:, None]
        for echo in range(n_echoes):
            line.add(echo, weights[:, echo], psi[:, echo])
    else:
        wrapped = wrap_to_pi(phases.astype(np.float64))
        psi = np.empty_like(wrapped)
        psi[:, 0] = wrapped[:, 0] if offset is None else wrapped[:, 0] - offset
        psi[:, 1] = psi[:, 0] + step
        line.add(0, weights[:, 0], psi[:, 0])
        line.add(1, weights[:, 1], psi[:, 1])
        # Step 2: temporal unwrapping of later echoes against the running fit.
        for echo in range(2, n_echoes):
            intercept, slope = line.solve()
            predicted = intercept + slope * te[echo]
            shifted = wrapped[:, echo] if offset is None else wrapped[:, echo] - offset
            psi[:, echo] = predicted + wrap_to_pi(shifted - predicted)
            line.add(echo, weights[:, echo], psi[:, echo])
    # Step 3: the weighted least-squares line over all echoes.
    intercept, slope = line.solve()
    return slope / TWO_PI, intercept


def _fit_quality(mag, phases, field, intercept, te, weight_floor, *, with_intercept):
    """Relative residual, weighted residual sum of squares and the slope's inverse variance factor.

    The misfit is taken modulo 2 pi (equal to the unwrapped one wherever
    the fit is within pi of every echo).
    """
    weights = np.maximum(mag ** 2, weight_floor)
    misfit = wrap_to_pi(phases - (intercept[:, None] + TWO_PI * field[:, None] * te))
    s2 = weights @ (te * te)
    if with_intercept:
        s0, s1 = weights.sum(1), weights @ te
        spread = s2 - s1 * s1 / s0
    else:
        spread = s2
    return (_relative_residual(mag, misfit), np.einsum("ne,ne->n", weights, misfit ** 2), spread)


class _RunningLine:
    """Weighted least-squares line fitted per voxel, one echo added at a time.

    Keeps the weighted sums of 1, t, t^2, psi and t psi, with t centred on
    the mean echo time for conditioning (float64: with weights floored at
    1e-6 of their median the normal equations lose at most ~6 digits).
    Without intercept the line goes through the origin (t not centred).
    """

    def __init__(self, te, intercept=True):
        self.intercept = intercept
        self.centre = float(np.mean(te)) if intercept else 0.0
        self.t = te - self.centre
        self.sums = None

    def add(self, echo, weights, psi):
        t = self.t[echo]
        terms = (weights, weights * t, weights * (t * t), weights * psi, weights * (t * psi))
        if self.sums is None:
            self.sums = [np.array(term, dtype=np.float64) for term in terms]  # own copies
        else:
            for total, term in zip(self.sums, terms):
                total += term

    def solve(self):
        """Intercept (at TE = 0) and slope."""
        s0, s1, s2, sy, sty = self.sums
        if not self.intercept:
            return np.zeros_like(s0), sty / s2
        slope = (s0 * sty - s1 * sy) / (s0 * s2 - s1 * s1)
        return (sy - slope * s1) / s0 - slope * self.centre, slope


def _relative_residual(mag, misfit):
    """Complex relative residual: |S e^{i psi} - |S| e^{i fit}| summed over echoes, over |S|."""
    mag = mag.astype(np.float32)
    energy = np.sum(mag * mag, axis=1)
    error = np.sum((2 * mag * np.sin(np.float32(0.5) * misfit.astype(np.float32))) ** 2, axis=1)
    return np.sqrt(np.divide(error, energy, out=np.zeros_like(energy), where=energy > 0))


def _noise_sd(given, rss, dof, first_echo, mask, first_echo_in_mask):
    """Noise SD per channel and where it came from (see fit_multi_echo_field, Notes).

    ``rss`` is the per-voxel weighted residual sum of squares with ``dof`` degrees of
    freedom (None when there are no more echoes than parameters).
    """
    if given is not None:
        return given, "given"
    if rss is not None:
        chi2_median = 2.0 * special.gammaincinv(0.5 * dof, 0.5)
        sigma = float(np.sqrt(np.median(rss) / chi2_median))
        if sigma > 0:
            return sigma, "residual"
    sigma = _rayleigh_mode(first_echo[~mask])
    level = float(np.median(first_echo_in_mask))
    if sigma is not None and sigma < BACKGROUND_FRACTION * level:
        return sigma, "background"
    return (level / ASSUMED_SNR if level > 0 else 1.0), "assumed"


def _rayleigh_mode(values):
    """Noise SD from the mode of the darkest voxels (the mode of a Rayleigh law is sigma).

    Returns None with too few non-zero voxels. The mode is insensitive to the
    tissue voxels mixed in, unlike a mean or a quantile.
    """
    values = values[values > 0]
    if values.size < MIN_BACKGROUND_VOXELS:
        return None
    upper = float(np.quantile(values, 0.5))
    for _ in range(2):  # coarse pass, then a finer one around the first mode
        counts, edges = np.histogram(values, bins=MODE_BINS, range=(0.0, upper))
        counts = ndimage.gaussian_filter1d(counts.astype(np.float64), 1.5)
        peak = int(np.argmax(counts))
        mode = 0.5 * (edges[peak] + edges[peak + 1])
        upper = 3.0 * mode
    return float(mode)


def _to_volume(values, mask, dtype=np.float32):
    """Scatter per-voxel values into a volume of ``dtype``, 0 outside ``mask``."""
    out = np.zeros(mask.shape, dtype=dtype)
    out[mask] = values
    return out


#: A voxel's field is not trusted when its noise SD exceeds this multiple of the median in the mask ...
UNTRUSTED_SD_FACTOR = 10.0
#: ... or when its relative fit residual exceeds this (phase not linear in TE: no signal, flow).
UNTRUSTED_RESIDUAL = 0.3


def trusted_field_mask(fit, mask, *, sd_factor=UNTRUSTED_SD_FACTOR, max_residual=UNTRUSTED_RESIDUAL):
    """Voxels of ``mask`` whose fitted field can be trusted.

    Voxels without signal (calcification, haemorrhage, dark veins at late
    echoes) get a field estimate that is mostly noise, often hundreds of Hz
    off; in a k-space inversion each one spreads a dipole-shaped streak. They
    are recognised by a noise SD far above the brain's typical value (10
    times the median: a tenth of the typical signal) or a relative residual
    showing that the phase does not evolve linearly with TE.

    Parameters
    ----------
    fit : EchoFitResult
        Result of :func:`fit_multi_echo_field`.
    mask : ndarray of bool
        The mask the fit was done in.

    Returns
    -------
    ndarray of bool
    """
    mask = as_mask(mask, fit.field_hz.shape)
    limit = sd_factor * float(np.median(fit.field_sd_hz[mask]))
    return mask & (fit.field_sd_hz <= limit) & (fit.residual <= max_residual)


def residual_exclusion_mask(fit, mask, *, max_residual=UNTRUSTED_RESIDUAL, keep_interior=True):
    """Shrink a brain mask by the voxels whose echo fit has a high relative residual.

    Where the phase does not evolve linearly with TE, the signal is not
    brain tissue with a well-defined field: bone, air-tissue boundaries,
    sinuses, flow, fat. At the edge of an automatic brain mask such voxels
    carry field errors of tens of Hz, which background removal spreads into
    the brain. The voxels of ``mask`` with ``fit.residual > max_residual``
    are grouped into face-connected clusters; each cluster that touches the
    edge of the mask (a mask voxel with a face neighbour outside it) is
    removed. Clusters inside the brain (veins, haemorrhage, calcification)
    are kept, so that the mask gets no holes that background removal would
    have to treat as boundary; :func:`trusted_field_mask` leaves them out of
    the data term instead. Finally, within each connected piece of the
    original mask only its largest remaining piece is kept, so that islands
    cut off by a removed rim go too.

    Parameters
    ----------
    fit : EchoFitResult
        Result of :func:`fit_multi_echo_field` (three echoes or more, else
        the residual is 0 and nothing is removed).
    mask : ndarray of bool, shape (X, Y, Z)
        The mask the fit was done in.
    max_residual : float, optional
        Relative residual above which a voxel is excluded (0.3: the complex
        misfit is 30 % of the signal, an SNR of about 3 per echo, or a phase
        error of about 0.3 rad in every echo).
    keep_interior : bool, optional
        Keep high-residual clusters that do not touch the mask edge (default);
        False removes every high-residual voxel.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        The refined mask, a subset of ``mask``.

    Raises
    ------
    QSMInputError
        If ``mask`` does not match the fit, or ``max_residual`` is negative.

    References
    ----------
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear
    formulation of the magnetic field to source relationship for robust
    quantitative susceptibility mapping. Magn Reson Med 2013;69:467-476.
    """
    mask = as_mask(mask, fit.residual.shape)
    max_residual = check_number(max_residual, "max_residual")
    high = mask & (fit.residual > max_residual)
    if keep_interior:
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        labels, n_clusters = ndimage.label(high)
        touching = np.zeros(n_clusters + 1, dtype=bool)
        touching[np.unique(labels[edge & high])] = True
        touching[0] = False
        high = touching[labels]
    refined = mask & ~high
    # Keep the largest remaining piece of each connected piece of the original mask.
    pieces, n_pieces = ndimage.label(refined)
    if n_pieces > 1:
        parents, _ = ndimage.label(mask)
        sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
        parent_of = np.zeros(n_pieces + 1, dtype=np.int64)
        parent_of[pieces[refined]] = parents[refined]
        keep = np.zeros(n_pieces + 1, dtype=bool)
        for parent in np.unique(parent_of[1:]):
            members = np.flatnonzero(parent_of == parent)
            members = members[members > 0]
            keep[members[np.argmax(sizes[members])]] = True
        refined = keep[pieces]
    return refined
