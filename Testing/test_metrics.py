"""Challenge metrics (qsmlib.metrics) against hand-computed cases."""

import math

import numpy as np
import pytest

from qsmlib import metrics
from qsmlib.errors import QSMInputError


def _pattern(shape=(16, 16, 16), seed=0):
    """A smooth random map (ppm) with zero mean over the whole volume."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    field *= 0.05 / field.std()
    return (field - field.mean()).astype(np.float32)


def test_nrmse_hand_computed():
    truth = np.zeros((4, 4, 4), np.float32)
    mask = np.zeros(truth.shape, bool)
    mask[1, 1, :] = True                                  # four voxels
    truth[1, 1, :] = [1.0, -1.0, 1.0, -1.0]              # mean 0, norm 2
    estimate = np.where(mask, 0.5 * truth + 7.0, 3.0)    # the offset and the outside do not count
    assert metrics.nrmse(estimate, truth, mask) == pytest.approx(50.0, abs=1e-9)
    # Without demeaning the offset counts: ||0.5 t + 7 - t|| / ||t|| = ||(-0.5, 0.5, ..) + 7|| / 2.
    expected = 100 * math.sqrt(2 * 6.5 ** 2 + 2 * 7.5 ** 2) / 2
    assert metrics.nrmse(estimate, truth, mask, demean=False) == pytest.approx(expected, rel=1e-9)


def test_hfen_log_kernel_centre_and_scaling():
    # Impulse response at the centre = kernel centre: g0^3 (-3 / s^2) minus the kernel mean.
    s, half = 1.5, 7
    g = [math.exp(-x * x / (2 * s * s)) for x in range(-half, half + 1)]
    norm = sum(g)
    g = [v / norm for v in g]
    second = [v * (x * x / s ** 4 - 1 / s ** 2) for v, x in zip(g, range(-half, half + 1))]
    kernel_mean = 3 * sum(second) / 15 ** 3
    impulse = np.zeros((21, 21, 21))
    impulse[10, 10, 10] = 1.0
    response = metrics.log_filter(impulse)
    assert response[10, 10, 10] == pytest.approx(g[half] ** 3 * (-3 / s ** 2) - kernel_mean, rel=1e-12)
    assert response[10, 10, 10 + 1] == pytest.approx(g[half] ** 2 * second[half + 1]
                                                     + 2 * g[half + 1] * g[half] * second[half]
                                                     - kernel_mean, rel=1e-12)
    assert abs(response.sum()) < 1e-12                    # a zero-sum kernel
    truth = _pattern()
    mask = np.ones(truth.shape, bool)
    mask[:2] = False
    assert metrics.hfen(truth, truth, mask) == 0.0
    assert metrics.hfen(1.5 * truth + 0.2, truth, mask) == pytest.approx(50.0, rel=1e-6)   # float32 maps
    assert metrics.nrmse(0.25 * truth, truth, mask) == pytest.approx(75.0, rel=1e-6)


def test_xsim_constant_maps_hand_computed():
    mask = np.ones((8, 8, 8), bool)
    a, b = 0.1, 0.05
    c1 = (0.01 * 1.0) ** 2
    # Constant maps: no variance, so the index is the luminance term alone.
    value = metrics.xsim(np.full(mask.shape, a), np.full(mask.shape, b), mask, demean=False)
    assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)   # 0.80159
    assert value == pytest.approx(0.0101 / 0.0126, rel=1e-9)


def test_xsim_ramp_hand_computed():
    # A ramp along the first axis: the 3D window reduces to the 1D Gaussian weights
    # w_k (sigma 1.5, |k| <= 3) along that axis, with the edge values replicated.
    n, slope, alpha, beta = 12, 0.01, 0.5, 0.02
    ramp = slope * (np.arange(n) - (n - 1) / 2)
    truth = np.broadcast_to(ramp[:, None, None], (n, 6, 6)).copy()
    estimate = alpha * truth + beta
    mask = np.ones(truth.shape, bool)
    k = np.arange(-3, 4)
    w = np.exp(-k ** 2 / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2 = (0.01) ** 2, (0.001) ** 2
    expected = []
    for i in range(n):
        samples = ramp[np.clip(i + k, 0, n - 1)]
        mu_y = float(w @ samples)
        var_y = float(w @ samples ** 2) - mu_y ** 2
        mu_x = alpha * mu_y + beta
        expected.append((2 * mu_x * mu_y + c1) * (2 * alpha * var_y + c2)
                        / ((mu_x ** 2 + mu_y ** 2 + c1) * ((alpha ** 2 + 1) * var_y + c2)))
    assert metrics.xsim(estimate, truth, mask, demean=False) == pytest.approx(np.mean(expected), rel=1e-9)


def test_identical_maps_score_one():
    truth = _pattern()
    mask = np.zeros(truth.shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    assert metrics.ssim(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)
    assert metrics.xsim(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)
    assert metrics.xsim(truth + 0.3, truth, mask) == pytest.approx(1.0, abs=1e-12)   # demeaned


def test_ssim_rescaling_versus_xsim():
    truth = _pattern()
    mask = np.ones(truth.shape, bool)
    rng = np.random.default_rng(1)
    noisy = truth + rng.normal(0, 0.01, truth.shape).astype(np.float32)
    # The 2016 SSIM rescales both maps to [0, 255] by their joint extremes: scaling both
    # maps together changes nothing. XSIM works in ppm, with L = 1 ppm: it changes.
    assert metrics.ssim(3 * noisy, 3 * truth, mask) == pytest.approx(metrics.ssim(noisy, truth, mask), abs=1e-8)
    # Measured 0.9602 < 0.9667 < 0.9707 for scales 3, 1, 0.1: smaller maps, relatively larger C1, C2.
    scaled = [metrics.xsim(f * noisy, f * truth, mask) for f in (3.0, 1.0, 0.1)]
    assert scaled[0] + 0.003 < scaled[1] < scaled[2] - 0.003
    # One extreme voxel (a streak, 5 ppm) compresses the SSIM range and raises the score of
    # every other voxel ("hacking", Milovic et al. 2025); XSIM does not reward it.
    streak = noisy.copy()
    streak[8, 8, 8] = 5.0
    ssim_clean, ssim_streak = metrics.ssim(noisy, truth, mask), metrics.ssim(streak, truth, mask)
    xsim_clean, xsim_streak = metrics.xsim(noisy, truth, mask), metrics.xsim(streak, truth, mask)
    assert ssim_streak > ssim_clean + 0.02          # measured 0.963 -> 0.991
    assert xsim_streak < xsim_clean - 0.05          # measured 0.967 -> 0.892


def test_dgm_errors_hand_computed():
    truth = np.zeros((6, 6, 6), np.float32)
    labels = np.zeros(truth.shape, np.uint8)
    mask = np.ones(truth.shape, bool)
    labels[0:2] = 1
    labels[2:4] = 2
    truth[0:2] = 0.10
    truth[2:4] = 0.05
    truth[4:6] = -0.15                                  # whole-brain mean 0
    estimate = 0.8 * truth                              # contrast shrunk by 20 %, mean still 0
    # Regions: |0.08 - 0.10| = 0.02 and |0.04 - 0.05| = 0.01 -> mean 0.015 ppm.
    assert metrics.dgm_mean_abs_error(estimate, truth, labels, [1, 2], mask) == pytest.approx(0.015, abs=1e-7)
    assert metrics.dgm_slope_error(estimate, truth, labels, [1, 2], mask) == pytest.approx(0.2, abs=1e-6)
    errors = metrics.region_errors(estimate, truth, labels, {1: "a", 2: "b"}, mask)
    assert errors["a"] == pytest.approx(-0.02, abs=1e-7) and errors["b"] == pytest.approx(-0.01, abs=1e-7)
    # An offset of the estimate is removed by the whole-brain referencing.
    assert metrics.dgm_mean_abs_error(estimate + 1.0, truth, labels, [1, 2], mask) == pytest.approx(0.015, abs=1e-6)


def test_bad_input_refused():
    truth = _pattern((8, 8, 8))
    mask = np.ones(truth.shape, bool)
    with pytest.raises(QSMInputError, match="same voxel grid"):
        metrics.nrmse(truth[:-1], truth[:-1] * 0 + truth[:-1], np.ones((8, 8, 8), bool))
    with pytest.raises(QSMInputError, match="shape"):
        metrics.xsim(truth, truth[:, :, :-1], mask)
    with pytest.raises(QSMInputError, match="empty"):
        metrics.ssim(truth, truth, np.zeros_like(mask))
    with pytest.raises(QSMInputError, match="constant"):
        metrics.nrmse(truth, np.ones_like(truth), mask)
    with pytest.raises(QSMInputError, match="odd"):
        metrics.hfen(truth, truth + 1, mask, kernel_size=14)
    with pytest.raises(QSMInputError, match="no voxel"):
        metrics.dgm_mean_abs_error(truth, truth, np.zeros(truth.shape, int), [3], mask)
