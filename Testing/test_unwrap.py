"""Phase unwrapping: wrap/unwrap round trips and Laplacian identities with known answers."""

import numpy as np
import pytest

from qsmlib import QSMInputError, fourier, slabs
from qsmlib.phase import wrap_to_pi
from qsmlib.unwrap import unwrap_laplacian, unwrap_reliability
from qsmlib.unwrap.laplacian import solve_poisson_neumann, wrapped_phase_laplacian

TWO_PI = 2 * np.pi


def grid(shape, voxel_size=(1.0, 1.0, 1.0)):
    """Centred coordinates in mm, broadcastable."""
    return np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * d for n, d in zip(shape, voxel_size)],
                       indexing="ij", sparse=True)


def smooth_phase(shape=(64, 64, 64)):
    """Ramp plus quadratic, about -25 to +60 rad: many wraps, < 2 rad per voxel."""
    x, y, z = grid(shape)
    return (0.9 * x + 0.4 * y - 0.3 * z + 0.012 * (x ** 2 + 0.5 * y ** 2 - z ** 2)
            + 0.008 * x * y).astype(np.float64)


def ellipsoid(shape, axes, centre_offset=(0, 0, 0)):
    x, y, z = grid(shape)
    return (((x - centre_offset[0]) / axes[0]) ** 2 + ((y - centre_offset[1]) / axes[1]) ** 2
            + ((z - centre_offset[2]) / axes[2]) ** 2) <= 1


def wrap(phase):
    return np.angle(np.exp(1j * phase))


def global_turns(result, truth, region):
    """The multiple of 2 pi between result and truth, and the residual after removing it."""
    difference = (result - truth)[region]
    turns = np.round(np.median(difference) / TWO_PI)
    return turns, np.abs(difference - TWO_PI * turns).max()


def test_reliability_round_trip_is_exact_modulo_one_global_turn():
    truth = smooth_phase()
    assert np.ptp(truth) > 60  # many wraps
    wrapped = wrap(truth)
    result = unwrap_reliability(wrapped)
    assert result.dtype == np.float32
    _, error = global_turns(result, truth, np.ones(truth.shape, bool))
    assert error < 1e-4
    # Congruent with the input everywhere, median canonicalised into [-pi, pi).
    turns = (result - wrapped) / TWO_PI
    assert np.abs(turns - np.round(turns)).max() < 1e-4
    assert -np.pi <= np.median(result) < np.pi


def test_reliability_with_mask_is_exact_inside_and_zero_outside():
    truth = smooth_phase()
    mask = ellipsoid(truth.shape, (28, 24, 20))
    result = unwrap_reliability(wrap(truth), mask, (1, 1, 1))
    _, error = global_turns(result, truth, mask)
    assert error < 1e-4
    assert np.all(result[~mask] == 0)
    assert -np.pi <= np.median(result[mask]) < np.pi


def test_reliability_accepts_unwrapped_input_and_stays_congruent():
    truth = smooth_phase()
    mask = ellipsoid(truth.shape, (28, 24, 20))
    result = unwrap_reliability(truth + TWO_PI * 3, mask)
    turns, error = global_turns(result, truth, mask)
    assert error < 1e-4
    k = (result - truth)[mask] / TWO_PI
    assert np.abs(k - np.round(k)).max() < 1e-4


def test_reliability_unwraps_each_component_with_its_own_offset():
    shape = (64, 48, 40)
    truth = smooth_phase(shape)
    left = ellipsoid(shape, (12, 14, 12), (-16, 0, 0))
    right = ellipsoid(shape, (12, 14, 12), (17, 0, 0))
    assert not np.any(left & right)
    result = unwrap_reliability(wrap(truth), left | right)
    for part in (left, right):
        turns, error = global_turns(result, truth, part)
        assert error < 1e-4
        # Each component is canonicalised on its own.
        assert -np.pi <= np.median(result[part]) < np.pi


def test_reliability_rejects_bad_input():
    with pytest.raises(QSMInputError, match="mask"):
        unwrap_reliability(np.zeros((8, 8, 8)), np.ones((8, 8, 7), bool))
    with pytest.raises(QSMInputError, match="phase"):
        unwrap_reliability(np.zeros((8, 8)))
    with pytest.raises(QSMInputError, match="NaN"):
        unwrap_reliability(np.full((8, 8, 8), np.nan))


def laplacian_7point(volume, voxel_size):
    out = np.zeros_like(volume)
    for axis, h in enumerate(voxel_size):
        inner = [slice(1, -1)] * 3
        lo, hi = list(inner), list(inner)
        lo[axis] = slice(0, -2)
        hi[axis] = slice(2, None)
        out[1:-1, 1:-1, 1:-1] += (volume[tuple(lo)] + volume[tuple(hi)]
                                  - 2 * volume[1:-1, 1:-1, 1:-1]) / h ** 2
    return out[1:-1, 1:-1, 1:-1]


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (0.5, 0.8, 2.0)])
def test_laplacian_is_exact_when_no_neighbour_step_exceeds_pi(voxel_size):
    # The wrapped differences then equal the true ones, so the source is the Neumann
    # (graph) Laplacian of the true phase, which the DCT solve inverts exactly: the
    # estimate equals the truth up to one multiple of 2 pi (float32 round-off only).
    truth = smooth_phase((48, 48, 40))
    assert np.ptp(truth) > 60
    assert max(np.abs(np.diff(truth, axis=a)).max() for a in range(3)) < np.pi
    result = unwrap_laplacian(wrap(truth), None, voxel_size)
    _, error = global_turns(result, truth, np.ones(truth.shape, bool))
    assert error < 1e-4
    # Hence its Laplacian matches the truth's.
    est_lap = laplacian_7point(result.astype(np.float64), voxel_size)
    assert np.abs(est_lap - laplacian_7point(truth, voxel_size)).max() < 1e-3


def test_laplacian_unwraps_noisy_phase_without_residues_exactly():
    # Noise of 0.3 rad keeps every neighbour step below pi here: the estimate is then the
    # noisy phase unwrapped (truth + noise), exactly; the Schofield-Zhu sine variant is not.
    rng = np.random.default_rng(1)
    truth = smooth_phase((48, 48, 40)) * 0.5
    measured = truth + 0.3 * rng.standard_normal(truth.shape)
    assert max(np.abs(np.diff(measured, axis=a)).max() for a in range(3)) < np.pi
    everywhere = np.ones(truth.shape, bool)
    result = unwrap_laplacian(wrap(measured), None, (1, 1, 1))
    _, error = global_turns(result, measured, everywhere)
    assert error < 1e-4
    sine = unwrap_laplacian(wrap(measured), None, (1, 1, 1), differences="sine")
    sine_error = (sine - measured) - np.median(sine - measured)
    assert np.percentile(np.abs(sine_error), 50) > 0.1


def test_laplacian_sine_differences_meet_the_schofield_zhu_identity_and_bound():
    voxel_size = (1.0, 1.0, 1.0)
    truth = smooth_phase((40, 40, 40)) * 0.3   # steps up to about 0.5 rad per voxel
    wrapped = wrap(truth).astype(np.float32)
    sine = wrapped_phase_laplacian(wrapped, voxel_size, differences="sine")
    # cos(p) Lap sin(p) - sin(p) Lap cos(p) on the 7-point stencil, interior voxels:
    s, c = np.sin(wrapped.astype(np.float64)), np.cos(wrapped.astype(np.float64))
    identity = (c[1:-1, 1:-1, 1:-1] * laplacian_7point(s, voxel_size)
                - s[1:-1, 1:-1, 1:-1] * laplacian_7point(c, voxel_size))
    assert np.abs(sine[1:-1, 1:-1, 1:-1] - identity).max() < 1e-4
    # |sin d - d| <= |d|^3 / 6 per neighbour pair: the bound on the Laplacian error.
    steps = [np.abs(np.diff(truth, axis=a)).max() for a in range(3)]
    bound = 6 * max(steps) ** 3 / 6
    true_lap = laplacian_7point(truth, voxel_size)
    assert np.abs(sine[1:-1, 1:-1, 1:-1] - true_lap).max() <= bound + 1e-4


def test_laplacian_with_mask_zero_outside_and_offset_matches_wrapped_phase():
    truth = smooth_phase((48, 48, 40)) * 0.5
    mask = ellipsoid(truth.shape, (20, 18, 15))
    wrapped = wrap(truth)
    result = unwrap_laplacian(wrapped, mask, (1, 1, 1))
    assert np.all(result[~mask] == 0)
    assert -np.pi <= np.median(result[mask]) < np.pi
    # The constant is chosen so that the estimate agrees with the wrapped phase on average.
    misfit = wrap(result - wrapped)[mask]
    assert abs(np.angle(np.mean(np.exp(1j * misfit)))) < 1e-4


def test_neumann_solver_uses_the_mirror_padded_fft_eigenvalues():
    # The DCT-II Poisson solve equals the periodic FFT solve of the mirror-padded volume.
    rng = np.random.default_rng(0)
    shape, voxel_size = (12, 10, 8), (1.0, 0.7, 1.3)
    source = rng.standard_normal(shape).astype(np.float32)
    source -= source.mean()
    mirrored = source
    for axis in range(3):
        mirrored = np.concatenate([mirrored, np.flip(mirrored, axis)], axis=axis)
    padded = tuple(2 * n for n in shape)
    eig = fourier.laplacian_eigenvalues(padded, voxel_size).astype(np.float64)
    spectrum = fourier.rfft(mirrored.astype(np.float64))
    eig[0, 0, 0] = 1
    spectrum /= eig
    spectrum[0, 0, 0] = 0
    reference = fourier.irfft(spectrum, padded)[:shape[0], :shape[1], :shape[2]]
    result = solve_poisson_neumann(source, voxel_size)
    assert np.abs(result - (reference - reference.mean() + result.mean())).max() < 1e-4


def test_wrap_to_pi_range_and_congruence():
    values = np.linspace(-40, 40, 10001)
    wrapped = wrap_to_pi(values)
    assert wrapped.min() >= -np.pi and wrapped.max() < np.pi
    k = (values - wrapped) / TWO_PI
    assert np.abs(k - np.round(k)).max() < 1e-9


def test_wrap_to_pi_slab_by_slab_is_the_whole_array_wrapped(monkeypatch):
    """Every value in [-pi, pi) and off its input by whole turns, slab by slab as in one piece; a value
    that rounds up to +pi in float32 becomes -pi, and the input is left as it was."""
    rng = np.random.default_rng(2)
    phase = rng.normal(0.0, 12.0, (7, 5, 3))
    phase[0, 0, :2] = [np.pi - 1e-9, 3 * np.pi - 1e-9]        # in float32 both round to pi, above pi
    given = phase.copy()
    results = []
    for slab_bytes in (2 * 5 * 3 * 8, 1 << 30):              # 2 planes per slab (the last one 1), or one slab
        monkeypatch.setattr(slabs, "SLAB_BYTES", slab_bytes)
        results.append(wrap_to_pi(phase, np.float32))
        turns = (phase - results[-1]) / TWO_PI
        assert np.abs(turns - np.round(turns)).max() < 1e-5
    assert np.array_equal(results[0], results[1]) and np.array_equal(phase, given)
    wrapped = results[0]
    assert wrapped.dtype == np.float32 and wrapped.min() >= -np.float32(np.pi) and wrapped.max() < np.pi
    assert np.all(wrapped[0, 0, :2] == -np.float32(np.pi))
    assert wrap_to_pi(phase[:, 1]).shape == (7, 3) and wrap_to_pi(np.zeros((0, 3))).shape == (0, 3)


def test_laplacian_rejects_unknown_differences():
    with pytest.raises(QSMInputError, match="differences"):
        unwrap_laplacian(np.zeros((8, 8, 8)), differences="cosine")
