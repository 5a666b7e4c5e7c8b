"""Tests of TSVD, iLSQR, RTS, COSMOS and the L-curve parameter choice.

Known answers: the noiseless forward field of the ellipsoid phantom of
test_inversion.py (uniform regions in an ellipsoidal "brain") is inverted and
region contrasts are compared with the truth; TSVD/TKD are checked on a single
Fourier mode, and the L-curve corner on hand-made curves.
"""

import numpy as np
import pytest

from qsmlib import Cancelled, QSMInputError
from qsmlib.dipole import dipole_kernel
from qsmlib.inversion import tikhonov, tkd
from qsmlib.inversion.cosmos import cosmos
from qsmlib.inversion.ilsqr import ilsqr
from qsmlib.inversion.lcurve import (choose_regularisation, lcurve_choice, lcurve_corner,
                                     lcurve_curvature)
from qsmlib.inversion.rts import rts
from qsmlib.inversion.tsvd import tsvd
from test_inversion import _field, _phantom, _ratios, _rmse

COSMOS_DIRS = [(0.0, 0.0, 1.0), (0.5, 0.0, np.sqrt(0.75)), (0.0, 0.5, np.sqrt(0.75))]


@pytest.fixture(scope="module")
def phantom():
    mask, chi, regions, background = _phantom()
    return {"mask": mask, "chi": chi, "regions": regions, "background": background,
            "field": _field(chi, mask)}


# ---------------------------------------------------------------- TSVD

def test_tsvd_and_tkd_on_one_fourier_mode():
    """A single k-mode is divided by D when |D| > t; below, TSVD drops it and TKD divides by t."""
    n = 48
    x = np.arange(n)[:, None, None]
    z = np.arange(n)[None, None, :]
    mask = np.ones((n, n, n), dtype=bool)
    for kx, kz in [(3, 2), (2, 3)]:
        field = np.cos(2 * np.pi * (kx * x + kz * z) / n) * np.ones((1, n, 1))
        d = dipole_kernel((n, n, n), (1, 1, 1), (0, 0, 1))[kx, 0, kz]
        a = tsvd(field, mask, 1, threshold=0.1, pad_voxels=0)
        b = tkd(field, mask, 1, threshold=0.1, pad_voxels=0)
        if abs(d) > 0.1:            # (3, 2): D = 1/3 - 4/13 = 0.026 -> no; (2, 3): D = -0.359
            np.testing.assert_allclose(a, field / d, atol=1e-4)
            np.testing.assert_allclose(b, field / d, atol=1e-4)
        else:
            np.testing.assert_allclose(a, 0, atol=1e-5)
            np.testing.assert_allclose(b, field * np.sign(d) / 0.1, atol=1e-4)


def test_tsvd_recovers_regions_and_loses_more_than_tkd(phantom):
    field, mask = phantom["field"], phantom["mask"]
    regions, background = phantom["regions"], phantom["background"]
    ratios = _ratios(tsvd(field, mask, 1), regions, background)
    # default threshold 0.1 keeps 82-84 % of the contrast (measured 0.823-0.836)
    for name, r in ratios.items():
        assert 0.78 < r < 0.88, (name, r)
    # at the same threshold zeroing the cone loses more than clamping it (0.19: 0.62-0.66 vs 0.82-0.83)
    loose = _ratios(tsvd(field, mask, 1, threshold=0.19), regions, background)
    clamp = _ratios(tkd(field, mask, 1, threshold=0.19), regions, background)
    assert all(loose[name] < clamp[name] - 0.1 for name in loose)


# ---------------------------------------------------------------- iterative methods

def test_ilsqr_recovers_regions(phantom):
    calls = []
    chi = ilsqr(phantom["field"], phantom["mask"], 1, callback=lambda it, res: calls.append((it, res)))
    ratios = _ratios(chi, phantom["regions"], phantom["background"])
    # measured 0.869-0.908; RMSE 0.0041 ppm against TKD's 0.0052
    for name, r in ratios.items():
        assert 0.83 < r < 0.95, (name, r)
    assert _rmse(chi, phantom["chi"], phantom["mask"]) < 0.9 * _rmse(
        tkd(phantom["field"], phantom["mask"], 1), phantom["chi"], phantom["mask"])
    assert [it for it, _ in calls] == list(range(1, len(calls) + 1))
    assert calls[-1][1] < 0.02 or len(calls) == 100


def test_rts_recovers_regions(phantom):
    calls = []
    chi = rts(phantom["field"], phantom["mask"], 1, callback=lambda it, res: calls.append(res))
    ratios = _ratios(chi, phantom["regions"], phantom["background"])
    # published defaults (4 LSMR iterations): 0.757-0.799 of the contrast
    for name, r in ratios.items():
        assert 0.72 < r < 0.85, (name, r)
    # more LSMR iterations resolve more of the well-conditioned k-space (measured 0.94-0.97)
    longer = _ratios(rts(phantom["field"], phantom["mask"], 1, lsmr_iter=10),
                     phantom["regions"], phantom["background"])
    assert all(longer[name] > ratios[name] + 0.1 for name in ratios)
    assert 1 <= len(calls) <= 20


@pytest.mark.parametrize("method", [ilsqr, rts])
def test_cancel_propagates(phantom, method):
    calls = []

    def cancel_at_two(iteration, residual):
        calls.append(iteration)
        if iteration == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        method(phantom["field"], phantom["mask"], 1, callback=cancel_at_two)
    assert calls == [1, 2]


@pytest.mark.parametrize("method", [tsvd, ilsqr, rts])
def test_output_contract_and_inputs_untouched(phantom, method):
    field = phantom["field"].astype(np.float64)
    mask = phantom["mask"].astype(np.uint8)
    copies = field.copy(), mask.copy()
    chi = method(field, mask, [1, 1, 1])
    np.testing.assert_array_equal(field, copies[0])
    np.testing.assert_array_equal(mask, copies[1])
    assert chi.dtype == np.float32 and chi.shape == field.shape
    assert np.all(chi[mask == 0] == 0) and np.all(np.isfinite(chi))


@pytest.mark.parametrize("method", [tsvd, ilsqr, rts])
def test_bad_inputs_raise(phantom, method):
    field, mask = phantom["field"], phantom["mask"]
    with pytest.raises(QSMInputError, match="field_ppm"):
        method(field[:, :, 0], mask[:, :, 0], 1)
    with pytest.raises(QSMInputError, match="empty"):
        method(field, np.zeros_like(mask), 1)
    with pytest.raises(QSMInputError, match="b0_dir"):
        method(field, mask, 1, b0_dir=(0, 0, 0))
    option = {"tsvd": "threshold", "ilsqr": "max_iter", "rts": "delta"}[method.__name__]
    with pytest.raises(QSMInputError, match=option):
        method(field, mask, 1, **{option: 0})


# ---------------------------------------------------------------- COSMOS

def test_cosmos_recovers_susceptibility(phantom):
    mask, truth = phantom["mask"], phantom["chi"]
    fields = [_field(truth, mask, b0_dir=d) for d in COSMOS_DIRS]
    calls = []
    chi = cosmos(fields, mask, 1, b0_dirs=COSMOS_DIRS, callback=lambda it, res: calls.append(res))
    ratios = _ratios(chi, phantom["regions"], phantom["background"])
    # measured 0.996-0.998
    for name, r in ratios.items():
        assert abs(r - 1) < 0.01, (name, r)
    centred = lambda x: (x - x[mask].mean())[mask]  # noqa: E731
    relative = np.linalg.norm(centred(chi) - centred(truth)) / np.linalg.norm(centred(truth))
    assert relative < 0.04  # measured 0.027 (closed form alone: 0.081)
    assert calls[0] == 1.0 and len(calls) <= 10
    one = cosmos(fields, mask, 1, b0_dirs=COSMOS_DIRS, max_iter=1)
    assert np.linalg.norm(centred(one) - centred(truth)) > 2 * np.linalg.norm(centred(chi) - centred(truth))
    # a 4D stack is accepted as well
    np.testing.assert_allclose(cosmos(np.stack(fields, axis=3), mask, 1, b0_dirs=COSMOS_DIRS), chi, atol=1e-6)


def test_cosmos_refuses_bad_orientations(phantom):
    field, mask = phantom["field"], phantom["mask"]
    with pytest.raises(QSMInputError, match="at least 2"):
        cosmos([field], mask, 1, b0_dirs=[(0, 0, 1)])
    with pytest.raises(QSMInputError, match="at least 2"):
        cosmos(field, mask, 1, b0_dirs=[(0, 0, 1)])
    with pytest.raises(QSMInputError, match="2 directions for 3 fields"):
        cosmos([field] * 3, mask, 1, b0_dirs=COSMOS_DIRS[:2])
    tilt = np.radians(2.0)
    with pytest.raises(QSMInputError, match=r"nearly parallel .*b0_dirs\[0\] and b0_dirs\[1\]"):
        cosmos([field] * 2, mask, 1, b0_dirs=[(0, 0, 1), (np.sin(tilt), 0, np.cos(tilt))])
    with pytest.raises(QSMInputError, match="nearly parallel"):
        cosmos([field] * 2, mask, 1, b0_dirs=[(0, 0, 1), (0, 0, -1)])   # same orientation
    with pytest.raises(QSMInputError, match="shape"):
        cosmos([field, field[:-1]], mask, 1, b0_dirs=COSMOS_DIRS[:2])


# ---------------------------------------------------------------- L-curve

def test_lcurve_corner_of_hand_made_l():
    # down a vertical branch, then right along a horizontal one; the corner is point 5
    x = np.r_[np.full(5, 1.0), np.linspace(1.0, 5.0, 6)]
    y = np.r_[np.linspace(6.0, 2.0, 5, endpoint=False), np.full(6, 2.0)]
    params = np.geomspace(1e-3, 1e2, x.size)
    assert lcurve_corner(np.exp(x), np.exp(y)) == 5
    assert lcurve_choice(np.exp(x), np.exp(y), params) == pytest.approx(params[5])
    # shuffled candidates give the same choice
    order = np.random.default_rng(0).permutation(x.size)
    assert lcurve_choice(np.exp(x)[order], np.exp(y)[order], params[order]) == pytest.approx(params[5])
    # the mirrored bend (right, then down: the dipole problem's shape) has its corner found too
    mx = np.r_[np.linspace(1.0, 5.0, 6), np.full(5, 5.0)]
    my = np.r_[np.full(6, 6.0), np.linspace(5.0, 1.0, 5)]
    assert lcurve_corner(np.exp(mx), np.exp(my)) == 5
    kappa = lcurve_curvature(np.exp(x), np.exp(y))
    assert kappa[0] == kappa[-1] == 0 and kappa[5] > 0


def test_lcurve_refuses_bad_curves():
    with pytest.raises(QSMInputError, match="at least 3"):
        lcurve_corner([1, 2], [2, 1])
    with pytest.raises(QSMInputError, match="positive"):
        lcurve_corner([1, 0, 3], [3, 2, 1])
    with pytest.raises(QSMInputError, match="no corner"):
        lcurve_corner(np.exp([1, 2, 3, 4]), np.exp([4, 3, 2, 1]))   # a straight line
    with pytest.raises(QSMInputError, match="repeated"):
        lcurve_choice([1, 2, 3], [3, 2, 1], [0.1, 0.1, 0.2])
    with pytest.raises(QSMInputError, match="3 parameters"):
        lcurve_choice([1, 2], [3, 2, 1], [0.1, 0.2, 0.3])


def test_lcurve_choice_of_tikhonov_is_near_the_optimum(phantom):
    mask, truth = phantom["mask"], phantom["chi"]
    rng = np.random.default_rng(0)
    noisy = np.where(mask, phantom["field"] + rng.normal(0, 0.005, mask.shape), 0).astype(np.float32)
    values = np.geomspace(1e-4, 1.0, 17)
    choice = choose_regularisation("tikhonov", noisy, mask, 1, values=values, rule="lcurve")
    errors = [_rmse(tikhonov(noisy, mask, 1, lam=v), truth, mask) for v in values]
    best = values[int(np.argmin(errors))]
    # measured: chosen 0.01, NRMSE-optimal 0.0316 (RMSE 0.0106 against 0.0087 ppm)
    assert best / 3.5 <= choice.value <= best * 3.5, (choice.value, best)
    assert choice.parameter == "lam" and choice.value in choice.values
    record = choice.as_record()
    assert record["value"] == choice.value and len(record["residual_norms"]) == values.size


@pytest.mark.parametrize("sigma", [0.0025, 0.005, 0.01])
def test_gcv_choice_of_tikhonov_is_near_the_optimum_and_grows_with_the_noise(phantom, sigma):
    mask, truth = phantom["mask"], phantom["chi"]
    rng = np.random.default_rng(0)
    unit = rng.normal(0, 1, mask.shape)

    def noisy(sd):
        return np.where(mask, phantom["field"] + sd * unit, 0).astype(np.float32)

    choice = choose_regularisation("tikhonov", noisy(sigma), mask, 1, rule="gcv")
    values = choice.values
    errors = [_rmse(tikhonov(noisy(sigma), mask, 1, lam=v), truth, mask) for v in values]
    chosen_error = errors[values.index(choice.value)]
    # measured: 1.3-2.6 % above the lowest RMSE among the 25 candidates (the L-curve corner: 22-113 % above)
    assert chosen_error <= 1.1 * min(errors), (choice.value, values[int(np.argmin(errors))])
    # GCV needs no noise level: twice the noise gives a larger weight
    doubled = choose_regularisation("tikhonov", noisy(2 * sigma), mask, 1, rule="gcv")
    assert doubled.value > choice.value
    # the score is n |M (D chi - f)|^2 / (n - trace)^2, minimal at the choice
    scores = np.asarray(choice.gcv_scores)
    assert scores.size == len(values) and np.argmin(scores) == values.index(choice.value)
    n = mask.sum()
    traces = n - np.sqrt(n * np.square(choice.residual_norms) / scores)
    assert np.all((traces > 0) & (traces < n)) and np.all(np.diff(traces) < 0)  # more smoothing, fewer freedoms
    assert choice.as_record()["rule"] == "gcv"
    # "auto" is GCV for Tikhonov, inside the method and in the choice
    assert choose_regularisation("tikhonov", noisy(sigma), mask, 1).value == choice.value
    np.testing.assert_array_equal(tikhonov(noisy(sigma), mask, 1, lam="auto"),
                                  tikhonov(noisy(sigma), mask, 1, lam=choice.value))


@pytest.mark.parametrize("method", ["tkd", "tsvd"])
def test_lcurve_threshold_choice_is_in_range(phantom, method):
    mask = phantom["mask"]
    rng = np.random.default_rng(1)
    noisy = np.where(mask, phantom["field"] + rng.normal(0, 0.005, mask.shape), 0).astype(np.float32)
    choice = choose_regularisation(method, noisy, mask, 1)
    assert choice.parameter == "threshold" and 0.02 < choice.value < 0.5
    assert np.all(np.diff(choice.residual_norms) >= 0)       # more truncation, larger misfit
    assert np.all(np.diff(choice.solution_norms) <= 0)       # and a smaller solution
    with pytest.raises(QSMInputError, match="method"):
        choose_regularisation("tv_admm", noisy, mask, 1)
    with pytest.raises(QSMInputError, match="threshold"):
        choose_regularisation(method, noisy, mask, 1, values=[0.1, 0.2, 0.9])


@pytest.mark.parametrize("sigma", [0.002, 0.01])
def test_discrepancy_choice_follows_the_noise_and_stays_near_the_optimum(phantom, sigma):
    mask, truth = phantom["mask"], phantom["chi"]
    rng = np.random.default_rng(0)
    noisy = np.where(mask, phantom["field"] + rng.normal(0, sigma, mask.shape), 0).astype(np.float32)
    choice = choose_regularisation("tikhonov", noisy, mask, 1, rule="discrepancy", noise_sd_ppm=sigma)
    values = choice.values
    errors = [_rmse(tikhonov(noisy, mask, 1, lam=v), truth, mask) for v in values]
    chosen_error = errors[values.index(choice.value)]
    # measured: within 12 % of the best RMSE at 0.002 ppm and at 0.01 ppm (the L-curve corner: 85 % and 114 % worse)
    assert chosen_error <= 1.2 * min(errors), (choice.value, values[int(np.argmin(errors))])
    # the chosen map's misfit inside the mask is under the noise norm, the next candidate's is not
    index = values.index(choice.value)
    assert choice.residual_norms[index] <= choice.target_residual == pytest.approx(sigma * np.sqrt(mask.sum()))
    assert index == len(values) - 1 or choice.residual_norms[index + 1] > choice.target_residual
    assert choice.as_record()["rule"] == "discrepancy"
    # a noise map gives the same choice as the number it holds
    same = choose_regularisation("tikhonov", noisy, mask, 1, rule="discrepancy",
                                 noise_sd_ppm=np.full(mask.shape, sigma))
    assert same.value == choice.value
    with pytest.raises(QSMInputError, match="noise SD"):
        choose_regularisation("tkd", noisy, mask, 1, rule="discrepancy")
    with pytest.raises(QSMInputError, match="rule"):
        choose_regularisation("tkd", noisy, mask, 1, rule="sure")
