"""R2* by weighted log-linear fit: exact on noiseless decay, accurate at SNR 100."""

import numpy as np
import pytest

from qsmlib import QSMInputError
from qsmlib.relaxometry import r2star_loglinear

TE_S = np.array([0.004, 0.010, 0.016, 0.022, 0.028])
SHAPE = (24, 20, 16)


def decay(r2star, s0, te):
    return s0[..., None] * np.exp(-r2star[..., None] * np.asarray(te))


def known_maps(seed=0):
    rng = np.random.default_rng(seed)
    r2star = rng.uniform(5.0, 200.0, SHAPE)
    s0 = rng.uniform(0.5, 2.0, SHAPE)
    return r2star, s0


@pytest.mark.parametrize("weighted", [True, False])
def test_noiseless_decay_is_exact(weighted):
    r2star, s0 = known_maps()
    fitted, fitted_s0 = r2star_loglinear(decay(r2star, s0, TE_S), TE_S, weighted=weighted)
    assert fitted.dtype == np.float32 and fitted_s0.dtype == np.float32
    assert np.max(np.abs(fitted / r2star - 1)) < 1e-4
    assert np.max(np.abs(fitted_s0 / s0 - 1)) < 1e-4


def test_unequal_echo_times_and_mask():
    r2star, s0 = known_maps(1)
    te = np.array([0.003, 0.0045, 0.012, 0.03])
    mask = np.zeros(SHAPE, bool)
    mask[4:20, 3:17, 2:14] = True
    fitted, fitted_s0 = r2star_loglinear(decay(r2star, s0, te), te, mask)
    assert np.max(np.abs(fitted[mask] / r2star[mask] - 1)) < 1e-4
    assert np.all(fitted[~mask] == 0) and np.all(fitted_s0[~mask] == 0)


def test_snr_100_gives_r2star_within_5_percent():
    rng = np.random.default_rng(2)
    r2star = rng.uniform(15.0, 60.0, SHAPE)      # brain tissue range at 3 T
    s0 = np.ones(SHAPE)
    signal = decay(r2star, s0, TE_S)
    sigma = np.exp(-r2star.mean() * TE_S[0]) / 100     # SNR 100 at the first echo
    noisy = np.abs(signal + sigma * (rng.standard_normal(signal.shape)
                                     + 1j * rng.standard_normal(signal.shape)))
    fitted, _ = r2star_loglinear(noisy, TE_S)
    relative = fitted / r2star - 1
    assert abs(np.mean(relative)) < 0.005             # no bias
    assert np.percentile(np.abs(relative), 95) < 0.05
    # Weighting by |S|^2 beats the ordinary fit on the same data.
    unweighted, _ = r2star_loglinear(noisy, TE_S, weighted=False)
    assert np.std(fitted - r2star) < np.std(unweighted - r2star)


def test_values_are_clipped_to_the_plausible_range():
    r2star = np.full(SHAPE, 30.0)
    r2star[0] = -50.0        # a growing signal: no physical R2*
    r2star[1] = 3000.0       # faster than the 1000/s bound
    s0 = np.ones(SHAPE)
    fitted, _ = r2star_loglinear(decay(r2star, s0, TE_S), TE_S)
    assert np.all(fitted[0] == 0)
    assert np.all(fitted[1] == 1000)
    assert np.allclose(fitted[2:], 30.0, rtol=1e-4)


def test_voxels_without_signal_give_zero():
    r2star, s0 = known_maps()
    signal = decay(r2star, s0, TE_S)
    signal[0] = 0
    fitted, fitted_s0 = r2star_loglinear(signal, TE_S)
    assert np.all(fitted[0] == 0) and np.all(fitted_s0[0] == 0)
    assert np.all(np.isfinite(fitted)) and np.all(np.isfinite(fitted_s0))


def test_invalid_inputs_raise_clear_errors():
    r2star, s0 = known_maps()
    signal = decay(r2star, s0, TE_S)
    with pytest.raises(QSMInputError, match="at least two echoes"):
        r2star_loglinear(signal[..., :1], TE_S[:1])
    with pytest.raises(QSMInputError, match="at least two echoes"):
        r2star_loglinear(signal[..., 0], TE_S[:1])
    with pytest.raises(QSMInputError, match="milliseconds"):
        r2star_loglinear(signal, TE_S * 1000)
    with pytest.raises(QSMInputError, match="echo times given"):
        r2star_loglinear(signal, TE_S[:3])
    with pytest.raises(QSMInputError, match="negative"):
        r2star_loglinear(-signal, TE_S)
    with pytest.raises(QSMInputError, match="mask"):
        r2star_loglinear(signal, TE_S, np.ones((2, 2, 2), bool))
