"""R2* (and T2* = 1 / R2*) from multi-echo gradient-echo magnitude.

Mono-exponential decay model per voxel: ``|S(t)| = S0 exp(-R2* t)``.
"""

import numpy as np

from .errors import QSMInputError
from .validation import as_mask, as_volume, check_echo_times

#: Plausible R2* range in 1/s; fitted values are clipped to it.
R2STAR_RANGE_HZ = (0.0, 1000.0)
#: Voxels fitted at once (bounds the float64 work arrays to some tens of MB).
CHUNK_VOXELS = 1 << 18


def r2star_loglinear(magnitude, te_s, mask=None, *, weighted=True):
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
    mask = np.ones(shape, dtype=bool) if mask is None else as_mask(mask, shape)

    signal = magnitude[mask]                                     # (N, E) float32
    r2star = np.empty(signal.shape[0], dtype=np.float32)
    s0 = np.empty(signal.shape[0], dtype=np.float32)
    for start in range(0, signal.shape[0], CHUNK_VOXELS):
        part = slice(start, start + CHUNK_VOXELS)
        r2star[part], s0[part] = _loglinear_fit(signal[part].astype(np.float64), te, weighted)

    r2star_map = np.zeros(shape, dtype=np.float32)
    s0_map = np.zeros(shape, dtype=np.float32)
    r2star_map[mask] = r2star
    s0_map[mask] = s0
    return r2star_map, s0_map


def _loglinear_fit(signal, te, weighted):
    """R2* (clipped) and S0 of each row of ``signal`` (N, E), float64."""
    log_signal = np.log(np.maximum(signal, np.finfo(np.float32).tiny))
    if weighted:
        # Weights relative to each voxel's strongest echo: no underflow for fast decay.
        peak = signal.max(axis=1, keepdims=True)
        weights = (signal / np.where(peak > 0, peak, 1.0)) ** 2
    else:
        weights = np.ones_like(signal)
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
