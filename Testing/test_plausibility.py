"""Plausibility checks with the right advice: B0 direction, map range, field strength, phase sign (issue 13, item 5)."""

import json

import nibabel as nib
import numpy as np
import pytest

from cli_checks import one_error_line, run_cli
from qsmlib.constants import hz_per_ppm
from qsmlib.errors import ImplausibleMapError, QSMInputError
from qsmlib.pipeline import PipelineConfig, reconstruct
from qsmlib.plausibility import (PHASE_SIGN_DEPTH_MM, assess, b0_direction_check, cone_energy, map_range_check,
                                 phase_sign_check)
from qsmlib.relaxometry import r2star_loglinear
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.validation import check_b0

BRAIN_LABELS = tuple(range(1, 12))  # deep grey matter, WM, GM, CSF, blood of the head model
FAST = PipelineConfig.from_preset("fast")


@pytest.fixture(scope="module")
def head():
    phantom = load_head_phantom(2.0)
    return phantom, simulate_gre(phantom, seed=5)


@pytest.fixture(scope="module")
def fast_result(head):
    _phantom, sim = head
    return reconstruct(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                       voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=FAST)


@pytest.fixture(scope="module")
def bids(tmp_path_factory, head):
    """The same 2 mm head as a BIDS dataset (written through qsm simulate's writer)."""
    from qsmlib.workflow import simulate_dataset

    folder = tmp_path_factory.mktemp("sim") / "bids"
    simulate_dataset(folder, voxel_size_mm=2.0, seed=5)
    return folder


def test_the_field_vanishes_on_the_cone_of_the_true_direction_only(head):
    _phantom, sim = head
    tilted = (np.sin(np.radians(20)), 0.0, np.cos(np.radians(20)))
    true, x, tilt = cone_energy(sim.local_field_ppm, sim.brain_mask, sim.voxel_size_mm,
                                [sim.b0_dir, (1, 0, 0), tilted])
    assert true < 0.1 and x > 0.3 and tilt > 0.3


def test_b0_direction_check_on_the_pipelines_local_field(head, fast_result):
    _phantom, sim = head
    right = b0_direction_check(fast_result.local_field_hz, fast_result.mask, sim.voxel_size_mm, sim.b0_dir)
    assert right["verdict"] == "plausible"
    wrong = b0_direction_check(fast_result.local_field_hz, fast_result.mask, sim.voxel_size_mm, (1, 0, 0),
                               image_b0_dir=sim.b0_dir)
    assert wrong["verdict"] == "questionable" and wrong["better"] == "image geometry"
    assert wrong["better_dir"] == pytest.approx([0, 0, 1]) and wrong["angle_deg"] == 90.0


def test_b0_direction_check_is_skipped_where_it_cannot_judge():
    field = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    touching = np.zeros(field.shape, bool)
    touching[:, 5:35, 5:35] = True
    assert "edge of the field of view" in b0_direction_check(field, touching, (1, 1, 1), (0, 0, 1))["skipped"]
    small = np.zeros(field.shape, bool)
    small[5:35, 5:35, 5:20] = True
    assert "spans only 15 mm" in b0_direction_check(field, small, (1, 1, 1), (0, 0, 1))["skipped"]


def test_map_range_check_knows_a_brain_from_nonsense():
    mask = np.ones((10, 10, 10), bool)
    values = np.linspace(-1, 1, 1000).reshape(mask.shape)
    assert map_range_check(0.1 * values, mask)["verdict"] == "plausible"
    assert map_range_check(2.0 * values, mask)["verdict"] == "questionable"
    record = map_range_check(100.0 * values, mask)
    assert record["verdict"] == "implausible"
    assert record["p1_ppm"] == pytest.approx(100 * np.percentile(values, 1), abs=1e-3)


def test_phase_sign_is_decided_by_deep_brain_voxels_not_muscle(head, fast_result):
    _phantom, sim = head
    r2star, _ = r2star_loglinear(sim.magnitude, sim.te_s, fast_result.mask)

    def deciding_brain_share(depth_mm):
        record = phase_sign_check(fast_result.chi_ppm, r2star, fast_result.mask, voxel_size=sim.voxel_size_mm,
                                  depth_mm=depth_mm)
        from scipy import ndimage

        deep = fast_result.mask & (ndimage.distance_transform_edt(fast_result.mask, sampling=sim.voxel_size_mm)
                                   >= depth_mm)
        top = deep & (r2star >= record["r2star_threshold_hz"])
        return record, float(np.isin(sim.labels[top], BRAIN_LABELS).mean())

    whole, share_whole = deciding_brain_share(0.0)
    deep, share_deep = deciding_brain_share(PHASE_SIGN_DEPTH_MM)
    assert share_whole < 0.5  # at 2 mm the top-R2* voxels of the whole mask are mostly muscle
    assert share_deep > 0.95
    assert deep["verdict"] == "ok" and deep["median_chi_ppm"] > 0.05
    assert deep["median_chi_ppm"] > whole["median_chi_ppm"]


def test_inverted_sign_alone_gets_the_flip_advice_but_not_beside_other_failures(head, fast_result):
    _phantom, sim = head
    r2star, _ = r2star_loglinear(sim.magnitude, sim.te_s, fast_result.mask)
    flipped = -fast_result.chi_ppm
    _checks, warnings, refusal = assess(flipped, -fast_result.local_field_hz, fast_result.mask, sim.voxel_size_mm,
                                        sim.b0_dir, sim.b0_t, r2star_hz=r2star)
    assert refusal is None and any("--phase-sign -1" in w for w in warnings)
    checks, warnings, refusal = assess(flipped, -fast_result.local_field_hz, fast_result.mask, sim.voxel_size_mm,
                                       (1, 0, 0), sim.b0_t, r2star_hz=r2star, image_b0_dir=sim.b0_dir)
    assert checks["phase_sign"]["verdict"] == "inverted"
    assert "looks wrong" in refusal and not any("--phase-sign -1" in w for w in warnings)


def test_a_given_b0_direction_against_the_geometry_and_the_field_is_refused(bids, tmp_path, capsys):
    status, err = run_cli(["run", "--bids", bids, "--preset", "fast", "--b0-dir", "1", "0", "0",
                           "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "the B0 direction (1, 0, 0) looks wrong" in line and "image geometry (0, 0, 1)" in line
    assert "--phase-sign" not in line and not (tmp_path / "out").exists()
    status, err = run_cli(["run", "--bids", bids, "--preset", "fast", "--b0-dir", "1", "0", "0",
                           "--accept-implausible-map", "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["checks"]["b0_direction"]["verdict"] == "questionable"
    assert any("looks wrong" in w for w in provenance["warnings"])
    assert not any("--phase-sign -1" in w for w in provenance["warnings"])


def test_an_all_ones_mask_is_named_as_the_cause(bids, tmp_path, capsys):
    magnitude = next((bids / "sub-01" / "anat").glob("*echo-1_part-mag_MEGRE.nii.gz"))
    image = nib.load(str(magnitude))
    ones = tmp_path / "ones.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(image.shape, np.uint8), image.affine), str(ones))
    status, err = run_cli(["run", "--bids", bids, "--preset", "fast", "--mask", ones, "--out", tmp_path / "out"],
                          capsys)
    assert status == 2 and f"{ones}: the given brain mask is implausible: it covers 100 % of the image" in err
    # Accepted anyway: the run goes on, and the map's check says what is wrong and why.
    status, err = run_cli(["run", "--bids", bids, "--preset", "fast", "--mask", ones, "--out", tmp_path / "out",
                           "--accept-implausible-mask"], capsys)
    assert status == 0, err
    warnings = json.loads((tmp_path / "out" / "provenance.json").read_text())["warnings"]
    spans = [w for w in warnings if w.startswith("the susceptibility map spans")]
    assert len(spans) == 1 and "likely cause: the given brain mask looks implausible" in spans[0]
    assert not any("--phase-sign -1" in w for w in warnings) and "--phase-sign -1" not in err


def test_an_impossible_map_without_a_mask_to_blame_is_refused(head, fast_result, tmp_path):
    _phantom, sim = head
    field = tmp_path / "field.nii.gz"
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(fast_result.local_field_hz * 200 / hz_per_ppm(sim.b0_t), sim.affine), str(field))
    nib.save(nib.Nifti1Image(fast_result.mask.astype(np.uint8), sim.affine), str(mask))
    from qsmlib.cli import main

    assert main(["invert", "--local-field", str(field), "--unit", "ppm", "--mask", str(mask), "--method", "tkd",
                 "--out", str(tmp_path / "chi.nii.gz")]) == 2
    assert not (tmp_path / "chi.nii.gz").exists()
    assert main(["invert", "--local-field", str(field), "--unit", "ppm", "--mask", str(mask), "--method", "tkd",
                 "--accept-implausible-map", "--out", str(tmp_path / "chi.nii.gz")]) == 0


def test_one_echo_says_the_sign_check_was_skipped_and_why(head, tmp_path, capsys):
    _phantom, sim = head
    result = reconstruct(magnitude=sim.magnitude[..., 2:3], phase=sim.phase[..., 2:3], te_s=sim.te_s[2:3],
                         b0_t=sim.b0_t, voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, mask=sim.brain_mask,
                         config=FAST)
    sign = result.provenance["checks"]["phase_sign"]
    assert sign["verdict"] == "skipped" and "two or more echoes; one was given" in sign["skipped"]
    assert any(w.startswith("the phase-sign check was skipped: it needs an R2* map") for w in
               result.provenance["warnings"])
    from_field = reconstruct(local_field_hz=sim.local_field_ppm * hz_per_ppm(sim.b0_t), mask=sim.brain_mask,
                             b0_t=sim.b0_t, voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=FAST)
    assert "started from a field map" in from_field.provenance["checks"]["phase_sign"]["skipped"]


def test_library_callers_get_the_refusal_as_an_exception(head, fast_result):
    _phantom, sim = head
    with pytest.raises(ImplausibleMapError, match="the susceptibility map spans") as refused:
        reconstruct(local_field_hz=fast_result.local_field_hz * 200, mask=fast_result.mask, b0_t=sim.b0_t,
                     voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=FAST)
    assert refused.value.checks["local_field"]["verdict"] == "implausible"
    assert "the local field reaches" in str(refused.value)


@pytest.mark.parametrize("value, advice", [(3000, "looks like millitesla: give 3"),
                                           (127.73e6, "looks like the Larmor frequency in Hz: give 3"),
                                           (298.04, "looks like the Larmor frequency in MHz: give 7"),
                                           (0.001, "give the field strength in tesla (for example 3)")])
def test_field_strength_in_another_unit_gets_its_correction(value, advice):
    with pytest.raises(QSMInputError, match=advice.replace("(", r"\(").replace(")", r"\)")):
        check_b0(value, name="B0 (--b0)")


def test_deep_voxels_on_the_bounding_box_equal_the_full_distance_transform(head):
    from scipy import ndimage

    from qsmlib.plausibility import deep_voxels

    phantom, _sim = head
    mask = phantom.brain_mask
    for depth_mm in (0.5, 6.0, 15.0):
        full = mask & (ndimage.distance_transform_edt(mask, sampling=phantom.voxel_size_mm) >= depth_mm)
        np.testing.assert_array_equal(deep_voxels(mask, phantom.voxel_size_mm, depth_mm), full)


@pytest.mark.parametrize("voxel_size, depth_mm", [((1, 1, 1), 5.0), ((0.9375, 0.9375, 1.5), 4.0), ((2, 2, 2), 6.0),
                                                   ((1, 1, 1), 3.0)])
def test_deep_voxels_by_fft_erosion_equal_the_distance_transform_at_exact_distances(voxel_size, depth_mm):
    # Smooth random blobs; at 1 mm, 5 mm and 3 mm are exact distances of integer offsets
    # ((3, 4, 0), (0, 0, 3)): a voxel exactly depth_mm from the background is deep.
    from scipy import ndimage

    from qsmlib.plausibility import deep_voxels

    rng = np.random.default_rng(1)
    for _ in range(4):
        shape = tuple(rng.integers(20, 50, 3))
        mask = ndimage.gaussian_filter(rng.random(shape), 3) > 0.45
        padded = np.pad(mask, 1)                # outside the volume counts as background
        depth = ndimage.distance_transform_edt(padded, sampling=voxel_size)[1:-1, 1:-1, 1:-1]
        expected = mask & (depth >= depth_mm)
        assert 0 < np.count_nonzero(expected) < np.count_nonzero(mask)
        np.testing.assert_array_equal(deep_voxels(mask, voxel_size, depth_mm), expected)
