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


# --- ARLO, nonlinear least squares, noise floor, T2* ------------------------------------------

from qsmlib import Cancelled  # noqa: E402
from qsmlib.io import load_echo_series  # noqa: E402
from qsmlib.masking import brain_mask  # noqa: E402
from qsmlib.relaxometry import (estimate_noise_sd, r2star_arlo, r2star_map, r2star_nlls,  # noqa: E402
                                t2star_from_r2star)
from qsmlib.simulation import load_head_phantom, simulate_gre  # noqa: E402

FITS = {"loglinear": r2star_loglinear, "arlo": r2star_arlo, "nlls": r2star_nlls}


def rician(signal, sigma, rng):
    return np.abs(signal + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)))


def test_arlo_and_nlls_are_exact_on_noiseless_decay():
    r2star, s0 = known_maps()
    signal = decay(r2star, s0, TE_S)
    fitted, fitted_s0 = r2star_nlls(signal, TE_S, noise_sd=None)
    assert np.max(np.abs(fitted / r2star - 1)) < 1e-5 and np.max(np.abs(fitted_s0 / s0 - 1)) < 1e-5
    fitted, fitted_s0 = r2star_arlo(signal, TE_S, noise_sd=None)
    # ARLO's only error is Simpson's rule: (R2* dTE)^4 / 180 relative, 1.2 % at 200/s and 6 ms.
    bound = (r2star * 0.006) ** 4 / 180
    assert np.all(np.abs(fitted / r2star - 1) < 1.5 * bound + 1e-6)
    assert np.max(np.abs(fitted[r2star < 50] / r2star[r2star < 50] - 1)) < 1e-4
    # Unequal spacing: the quadrature follows the echo times.
    te = np.array([0.003, 0.0045, 0.009, 0.012, 0.02])
    slow = np.minimum(r2star, 60)
    fitted, _ = r2star_arlo(decay(slow, s0, te), te, noise_sd=None)
    assert np.max(np.abs(fitted / slow - 1)) < 2e-3
    # Two echoes: the two-point log ratio, exact.
    fitted, fitted_s0 = r2star_arlo(signal[..., :2], TE_S[:2], noise_sd=None)
    assert np.max(np.abs(fitted / r2star - 1)) < 1e-5 and np.max(np.abs(fitted_s0 / s0 - 1)) < 1e-5


@pytest.mark.parametrize("method", ["loglinear", "arlo", "nlls"])
def test_noise_floor_echoes_are_dropped(method):
    # R2* 250/s: from 12 ms on the signal is under 3 noise SDs, from 20 ms it is pure noise.
    rng = np.random.default_rng(7)
    te = np.arange(1, 11) * 0.004
    r2star = np.full((40, 40, 10), 250.0)
    sigma = 0.01                                   # SNR 100 at TE = 0
    noisy = rician(decay(r2star, np.ones_like(r2star), te), sigma, rng).astype(np.float32)
    fit = FITS[method]
    robust, _ = fit(noisy, te, noise_sd=sigma)
    naive, _ = fit(noisy, te, noise_sd=None)
    # Measured: loglinear -35 % naive, -1 % robust; ARLO -4 % / -0.5 %; NLLS -3 % / -0.3 %.
    assert abs(np.median(robust) / 250 - 1) < 0.015
    assert abs(np.median(naive) / 250 - 1) > 2 * abs(np.median(robust) / 250 - 1)
    maps = r2star_map(noisy, te, method=method, noise_sd=sigma)
    np.testing.assert_array_equal(maps.r2star_hz, robust)
    assert np.median(maps.echoes_used) in (3, 4)   # 3 noise SDs reached between 8 and 16 ms


def test_nlls_callback_counts_iterations_and_can_cancel():
    r2star, s0 = known_maps()
    rng = np.random.default_rng(1)
    noisy = rician(decay(r2star, s0, TE_S), 0.01, rng)
    calls = []
    r2star_nlls(noisy, TE_S, noise_sd=0.01, callback=lambda i, r: calls.append((i, r)))
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert all(isinstance(r, float) and 0 <= r <= 1 for _, r in calls) and calls[-1][1] < calls[0][1]

    def stop(iteration, residual):
        raise Cancelled()
    with pytest.raises(Cancelled):
        r2star_nlls(noisy, TE_S, noise_sd=0.01, callback=stop)


def test_t2star_is_the_inverse_of_r2star_with_a_cap():
    r2star = np.array([[[0.0, 0.5, 20.0, 250.0]] * 2] * 2, dtype=np.float32)
    mask = np.ones(r2star.shape, bool)
    mask[0, 0, 0] = False
    t2star = t2star_from_r2star(r2star, mask)
    np.testing.assert_allclose(t2star[1, 1], [1.0, 1.0, 0.05, 0.004], rtol=1e-6)
    assert t2star[0, 0, 0] == 0 and t2star.dtype == np.float32


def test_noise_sd_is_estimated_from_the_background():
    rng = np.random.default_rng(4)
    image = np.zeros((40, 40, 30, 2), np.float32)
    image[10:30, 10:30, 8:22] = 5.0
    noisy = rician(image, 0.2, rng).astype(np.float32)
    mask = image[..., 0] > 0
    assert estimate_noise_sd(noisy, mask) == pytest.approx(0.2, rel=0.05)
    # No background (the mask is everything, or the background is zero-filled): no estimate.
    assert estimate_noise_sd(noisy, np.ones(mask.shape, bool)) == 0.0
    assert estimate_noise_sd(np.where(mask[..., None], noisy, 0), mask) == 0.0


def test_new_fits_refuse_bad_input():
    r2star, s0 = known_maps()
    signal = decay(r2star, s0, TE_S)
    for fit in (r2star_arlo, r2star_nlls):
        with pytest.raises(QSMInputError, match="at least two echoes"):
            fit(signal[..., :1], TE_S[:1])
        with pytest.raises(QSMInputError, match="echo times given"):
            fit(signal, TE_S[:4])
    with pytest.raises(QSMInputError, match="at least two echoes"):
        r2star_map(signal[..., 0], TE_S[:1])
    with pytest.raises(QSMInputError, match="not an R2\\* fit"):
        r2star_map(signal, TE_S, method="magic")
    with pytest.raises(QSMInputError, match="noise_sd"):
        r2star_arlo(signal, TE_S, noise_sd="loud")
    with pytest.raises(QSMInputError, match="noise_sd"):
        r2star_arlo(signal, TE_S, noise_sd=-1.0)
    with pytest.raises(QSMInputError, match="max_iter"):
        r2star_nlls(signal, TE_S, max_iter=0)


# --- The simulated head and the real scan ----------------------------------------------------

@pytest.fixture(scope="module")
def phantom():
    return load_head_phantom(1.5)


def _tissue_errors(r2star, sim, tissues):
    """Relative error of the median R2* of every brain tissue (calcification excluded: no signal)."""
    errors = {}
    for label, tissue in tissues.items():
        voxels = (sim.labels == label) & sim.brain_mask
        if voxels.sum() > 50 and tissue.name != "Calcification":
            errors[tissue.name] = float(np.median(r2star[voxels]) / tissue.r2star_3t_hz - 1)
    return errors


def test_head_r2star_is_exact_without_noise(phantom):
    sim = simulate_gre(phantom, snr=None)
    inside = sim.brain_mask & (sim.r2star_hz < 100)
    for method in FITS:
        maps = r2star_map(sim.magnitude, sim.te_s, sim.brain_mask, method=method)
        error = np.abs(maps.r2star_hz[inside] / sim.r2star_hz[inside] - 1)
        assert error.max() < 1e-4, method            # measured 2e-6 (ARLO 1.5e-5)
        np.testing.assert_allclose(maps.t2star_s[inside], 1 / sim.r2star_hz[inside], rtol=1e-4)


def test_head_r2star_at_snr_100_per_tissue_and_arlo_agrees_with_nlls(phantom):
    sim = simulate_gre(phantom, snr=100)
    assert estimate_noise_sd(sim.magnitude, sim.brain_mask) == pytest.approx(sim.noise_sd, rel=0.05)
    results = {}
    for method in FITS:
        maps = r2star_map(sim.magnitude, sim.te_s, sim.brain_mask, method=method)
        errors = _tissue_errors(maps.r2star_hz, sim, phantom.tissues)
        assert len(errors) == 11                    # 7 nuclei, WM, GM, CSF, blood
        assert max(abs(e) for e in errors.values()) < 0.05, (method, errors)   # measured < 0.6 %
        results[method] = maps.r2star_hz
    white = (sim.labels == 8) & sim.brain_mask
    arlo, nlls = np.median(results["arlo"][white]), np.median(results["nlls"][white])
    assert abs(arlo / nlls - 1) < 0.03
    # Voxel by voxel too: the median relative difference in white matter is small.
    assert np.median(np.abs(results["arlo"][white] / results["nlls"][white] - 1)) < 0.03


def test_r2star_on_the_real_scan_is_finite_and_plausible(test_data):
    magnitude, _ = load_echo_series([test_data / "romeo-small" / "Mag.nii.gz"], "mag")
    te = [0.004, 0.008, 0.012]
    mask = brain_mask(magnitude, (0.47, 0.47, 1.0))
    for method in FITS:
        maps = r2star_map(magnitude, te, mask, method=method)
        for image in (maps.r2star_hz, maps.t2star_s, maps.s0):
            assert np.all(np.isfinite(image[mask]))
        # Brain tissue at 3 T: R2* mostly 10-60 /s.
        assert 10 < np.median(maps.r2star_hz[mask]) < 60, method
        assert np.all(maps.r2star_hz[~mask] == 0)
