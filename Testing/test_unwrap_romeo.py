"""ROMEO-style unwrapping: round trips, noise isolation, simulated head and real multi-echo phase."""

import json

import numpy as np
import pytest
from scipy import ndimage

from qsmlib import QSMInputError, slabs
from qsmlib.io.multiecho import load_multi_echo
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.unwrap import unwrap_echoes_temporal, unwrap_reliability, unwrap_romeo, voxel_quality
from qsmlib.unwrap.romeo import _jump_to_roots, _spanning_tree_turns, edge_weights
from qsmlib.phase import wrap_to_pi
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree
from test_unwrap import ellipsoid, grid, smooth_phase, wrap

TWO_PI = 2 * np.pi


def turn_errors(result, truth, region):
    """Voxels of ``region`` off the truth by a whole turn, after the most common global turn."""
    turns = np.rint((result[region] - truth[region]) / TWO_PI).astype(np.int64)
    common = np.bincount(turns - turns.min()).argmax() + turns.min()
    return turns != common


def residual_from_turns(result, truth, region):
    """Largest |result - truth - 2 pi k| over ``region`` with one global k."""
    difference = (result - truth)[region]
    turns = np.round(np.median(difference) / TWO_PI)
    return np.abs(difference - TWO_PI * turns).max()


def test_round_trip_is_exact_modulo_one_global_turn():
    truth = smooth_phase()
    assert np.ptp(truth) > 60
    wrapped = wrap(truth)
    result = unwrap_romeo(wrapped)
    assert result.dtype == np.float32 and result.shape == truth.shape
    assert residual_from_turns(result, truth, np.ones(truth.shape, bool)) < 1e-4
    turns = (result - wrapped) / TWO_PI
    assert np.abs(turns - np.round(turns)).max() < 1e-4
    assert -np.pi <= np.median(result) < np.pi


def test_round_trip_with_magnitude_and_second_echo_is_exact():
    truth = smooth_phase((48, 48, 40))
    x, y, _ = grid(truth.shape)
    magnitude = (1 + 0.5 * np.cos(x / 5.0) * np.sin(y / 7.0)).astype(np.float32) * np.ones(truth.shape)
    result = unwrap_romeo(wrap(truth), None, (1, 1, 1), magnitude=magnitude,
                          phase2=wrap(1.5 * truth), te_ratio=1.5)
    assert residual_from_turns(result, truth, np.ones(truth.shape, bool)) < 1e-4


def test_masked_and_unwrapped_input_zero_outside_and_congruent():
    truth = smooth_phase()
    mask = ellipsoid(truth.shape, (28, 24, 20))
    result = unwrap_romeo(truth + TWO_PI * 3, mask, (1, 1, 1))
    assert residual_from_turns(result, truth, mask) < 1e-4
    assert np.all(result[~mask] == 0)
    assert -np.pi <= np.median(result[mask]) < np.pi


def test_each_component_unwrapped_with_its_own_offset():
    shape = (64, 48, 40)
    truth = smooth_phase(shape)
    parts = [ellipsoid(shape, (12, 14, 12), (-16, 0, 0)), ellipsoid(shape, (12, 14, 12), (17, 0, 0)),
             ellipsoid(shape, (3, 3, 3), (0, 18, 14))]
    assert not np.any(parts[0] & parts[1]) and not np.any(parts[1] & parts[2])
    result = unwrap_romeo(wrap(truth), parts[0] | parts[1] | parts[2])
    for part in parts:
        assert residual_from_turns(result, truth, part) < 1e-4
        assert -np.pi <= np.median(result[part]) < np.pi


def test_noise_in_low_magnitude_voxels_does_not_spread_into_the_signal():
    # A slab of pure noise (random phase, magnitude 2 % of the tissue's) cuts the
    # volume except for a bridge at large y. Its noise edges are often more phase
    # coherent than the steep signal edges (1.4 rad per voxel): without magnitude
    # the tree runs through the noise and puts signal voxels a turn off; with
    # magnitude the noise is joined last and every signal voxel is exact.
    rng = np.random.default_rng(3)
    shape = (48, 48, 32)
    x, y, z = grid(shape)
    truth = (1.4 * x + 0.3 * y + 0.02 * z ** 2) * np.ones(shape)
    noise = (np.abs(x) < 4) & (y < 14) & np.ones(shape, bool)
    signal = ~noise
    measured = np.where(noise, rng.uniform(-np.pi, np.pi, shape), wrap(truth))
    magnitude = np.where(noise, 0.02, 1.0) * (1 + 0.05 * rng.standard_normal(shape))
    magnitude = np.abs(magnitude).astype(np.float32)

    result = unwrap_romeo(measured, None, (1, 1, 1), magnitude=magnitude)
    assert np.count_nonzero(turn_errors(result, truth, signal)) == 0
    assert residual_from_turns(result, truth, signal) < 1e-4
    phase_only = unwrap_romeo(measured, None, (1, 1, 1))
    assert np.count_nonzero(turn_errors(phase_only, truth, signal)) > 0


def test_edge_weights_follow_the_romeo_terms():
    # Two voxels along x: step 0.5 rad, second-echo step 1.2 rad at TE ratio 2
    # (0.6 rad scaled), magnitudes 1 and 0.25 with reference 0.5 * 90th percentile.
    phase = np.zeros((2, 2, 2), np.float32)
    phase[1] = 0.5
    phase2 = np.zeros_like(phase)
    phase2[1] = 1.2
    magnitude = np.ones_like(phase)
    magnitude[1] = 0.25
    region = np.ones(phase.shape, bool)
    weights = edge_weights(phase, region, magnitude=magnitude, phase2=phase2, te_ratio=2.0)
    reference = 0.5 * np.percentile(magnitude, 90)
    expected = (1 - 0.5 / np.pi) * (1 - 0.1) * 0.25 * min(1, 0.25 / reference)
    assert weights[0][0, 0, 0] == round(255 * expected)
    assert weights[0][1, 0, 0] == 0                 # no neighbour beyond the last slice
    assert weights[1][0, 0, 0] == 255               # constant phase and magnitude along y
    outside = region.copy()
    outside[0, 1, 1] = False
    assert edge_weights(phase, outside)[2][0, 1, 0] == 0


def test_voxel_quality_is_the_mean_romeo_weight_of_a_voxels_edges():
    # Field gradient along x: at echo e the phase step per voxel is g * TE_e / TE_0, so the
    # steps scale with TE (gradient coherence 1) and the phase coherence of pair (e, e + 1)
    # is 1 - g TE_e / (TE_0 pi). An inner voxel has two such edges and four flat ones (weight 1).
    te = np.array([0.004, 0.008, 0.012])
    g = 0.3
    x = np.arange(16, dtype=np.float32)[:, None, None] * np.ones((16, 16, 16), np.float32)
    phase = np.stack([wrap(g * t / te[0] * x) for t in te], axis=-1)
    quality = voxel_quality(phase, te)
    pairs = [(2 * round(255 * (1 - g * te[e] / te[0] / np.pi)) / 255 + 4) / 6 for e in (0, 1)]
    assert quality.dtype == np.float32 and quality.shape == (16, 16, 16)
    assert quality[8, 8, 8] == pytest.approx(np.mean(pairs), abs=1e-6)
    # A corner voxel has three edges: one along x, two flat.
    corner = [(round(255 * (1 - g * te[e] / te[0] / np.pi)) / 255 + 2) / 3 for e in (0, 1)]
    assert quality[15, 0, 0] == pytest.approx(np.mean(corner), abs=1e-6)
    # Steps that do not scale with TE (a phase pattern, not a field) lose the gradient coherence:
    # 1 - g (1 - TE_e / TE_(e+1)) for each pair.
    constant = np.stack([wrap(g * x)] * 3, axis=-1)
    expected = np.mean([(2 * round(255 * (1 - g / np.pi) * (1 - g * (1 - te[e] / te[e + 1]))) / 255 + 4) / 6
                        for e in (0, 1)])
    assert voxel_quality(constant, te)[8, 8, 8] == pytest.approx(expected, abs=1e-6)


def test_voxel_quality_separates_noise_from_coherent_phase_and_respects_the_mask():
    rng = np.random.default_rng(3)
    te = [0.004, 0.008, 0.012, 0.016]
    truth = smooth_phase((40, 40, 40)) * 0.05
    phase = np.stack([wrap(truth * t / te[0]) for t in te], axis=-1)
    noise = np.zeros((40, 40, 40), bool)
    noise[:20] = True
    phase[noise] = rng.uniform(-np.pi, np.pi, (noise.sum(), 4))
    quality = voxel_quality(phase, te)
    assert np.median(quality[2:18]) < 0.3           # noise
    assert np.median(quality[22:38]) > 0.9          # a slowly varying field
    mask = ellipsoid((40, 40, 40), (15, 15, 15))
    masked = voxel_quality(phase, te, mask)
    assert np.all(masked[~mask] == 0)
    # One echo: the phase coherence alone.
    assert np.median(voxel_quality(phase[..., :1], te[:1])[22:38]) > 0.9
    with pytest.raises(QSMInputError, match="4D"):
        voxel_quality(phase[..., 0], te)
    with pytest.raises(QSMInputError, match="te_s"):
        voxel_quality(phase, te[:3])


@pytest.mark.parametrize("n_echoes", [1, 3])
def test_voxel_quality_slab_by_slab_is_the_mean_of_the_edge_weights_of_each_pair(monkeypatch, n_echoes):
    """Each voxel's quality, from the whole-volume edge weights of every echo pair; many slabs as one.

    The slabs along X carry what the edges leaving them add to the next plane;
    a mask with holes (edges missing inside the box) and a ragged last slab.
    """
    rng = np.random.default_rng(11)
    shape = (11, 9, 7)                                    # 252-byte planes
    te = np.array([0.004, 0.009, 0.015])[:n_echoes]
    field = smooth_phase(shape) * 0.4 + rng.normal(0.0, 0.6, shape)
    phase = np.stack([field * t / te[0] + rng.normal(0.0, 0.3, shape) for t in te], axis=-1).astype(np.float32)
    mask = rng.random(shape) > 0.25
    # The reference, on the whole volume: pair (e, e + 1)'s quantised weights per axis, each edge
    # counted at both its voxels, divided by the number of edges, averaged over the pairs.
    wrapped = [wrap_to_pi(phase[..., e], np.float32) for e in range(n_echoes)]
    pairs = [(e, e + 1) for e in range(n_echoes - 1)] or [(0, None)]
    expected = np.zeros(shape)
    for first, second in pairs:
        weights = edge_weights(wrapped[first], mask, phase2=None if second is None else wrapped[second],
                               te_ratio=None if second is None else te[second] / te[first])
        total, count = np.zeros(shape), np.zeros(shape)
        for axis, weight in enumerate(weights):
            lo, hi = (tuple(part if a == axis else slice(None) for a in range(3))
                      for part in (slice(0, -1), slice(1, None)))
            for end in (lo, hi):
                total[end] += weight[lo]
                count[end] += weight[lo] > 0
        expected += np.divide(total, count, out=np.zeros(shape), where=count > 0) / 255
    expected /= len(pairs)
    results = []
    for slab_bytes in (2 * 252, 1 << 30):                 # 2 planes per slab (the last one 1), or one slab
        monkeypatch.setattr(slabs, "SLAB_BYTES", slab_bytes)
        results.append(voxel_quality(phase, te, mask))
        np.testing.assert_allclose(results[-1], expected, rtol=0, atol=1e-6)
    assert np.array_equal(results[0], results[1])
    assert np.all(results[0][~mask] == 0) and results[0][mask].min() > 0


def test_pointer_jumping_finds_roots_and_sums_steps_along_tree_paths():
    # Random forest: the parent of node k is a random earlier node, or k itself
    # (a root); roots and sums checked by a direct walk.
    rng = np.random.default_rng(0)
    n = 5000
    parent = (rng.random(n) * np.arange(n)).astype(np.int32)
    roots = rng.random(n) < 0.01
    roots[0] = True
    parent[roots] = np.flatnonzero(roots)
    permutation = rng.permutation(n).astype(np.int32)   # scramble the node order
    inverse = np.argsort(permutation).astype(np.int32)
    scrambled_parent = permutation[parent[inverse]]
    step = rng.integers(-1, 2, n).astype(np.int32)
    step[scrambled_parent == np.arange(n)] = 0
    root, total = _jump_to_roots(scrambled_parent.copy(), step.copy())
    for node in range(n):
        walk, expected = node, 0
        while scrambled_parent[walk] != walk:
            expected += step[walk]
            walk = scrambled_parent[walk]
        assert root[node] == walk and total[node] == expected


def kruskal_turns(wrapped, region, weights, labels):
    """Test oracle: turns along scipy's minimum spanning tree (Kruskal) of the same total order.

    Cost of an edge: (256 - weight) scaled above every edge index, plus the
    index 3 * voxel + column (column 0, 1, 2 along z, y, x), so that equal
    weights are taken in index order; each voxel takes its parent's turns plus
    round((p_parent - p_voxel) / 2 pi), from the first voxel of its component.
    """
    shape = region.shape
    n = region.size
    strides = (shape[1] * shape[2], shape[2], 1)
    rows, cols, cost = [], [], []
    for axis in range(3):
        voxel = np.flatnonzero(weights[axis].ravel())
        rows.append(voxel)
        cols.append(voxel + strides[axis])
        cost.append((256.0 - weights[axis].ravel()[voxel]) * 2.0 ** 40 + 3 * voxel + (2 - axis))
    graph = csr_matrix((np.concatenate(cost), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    tree = minimum_spanning_tree(graph)
    phase = wrapped.ravel()
    turns = np.zeros(n, np.int64)
    flat_labels = labels.ravel()
    for component in range(1, flat_labels.max() + 1):
        seed = int(np.flatnonzero(flat_labels == component)[0])
        order, parent = breadth_first_order(tree, seed, directed=False, return_predecessors=True)
        for voxel in order[1:]:
            up = parent[voxel]
            turns[voxel] = turns[up] + np.rint((phase[up] - phase[voxel]) * np.float32(1 / TWO_PI))
    return turns[region.ravel()]


@pytest.mark.parametrize("case", ["noise, phase only", "noise, magnitude and second echo", "two components"])
def test_spanning_tree_turns_match_kruskal_exactly(case):
    # Noisy phase with residues (so that different trees give different turns),
    # and 8-bit weights with many ties: the Boruvka rounds must give the very tree
    # (and turns) of Kruskal's algorithm under the same total order.
    rng = np.random.default_rng(7)
    shape = (20, 18, 14)
    x, y, z = grid(shape)
    truth = 0.9 * x + 0.5 * y + 0.02 * z ** 2
    noise = rng.normal(0, 0.8, shape) * (np.abs(x) < 5)
    wrapped = wrap_to_pi(truth + noise, np.float32)
    region = np.ones(shape, bool)
    options = {}
    if case == "noise, magnitude and second echo":
        options = {"magnitude": np.abs(1 + 0.3 * rng.standard_normal(shape)).astype(np.float32),
                   "phase2": wrap_to_pi(1.5 * (truth + noise) + rng.normal(0, 0.3, shape), np.float32),
                   "te_ratio": 1.5}
    if case == "two components":
        region = ellipsoid(shape, (6, 8, 6), (-4, 0, 0)) | ellipsoid(shape, (3, 4, 4), (7, 0, 0))
    labels, count = ndimage.label(region)
    if case == "two components":
        assert count == 2
    weights = edge_weights(wrapped, region, **options)
    assert len(np.unique(np.concatenate([w[w > 0] for w in weights]))) < 0.2 * np.count_nonzero(region)
    expected = kruskal_turns(wrapped, region, weights, labels)
    assert np.ptp(expected) >= 2                    # the turns are not trivially equal
    turns = _spanning_tree_turns(wrapped, region, weights, labels)
    assert np.array_equal(turns, expected)


def test_unmasked_echo_with_noise_outside_the_head_is_exact_in_the_brain():
    # A head in a field of view full of noise, unwrapped without a mask: the
    # noise is joined last, and every brain voxel whose true phase is sampled
    # (no step above pi to a neighbour within two voxels) has the true turn,
    # up to one global turn. The result is congruent with the input everywhere.
    rng = np.random.default_rng(11)
    shape = (72, 80, 64)
    x, y, z = grid(shape)
    head = ellipsoid(shape, (31, 35, 27))
    brain = ellipsoid(shape, (24, 28, 21))
    field = 0.01 * x * y + 0.01 * z ** 2 - 0.7 * x
    cavity = 400.0 * (3 * (z + 25) ** 2 / ((x ** 2 + (y - 16) ** 2 + (z + 25) ** 2) + 1) - 1) \
        / ((x ** 2 + (y - 16) ** 2 + (z + 25) ** 2) + 1) ** 1.5
    truth = (field + np.clip(cavity, -3, 3)).astype(np.float32)
    amplitude = np.where(head, 1.0, 0.0)
    signal = amplitude * np.exp(1j * truth) + (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / 40
    phase = np.angle(signal).astype(np.float32)
    magnitude = np.abs(signal).astype(np.float32)
    assert np.ptp(truth[brain]) / TWO_PI > 5
    result = unwrap_romeo(phase, None, (1, 1, 1), magnitude=magnitude)
    turns = (result - phase) / TWO_PI
    assert np.abs(turns - np.round(turns)).max() < 1e-3
    steep = np.zeros(shape, bool)
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        jump = np.abs(truth[tuple(hi)] - truth[tuple(lo)]) > np.pi
        steep[tuple(lo)] |= jump
        steep[tuple(hi)] |= jump
    sampled = brain & ~ndimage.binary_dilation(steep, iterations=2)
    assert np.count_nonzero(sampled) > 0.9 * np.count_nonzero(brain)
    assert np.count_nonzero(turn_errors(result, truth, sampled)) == 0
    # The reliability unwrapper, the other exact one, agrees on those voxels up to one global turn.
    other = unwrap_reliability(phase, None, (1, 1, 1))
    assert np.count_nonzero(turn_errors(result, other, sampled)) == 0


@pytest.fixture(scope="module")
def head():
    return simulate_gre(load_head_phantom(2.0), b0_t=3.0)   # TE 4-28 ms, SNR 100


def test_simulated_head_no_turn_errors_where_the_phase_is_sampled(head):
    # Echo 3 (16 ms) plus a strong linear background of 1000 Hz across the volume:
    # about 15 turns in the brain. Only voxels next to true steps above pi
    # (undersampled phase near the sinuses, where no unwrapper can know the turn)
    # may be wrong; every other brain voxel must be exact.
    echo, brain = 2, head.brain_mask
    x, _, _ = grid(brain.shape)
    background_hz = 1000 * x / brain.shape[0]
    te = head.te_s[echo]
    truth = TWO_PI * te * (head.total_field_hz + background_hz) + head.phase_offset_rad
    measured = wrap(head.phase[..., echo] + TWO_PI * te * background_hz)
    assert np.ptp(truth[brain]) / TWO_PI > 12
    result = unwrap_romeo(measured, brain, head.voxel_size_mm, magnitude=head.magnitude[..., echo])
    wrong = np.zeros_like(brain)
    wrong[brain] = turn_errors(result, truth, brain)
    aliased = np.zeros_like(brain)
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        steep = (np.abs(truth[tuple(hi)] - truth[tuple(lo)]) > np.pi) & brain[tuple(lo)] & brain[tuple(hi)]
        aliased[tuple(lo)] |= steep
        aliased[tuple(hi)] |= steep
    near_aliased = ndimage.binary_dilation(aliased, iterations=2)
    assert np.count_nonzero(wrong & ~near_aliased) == 0
    assert np.count_nonzero(wrong) < 1e-3 * np.count_nonzero(brain)
    assert np.all(result[~brain] == 0)


def test_simulated_head_temporal_unwrapping_is_exact_in_every_echo(head):
    # Temporal unwrapping needs no spatial path: even the late echoes, whose phase
    # is undersampled near the sinuses, come out exact, one global turn per echo.
    brain = head.brain_mask
    result = unwrap_echoes_temporal(head.phase, head.te_s, brain, head.voxel_size_mm,
                                    magnitude=head.magnitude)
    assert result.shape == head.phase.shape and result.dtype == np.float32
    for echo, te in enumerate(head.te_s):
        truth = TWO_PI * te * head.total_field_hz + head.phase_offset_rad
        assert np.count_nonzero(turn_errors(result[..., echo], truth, brain)) == 0
        turns = (result[..., echo] - head.phase[..., echo])[brain] / TWO_PI
        assert np.abs(turns - np.round(turns)).max() < 1e-3
    # The late echoes carry the same global turn as the reference scaled by TE: the
    # unwrapped echoes agree with one field (fitted slope within noise of the truth).
    te = head.te_s
    values = result[brain].astype(np.float64)
    slope = np.polyfit(te, values.T, 1)[0] / TWO_PI
    assert np.median(np.abs(slope - head.total_field_hz[brain])) < 1.0
    # Scaling the reference for every echo multiplies the phase offset (1.5 rad peak)
    # by TE_e / TE_1 - 1; with the true offset given it is exact too.
    ratio = unwrap_echoes_temporal(head.phase, head.te_s, brain, head.voxel_size_mm,
                                   magnitude=head.magnitude, prediction="ratio",
                                   phase_offset_rad=head.phase_offset_rad)
    truth = TWO_PI * te[-1] * head.total_field_hz + head.phase_offset_rad
    assert np.count_nonzero(turn_errors(ratio[..., -1], truth, brain)) == 0


def test_real_multi_echo_phase_is_linear_in_time(test_data):
    folder = test_data / "romeo-small"
    te = np.array([0.004, 0.008, 0.012])   # the ROMEO.jl test settings (not in the files)
    data = load_multi_echo([folder / "Mag.nii.gz"], [folder / "Phase.nii.gz"], te, 3.0)
    first = data.magnitude[..., 0]
    mask = first > 0.5 * np.percentile(first, 90)
    result = unwrap_echoes_temporal(data.phase, te, mask, (0.47, 0.47, 1.0), magnitude=data.magnitude)
    assert np.all(result[~mask] == 0)
    turns = (result - data.phase)[mask] / TWO_PI
    assert np.abs(turns - np.round(turns)).max() < 1e-3
    # The data wrap: the unwrapped last echo spans several turns inside the mask.
    assert np.ptp(result[..., 2][mask]) > 2 * TWO_PI
    # Linear fit phase = a + b TE per voxel; residuals are noise. A turn error in
    # one echo would leave a residual of at least 2 pi / 3 (2.09 rad) in that voxel.
    values = result[mask].astype(np.float64)
    design = np.stack([np.ones_like(te), te], axis=1)
    residual = values - (design @ np.linalg.lstsq(design, values.T, rcond=None)[0]).T
    assert np.percentile(np.abs(residual), 95) < 0.05 * np.pi
    assert np.percentile(np.abs(residual), 99) < 0.05 * np.pi
    assert np.abs(residual).max() < 0.75 * (TWO_PI / 3)
    # No 2 pi jumps between neighbours in the spatially unwrapped reference echo.
    reference = result[..., 0]
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = mask[tuple(lo)] & mask[tuple(hi)]
        assert np.abs(reference[tuple(hi)] - reference[tuple(lo)])[both].max() < np.pi


def test_bad_input_is_refused():
    phase = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(QSMInputError, match="mask"):
        unwrap_romeo(phase, np.ones((8, 8, 7), bool))
    with pytest.raises(QSMInputError, match="phase"):
        unwrap_romeo(np.zeros((8, 8)))
    with pytest.raises(QSMInputError, match="NaN"):
        unwrap_romeo(np.full((8, 8, 8), np.nan))
    with pytest.raises(QSMInputError, match="magnitude"):
        unwrap_romeo(phase, magnitude=np.ones((8, 8, 9)))
    with pytest.raises(QSMInputError, match="negative"):
        unwrap_romeo(phase, magnitude=-np.ones((8, 8, 8)))
    with pytest.raises(QSMInputError, match="te_ratio"):
        unwrap_romeo(phase, phase2=phase)
    with pytest.raises(QSMInputError, match="te_ratio"):
        unwrap_romeo(phase, phase2=phase, te_ratio=0)
    phase4d = np.zeros((8, 8, 8, 3), np.float32)
    with pytest.raises(QSMInputError, match="4D"):
        unwrap_echoes_temporal(phase, [0.004])
    with pytest.raises(QSMInputError, match="te_s"):
        unwrap_echoes_temporal(phase4d, [0.004, 0.008])
    with pytest.raises(QSMInputError, match="milliseconds"):
        unwrap_echoes_temporal(phase4d, [4, 8, 12])
    with pytest.raises(QSMInputError, match="reference_echo"):
        unwrap_echoes_temporal(phase4d, [0.004, 0.008, 0.012], reference_echo=3)
    with pytest.raises(QSMInputError, match="prediction"):
        unwrap_echoes_temporal(phase4d, [0.004, 0.008, 0.012], prediction="quadratic")
    with pytest.raises(QSMInputError, match="magnitude"):
        unwrap_echoes_temporal(phase4d, [0.004, 0.008, 0.012], magnitude=np.ones((8, 8, 8, 2)))


def test_unwrap_command_writes_echoes_linear_in_time_on_the_real_scan(test_data, tmp_path, capsys):
    import nibabel as nib

    from qsmlib.cli import main
    from qsmlib.io import load_multi_echo

    folder = test_data / "romeo-small"
    te = [0.004, 0.008, 0.012]
    args = ["unwrap", "--mag", str(folder / "Mag.nii.gz"), "--phase", str(folder / "Phase.nii.gz"),
            "--te", *map(str, te), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    unwrapped = np.asarray(nib.load(str(tmp_path / "out" / "phase_unwrapped.nii.gz")).dataobj)
    data = load_multi_echo([folder / "Mag.nii.gz"], [folder / "Phase.nii.gz"], te, 3.0)
    inside = np.any(unwrapped != 0, axis=3)
    assert unwrapped.shape == data.phase.shape and inside.sum() > 0.5 * inside.size
    # whole turns away from the measured phase at every voxel and echo
    turns = (unwrapped[inside] - data.phase[inside]) / (2 * np.pi)
    assert np.max(np.abs(turns - np.round(turns))) < 1e-3
    # and a straight line in TE where the signal is strong (no turn left between echoes)
    strong = inside & (data.magnitude[..., 0] > np.percentile(data.magnitude[..., 0][inside], 50))
    y = unwrapped[strong].astype(np.float64)
    design = np.stack([np.ones(3), np.asarray(te)], axis=1)
    residual = y - (design @ np.linalg.lstsq(design, y.T, rcond=None)[0]).T
    assert np.percentile(np.abs(residual), 99) < 0.5
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["unwrap"]["spatial"] == "romeo" and provenance["units"]["phase_unwrapped"] == "rad"
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main(args[:-2] + ["--out", str(tmp_path / "o2"), "--reference-echo", "0"]) == 2
    assert "counted from 1" in capsys.readouterr().err
