"""Physics checks of a reconstruction, each naming the likely cause when it fails.

A map can be computed from input that is physically impossible: echo times in
the wrong unit, a wrong field strength, a mask over skull and air, a wrong B0
direction. These checks look at the result the way a physicist would:

- **B0 direction**: a field made by susceptibility sources vanishes in k-space
  on the magic-angle cone of the true B0 direction (the dipole kernel
  ``1/3 - (k.b)^2/k^2`` is zero there). :func:`b0_direction_check` compares
  the local field's energy on the cone of the direction used with its energy
  on the cones of the other candidates (the image geometry's direction and the
  voxel axes). On the simulated head (1-2 mm, SNR 30-100, the pipeline's own
  local field) the true direction's cone holds 0.16-0.36 of the average
  energy, a direction 20-90 degrees off 0.46-0.71.
- **map range**: the 1st-99th percentiles of a brain's susceptibility lie
  within about +-0.3 ppm; even haemorrhage and calcification keep them within
  +-1 ppm (:func:`map_range_check`).
- **local field**: a brain's local field stays within about +-0.2 ppm of B0;
  far more means the echo times, the field strength or the phase scale are
  wrong, not the tissue.
- **phase sign** (:func:`phase_sign_check`): iron-rich nuclei and veins have
  the highest R2* and a positive susceptibility. Only voxels at least
  :data:`PHASE_SIGN_DEPTH_MM` inside the mask decide: at 2 mm, three quarters
  of the top-R2* voxels of the whole mask are muscle at its edge (measured on
  the simulated head), 15 mm deep all are brain.

:func:`assess` runs them, and turns failures into warnings and, for
physically impossible results, a refusal whose message names the likely
cause, in order of evidence.
"""

import numpy as np

from .constants import hz_per_ppm

#: Robust extent (ppm) of the map's 1st-99th percentiles in the mask: questioned beyond the
#: first value, impossible for a human brain beyond the second.
MAP_QUESTIONABLE_PPM = 1.0
MAP_IMPLAUSIBLE_PPM = 5.0
#: Robust extent (ppm of B0) of the local field beyond which it cannot come from brain tissue.
LOCAL_FIELD_IMPLAUSIBLE_PPM = 1.0
#: Half width of the magic-angle cone, in units of the dipole kernel.
CONE_HALF_WIDTH = 0.05
#: The direction used is questioned when its cone energy exceeds another candidate's by this factor.
B0_CONE_RATIO_FACTOR = 1.3
#: Candidates closer than this (degrees) to the direction used are the same direction.
B0_SAME_DIRECTION_DEG = 10.0
#: The cone test needs the mask away from the field of view's edge and at least this wide (mm) on every axis.
B0_CHECK_MIN_EXTENT_MM = 40.0
#: Phase-sign check: fraction of the deep brain voxels with the highest R2*, their least depth (mm)
#: inside the mask, the fewest voxels that decide, and the margin (ppm) of a clear verdict.
PHASE_SIGN_TOP_FRACTION = 0.02
PHASE_SIGN_DEPTH_MM = 15.0
PHASE_SIGN_MIN_VOXELS = 50
PHASE_SIGN_MARGIN_PPM = 0.01


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def angle_deg(a, b):
    """Angle (degrees, 0-90) between two axes, whatever their signs."""
    return float(np.degrees(np.arccos(np.clip(abs(np.dot(_unit(a), _unit(b))), 0.0, 1.0))))


def cone_energy(field, mask, voxel_size, directions):
    """Mean k-space power of ``field`` (zero outside ``mask``) on each direction's magic-angle cone.

    Each value is relative to the mean power over all of k-space, so 1 means
    the cone holds as much as anywhere else and 0 that the field vanishes on it.

    Parameters
    ----------
    field : ndarray (X, Y, Z)
    mask : ndarray of bool (X, Y, Z)
    voxel_size : sequence of 3 float
        mm.
    directions : sequence of 3-vectors
        B0 directions in voxel coordinates.

    Returns
    -------
    list of float
    """
    from .fourier import pad, padded_shape, rfft

    values = np.where(mask, field, 0).astype(np.float32)
    shape = padded_shape(values.shape, [n // 4 for n in values.shape])
    power = np.abs(rfft(pad(values, shape))) ** 2
    freqs = [np.fft.fftfreq(n, d).astype(np.float32) for n, d in zip(shape[:2], voxel_size[:2])]
    freqs.append(np.fft.rfftfreq(shape[2], voxel_size[2]).astype(np.float32))
    k = np.meshgrid(*freqs, indexing="ij", sparse=True)
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    k2[0, 0, 0] = 1.0
    total = float(power.mean())
    if total == 0:
        return [float("nan")] * len(directions)
    ratios = []
    for direction in directions:
        b = _unit(direction).astype(np.float32)
        kernel = np.float32(1.0 / 3.0) - (k[0] * b[0] + k[1] * b[1] + k[2] * b[2]) ** 2 / k2
        cone = np.abs(kernel) < CONE_HALF_WIDTH
        cone[0, 0, 0] = False
        ratios.append(float(power[cone].mean() / total) if cone.any() else float("nan"))
    return ratios


def _direction_check_unreliable(mask, voxel_size):
    """Why the cone test cannot judge this mask (None if it can): cut by the field of view, or too small."""
    for axis in range(3):
        if np.take(mask, 0, axis=axis).any() or np.take(mask, -1, axis=axis).any():
            return ("the mask reaches the edge of the field of view, where the field is cut off, so the magic-angle "
                    "cone test cannot judge the B0 direction")
    coords = np.argwhere(mask)
    extent_mm = (coords.max(axis=0) - coords.min(axis=0) + 1) * np.asarray(voxel_size) if coords.size else [0.0]
    if min(extent_mm) < B0_CHECK_MIN_EXTENT_MM:
        return (f"the mask spans only {min(extent_mm):.0f} mm along one axis (the cone test needs "
                f"{B0_CHECK_MIN_EXTENT_MM:g} mm)")
    return None


def b0_direction_check(local_field, mask, voxel_size, b0_dir, *, image_b0_dir=None):
    """Does the local field vanish on the magic-angle cone of ``b0_dir`` better than on other candidates?

    Candidates: ``image_b0_dir`` (the direction from the image geometry, when
    ``b0_dir`` was given instead) and the three voxel axes, each if more than
    :data:`B0_SAME_DIRECTION_DEG` from ``b0_dir``.

    The test is skipped (``verdict`` "skipped", with ``skipped``: why) when the
    mask reaches the edge of the field of view (the cut-off field spreads over
    k-space) or is narrower than :data:`B0_CHECK_MIN_EXTENT_MM` along an axis.

    Returns
    -------
    dict
        ``cone_energy`` per candidate, ``verdict`` ("plausible", "questionable" or
        "skipped"), and when questionable ``better`` (the candidate's name),
        ``better_dir`` and ``angle_deg``.
    """
    mask = np.asarray(mask, bool)
    reason = _direction_check_unreliable(mask, voxel_size)
    if reason is not None:
        return {"verdict": "skipped", "skipped": reason}
    candidates = {"used": tuple(float(x) for x in _unit(b0_dir))}
    if image_b0_dir is not None and angle_deg(image_b0_dir, b0_dir) > B0_SAME_DIRECTION_DEG:
        candidates["image geometry"] = tuple(float(x) for x in _unit(image_b0_dir))
    for axis, name in enumerate(("voxel axis i", "voxel axis j", "voxel axis k")):
        direction = tuple(float(axis == n) for n in range(3))
        if all(angle_deg(direction, d) > B0_SAME_DIRECTION_DEG for d in candidates.values()):
            candidates[name] = direction
    energies = dict(zip(candidates, cone_energy(local_field, mask, voxel_size, list(candidates.values()))))
    record = {"cone_energy": {k: round(v, 4) for k, v in energies.items()},
              "directions": {k: [round(x, 4) for x in v] for k, v in candidates.items()}, "verdict": "plausible"}
    others = {k: v for k, v in energies.items() if k != "used" and np.isfinite(v)}
    if others and np.isfinite(energies["used"]):
        best = min(others, key=others.get)
        if energies["used"] > B0_CONE_RATIO_FACTOR * others[best]:
            record.update(verdict="questionable", better=best, better_dir=list(candidates[best]),
                          angle_deg=round(angle_deg(candidates[best], b0_dir), 1))
    return record


def map_range_check(chi_ppm, mask):
    """The 1st and 99th percentiles of susceptibility in the mask, and a verdict on them."""
    values = np.asarray(chi_ppm)[mask]
    p1, p99 = (float(v) for v in np.percentile(values, [1, 99])) if values.size else (0.0, 0.0)
    extent = max(abs(p1), abs(p99))
    verdict = ("implausible" if extent > MAP_IMPLAUSIBLE_PPM else
               "questionable" if extent > MAP_QUESTIONABLE_PPM else "plausible")
    return {"p1_ppm": round(p1, 4), "p99_ppm": round(p99, 4), "verdict": verdict}


def local_field_extent_ppm(local_field_hz, mask, b0_t):
    """Robust extent (the larger of |1st| and |99th| percentile) of the local field in ppm of B0."""
    values = np.asarray(local_field_hz)[mask] / hz_per_ppm(b0_t)
    return float(np.max(np.abs(np.percentile(values, [1, 99])))) if values.size else 0.0


def deep_voxels(mask, voxel_size, depth_mm):
    """The voxels of ``mask`` at least ``depth_mm`` from its edge (Euclidean, on the mask's bounding box).

    A voxel is that deep when no voxel outside ``mask`` (or outside its
    bounding box) lies closer than ``depth_mm``: an erosion by the open ball
    of that radius, counted by one FFT convolution instead of a distance
    transform. Distances are those of
    :func:`scipy.ndimage.distance_transform_edt`, computed the same way
    (``sqrt`` of the sum of squared offsets times the voxel size), so the
    result is the same voxel for voxel, including at exactly ``depth_mm``.
    """
    from .masking import _sphere_sum, bounding_box

    mask = np.asarray(mask, bool)
    deep = np.zeros(mask.shape, bool)
    if not mask.any():
        return deep
    box = bounding_box(mask)
    part = mask[box]
    voxel_size = tuple(float(d) for d in voxel_size)
    half = np.floor(depth_mm / np.asarray(voxel_size)).astype(int)
    if np.any(2 * half + 1 > np.asarray(part.shape) + 2):
        # The ball is wider than the box: the distance transform is cheaper.
        from scipy import ndimage
        depth = ndimage.distance_transform_edt(np.pad(part, 1), sampling=voxel_size)[1:-1, 1:-1, 1:-1]
        deep[box] = depth >= depth_mm
        return deep
    # Background: outside the mask, and the ring of voxels around the box.
    outside = np.pad(~part, 1, constant_values=True)
    count = _sphere_sum(outside, voxel_size, float(depth_mm), closed=False)
    deep[box] = part & (count[1:-1, 1:-1, 1:-1] < 0.5)
    return deep


def phase_sign_check(chi_ppm, r2star_hz, mask, *, voxel_size=(1.0, 1.0, 1.0), top_fraction=PHASE_SIGN_TOP_FRACTION,
                     depth_mm=PHASE_SIGN_DEPTH_MM):
    """Check the phase convention from iron: the deep brain voxels with the highest R2* must be paramagnetic.

    Only voxels at least ``depth_mm`` inside the mask count, so that muscle,
    bone and fat at its edge (high R2*, no iron) do not decide.

    Returns
    -------
    dict
        ``verdict``: "ok" (median clearly positive), "inverted" (clearly
        negative), "inconclusive" (within :data:`PHASE_SIGN_MARGIN_PPM` of 0) or
        "skipped" (with ``skipped``: why); ``ok`` is False only when inverted;
        ``median_chi_ppm``, ``voxels``, ``r2star_threshold_hz``, ``depth_mm``.
    """
    deep = deep_voxels(mask, voxel_size, depth_mm)
    record = {"top_fraction": top_fraction, "depth_mm": depth_mm}
    if deep.sum() < PHASE_SIGN_MIN_VOXELS / top_fraction:
        record.update(verdict="skipped", ok=True,
                      skipped=f"too few brain voxels {depth_mm:g} mm or more inside the mask ({int(deep.sum())}; "
                              "a crop or a thin slab), so no deep iron to judge by")
        return record
    threshold = float(np.quantile(r2star_hz[deep], 1.0 - top_fraction))
    top = deep & (r2star_hz >= threshold)
    median = float(np.median(chi_ppm[top]))
    verdict = "ok" if median > PHASE_SIGN_MARGIN_PPM else ("inverted" if median < -PHASE_SIGN_MARGIN_PPM
                                                          else "inconclusive")
    record.update(r2star_threshold_hz=threshold, median_chi_ppm=median, voxels=int(top.sum()), verdict=verdict,
                  ok=verdict != "inverted")
    return record


def _direction_text(v):
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def assess(chi_ppm, local_field_hz, mask, voxel_size, b0_dir, b0_t, *, r2star_hz=None, image_b0_dir=None,
           mask_check=None, sign_skipped=None):
    """Run the checks of a finished reconstruction; return their records, warnings and a refusal.

    Parameters
    ----------
    chi_ppm, local_field_hz : ndarray (X, Y, Z)
    mask : ndarray of bool
    voxel_size, b0_dir, b0_t
        As the reconstruction used them (mm, voxel coordinates, tesla).
    r2star_hz : ndarray, optional
        For the phase-sign check; without it the check is skipped for ``sign_skipped``.
    image_b0_dir : 3-vector, optional
        The direction from the image geometry when ``b0_dir`` was given instead.
    mask_check : dict, optional
        The brain mask's check (:func:`qsmlib.mask_check.check_brain_mask`), used as evidence.
    sign_skipped : str, optional
        Why there is no R2* map (one echo, a field-map input), or that the check is off.

    Returns
    -------
    checks : dict
        ``b0_direction``, ``map_range``, ``local_field`` and ``phase_sign`` records.
    warnings : list of str
    refusal : str or None
        A one-line explanation when the result is physically impossible (the map
        range), or when a given B0 direction disagrees with the image geometry
        and the field agrees with the geometry. A map range that a mask flagged
        by ``mask_check`` explains is only warned about: the mask check's own
        policy applies (an automatic mask is refused unless accepted, a given
        one is warned about).
    """
    checks = {"b0_direction": b0_direction_check(local_field_hz, mask, voxel_size, b0_dir,
                                                 image_b0_dir=image_b0_dir),
              "map_range": map_range_check(chi_ppm, mask)}
    local_extent = local_field_extent_ppm(local_field_hz, mask, b0_t)
    checks["local_field"] = {"extent_ppm_of_b0": round(local_extent, 4),
                             "verdict": "implausible" if local_extent > LOCAL_FIELD_IMPLAUSIBLE_PPM else "plausible"}
    mask_text = direction_text = field_text = None
    if mask_check is not None and mask_check.get("verdict") in ("questionable", "implausible"):
        problems = "; ".join(mask_check.get("implausible", []) + mask_check.get("questionable", []))
        mask_text = (f"the {mask_check.get('source', 'given')} brain mask looks {mask_check['verdict']} ({problems}): "
                     "a mask over skull, air or muscle makes the map meaningless; give a brain mask")
    direction = checks["b0_direction"]
    if direction["verdict"] == "questionable":
        direction_text = (f"the B0 direction {_direction_text(b0_dir)} looks wrong: the local field vanishes on the "
                          f"magic-angle cone of the {direction['better']} {_direction_text(direction['better_dir'])}, "
                          f"{direction['angle_deg']:g} degrees away, rather than on its own; check --b0-dir (voxel "
                          "axes, not scanner axes) or the image orientation")
    if checks["local_field"]["verdict"] == "implausible" and mask_text is None:  # a bad mask explains it too
        field_text = (f"the local field reaches {local_extent:.3g} ppm of B0 (a brain's stays within about 0.2 ppm): "
                      "the echo times (s), the field strength (T) or the phase scale are likely wrong")
    causes = [text for text in (mask_text, direction_text, field_text) if text]
    warnings, refusal = [], None
    extent = checks["map_range"]
    if extent["verdict"] != "plausible":
        why = "; ".join(causes) if causes else ("check the echo times (s), the field strength (T), the mask and "
                                                "the B0 direction")
        text = (f"the susceptibility map spans {extent['p1_ppm']:g} to {extent['p99_ppm']:g} ppm (1st-99th "
                f"percentile in the mask; a human brain's stays within about +-0.3 ppm): likely cause: {why}")
        if extent["verdict"] == "implausible" and mask_text is None:
            refusal = text
        else:  # a flagged mask explains it: the mask check's policy (refuse, or go on as asked) decides
            warnings.append(text)
    else:
        if direction_text and image_b0_dir is not None and direction["better"] == "image geometry":
            refusal = direction_text  # a given direction against both the geometry and the field
        elif direction_text:
            warnings.append(direction_text)
        if field_text:
            warnings.append(field_text)

    if sign_skipped is not None or r2star_hz is None:
        checks["phase_sign"] = {"verdict": "skipped", "ok": True,
                                "skipped": sign_skipped or "no R2* map (it needs the magnitude of two or more echoes)"}
    else:
        checks["phase_sign"] = phase_sign_check(chi_ppm, r2star_hz, mask, voxel_size=voxel_size)
    sign = checks["phase_sign"]
    if sign["verdict"] == "inverted":
        if causes or extent["verdict"] != "plausible":
            warnings.append(f"the deep brain voxels with the highest R2* have median susceptibility "
                            f"{sign['median_chi_ppm']:.4f} ppm (iron and veins should be positive), but this says "
                            "little about the phase convention while the other checks fail: fix what they name first")
        else:
            warnings.append("the phase convention looks inverted: the deep brain voxels with the highest R2* have "
                            f"median susceptibility {sign['median_chi_ppm']:.4f} ppm (expected positive for iron and "
                            "veins); rerun with the phase sign flipped (--phase-sign -1) if this is not a "
                            "lesion-dominated scan")
    return checks, warnings, refusal
