"""R2* (and T2* = 1 / R2*) from multi-echo gradient-echo magnitude.

Mono-exponential decay model per voxel: ``|S(t)| = S0 exp(-R2* t)``.

Three fits share one signature, ``fit(magnitude, te_s, mask=None, *, ...)``
returning ``(r2star_hz, s0)``:

- :func:`r2star_loglinear`: weighted linear fit of log|S|;
- :func:`r2star_arlo`: auto-regression on linear operations (Pei et al. 2015);
- :func:`r2star_nlls`: nonlinear least squares on |S| (Levenberg-Marquardt).

:func:`r2star_map` runs one of them and adds T2* and the noise floor
handling. Given the noise SD (estimated from the background by
:func:`estimate_noise_sd`), every fit removes the Rician bias of the
magnitude and drops the echoes whose signal, as predicted by a first fit, is
under the noise floor (a few noise SDs), with every later echo of the voxel.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .errors import QSMInputError
from .validation import as_mask, as_volume, check_echo_times, check_number

#: Plausible R2* range in 1/s; fitted values are clipped to it.
R2STAR_RANGE_HZ = (0.0, 1000.0)
#: Voxels fitted at once (bounds the float64 work arrays to some tens of MB).
CHUNK_VOXELS = 1 << 18
#: Default noise floor: echoes under this many noise SDs are dropped. A pure-noise
#: magnitude (Rayleigh) exceeds 3 SD in about 1 % of voxels.
DEFAULT_FLOOR_SNR = 3.0
#: T2* reported where R2* is at or below 1 / this value (s), so that it stays finite.
T2STAR_MAX_S = 1.0
#: Fewest non-zero background voxels for a noise estimate.
MIN_BACKGROUND_VOXELS = 1000
#: Histogram bins for the Rayleigh mode of the background.
NOISE_MODE_BINS = 200
R2STAR_METHODS = ("arlo", "loglinear", "nlls")
#: Refinements of the echo selection from the predicted signal (see _fit_inputs).
FLOOR_PASSES = 2


def r2star_loglinear(magnitude, te_s, mask=None, *, weighted=True, noise_sd=None,
                     floor_snr=DEFAULT_FLOOR_SNR):
    """R2* and S0 by a (weighted) linear least-squares fit of log|S| over echo time.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude per echo, E >= 2.
    te_s : sequence of float
        Echo times in seconds, increasing, one per echo.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit; the maps are 0 outside. Default: every voxel.
    weighted : bool, optional
        Weight echo n by ``|S_n|^2``, the inverse of the variance of
        ``log|S_n|`` (which is ``sigma^2 / |S_n|^2`` at moderate SNR), so that
        late, noisy echoes count less. False gives the ordinary fit.
    noise_sd : float or "auto" or None, optional
        SD of the complex noise per channel, in the magnitude's units, for the
        noise floor; "auto" estimates it from the background outside ``mask``
        (:func:`estimate_noise_sd`). None (default) uses every echo.
    floor_snr : float, optional
        Echoes whose predicted signal is under ``floor_snr * noise_sd`` are
        dropped with every later echo of the voxel, after the Rician bias is
        removed (``sqrt(|S|^2 - noise_sd^2)``); the first two are always kept.

    Returns
    -------
    r2star_hz : ndarray, float32, shape (X, Y, Z)
        R2* in 1/s, clipped to [0, 1000].
    s0 : ndarray, float32, shape (X, Y, Z)
        Signal extrapolated to TE = 0 (from the unclipped fit), in the
        magnitude's units.

    Raises
    ------
    QSMInputError
        If the magnitude is not a finite, non-negative 4D array with at least
        two echoes, the echo times are not one increasing value in seconds
        per echo, or the mask does not match or is empty.

    Notes
    -----
    Zero magnitudes are raised to a tiny floor before the logarithm; with
    weights they then count for nothing, without weights they dominate the
    fit (mask such voxels out). The fit is biased where the
    signal reaches the noise floor (Rician bias raises late echoes and
    lowers R2*); use fewer echoes, or a nonlinear fit with a noise model,
    for very fast decay.

    References
    ----------
    Veraart J, Sijbers J, Sunaert S, Leemans A, Jeurissen B. Weighted linear
    least squares estimation of diffusion MRI parameters: strengths,
    limitations, and pitfalls. NeuroImage 2013;81:335-346 (the |S|^2 weights
    of a log-linear fit).

    Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential
    fitting based on auto-regression on linear operations (ARLO) of data.
    Magn Reson Med 2015;73:843-850 (log-linear versus other R2* fits).
    """
    magnitude, te, mask, noise = _check_inputs(magnitude, te_s, mask, noise_sd, floor_snr)
    signal = magnitude[mask]                                     # (N, E) float32
    r2star = np.empty(signal.shape[0], dtype=np.float32)
    s0 = np.empty(signal.shape[0], dtype=np.float32)
    for start in range(0, signal.shape[0], CHUNK_VOXELS):
        part, keep = _fit_inputs(signal[start:start + CHUNK_VOXELS], te, noise, 2)
        r2star[start:start + CHUNK_VOXELS], s0[start:start + CHUNK_VOXELS] = _loglinear_fit(
            part, te, weighted, keep)
    return _scatter(r2star, mask), _scatter(s0, mask)


def _loglinear_fit(signal, te, weighted, keep=None):
    """R2* (clipped) and S0 of each row of ``signal`` (N, E), float64; ``keep`` selects echoes."""
    log_signal = np.log(np.maximum(signal, np.finfo(np.float32).tiny))
    if weighted:
        # Weights relative to each voxel's strongest echo: no underflow for fast decay.
        peak = signal.max(axis=1, keepdims=True)
        weights = (signal / np.where(peak > 0, peak, 1.0)) ** 2
    else:
        weights = np.ones_like(signal)
    if keep is not None:
        weights = np.where(keep, weights, 0.0)
    total = weights.sum(axis=1)
    has_signal = total > 0
    total = np.where(has_signal, total, 1.0)
    # Centring on the weighted means avoids the cancellation of the normal equations.
    t_mean = (weights @ te) / total
    y_mean = np.einsum("ne,ne->n", weights, log_signal) / total
    t_centred = te - t_mean[:, None]
    spread = np.einsum("ne,ne->n", weights, t_centred ** 2)
    # At least two echoes with signal are needed for a slope.
    valid = has_signal & (spread > 0)
    covariance = np.einsum("ne,ne,ne->n", weights, t_centred, log_signal - y_mean[:, None])
    slope = np.where(valid, covariance / np.where(valid, spread, 1.0), 0.0)
    intercept = y_mean - slope * t_mean
    r2star = np.clip(-slope, *R2STAR_RANGE_HZ)
    s0 = np.where(valid, np.exp(np.minimum(intercept, np.log(np.finfo(np.float32).max))), 0.0)
    return r2star, s0


def r2star_arlo(magnitude, te_s, mask=None, *, noise_sd="auto", floor_snr=DEFAULT_FLOOR_SNR):
    """R2* and S0 by auto-regression on linear operations (ARLO).

    Integrating ``dS/dt = -R2* S`` over each three consecutive echoes gives
    ``S_j - S_{j+2} = R2* * integral``; the integral is taken with the
    quadratic through the three echoes (Simpson's rule for equal spacing).
    T2* = 1 / R2* is the closed-form least-squares solution that minimises the
    error of predicting each third echo from the two before it (Pei et al.
    2015, Eq. 7); S0 is then the least-squares amplitude for that R2*. It is
    a direct (non-iterative) fit, nearly as accurate as nonlinear least
    squares and much less biased than a log-linear fit at low SNR.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude per echo, E >= 2 (with two echoes, the two-point log ratio).
    te_s : sequence of float
        Echo times in seconds, increasing, one per echo; unequal spacing is
        allowed (the quadrature weights follow the spacing).
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit; the maps are 0 outside. Default: every voxel.
    noise_sd : float or "auto" or None, optional
        SD of the complex noise per channel (magnitude units) for the noise
        floor; "auto" (default) estimates it from the background outside
        ``mask`` (:func:`estimate_noise_sd`); None or 0 uses every echo.
    floor_snr : float, optional
        Echoes whose predicted signal is under ``floor_snr * noise_sd`` are
        dropped with every later echo of the voxel, after the Rician bias is
        removed (``sqrt(|S|^2 - noise_sd^2)``); the first three are always kept.

    Returns
    -------
    r2star_hz : ndarray, float32, shape (X, Y, Z)
        R2* in 1/s, clipped to [0, 1000].
    s0 : ndarray, float32, shape (X, Y, Z)
        Signal extrapolated to TE = 0, in the magnitude's units.

    Raises
    ------
    QSMInputError
        As :func:`r2star_loglinear`.

    Notes
    -----
    On noiseless mono-exponential data the only error is that of the
    quadrature: about ``(R2* dTE)^4 / 180`` relative, 2e-5 for R2* = 40/s
    and echoes 6 ms apart.

    References
    ----------
    Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential
    fitting based on auto-regression on linear operations (ARLO) of data.
    Magn Reson Med 2015;73:843-850.

    Gudbjartsson H, Patz S. The Rician distribution of noisy MRI data.
    Magn Reson Med 1995;34:910-914 (the noise floor and its bias).
    """
    magnitude, te, mask, noise = _check_inputs(magnitude, te_s, mask, noise_sd, floor_snr)
    signal = magnitude[mask]
    r2star = np.empty(signal.shape[0], dtype=np.float32)
    s0 = np.empty(signal.shape[0], dtype=np.float32)
    for start in range(0, signal.shape[0], CHUNK_VOXELS):
        part, keep = _fit_inputs(signal[start:start + CHUNK_VOXELS], te, noise, min(3, te.size))
        rate = _arlo_fit(part, te, keep)
        r2star[start:start + CHUNK_VOXELS] = rate
        s0[start:start + CHUNK_VOXELS] = _amplitude(part, te, rate, keep)
    return _scatter(r2star, mask), _scatter(s0, mask)


def _arlo_fit(signal, te, keep):
    """ARLO R2* (clipped) of each row of ``signal`` (N, E); ``keep`` (N, E) or None selects echoes."""
    n_echoes = te.size
    if n_echoes == 2:
        return _two_point(signal[:, 0], signal[:, 1], te[1] - te[0])
    h1, h2 = np.diff(te)[:-1], np.diff(te)[1:]
    span = h1 + h2
    # Integral over [t_j, t_j+2] of the quadratic through the three echoes.
    w0 = span / 6 * (2 - h2 / h1)
    w1 = span / 6 * span ** 2 / (h1 * h2)
    w2 = span / 6 * (2 - h1 / h2)
    integral = w0 * signal[:, :-2] + w1 * signal[:, 1:-1] + w2 * signal[:, 2:]
    drop = signal[:, :-2] - signal[:, 2:]
    use = np.ones_like(integral, dtype=bool) if keep is None else keep[:, 2:]
    integral = np.where(use, integral, 0.0)
    drop = np.where(use, drop, 0.0)
    # The weight of the newest echo enters the prediction error; with unequal
    # spacing the mean over the triplets used keeps the closed form.
    count = use.sum(axis=1)
    last = (use * w2).sum(axis=1) / np.maximum(count, 1)
    s_ss = np.einsum("ne,ne->n", integral, integral)
    s_sd = np.einsum("ne,ne->n", integral, drop)
    s_dd = np.einsum("ne,ne->n", drop, drop)
    numerator = s_sd + last * s_dd          # R2* = numerator / denominator
    denominator = s_ss + last * s_sd
    rate = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0),
                    np.where(numerator > 0, R2STAR_RANGE_HZ[1], 0.0))
    return np.clip(rate, *R2STAR_RANGE_HZ)


def _two_point(first, second, spacing):
    """R2* (clipped) from two echoes ``spacing`` s apart; 0 where either has no signal."""
    tiny = np.finfo(np.float32).tiny
    ok = (first > 0) & (second > 0)
    rate = np.log(np.maximum(first, tiny) / np.maximum(second, tiny)) / spacing
    rate = np.where(ok, rate, np.where(first > 0, R2STAR_RANGE_HZ[1], 0.0))
    return np.clip(rate, *R2STAR_RANGE_HZ)


def _amplitude(signal, te, rate, keep):
    """Least-squares S0 of ``S = S0 exp(-rate t)`` over the kept echoes."""
    decay = np.exp(-rate[:, None] * te[None, :])
    if keep is not None:
        decay = np.where(keep, decay, 0.0)
    energy = np.einsum("ne,ne->n", decay, decay)
    return np.einsum("ne,ne->n", decay, signal) / np.where(energy > 0, energy, 1.0)


def r2star_nlls(magnitude, te_s, mask=None, *, noise_sd="auto", floor_snr=DEFAULT_FLOOR_SNR,
                max_iter=30, tol=1e-6, callback=None):
    """R2* and S0 by nonlinear least squares on the magnitude.

    Minimises ``sum_n (|S_n| - S0 exp(-R2* t_n))^2`` over the kept echoes of
    each voxel by Levenberg-Marquardt, started from the ARLO fit; the
    maximum-likelihood fit for Gaussian noise, which the magnitude follows
    above the noise floor.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude per echo, E >= 2.
    te_s : sequence of float
        Echo times in seconds, increasing, one per echo.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit; the maps are 0 outside. Default: every voxel.
    noise_sd : float or "auto" or None, optional
        As in :func:`r2star_arlo`.
    floor_snr : float, optional
        As in :func:`r2star_arlo`; the first two echoes are always kept.
    max_iter : int, optional
        Most Levenberg-Marquardt iterations.
    tol : float, optional
        A voxel has converged when its R2* step is under ``tol`` times
        max(R2*, 1/s).
    callback : callable(iteration, residual), optional
        Called once per iteration; ``residual`` is the fraction of voxels not
        yet converged. Raise :class:`~qsmlib.errors.Cancelled` in it to stop.

    Returns
    -------
    r2star_hz : ndarray, float32, shape (X, Y, Z)
        R2* in 1/s, clipped to [0, 1000].
    s0 : ndarray, float32, shape (X, Y, Z)
        Signal at TE = 0, in the magnitude's units.

    Raises
    ------
    QSMInputError
        As :func:`r2star_loglinear`, or if ``max_iter`` or ``tol`` is invalid.

    References
    ----------
    Marquardt DW. An algorithm for least-squares estimation of nonlinear
    parameters. J Soc Ind Appl Math 1963;11:431-441.

    Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential
    fitting based on auto-regression on linear operations (ARLO) of data.
    Magn Reson Med 2015;73:843-850 (ARLO start; comparison with NLLS).
    """
    if int(max_iter) != max_iter or max_iter < 1:
        raise QSMInputError(f"max_iter: {max_iter!r} must be a positive integer")
    if not np.isfinite(tol) or tol <= 0:
        raise QSMInputError(f"tol: {tol!r} must be a positive number")
    magnitude, te, mask, noise = _check_inputs(magnitude, te_s, mask, noise_sd, floor_snr)
    signal = magnitude[mask]
    n = signal.shape[0]
    rate = np.empty(n, dtype=np.float64)
    amplitude = np.empty(n, dtype=np.float64)
    # The echoes to fit are chosen once, from the ARLO start (float32 to halve the memory).
    values = np.empty(signal.shape, dtype=np.float32)
    kept = np.ones(signal.shape, dtype=bool)
    for start in range(0, n, CHUNK_VOXELS):
        part, keep = _fit_inputs(signal[start:start + CHUNK_VOXELS], te, noise, min(3, te.size))
        part_rate = _arlo_fit(part, te, keep)
        rate[start:start + CHUNK_VOXELS] = part_rate
        amplitude[start:start + CHUNK_VOXELS] = _amplitude(part, te, part_rate, keep)
        values[start:start + CHUNK_VOXELS] = part
        if keep is not None:
            kept[start:start + CHUNK_VOXELS] = keep
    damping = np.full(n, 1e-3)
    active = np.arange(n)
    for iteration in range(1, int(max_iter) + 1):
        still = []
        for start in range(0, active.size, CHUNK_VOXELS):
            index = active[start:start + CHUNK_VOXELS]
            done = _lm_step(values[index].astype(np.float64), kept[index].astype(np.float64), te, index,
                            rate, amplitude, damping, tol)
            still.append(index[~done])
        active = np.concatenate(still) if still else active[:0]
        if callback is not None:
            callback(iteration, float(active.size) / max(n, 1))
        if active.size == 0:
            break
    r2star = np.clip(rate, *R2STAR_RANGE_HZ)
    # Amplitude for the reported (clipped) rate.
    s0 = np.empty(n, dtype=np.float64)
    for start in range(0, n, CHUNK_VOXELS):
        part = slice(start, start + CHUNK_VOXELS)
        s0[part] = _amplitude(values[part].astype(np.float64), te, r2star[part], kept[part])
    return _scatter(r2star, mask), _scatter(s0, mask)


#: Bounds on R2* (1/s) during the nonlinear fit (wider than the reported range).
_NLLS_RATE_BOUNDS = (-200.0, 5000.0)


def _lm_step(signal, weights, te, index, rate, amplitude, damping, tol):
    """One Levenberg-Marquardt step for the voxels ``index``; updates the state in place.

    Returns a boolean array: True where the voxel has converged.
    """
    r, a, lam = rate[index], amplitude[index], damping[index]
    decay = np.exp(-r[:, None] * te)
    residual = signal - a[:, None] * decay
    cost = np.einsum("ne,ne,ne->n", weights, residual, residual)
    d_rate = -a[:, None] * te * decay           # derivative of the model in R2*
    h11 = np.einsum("ne,ne,ne->n", weights, decay, decay)
    h12 = np.einsum("ne,ne,ne->n", weights, decay, d_rate)
    h22 = np.einsum("ne,ne,ne->n", weights, d_rate, d_rate)
    g1 = np.einsum("ne,ne,ne->n", weights, decay, residual)
    g2 = np.einsum("ne,ne,ne->n", weights, d_rate, residual)
    d11, d22 = h11 * (1 + lam), h22 * (1 + lam)
    det = d11 * d22 - h12 * h12
    ok = det > 0
    det = np.where(ok, det, 1.0)
    step_a = np.where(ok, (d22 * g1 - h12 * g2) / det, 0.0)
    step_r = np.where(ok, (d11 * g2 - h12 * g1) / det, 0.0)
    new_r = np.clip(r + step_r, *_NLLS_RATE_BOUNDS)
    new_a = a + step_a
    new_residual = signal - new_a[:, None] * np.exp(-new_r[:, None] * te)
    new_cost = np.einsum("ne,ne,ne->n", weights, new_residual, new_residual)
    better = ok & (new_cost <= cost)
    rate[index] = np.where(better, new_r, r)
    amplitude[index] = np.where(better, new_a, a)
    damping[index] = np.where(better, lam / 3.0, lam * 10.0)
    small = np.abs(new_r - r) <= tol * np.maximum(np.abs(r), 1.0)
    return (better & small) | ~ok | (damping[index] > 1e8) | (h22 == 0)


def estimate_noise_sd(magnitude, mask=None):
    """Noise SD per channel from the background of a magnitude image.

    Where there is no signal the magnitude follows a Rayleigh law whose mode
    is the noise SD per real and imaginary channel. The mode of the
    histogram of the non-zero voxels outside ``mask`` (first echo of a 4D
    input) is robust to the tissue (scalp, skull) mixed into that background.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z) or (X, Y, Z, E)
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask; the background is the rest. Default: every voxel counts.

    Returns
    -------
    float
        The noise SD in the magnitude's units, or 0.0 when the image has too
        little background (fewer than 1000 non-zero voxels outside the mask,
        for example a crop inside the brain, or zero-filled background).

    References
    ----------
    Gudbjartsson H, Patz S. The Rician distribution of noisy MRI data.
    Magn Reson Med 1995;34:910-914.
    """
    image = np.asarray(magnitude)
    image = image[..., 0] if image.ndim == 4 else image
    image = as_volume(image, "magnitude")
    background = image if mask is None else image[~as_mask(mask, image.shape)]
    values = background[background > 0].astype(np.float64)
    if values.size < MIN_BACKGROUND_VOXELS:
        return 0.0
    # A first guess from the histogram's mode, then a fit of the Rayleigh shape below and
    # around it: log(h(x) / x) = c - x^2 / (2 sd^2). Tissue, brighter, does not reach there.
    upper = float(np.quantile(values, 0.5))
    counts, edges = np.histogram(values, bins=NOISE_MODE_BINS, range=(0.0, upper))
    counts = ndimage.gaussian_filter1d(counts.astype(np.float64), 3.0)
    mode = 0.5 * (edges[int(np.argmax(counts))] + edges[int(np.argmax(counts)) + 1])
    for _ in range(2):
        counts, edges = np.histogram(values, bins=NOISE_MODE_BINS, range=(0.0, 2.0 * mode))
        centres = 0.5 * (edges[:-1] + edges[1:])
        use = (centres > 0.25 * mode) & (centres < 1.25 * mode) & (counts > 0)
        if use.sum() < 10:
            break
        x2 = centres[use] ** 2
        y = np.log(counts[use] / centres[use])
        slope = np.polyfit(x2, y, 1, w=np.sqrt(counts[use]))[0]
        if not slope < 0:
            break
        mode = float(np.sqrt(-0.5 / slope))
    # A background that is not noise (a crop inside tissue) has no clear low mode.
    if mask is not None:
        inside = image[as_mask(mask, image.shape)]
        if mode >= 0.2 * float(np.median(inside)):
            return 0.0
    return float(mode)


def t2star_from_r2star(r2star_hz, mask=None):
    """T2* = 1 / R2* in seconds, at most 1 s, and 0 outside ``mask``.

    Parameters
    ----------
    r2star_hz : ndarray, shape (X, Y, Z)
        R2* in 1/s.
    mask : ndarray of bool, optional
        Voxels with a fit; default: every voxel with R2* > 0.

    Returns
    -------
    ndarray of float32
        T2* in s; voxels with R2* <= 1/s (no measurable decay) get 1 s.
    """
    r2star_hz = as_volume(r2star_hz, "r2star_hz")
    mask = r2star_hz > 0 if mask is None else as_mask(mask, r2star_hz.shape)
    t2star = 1.0 / np.maximum(r2star_hz, np.float32(1.0 / T2STAR_MAX_S))
    return np.where(mask, t2star, 0).astype(np.float32)


@dataclass
class R2StarMaps:
    """What :func:`r2star_map` returns; maps are float32 (X, Y, Z), 0 outside the mask.

    Attributes
    ----------
    r2star_hz : ndarray
        R2* in 1/s.
    t2star_s : ndarray
        T2* in s (see :func:`t2star_from_r2star`).
    s0 : ndarray
        Signal at TE = 0, in the magnitude's units.
    echoes_used : ndarray of uint8
        Echoes above the noise floor (and so fitted) per voxel.
    noise_sd : float
        The noise SD used for the floor (0: no floor).
    method : str
    """

    r2star_hz: np.ndarray
    t2star_s: np.ndarray
    s0: np.ndarray
    echoes_used: np.ndarray
    noise_sd: float
    method: str


def r2star_map(magnitude, te_s, mask=None, *, method="arlo", noise_sd="auto",
               floor_snr=DEFAULT_FLOOR_SNR, callback=None):
    """R2*, T2* and S0 maps by one of the fits, with noise-floor handling.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude per echo, E >= 2.
    te_s : sequence of float
        Echo times in seconds, one per echo.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask; the maps are 0 outside. Default: every voxel.
    method : {"arlo", "loglinear", "nlls"}, optional
        :func:`r2star_arlo` (default: direct and robust),
        :func:`r2star_loglinear` (|S|^2-weighted), or :func:`r2star_nlls`.
    noise_sd : float or "auto" or None, optional
        Noise SD for the floor; "auto" estimates it from the background.
    floor_snr : float, optional
        Noise floor in noise SDs (see :func:`r2star_arlo`).
    callback : callable(iteration, residual), optional
        Passed to the nonlinear fit.

    Returns
    -------
    R2StarMaps

    Raises
    ------
    QSMInputError
        If the method is unknown, or as the fits.

    References
    ----------
    Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential
    fitting based on auto-regression on linear operations (ARLO) of data.
    Magn Reson Med 2015;73:843-850.
    """
    if method not in R2STAR_METHODS:
        raise QSMInputError(f"method: {method!r} is not an R2* fit; choose one of {', '.join(R2STAR_METHODS)}")
    magnitude, te, mask, noise = _check_inputs(magnitude, te_s, mask, noise_sd, floor_snr)
    sd = None if noise is None else noise.sd
    if method == "arlo":
        r2star, s0 = r2star_arlo(magnitude, te, mask, noise_sd=sd, floor_snr=floor_snr)
    elif method == "nlls":
        r2star, s0 = r2star_nlls(magnitude, te, mask, noise_sd=sd, floor_snr=floor_snr, callback=callback)
    else:
        r2star, s0 = r2star_loglinear(magnitude, te, mask, noise_sd=sd, floor_snr=floor_snr)
    minimum = 2 if method == "loglinear" else min(3, te.size)
    signal = magnitude[mask]
    counts = np.empty(signal.shape[0], dtype=np.uint8)
    for start in range(0, signal.shape[0], CHUNK_VOXELS):
        _values, keep = _fit_inputs(signal[start:start + CHUNK_VOXELS], te, noise, minimum)
        counts[start:start + CHUNK_VOXELS] = te.size if keep is None else keep.sum(axis=1)
    used = np.zeros(mask.shape, dtype=np.uint8)
    used[mask] = counts
    return R2StarMaps(r2star_hz=r2star, t2star_s=t2star_from_r2star(r2star, mask), s0=s0,
                      echoes_used=used, noise_sd=sd or 0.0, method=method)


class _Noise(NamedTuple):
    sd: float        # noise SD per channel (magnitude units)
    floor: float     # magnitude under which an echo is dropped


def _check_inputs(magnitude, te_s, mask, noise_sd, floor_snr):
    """Checked magnitude (float32 4D), echo times, mask and noise model (:class:`_Noise` or None)."""
    magnitude = np.asarray(magnitude)
    if magnitude.ndim != 4 or magnitude.shape[3] < 2:
        raise QSMInputError(
            f"magnitude: got shape {magnitude.shape}; R2* needs a 4D array (X, Y, Z, echoes) "
            "with at least two echoes")
    magnitude = as_volume(magnitude, "magnitude", ndim=4)
    if magnitude.min() < 0:
        raise QSMInputError("magnitude: negative values found; give the magnitude image")
    te = check_echo_times(te_s, n_echoes=magnitude.shape[3], name="te_s")
    shape = magnitude.shape[:3]
    given_mask = mask is not None
    mask = np.ones(shape, dtype=bool) if mask is None else as_mask(mask, shape)
    floor_snr = check_number(floor_snr, "floor_snr")
    if isinstance(noise_sd, str):
        if noise_sd != "auto":
            raise QSMInputError(f"noise_sd: {noise_sd!r}; give a number (magnitude units), 'auto' or None")
        noise_sd = estimate_noise_sd(magnitude, mask if given_mask else None)
    if noise_sd is None:
        return magnitude, te, mask, None
    try:
        noise_sd = float(noise_sd)
    except (TypeError, ValueError):
        raise QSMInputError(f"noise_sd: {noise_sd!r} is not a number; give the noise SD, 'auto' or None") from None
    if not np.isfinite(noise_sd) or noise_sd < 0:
        raise QSMInputError(f"noise_sd: {noise_sd} must be a number >= 0 (magnitude units)")
    if noise_sd == 0:
        return magnitude, te, mask, None
    return magnitude, te, mask, _Noise(noise_sd, noise_sd * floor_snr)


def _fit_inputs(signal, te, noise, minimum):
    """The magnitudes (N, E) to fit, float64, and the echoes to use (N, E), or None for every echo.

    With a noise model:

    1. the Rician bias is removed, ``sqrt(max(|S|^2 - sd^2, 0))`` (Gudbjartsson
       and Patz 1995);
    2. echoes are kept up to the first one under the floor;
    3. twice, the ARLO fit on those echoes predicts every echo, and only the
       echoes predicted above the floor are kept. Deciding on the prediction,
       not on each noisy sample, avoids selecting echoes that noise pushed up.

    The first ``minimum`` echoes are always kept.
    """
    values = np.asarray(signal, dtype=np.float64)
    if noise is None:
        return values, None
    values = np.sqrt(np.maximum(values * values - noise.sd ** 2, 0.0))
    keep = values >= noise.floor
    keep[:, :minimum] = True
    keep = np.logical_and.accumulate(keep, axis=1)
    if te.size >= 3:
        for _ in range(FLOOR_PASSES):
            rate = _arlo_fit(values, te, keep)
            predicted = _amplitude(values, te, rate, keep)[:, None] * np.exp(-rate[:, None] * te)
            keep = predicted >= noise.floor
            keep[:, :minimum] = True
            keep = np.logical_and.accumulate(keep, axis=1)
    return values, keep


def _scatter(values, mask):
    """Per-voxel values into a float32 volume, 0 outside ``mask``."""
    out = np.zeros(mask.shape, dtype=np.float32)
    out[mask] = values
    return out
