"""ROMEO-style phase unwrapping: quality-guided region growing as a maximum spanning tree.

ROMEO (Dymerska et al., MRM 2021) gives every edge between face neighbours a
quality weight built from the data (how coherent the phase step is, whether
it agrees with a second echo, whether the magnitude is high and continuous)
and grows the unwrapped region one voxel at a time, always through the best
edge between the region and a new voxel. Each new voxel takes the multiple
of 2 pi that makes its step from the voxel it was reached from smaller than
pi. Growing through the best boundary edge is Prim's algorithm: the voxels
are reached through the edges of a maximum spanning tree of the weighted
voxel graph, and the result is fixed by that tree alone (up to ties), not by
the seed or the order of growth.

So the region growing is done here as whole-volume numpy steps:

1. edge weights for the three face directions, vectorised in numpy (float32)
   and quantised to 1..255 as ROMEO does;
2. the spanning tree by Boruvka's algorithm (every component joins through
   its best edge, all at once, until none is left), after dropping the worst
   edge of every grid square (cycle property) and with the first round on
   the voxel grid. Ties between equal quantised weights are broken by edge
   index, so that the tree, and the result, are unique;
3. each round records the turns of every component's root relative to the
   root it joins (pointer jumping along the chosen edges); a voxel's turns,
   ``m[n] = m[parent] + round((p[parent] - p[n]) / 2 pi)`` summed along its
   tree path, are the sum of these offsets over the rounds.

A Python priority queue would visit every voxel in the interpreter (minutes
for a head volume); the rounds give the same result from whole-array
operations in seconds.
"""

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..masking import bounding_box
from ..phase import TWO_PI, wrap_to_pi
from ..slabs import cache_slices
from ..validation import as_mask, as_volume, as_voxel_size, check_echo_times, check_number
from .reliability import _offset_turns

#: Quantisation levels of the edge weights (ROMEO's 8-bit weights): 1 = worst edge, 255 = best.
WEIGHT_LEVELS = 255
#: The magnitude weight is min(1, smaller magnitude of the edge / reference), with the reference
#: this fraction of the 90th percentile of the magnitude in the mask: voxels at half the typical
#: bright tissue signal or above count as fully reliable; darker ones (veins at late echoes,
#: sinus edges, noise) are joined after them, in order of their signal.
MAGNITUDE_REFERENCE_FRACTION = 0.5
MAGNITUDE_REFERENCE_PERCENTILE = 90.0
#: How unwrap_echoes_temporal predicts an echo from those already unwrapped.
PREDICTIONS = ("line", "ratio")


def unwrap_romeo(phase, mask=None, voxel_size=(1, 1, 1), *, magnitude=None, phase2=None,
                 te_ratio=None):
    """Unwrap a 3D phase image exactly by ROMEO-style quality-guided region growing.

    Parameters
    ----------
    phase : ndarray, shape (X, Y, Z)
        Phase in radians, wrapped or not (it is wrapped to [-pi, pi) first).
    mask : ndarray of bool, shape (X, Y, Z), optional
        Region to unwrap; voxels outside carry no edge and are 0 in the
        result. Default: the whole volume.
    voxel_size : sequence of 3 float, optional
        Voxel size in mm. Not used by the method (ROMEO's weights are defined
        on voxel indices); accepted so that every unwrapper has the same
        signature.
    magnitude : ndarray, shape (X, Y, Z), optional
        Magnitude of the same echo (any positive scale). Adds the magnitude
        coherence and magnitude weights; strongly recommended, because it
        lets noisy low-signal voxels be joined last. Default: phase weights
        only.
    phase2 : ndarray, shape (X, Y, Z), optional
        Phase (radians) of a second echo, for the phase gradient coherence
        weight. Needs ``te_ratio``.
    te_ratio : float, optional
        Echo time of ``phase2`` divided by the echo time of ``phase``; the
        phase steps of ``phase2`` divided by it should equal those of
        ``phase``.

    Returns
    -------
    ndarray, float32, shape (X, Y, Z)
        Unwrapped phase in radians, 0 outside ``mask``. At every voxel of the
        mask ``(result - phase) / (2 pi)`` is an integer (to float32
        precision). Each connected component of the mask is shifted by the
        multiple of 2 pi that puts its median in [-pi, pi), as
        :func:`~qsmlib.unwrap.unwrap_reliability` does.

    Raises
    ------
    QSMInputError
        If ``phase``, ``magnitude`` or ``phase2`` is not a finite 3D volume
        of one shape, ``magnitude`` is negative, ``mask`` does not match or is
        empty, the voxel size is invalid, or only one of ``phase2`` and
        ``te_ratio`` is given.

    Notes
    -----
    Weight of the edge between face neighbours i and j, the product of
    (each in [0, 1]):

    - phase coherence ``1 - |wrap(p_j - p_i)| / pi``: a step near pi is as
      likely a wrap as not;
    - phase gradient coherence, with ``phase2``:
      ``max(0, 1 - |wrap(p_j - p_i) - wrap(q_j - q_i) / te_ratio|)``: the
      step must scale with echo time, which noise and wraps do not;
    - magnitude coherence ``min(m_i, m_j) / max(m_i, m_j)``: edges across
      a sharp signal change (vessel walls, tissue boundaries) are weak;
    - magnitude weight ``min(1, min(m_i, m_j) / m_ref)``, with ``m_ref`` half
      the 90th percentile of the magnitude in the mask: low signal means
      noisy phase.

    The product is quantised to 1..255 (0 would remove the edge, so no edge
    inside the mask is lost). Because every edge of the mask is kept, the
    result is congruent everywhere; wrong turns can only appear along the
    weakest edges, which are joined last.

    Cost for one 256 x 256 x 176 echo without a mask (34 million edges), on
    two cores: 26-35 real FFT pairs of that grid with magnitude, 32-38 without,
    and 7-9 with a brain mask of a fifth of the volume (three runs where one
    pair took 0.15-0.19 s). This method's first version took 44 pairs, and the
    scipy Kruskal tree before it about twice as long; all give bit-identical
    output. Memory: under 1 GB without a mask (Testing/benchmarks/bench_unwrap.py).

    References
    ----------
    Dymerska B, Eckstein K, Bachrata B, Siow B, Trattnig S, Shmueli K,
    Robinson SD. Phase unwrapping with a rapid opensource minimum spanning
    tree algorithm (ROMEO). Magn Reson Med 2021;85:2294-2308.

    Boruvka O. O jistem problemu minimalnim. Prace Mor Prirodoved Spol
    1926;3:37-58 (the spanning tree algorithm used here).
    """
    phase = as_volume(phase, "phase", dtype=np.float32)
    as_voxel_size(voxel_size)
    shape = phase.shape
    mask = np.ones(shape, dtype=bool) if mask is None else as_mask(mask, shape)
    if magnitude is not None:
        magnitude = _matching(magnitude, "magnitude", shape)
        if magnitude.min() < 0:
            raise QSMInputError("magnitude: negative values found; give the magnitude image "
                                "(not the real part or a phase image)")
    if (phase2 is None) != (te_ratio is None):
        raise QSMInputError("phase2 and te_ratio go together: give the second echo's phase "
                            "and its echo time divided by the first's, or neither")
    if phase2 is not None:
        phase2 = _matching(phase2, "phase2", shape)
        te_ratio = check_number(te_ratio, "te_ratio", strict=True)

    box = bounding_box(mask)
    region = np.ascontiguousarray(mask[box])
    wrapped = _wrapped(phase[box])
    weights = edge_weights(
        wrapped, region,
        magnitude=None if magnitude is None else magnitude[box],
        phase2=None if phase2 is None else _wrapped(phase2[box]),
        te_ratio=te_ratio)
    labels, n_components = ndimage.label(region)
    turns = _spanning_tree_turns(wrapped, region, weights, labels)

    unwrapped = np.zeros(region.shape, dtype=np.float64)
    unwrapped[region] = wrapped[region] + TWO_PI * turns
    unwrapped -= TWO_PI * _offset_turns(unwrapped, labels, n_components)
    out = np.zeros(shape, dtype=np.float32)
    out[box] = np.where(region, unwrapped, 0.0)
    return out


def edge_weights(wrapped, region, *, magnitude=None, phase2=None, te_ratio=None):
    """Quantised ROMEO edge weights towards the next voxel along each axis.

    Parameters
    ----------
    wrapped : ndarray of float32, shape (X, Y, Z)
        Phase wrapped to [-pi, pi).
    region : ndarray of bool, shape (X, Y, Z)
        Voxels taking part; an edge exists where both its voxels are in it.
    magnitude, phase2, te_ratio
        As in :func:`unwrap_romeo` (``phase2`` wrapped already).

    Returns
    -------
    list of 3 ndarray of uint8, shape (X, Y, Z)
        ``weights[a][v]`` is the weight (1..255) of the edge from voxel ``v``
        to its neighbour at index + 1 along axis ``a``; 0 where there is no
        such edge (outside ``region``, or on the last slice).
    """
    reference = None
    if magnitude is not None:
        level = float(np.percentile(magnitude[region], MAGNITUDE_REFERENCE_PERCENTILE))
        reference = np.float32(MAGNITUDE_REFERENCE_FRACTION * level) if level > 0 else None
    weights = []
    for axis in range(3):
        lo, hi = _halves(axis)
        step2 = None if phase2 is None else _wrapped_step(phase2, lo, hi)
        weights.append(_quantised_weight(_wrapped_step(wrapped, lo, hi), step2, te_ratio, region, lo, hi,
                                         magnitude=magnitude, reference=reference))
    return weights


def _halves(axis):
    """Index tuples of the lower and upper voxel of every edge along ``axis``."""
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis] = slice(0, -1)
    hi[axis] = slice(1, None)
    return tuple(lo), tuple(hi)


def _quantised_weight(step, step2, te_ratio, region, lo, hi, *, magnitude=None, reference=None):
    """Quantised weights (uint8, full shape) of the edges along one axis, from their wrapped steps.

    ``step`` (overwritten) and ``step2`` are the wrapped phase steps of the
    two echoes (``step2`` None for the phase coherence alone), ``lo`` and
    ``hi`` the index tuples of :func:`_halves`.
    """
    levels = _edge_levels(_phase_coherence(step), step, step2, te_ratio, lo, hi,
                          magnitude=magnitude, reference=reference)
    quantised = np.zeros(region.shape, dtype=np.uint8)
    np.copyto(quantised[lo], levels, casting="unsafe", where=region[lo] & region[hi])
    return quantised


def _phase_coherence(step):
    """ROMEO's phase coherence ``1 - |step| / pi`` of wrapped steps (float32, a new array)."""
    weight = np.abs(step)
    weight *= np.float32(1 / np.pi)
    np.subtract(np.float32(1), weight, out=weight)
    return weight


def _edge_levels(weight, step, step2, te_ratio, lo, hi, *, magnitude=None, reference=None):
    """The edge weights quantised to 1..255 (float32), from the phase coherence ``weight``.

    ``weight`` and ``step`` are overwritten; the other terms of
    :func:`unwrap_romeo`'s weight multiply ``weight`` in a fixed order.
    """
    if step2 is not None:
        scaled = np.multiply(step2, np.float32(1 / te_ratio))
        step -= scaled
        np.abs(step, out=step)
        np.subtract(np.float32(1), step, out=step)
        np.maximum(step, np.float32(0), out=step)
        weight *= step
        del scaled
    del step
    if magnitude is not None:
        small = np.minimum(magnitude[lo], magnitude[hi])
        large = np.maximum(magnitude[lo], magnitude[hi])
        weight *= np.divide(small, large, out=np.zeros_like(small), where=large > 0)
        if reference is not None:
            weight *= np.minimum(small / reference, np.float32(1))
        del small, large
    weight *= np.float32(WEIGHT_LEVELS)
    np.rint(weight, out=weight)
    np.clip(weight, 1, WEIGHT_LEVELS, out=weight)
    return weight


def voxel_quality(phase4d, te_s, mask=None):
    """ROMEO phase quality of every voxel: how trustworthy its phase is, from 0 to 1.

    The quality of a voxel is the mean ROMEO weight of the edges to its face
    neighbours, computed from the phase alone (phase coherence times phase
    gradient coherence, see :func:`unwrap_romeo`) and averaged over every
    pair of consecutive echoes. It is near 1 where the phase changes slowly
    and in proportion to echo time, as in brain tissue, and falls towards
    0.1 where the phase is noise (air, cortical bone, background) or where
    the field changes by a large part of a turn per voxel (at air-tissue
    and bone-tissue interfaces, in the unshimmed scalp and neck). The
    magnitude terms of ROMEO's weights are left out, so that the map tells
    what the phase adds to the magnitude (:func:`qsmlib.masking.brain_mask`
    uses both).

    Parameters
    ----------
    phase4d : ndarray, shape (X, Y, Z, E)
        Phase per echo in radians (wrapped or not; it is wrapped first).
    te_s : sequence of float
        Echo times in seconds, increasing, one per echo. With one echo the
        quality is the phase coherence alone.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to rate; edges leaving it do not count and the quality is 0
        outside it. Default: the whole volume.

    Returns
    -------
    ndarray, float32, shape (X, Y, Z)
        Mean edge weight in [0, 1] (ROMEO's 8-bit weights divided by 255);
        0 for a voxel without a neighbour in ``mask``.

    Raises
    ------
    QSMInputError
        If ``phase4d`` is not a finite 4D array, the echo times are not one
        increasing value in seconds per echo, or ``mask`` does not match or
        is empty.

    Notes
    -----
    Cost: the ROMEO weights of every echo pair on the bounding box of
    ``mask``, each echo's phase steps and coherence computed once, slab by
    slab along X (:func:`qsmlib.slabs.cache_slices`) so that they stay in
    the CPU cache. For a 1 mm head (164 x 205 x 205, five echoes) 0.6-0.9 s
    on two cores, against 1.6-2.7 s on the whole volume at once (the same
    values bit for bit, timed alternately in one process); memory: the
    output, the phase and a few slabs.

    References
    ----------
    Dymerska B, Eckstein K, Bachrata B, Siow B, Trattnig S, Shmueli K,
    Robinson SD. Phase unwrapping with a rapid opensource minimum spanning
    tree algorithm (ROMEO). Magn Reson Med 2021;85:2294-2308 (the edge
    weights, and the voxel quality map that averages them).
    """
    phase4d = np.asarray(phase4d)
    if phase4d.ndim != 4:
        raise QSMInputError(f"phase4d: got shape {phase4d.shape}; give a 4D array "
                            "(X, Y, Z, echoes) of phase in radians")
    phase4d = as_volume(phase4d, "phase4d", ndim=4)
    shape, n_echoes = phase4d.shape[:3], phase4d.shape[3]
    te = check_echo_times(te_s, n_echoes, name="te_s")
    if te.size != n_echoes:
        raise QSMInputError(f"te_s: {te.size} echo times for {n_echoes} echoes; give one per echo")
    mask = np.ones(shape, dtype=bool) if mask is None else as_mask(mask, shape)
    box = bounding_box(mask)
    region = mask[box]
    phase4d = phase4d[box]
    pairs = [(echo, echo + 1) for echo in range(n_echoes - 1)] or [(0, None)]
    ratios = [None if second is None else te[second] / te[first] for first, second in pairs]
    nx, plane = region.shape[0], region.shape[1:]
    out = np.zeros(shape, dtype=np.float32)
    # Slab by slab along X, so that each echo's steps stay in the CPU cache. A
    # slab also holds the next plane, for the edges along X that leave it; what
    # those edges add to that plane is carried to the next slab. Each voxel's
    # sums are whole numbers (exact in float32), so the order they are added in
    # does not change them.
    carried_sums = np.zeros((len(pairs),) + plane, dtype=np.float32)
    carried_count = np.zeros(plane, dtype=np.float32)
    for piece in cache_slices(nx, region[0].size * 4):
        start, stop = piece.start, piece.stop
        end = min(stop + 1, nx)                 # the slab and the plane after it
        inner = stop - start
        wrapped = [_wrapped(phase4d[start:end, :, :, echo]) for echo in range(n_echoes)]
        slab = region[start:end]
        sums = np.zeros((len(pairs), end - start) + plane, dtype=np.float32)
        count = np.zeros((end - start,) + plane, dtype=np.float32)
        sums[:, 0] = carried_sums
        count[0] = carried_count
        for axis in range(3):
            # Edges along X run over the whole slab; the others within its own planes.
            size = end - start if axis == 0 else inner
            lo, hi = _halves(axis)
            inside = slab[:size]
            steps = [_wrapped_step(phase[:size], lo, hi) for phase in wrapped]
            coherence = [_phase_coherence(step) for step in steps[:len(pairs)]]
            edge = inside[lo] & inside[hi]
            everywhere = bool(edge.all())
            count[:size][lo] += edge
            count[:size][hi] += edge
            for number, (first, second) in enumerate(pairs):
                value = _edge_levels(coherence[first], steps[first].copy(), None if second is None else steps[second],
                                     ratios[number], lo, hi)
                if not everywhere:
                    value *= edge               # 0 where there is no edge, without a branch
                sums[number, :size][lo] += value    # the edge towards index + 1 ...
                sums[number, :size][hi] += value    # ... and the same edge seen from its other end
        if end > stop:
            carried_sums = sums[:, inner].copy()
            carried_count = count[inner].copy()
        total = np.zeros((inner,) + plane, dtype=np.float32)
        has_edge = count[:inner] > 0
        for pair_sum in sums[:, :inner]:
            total += np.divide(pair_sum, count[:inner], out=np.zeros(total.shape, dtype=np.float32), where=has_edge)
        out[box][start:stop] = total * np.float32(1 / (len(pairs) * WEIGHT_LEVELS))
    return out


def unwrap_echoes_temporal(phase4d, te_s, mask=None, voxel_size=(1, 1, 1), *, magnitude=None,
                           reference_echo=0, prediction="line", phase_offset_rad=None):
    """Unwrap every echo: one in space with ROMEO, the others in time against it.

    The reference echo is unwrapped in space by :func:`unwrap_romeo` (with its
    magnitude, and the next echo's phase for the gradient coherence). Every
    other echo ``e`` then takes, voxel by voxel, the multiple of 2 pi that
    brings it closest to a prediction ``pred_e`` from the echoes already
    unwrapped (phase grows linearly with TE)::

        phi_e + 2 pi round((pred_e - phi_e) / (2 pi)).

    The echoes are taken in order of TE away from the reference. The first
    one (next to the reference) is predicted by scaling the reference,
    ``pred_e = phi_ref * TE_e / TE_ref``, as ROMEO does; the next ones, with
    the default ``prediction="line"``, by the least-squares line (with
    intercept) through the echoes unwrapped so far.

    Parameters
    ----------
    phase4d : ndarray, shape (X, Y, Z, E)
        Phase per echo in radians (wrapped or not).
    te_s : sequence of float
        Echo times in seconds, increasing, one per echo.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Region to unwrap. Default: the whole volume.
    voxel_size : sequence of 3 float, optional
        Voxel size in mm (passed on; not used by ROMEO).
    magnitude : ndarray, shape (X, Y, Z, E) or (X, Y, Z), optional
        Magnitude per echo (or of the reference echo); used for the reference
        echo's weights.
    reference_echo : int, optional
        Index of the echo unwrapped in space. Default 0 (the first echo, the
        one with the least phase to unwrap and the highest signal).
    prediction : {"line", "ratio"}, optional
        ``"line"`` (default): from the third echo on, extrapolate the line
        through the echoes already unwrapped. Its intercept absorbs the
        echo-independent phase offset, which the scaled reference multiplies
        by ``TE_e / TE_ref - 1``. ``"ratio"``: scale the reference for every
        echo (ROMEO's template approach), which needs the offset small or
        given in ``phase_offset_rad``. On the simulated head (offset up to
        1.5 rad, TE 4 to 28 ms), "ratio" without the offset put 46 % of the
        brain a turn off at the last echo, "line" no voxel.
    phase_offset_rad : ndarray, shape (X, Y, Z), optional
        Echo-independent phase offset (receive phase, as estimated by a
        phase-offset correction or :func:`~qsmlib.fieldmap.fit_multi_echo_field`).
        The scaled prediction is then ``(phi_ref - offset) * TE_e / TE_ref +
        offset``. Default: none (taken as 0).

    Returns
    -------
    ndarray, float32, shape (X, Y, Z, E)
        Unwrapped phase per echo in radians, 0 outside ``mask``; congruent
        with ``phase4d`` at every voxel of the mask.

    Raises
    ------
    QSMInputError
        If the arrays are not finite and of matching shapes, the echo times
        are invalid, ``reference_echo`` is not an echo index, or
        ``prediction`` is unknown.

    Notes
    -----
    The temporal step is exact wherever the prediction error stays below
    pi: for the scaled reference ``(TE_e / TE_ref - 1) * offset + TE_e /
    TE_ref * (noise of the reference) + noise of echo e``; for the line,
    the noise of the fitted echoes, amplified by the extrapolation. It needs
    no spatial path, so a late echo is unwrapped correctly even where its
    own phase is undersampled in space (near sinuses), as long as the
    reference is not. Voxels without signal (vessels with flow, air) may
    still take a wrong turn.

    References
    ----------
    Dymerska B, Eckstein K, Bachrata B, Siow B, Trattnig S, Shmueli K,
    Robinson SD. Phase unwrapping with a rapid opensource minimum spanning
    tree algorithm (ROMEO). Magn Reson Med 2021;85:2294-2308.
    """
    phase4d = np.asarray(phase4d)
    if phase4d.ndim != 4:
        raise QSMInputError(f"phase4d: got shape {phase4d.shape}; give a 4D array "
                            "(X, Y, Z, echoes) of phase in radians")
    phase4d = as_volume(phase4d, "phase4d", ndim=4)
    shape, n_echoes = phase4d.shape[:3], phase4d.shape[3]
    te = check_echo_times(te_s, n_echoes, name="te_s")
    if te.size != n_echoes:
        raise QSMInputError(f"te_s: {te.size} echo times for {n_echoes} echoes; give one per echo")
    if isinstance(reference_echo, (bool, np.bool_)) or not isinstance(reference_echo, (int, np.integer)) \
            or not 0 <= reference_echo < n_echoes:
        raise QSMInputError(f"reference_echo: {reference_echo!r} is not an echo index; "
                            f"give a whole number from 0 to {n_echoes - 1}")
    reference_echo = int(reference_echo)
    mask = np.ones(shape, dtype=bool) if mask is None else as_mask(mask, shape)
    ref_magnitude = None
    if magnitude is not None:
        magnitude = np.asarray(magnitude)
        if magnitude.ndim == 4:
            if magnitude.shape != phase4d.shape:
                raise QSMInputError(f"magnitude has shape {magnitude.shape} but phase4d has shape "
                                    f"{phase4d.shape}; give one magnitude volume per echo")
            ref_magnitude = magnitude[..., reference_echo]
        else:
            ref_magnitude = magnitude
    offset = None
    if phase_offset_rad is not None:
        offset = _matching(phase_offset_rad, "phase_offset_rad", shape)[mask].astype(np.float64)
    if prediction not in PREDICTIONS:
        raise QSMInputError(f"prediction: {prediction!r} is not one of {PREDICTIONS}")

    # The gradient coherence compares the reference with its nearest later
    # (else earlier) echo, the one whose steps are most alike.
    other = None
    if n_echoes > 1:
        other = reference_echo + 1 if reference_echo + 1 < n_echoes else reference_echo - 1
    reference = unwrap_romeo(
        phase4d[..., reference_echo], mask, voxel_size, magnitude=ref_magnitude,
        phase2=None if other is None else phase4d[..., other],
        te_ratio=None if other is None else te[other] / te[reference_echo])

    known = {reference_echo: reference[mask].astype(np.float64)}
    out = np.zeros(phase4d.shape, dtype=np.float32)
    out[..., reference_echo] = reference
    # Later echoes in increasing TE, then earlier ones in decreasing TE: each
    # is predicted from the echoes nearest to it that are already unwrapped.
    sequence = list(range(reference_echo + 1, n_echoes)) + list(range(reference_echo - 1, -1, -1))
    for echo in sequence:
        if prediction == "ratio" or len(known) == 1:
            ref = known[reference_echo]
            if offset is None:
                predicted = ref * (te[echo] / te[reference_echo])
            else:
                predicted = (ref - offset) * (te[echo] / te[reference_echo]) + offset
        else:
            predicted = _line_prediction(known, te, te[echo])
        measured = phase4d[..., echo][mask].astype(np.float64)
        values = measured + TWO_PI * np.round((predicted - measured) / TWO_PI)
        known[echo] = values
        out[..., echo][mask] = values
    return out


def _line_prediction(known, te, te_target):
    """Least-squares line (with intercept) through the unwrapped echoes, evaluated at ``te_target``."""
    echoes = sorted(known)
    times = te[echoes]
    centre = times.mean()
    spread = np.sum((times - centre) ** 2)
    mean = sum(known[e] for e in echoes) / len(echoes)
    slope = sum((te[e] - centre) * known[e] for e in echoes) / spread
    return mean + slope * (te_target - centre)


def _matching(array, name, shape):
    """``array`` as a finite float32 volume of ``shape``."""
    array = as_volume(array, name, dtype=np.float32)
    if array.shape != tuple(shape):
        raise QSMInputError(f"{name}: shape {array.shape} does not match the phase shape "
                            f"{tuple(shape)}; give it on the same voxel grid")
    return array


def _wrapped(phase):
    """``phase`` wrapped to [-pi, pi) as float32: :func:`~qsmlib.phase.wrap_to_pi`, or a plain
    copy (the same values) when every value is in that range already, as scanner phase is."""
    phase = np.asarray(phase)
    if phase.dtype == np.float32 and phase.size:
        phase = phase.copy()                    # contiguous: min and max of a strided echo are slow
        if float(phase.min()) >= -np.pi and float(phase.max()) < np.pi:
            return phase
    return wrap_to_pi(phase, np.float32)


def _wrapped_step(values, lo, hi):
    """Phase step to the next voxel, wrapped to [-pi, pi] (float32)."""
    step = np.subtract(values[hi], values[lo])
    turns = np.multiply(step, np.float32(1 / TWO_PI))
    np.rint(turns, out=turns)
    turns *= np.float32(TWO_PI)
    step -= turns
    return step


def _spanning_tree_turns(wrapped, region, weights, labels):
    """Turns (whole multiples of 2 pi) of every voxel of ``region``, in voxel order.

    The maximum spanning tree of the weighted graph is the path along which
    ROMEO's region growing unwraps; each voxel takes its parent's turns plus
    the turn that makes its step from the parent smaller than pi. The turns
    are relative to the first voxel (in raster order) of each connected
    component of ``region``, which has 0.

    Edges are ordered by weight, best first, and among equal weights by their
    index ``3 * voxel + column`` (column 0, 1, 2 for the edge along z, y, x):
    a total order, so the tree is unique. It is found by Boruvka's algorithm
    (every component joins through its best edge, all components at once,
    until none has an edge left), in whole-array steps:

    1. every edge that is the worst of the four edges around a grid square
       is dropped first (the worst edge of a cycle is in no maximum spanning
       tree): about half of the edges;
    2. the first round runs on the voxel grid: each voxel's best edge is the
       best of its six, with the fixed index order of the six breaking ties;
    3. later rounds run on the list of edges between components, which
       shrinks with every round;
    4. each round records, for every component, the turns of its root relative
       to the root of the component it joins (summed along the chosen edges
       by pointer jumping); a voxel's turns are these offsets summed over the
       rounds.

    References
    ----------
    Boruvka O. O jistem problemu minimalnim. Prace Mor Prirodoved Spol 1926;3:37-58.
    Tarjan RE. Data structures and network algorithms. SIAM 1983, chapter 6
    (the cycle property, and Boruvka's algorithm with contraction).
    """
    shape = region.shape
    n_voxels = region.size
    strides = (shape[1] * shape[2], shape[2], 1)
    flat_phase = wrapped.reshape(-1)
    # Turns of the step across each edge: d = turns[upper] - turns[lower] when
    # the lower voxel is the parent, and -d the other way round (rint is odd).
    steps = []
    for stride in strides:
        step = np.zeros(n_voxels, dtype=np.int8)
        if n_voxels > stride:
            step[:-stride] = np.rint((flat_phase[:-stride] - flat_phase[stride:]) * np.float32(1 / TWO_PI))
        steps.append(step)

    flat_weights = [level.reshape(-1) for level in weights]
    label, offset, n_components = _grid_round(flat_weights, steps, strides)
    rounds = [(label, offset)]
    # The edges left: those between different components, less the worst of
    # each grid square, with their steps between the components' roots and
    # their keys in the total order.
    crossing = []
    for axis, stride in enumerate(strides):
        level = np.zeros(n_voxels, dtype=np.uint8)
        np.copyto(level[:-stride], flat_weights[axis][:-stride], where=label[:-stride] != label[stride:])
        crossing.append(level)
    _drop_square_maxima(crossing, flat_weights, strides)
    lower, upper, key, step = [], [], [], []
    for axis, stride in enumerate(strides):
        flat_level = crossing[axis]
        voxel = np.flatnonzero(flat_level)
        lower.append(label[voxel])
        upper.append(label[voxel + stride])
        key.append(_edge_key(flat_level[voxel], voxel, axis, n_voxels))
        step.append(steps[axis][voxel] + offset[voxel] - offset[voxel + stride])
    lower, upper = np.concatenate(lower), np.concatenate(upper)
    key, step = np.concatenate(key), np.concatenate(step)
    del crossing, steps, label, offset

    while lower.size:
        best = np.full(n_components, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, lower, key)
        np.minimum.at(best, upper, key)
        parent = np.arange(n_components, dtype=np.int32)
        relative = np.zeros(n_components, dtype=np.int32)
        chosen = np.flatnonzero(key == best[lower])     # the best edge of its lower component
        parent[lower[chosen]] = upper[chosen]
        relative[lower[chosen]] = -step[chosen]
        chosen = np.flatnonzero(key == best[upper])     # the best edge of its upper component
        parent[upper[chosen]] = lower[chosen]
        relative[upper[chosen]] = step[chosen]
        label, offset, n_components = _merge_components(parent, relative, best != np.iinfo(np.int64).max)
        rounds.append((label, offset))
        # New label and offset of both ends, one gather each (packed in an int64).
        packed = np.empty((label.size, 2), dtype=np.int32)
        packed[:, 0] = label
        packed[:, 1] = offset
        records = packed.view(np.int64).ravel()
        ends = records[lower].view(np.int32).reshape(-1, 2)
        lower = ends[:, 0].copy()
        step += ends[:, 1]
        ends = records[upper].view(np.int32).reshape(-1, 2)
        upper = ends[:, 0].copy()
        step -= ends[:, 1]
        del ends, packed, records
        inner = np.flatnonzero(lower != upper)  # one index list for four gathers
        lower, upper, key, step = lower[inner], upper[inner], key[inner], step[inner]

    total = np.zeros(n_components, dtype=np.int32)
    for label, offset in reversed(rounds):
        total = offset + total[label]
    turns = total.reshape(shape)[region]
    # Relative to each component's first voxel: labels appear in raster order,
    # so that voxel is where the running maximum of the labels first reaches it.
    voxel_labels = labels[region]
    seeds = np.searchsorted(np.maximum.accumulate(voxel_labels),
                            np.arange(1, int(voxel_labels.max()) + 1, dtype=voxel_labels.dtype))
    turns -= turns[seeds][voxel_labels - 1]
    return turns


def _edge_key(level, voxel, axis, n_voxels):
    """Position of edges in the total order (int64): best weight first, then by index."""
    return (np.int64(WEIGHT_LEVELS) - level.astype(np.int64)) * np.int64(3 * n_voxels) \
        + (3 * voxel.astype(np.int64) + (2 - axis))


def _drop_square_maxima(levels, weights, strides):
    """Drop (set to 0 in ``levels``) the worst edge between components of each grid square.

    ``levels`` (flat, one per axis) are the weights of the edges between
    different components, 0 for the others, and ``weights`` (flat) those of
    all edges. Around a grid square whose four edges exist, the edges between
    components form a closed walk of the graph with every component
    contracted to one node, so the worst of them (lowest weight, then highest
    index) is in no maximum spanning tree of that graph (cycle property):
    dropping all such edges at once leaves the tree unchanged.
    """
    # 256 - weight for an edge between components (1 = best), 0 for the others:
    # the worst edge of a square has the highest badness.
    badness = [np.negative(level) for level in levels]
    exists = [level > 0 for level in weights]
    n_voxels = levels[0].size
    for a, b in ((0, 1), (0, 2), (1, 2)):
        size = n_voxels - strides[a]
        # The four edges in increasing index (a < b, so stride a > stride b):
        # b-edge at v, a-edge at v, a-edge at v + e_b, b-edge at v + e_a. An
        # edge at v exists only if v is not on the last slice of its axis, so
        # the shifted flat ranges never wrap into a square that is not there.
        where = ((b, 0), (a, 0), (a, strides[b]), (b, strides[a]))
        closed = exists[b][:size] & exists[a][:size]
        closed &= exists[a][strides[b]:strides[b] + size]
        closed &= exists[b][strides[a]:]
        square = [badness[axis][shift:shift + size] for axis, shift in where]
        worst = np.maximum(np.maximum(square[0], square[1]), np.maximum(square[2], square[3]))
        closed &= worst > 0
        for value, (axis, shift) in zip(reversed(square), reversed(where)):
            keep = ~(closed & (value == worst))
            closed &= keep
            levels[axis][shift:shift + size] *= keep    # branch-free, unlike a masked assignment


def _grid_round(flat_levels, steps, strides):
    """First Boruvka round on the voxel grid: every voxel joins through its best edge.

    Returns the component label of every voxel, the turns of each voxel
    relative to its component's root, and the number of components.
    """
    n_voxels = flat_levels[0].size
    # A voxel's six edges in increasing index: backward along x, y, z, forward along z, y, x.
    incident = []
    for axis in (0, 1, 2):
        stride = strides[axis]
        backward = np.zeros(n_voxels, dtype=np.uint8)
        backward[stride:] = flat_levels[axis][:-stride]
        incident.append((backward, axis, -stride))
    for axis in (2, 1, 0):
        incident.append((flat_levels[axis], axis, strides[axis]))
    # The best edge as the maximum of 8 * weight + (5 - number): the highest
    # weight, and among equal weights the first edge, wins.
    best = np.zeros(n_voxels, dtype=np.uint16)
    score = np.empty(n_voxels, dtype=np.uint16)
    for number, (level, _, _) in enumerate(incident):
        np.left_shift(level, 3, out=score, dtype=np.uint16)
        score |= np.uint16(5 - number)
        np.maximum(best, score, out=best)
    del score
    choice = (np.int8(5) - (best & 7)).astype(np.int8)
    choice[best < 8] = -1                       # weight 0: no edge
    del best
    parent = np.arange(n_voxels, dtype=np.int32)
    relative = np.zeros(n_voxels, dtype=np.int32)
    for number, (_, axis, shift) in enumerate(incident):
        voxel = np.flatnonzero(choice == number)
        parent[voxel] += shift
        if shift > 0:
            relative[voxel] = -steps[axis][voxel]
        else:
            relative[voxel] = steps[axis][voxel + shift]
    return _merge_components(parent, relative, choice >= 0)


def _merge_components(parent, relative, active):
    """Components after one Boruvka round, from every component's chosen neighbour.

    ``parent[c]`` is the component that ``c`` joins (``c`` itself if it has no
    edge) and ``relative[c]`` the turns of ``c``'s root relative to
    ``parent[c]``'s root. Two components that chose the same edge point at
    each other; the smaller one becomes the root of the merged component.
    Components without an edge (``active`` False) are finished: they all take
    one last label, a placeholder that later rounds carry along unchanged,
    so that they cost nothing there (most of a masked box).
    Returns new compact labels, each component's turns relative to the root
    of its merged component, and the number of labels.
    """
    own = np.arange(parent.size, dtype=np.int32)
    mutual = (parent[parent] == own) & (own < parent)
    np.copyto(parent, own, where=mutual)
    relative *= ~mutual
    root, offset = _jump_to_roots(parent, relative)
    new_root = (root == own) & active
    new_label = np.cumsum(new_root, dtype=np.int32) - 1
    finished = int(new_label[-1]) + 1
    label = new_label[root]
    label[~active] = finished
    return label, offset, finished + 1


def _jump_to_roots(parent, step):
    """Root of every node of a forest and the sum of ``step`` along the path to it, by pointer jumping.

    ``parent[root] == root`` and ``step[root] == 0``. After pass k every node
    holds the sum over its 2**k nearest ancestors and points 2**k levels up.
    Pointer and sum are packed into one int64 per node, so that each pass
    gathers both with one random memory access; only the nodes whose parent
    is not yet a root are updated.
    """
    packed = np.empty((parent.size, 2), dtype=np.int32)
    packed[:, 0] = parent
    packed[:, 1] = step
    records = packed.view(np.int64).ravel()
    active = np.flatnonzero(parent[parent] != parent)
    while active.size:
        gathered = records[packed[active, 0]].view(np.int32).reshape(-1, 2)
        packed[active, 1] += gathered[:, 1]
        pointer = gathered[:, 0]
        packed[active, 0] = pointer
        active = active[packed[pointer, 0] != pointer]
    return packed[:, 0].copy(), packed[:, 1].copy()
