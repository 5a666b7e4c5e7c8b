"""Nonlinear complex echo fit, MCPC-3D-S phase offset and residual-based mask exclusion."""

import numpy as np
import pytest

from qsmlib import QSMInputError
from qsmlib.errors import Cancelled
from qsmlib.fieldmap import (fit_multi_echo_field, mcpc3ds_phase_offset, residual_exclusion_mask,
                             trusted_field_mask)
from qsmlib.fieldmap.nonlinear_fit import complex_gauss_newton

SHAPE = (32, 34, 30)
VOXEL_SIZE = (1.0, 1.0, 1.5)
TE_S = np.array([0.004, 0.009, 0.014, 0.019, 0.024])


def coordinates():
    return np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * d for n, d in zip(SHAPE, VOXEL_SIZE)],
                       indexing="ij", sparse=True)


def known_maps(offset_curvature=0.001):
    """Field of a few hundred Hz (median within +-1 / (2 dTE)), R2* decay, an ellipsoid mask,
    and a smooth offset: a ramp that wraps inside the mask plus a small harmonic curvature."""
    x, y, z = coordinates()
    field = 15.0 + 8.0 * x - 5.0 * y + 4.0 * z + 0.2 * (x ** 2 - y ** 2)
    offset = 2.0 + 0.35 * x - 0.25 * y + 0.1 * z + offset_curvature * (x ** 2 - z ** 2)
    mask = (x / 14) ** 2 + (y / 15) ** 2 + (z / 20) ** 2 <= 1
    r2star = 25.0 + 0.3 * x
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    return (np.broadcast_to(field, shape), np.broadcast_to(offset, shape), mask,
            np.broadcast_to(r2star, shape))


def gre_signal(field, offset, r2star, te=TE_S):
    phase = offset[..., None] + 2 * np.pi * field[..., None] * te
    magnitude = np.exp(-r2star[..., None] * te) * np.ones(phase.shape)
    return magnitude, phase


def wrapped(phase):
    return np.angle(np.exp(1j * phase)).astype(np.float32)


def noisy(magnitude, phase, sigma, seed):
    rng = np.random.default_rng(seed)
    signal = magnitude * np.exp(1j * phase)
    signal = signal + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape))
    return np.abs(signal), np.angle(signal)


def test_nonlinear_fit_is_exact_on_noiseless_data():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    assert np.abs(2 * np.pi * field[mask] * TE_S[-1]).max() > 8 * np.pi       # many wraps
    result = fit_multi_echo_field(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE,
                                  model="nonlinear")
    assert result.field_hz.dtype == np.float32
    assert np.abs(result.field_hz - field)[mask].max() < 1e-3
    offset_error = np.angle(np.exp(1j * (result.phase_offset_rad - offset)))[mask]
    assert np.abs(offset_error).max() < 1e-4
    assert result.residual[mask].max() < 1e-5
    for volume in (result.field_hz, result.phase_offset_rad, result.field_sd_hz, result.residual):
        assert np.all(volume[~mask] == 0)


def test_gauss_newton_converges_from_a_perturbed_start():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    rng = np.random.default_rng(0)
    n = int(mask.sum())
    start_field = field[mask] + rng.normal(0, 3.0, n)             # 3 Hz: 0.45 rad at the last echo
    start_offset = offset[mask] + rng.normal(0, 0.3, n)
    steps = []
    fitted, fitted_offset, iterations = complex_gauss_newton(
        magnitude[mask], wrapped(phase)[mask], TE_S, start_field, start_offset, 1e-12,
        max_iter=50, tol=1e-6, callback=lambda iteration, step: steps.append((iteration, step)))
    assert np.abs(fitted - field[mask]).max() < 1e-4
    assert np.abs(np.angle(np.exp(1j * (fitted_offset - offset[mask])))).max() < 1e-5
    # Quadratic-like convergence near the solution: few steps, shrinking fast.
    assert iterations <= 10
    assert [i for i, _ in steps] == list(range(1, iterations + 1))
    assert steps[-1][1] < 1e-3 * steps[0][1]


def test_wrong_temporal_unwrap_is_repaired_by_the_nonlinear_fit():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    # Phase given as unwrapped, but echo 3 is off by a whole turn in 10 % of the voxels.
    bad = mask & (np.random.default_rng(1).random(SHAPE) < 0.1)
    phase[..., 2] += np.where(bad, 2 * np.pi, 0)
    linear = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, unwrap=None)
    nonlinear = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, unwrap=None,
                                     model="nonlinear")
    assert np.abs(linear.field_hz - field)[bad].min() > 5           # the line is pulled away
    assert np.abs(nonlinear.field_hz - field)[mask].max() < 1e-3     # the complex fit is not
    assert nonlinear.residual[mask].max() < 1e-5


@pytest.mark.parametrize("model,phase_offset", [("nonlinear", "intercept"), ("nonlinear", "mcpc3ds"),
                                                ("linear", "mcpc3ds")])
def test_field_sd_matches_the_scatter_of_the_field(model, phase_offset):
    field, offset, mask, r2star = known_maps(offset_curvature=0.0)   # a ramp: MCPC-3D-S is exact
    magnitude, phase = gre_signal(field, offset, r2star)
    sigma = 0.02                                                     # SNR 50 at the first echo
    magnitude, phase = noisy(magnitude, phase, sigma, seed=3)
    result = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, model=model,
                                  phase_offset=phase_offset)
    assert result.noise_sd_source == "residual"
    assert abs(result.noise_sd / sigma - 1) < 0.1
    error = (result.field_hz - field)[mask]
    assert abs(np.mean(error)) < 0.05
    predicted = np.sqrt(np.mean(result.field_sd_hz[mask] ** 2))
    assert abs(np.std(error) / predicted - 1) < 0.1
    z = error / result.field_sd_hz[mask]
    assert abs(np.std(z) - 1) < 0.1


def test_mcpc3ds_about_halves_the_field_noise_of_five_even_echoes():
    # Without intercept var(f) ~ 1 / sum w t^2 instead of 1 / sum w (t - tbar)^2.
    field, offset, mask, r2star = known_maps(offset_curvature=0.0)
    magnitude, phase = gre_signal(field, offset, r2star)
    magnitude, phase = noisy(magnitude, phase, 0.02, seed=4)
    with_intercept = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE)
    mcpc = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, phase_offset="mcpc3ds")
    voxel = tuple(n // 2 for n in SHAPE)
    w = np.exp(-2 * r2star[voxel] * TE_S)
    tbar = np.sum(w * TE_S) / np.sum(w)
    expected_ratio = np.sqrt(np.sum(w * (TE_S - tbar) ** 2) / np.sum(w * TE_S ** 2))
    rmse = [np.sqrt(np.mean((fit.field_hz - field)[mask] ** 2)) for fit in (with_intercept, mcpc)]
    assert expected_ratio < 0.55
    assert rmse[1] / rmse[0] == pytest.approx(expected_ratio, rel=0.1)


def test_mcpc3ds_recovers_a_smooth_wrapping_offset():
    field, offset, mask, r2star = known_maps()
    assert np.ptp(offset[mask]) > 4 * np.pi                        # offset wraps inside the mask
    magnitude, phase = gre_signal(field, offset, r2star)
    estimate = mcpc3ds_phase_offset(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE)
    assert estimate.dtype == np.float32
    assert np.all(estimate[~mask] == 0)
    error = np.angle(np.exp(1j * (estimate - offset)))[mask]
    # The curvature (0.001 rad/mm^2) is biased only at the mask edge, by a one-sided average.
    assert np.sqrt(np.mean(error ** 2)) < 0.02
    assert np.abs(error).max() < 0.1
    # A pure ramp is recovered exactly, and then the fit without intercept is exact too.
    field, ramp, mask, r2star = known_maps(offset_curvature=0.0)
    magnitude, phase = gre_signal(field, ramp, r2star)
    estimate = mcpc3ds_phase_offset(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE)
    assert np.abs(np.angle(np.exp(1j * (estimate - ramp)))[mask]).max() < 1e-4
    fit = fit_multi_echo_field(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE,
                               phase_offset="mcpc3ds", model="nonlinear")
    assert np.abs(fit.field_hz - field)[mask].max() < 1e-3
    assert np.abs(np.angle(np.exp(1j * (fit.phase_offset_rad - ramp)))[mask]).max() < 1e-4


def test_mcpc3ds_on_noisy_data_matches_the_noiseless_estimate():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    clean = mcpc3ds_phase_offset(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE)
    noisy_magnitude, noisy_phase = noisy(magnitude, phase, 0.05, seed=6)    # SNR 20
    estimate = mcpc3ds_phase_offset(noisy_magnitude, noisy_phase, TE_S, mask, VOXEL_SIZE)
    # Raw offsets scatter by ~0.06 rad; the 4 mm smoothing leaves a few mrad.
    difference = np.angle(np.exp(1j * (estimate - clean)))[mask]
    assert np.sqrt(np.mean(difference ** 2)) < 0.01


def two_component_signal(mask_region):
    """Known maps, with a second component (+300 Hz, 0.7 of the amplitude) in ``mask_region``.

    No single frequency fits it: the best relative residual of any line is 0.51.
    """
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    signal = magnitude * np.exp(1j * phase)
    second = 0.7 * np.exp(1j * 2 * np.pi * 300.0 * TE_S)
    signal = np.where(mask_region[..., None], signal * (1 + second), signal)
    return np.abs(signal), np.angle(signal), field, mask


def test_two_frequency_voxels_get_a_high_residual_and_are_excluded():
    field, offset, mask, r2star = known_maps()
    x, y, z = coordinates()
    edge_cluster = mask & ((x - 12) ** 2 + y ** 2 + z ** 2 <= 16)     # at the edge (x up to 14)
    inner_cluster = mask & (x ** 2 + (y - 3) ** 2 + z ** 2 <= 9)      # deep inside
    magnitude, phase, field, mask = two_component_signal(edge_cluster | inner_cluster)
    fit = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, model="nonlinear")
    mixed = edge_cluster | inner_cluster
    assert fit.residual[mixed].min() > 0.3
    assert fit.residual[mask & ~mixed].max() < 1e-5
    refined = residual_exclusion_mask(fit, mask)
    assert not refined[edge_cluster].any()            # edge cluster removed from the mask
    assert refined[inner_cluster].all()               # interior cluster kept (no hole) ...
    assert not trusted_field_mask(fit, mask)[inner_cluster].any()   # ... but not trusted
    assert np.array_equal(refined, mask & ~edge_cluster)
    everything = residual_exclusion_mask(fit, mask, keep_interior=False)
    assert np.array_equal(everything, mask & ~mixed)


def test_residual_exclusion_drops_islands_cut_off_by_a_removed_rim():
    field, offset, mask, r2star = known_maps()
    x, y, z = coordinates()
    # A high-residual slab across the mask (x = 9.5 and 10.5 mm) cuts off the cap beyond it.
    slab = mask & (np.abs(x - 10) < 1.5)
    magnitude, phase, field, mask = two_component_signal(slab)
    fit = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE)
    refined = residual_exclusion_mask(fit, mask)
    assert np.array_equal(refined, mask & (x < 9))


@pytest.fixture(scope="module")
def simulated_head():
    from qsmlib.simulation import load_head_phantom, simulate_gre

    return simulate_gre(load_head_phantom(2.0), snr=20, seed=1)


def test_nonlinear_fit_equals_or_beats_linear_on_the_simulated_head(simulated_head):
    sim = simulated_head
    mask = sim.brain_mask
    rmse = {}
    for model in ("linear", "nonlinear"):
        for phase_offset in ("intercept", "mcpc3ds"):
            fit = fit_multi_echo_field(sim.magnitude, sim.phase, sim.te_s, mask, sim.voxel_size_mm,
                                       model=model, phase_offset=phase_offset)
            rmse[model, phase_offset] = np.sqrt(np.mean((fit.field_hz - sim.total_field_hz)[mask] ** 2))
    # Measured: 0.540 Hz for both models with an intercept, 0.291 Hz with MCPC-3D-S.
    for phase_offset in ("intercept", "mcpc3ds"):
        assert rmse["nonlinear", phase_offset] <= rmse["linear", phase_offset] * 1.001
    assert rmse["nonlinear", "intercept"] < 0.6
    assert rmse["nonlinear", "mcpc3ds"] < 0.6 * rmse["nonlinear", "intercept"]


def test_residual_exclusion_trims_a_too_large_mask_to_the_brain(simulated_head):
    from qsmlib.masking import dilate_mask

    sim = simulated_head
    brain = sim.brain_mask
    mask = dilate_mask(brain, sim.voxel_size_mm, 4.0)       # reaches into skull and scalp
    fit = fit_multi_echo_field(sim.magnitude, sim.phase, sim.te_s, mask, sim.voxel_size_mm,
                               model="nonlinear")
    refined = residual_exclusion_mask(fit, mask)
    removed = mask & ~refined
    # Measured: 3256 voxels removed, none of them brain; field error p99 267 Hz there.
    assert removed.sum() > 2000
    assert refined[brain].all()
    error = np.abs(fit.field_hz - sim.total_field_hz)
    assert np.percentile(error[removed], 50) > 20
    assert np.percentile(error[refined], 99) < 3


def test_callback_reports_each_step_and_can_cancel():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    magnitude, phase = noisy(magnitude, phase, 0.05, seed=7)
    calls = []
    fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, model="nonlinear",
                         callback=lambda i, step: calls.append((i, step)))
    assert calls and [i for i, _ in calls] == list(range(1, len(calls) + 1))
    assert all(np.isfinite(step) and step >= 0 for _, step in calls)

    def cancel(iteration, step):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, model="nonlinear",
                             callback=cancel)


def test_invalid_options_raise_clear_errors():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star)
    phase = wrapped(phase)
    with pytest.raises(QSMInputError, match="model"):
        fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, model="cubic")
    with pytest.raises(QSMInputError, match="phase_offset"):
        fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, phase_offset="smooth")
    with pytest.raises(QSMInputError, match="two echoes"):
        fit_multi_echo_field(magnitude[..., 0], phase[..., 0], TE_S[:1], mask, VOXEL_SIZE,
                             phase_offset="mcpc3ds")
    with pytest.raises(QSMInputError, match="two echoes"):
        mcpc3ds_phase_offset(magnitude[..., :1], phase[..., :1], TE_S[:1], mask, VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="offset_sigma_mm"):
        fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, phase_offset="mcpc3ds",
                             offset_sigma_mm=0)
    with pytest.raises(QSMInputError, match="max_iter"):
        fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, model="nonlinear", max_iter=0)
    with pytest.raises(QSMInputError, match="max_residual"):
        residual_exclusion_mask(fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE),
                                mask, max_residual=-1)
