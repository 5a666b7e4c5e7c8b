"""The TV weight chosen from the data: the noise measured on a field alone or by the echo fit, and its record."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmlib.cli import main
from qsmlib.constants import hz_per_ppm
from qsmlib.errors import QSMInputError
from qsmlib.inversion.tv_weight import TVWeightRule, choose_tv_weight, field_noise_sd, tv_weight_from_noise
from qsmlib.pipeline import PipelineConfig, reconstruct
from qsmlib.simulation import load_head_phantom, simulate_gre


@pytest.fixture(scope="module")
def head_2mm():
    return load_head_phantom(2.0)


@pytest.fixture(scope="module")
def noiseless_field(head_2mm):
    sim = simulate_gre(head_2mm, snr=None, seed=5)
    return sim.local_field_ppm, sim.brain_mask, sim.affine


def test_field_noise_sd_finds_white_noise_added_to_the_head_field(noiseless_field):
    field, mask, _ = noiseless_field
    rng = np.random.default_rng(11)
    found = []
    for sigma in (0.004, 0.008, 0.016):
        noisy = field + rng.normal(0.0, sigma, field.shape).astype(np.float32)
        found.append(field_noise_sd(noisy, mask))
        assert found[-1] == pytest.approx(sigma, rel=0.1)
    # the smooth field and its few edges leave the estimate on noise alone nearly untouched
    assert found[1] / found[0] == pytest.approx(2.0, rel=0.1)


def test_field_noise_sd_refuses_a_mask_too_thin_to_measure():
    field = np.zeros((20, 20, 20), np.float32)
    mask = np.zeros(field.shape, bool)
    mask[5:15, 5:15, 10] = True
    with pytest.raises(QSMInputError, match="too small or too thin"):
        field_noise_sd(field, mask)


def test_weight_rule_grows_with_noise_and_voxel_size():
    assert tv_weight_from_noise(0.004, (1, 1, 1)) == pytest.approx(2 * tv_weight_from_noise(0.002, (1, 1, 1)))
    assert tv_weight_from_noise(0.002, (2, 2, 2)) == pytest.approx(2 * tv_weight_from_noise(0.002, (1, 1, 1)))
    # the voxel edge's power: 0 leaves the voxel size out, 2 quadruples the weight from 1 to 2 mm
    assert tv_weight_from_noise(0.002, (2, 2, 2), 0.2, 0.0) == pytest.approx(0.2 * 0.002)
    assert tv_weight_from_noise(0.002, (2, 2, 2), 0.2, 2.0) == pytest.approx(4 * 0.2 * 0.002)
    with pytest.raises(QSMInputError):
        tv_weight_from_noise(0.0, (1, 1, 1))
    lam, record = choose_tv_weight(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (1, 1, 1), noise_sd_ppm=0.003,
                                   noise_source="test")
    assert record["value"] == lam and record["noise_sd_ppm"] == 0.003 and record["noise_source"] == "test"
    lam, record = choose_tv_weight(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), (2, 2, 2), noise_sd_ppm=0.003,
                                   rule=TVWeightRule(gain=0.25, noise="field", voxel_exponent=0.5))
    assert lam == pytest.approx(0.25 * np.sqrt(2) * 0.003)
    assert (record["gain_per_ppm"], record["voxel_exponent"]) == (0.25, 0.5)


def _invert(tmp_path, tag, field_ppm, mask, affine, method="tv-admm", options=("max_iter=3",)):
    field_file, mask_file = tmp_path / f"field_{tag}.nii.gz", tmp_path / f"mask_{tag}.nii.gz"
    nib.save(nib.Nifti1Image(field_ppm * hz_per_ppm(3.0), affine), str(field_file))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(mask_file))
    out = tmp_path / f"chi_{tag}.nii.gz"
    assert main(["invert", "--local-field", str(field_file), "--unit", "hz", "--b0", "3", "--mask", str(mask_file),
                 "--method", method, "--out", str(out)]
                + [a for option in options for a in ("--option", f"{method}.{option}")]) == 0
    sidecar = json.loads((tmp_path / f"chi_{tag}.json").read_text())
    stage = [s for s in sidecar["stages"] if s["stage"] == "dipole inversion"][0]
    return stage


@pytest.mark.parametrize("method", ["tv-admm", "nltv", "star", "medi"])
def test_qsm_invert_records_a_weight_that_grows_when_the_noise_doubles(tmp_path, noiseless_field, method):
    """Every inversion whose ``lam`` is a TV weight in ppm mm takes it from the field's noise."""
    field, mask, affine = noiseless_field
    noise = np.random.default_rng(12).normal(0.0, 1.0, field.shape).astype(np.float32)
    low = _invert(tmp_path, "low", field + 0.005 * noise, mask, affine, method)
    high = _invert(tmp_path, "high", field + 0.010 * noise, mask, affine, method)
    for stage in (low, high):
        auto = stage["auto_regularisation"]
        assert auto["noise_source"].startswith("field high-pass MAD")
        assert stage["parameters"]["lam"] == auto["value"] > 0
        # each inversion's own rule: nonlinear TV's has no voxel-size factor (calibrated apart from TV-ADMM's)
        gain, exponent = (0.2, 0.0) if method == "nltv" else (0.3, 1.0)
        assert (auto["gain_per_ppm"], auto["voxel_exponent"]) == (gain, exponent)
        h = np.mean(auto["voxel_size_mm"])
        assert h == 2.0 and auto["value"] == pytest.approx(gain * h ** exponent * auto["noise_sd_ppm"])
        # STAR's level-1 weight stays a fixed default, and the provenance says so
        assert stage["regularisation_source"] == dict({"lam": "automatic"},
                                                      **({"lam_strong": "fixed default"} if method == "star" else {}))
    ratio = high["auto_regularisation"]["noise_sd_ppm"] / low["auto_regularisation"]["noise_sd_ppm"]
    assert ratio == pytest.approx(2.0, rel=0.15)
    assert high["parameters"]["lam"] == pytest.approx(ratio * low["parameters"]["lam"])


def test_qsm_invert_chooses_the_tikhonov_weight_by_gcv_and_it_grows_when_the_noise_doubles(tmp_path, noiseless_field):
    field, mask, affine = noiseless_field
    noise = np.random.default_rng(12).normal(0.0, 1.0, field.shape).astype(np.float32)
    low = _invert(tmp_path, "low", field + 0.005 * noise, mask, affine, "tikhonov", options=())
    high = _invert(tmp_path, "high", field + 0.010 * noise, mask, affine, "tikhonov", options=())
    for stage in (low, high):
        auto = stage["auto_regularisation"]
        assert auto["rule"] == "gcv" and stage["parameters"]["lam"] == auto["value"]
        assert stage["regularisation_source"] == {"lam": "automatic"}
    assert high["parameters"]["lam"] > low["parameters"]["lam"]


def _inversion_stage(result):
    return [s for s in result.provenance["stages"] if s["stage"] == "dipole inversion"][0]


def _multi_echo_runs(head, method, max_iter):
    """The pipeline with ``method`` on the 2 mm head at SNR 200 and 100 (the noise doubles): (sim, result) each."""
    runs = []
    for snr in (200.0, 100.0):
        sim = simulate_gre(head, snr=snr, seed=6)
        result = reconstruct(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                             voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, mask=sim.brain_mask,
                             config=PipelineConfig(inversion=method, options={method: {"max_iter": max_iter}}))
        runs.append((sim, result))
    return runs


def test_multi_echo_run_takes_the_weight_from_the_echo_fit_noise(head_2mm):
    lams = []
    for _, result in _multi_echo_runs(head_2mm, "tv-admm", 3):
        stage = _inversion_stage(result)
        auto = stage["auto_regularisation"]
        assert auto["noise_source"].startswith("multi-echo fit")
        assert stage["parameters"]["lam"] == auto["value"]
        lams.append((auto["noise_sd_ppm"], auto["value"]))
    assert lams[1][0] / lams[0][0] == pytest.approx(2.0, rel=0.15)
    assert lams[1][1] > 1.7 * lams[0][1]


def test_nonlinear_tv_takes_its_weight_from_the_local_fields_own_noise_in_a_multi_echo_run(head_2mm):
    """nltv's rule measures the noise on the local field even when the echo fit has one, so that ``qsm run``
    and ``qsm invert`` of its local field choose the same weight; the weight still grows with the noise."""
    found = []
    for sim, result in _multi_echo_runs(head_2mm, "nltv", 2):
        stage = _inversion_stage(result)
        auto = stage["auto_regularisation"]
        assert auto["noise_source"].startswith("field high-pass MAD")
        field_ppm = result.local_field_hz / hz_per_ppm(sim.b0_t)
        assert auto["noise_sd_ppm"] == pytest.approx(field_noise_sd(field_ppm, result.mask), rel=1e-5)
        assert stage["parameters"]["lam"] == pytest.approx(0.2 * auto["noise_sd_ppm"])
        found.append(auto["value"])
        # the same field and mask through `qsm invert`'s path choose the same weight
        alone = reconstruct(local_field_hz=result.local_field_hz, mask=result.mask, b0_t=sim.b0_t,
                            voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir,
                            config=PipelineConfig(inversion="nltv", options={"nltv": {"max_iter": 2}}))
        assert _inversion_stage(alone)["parameters"]["lam"] == pytest.approx(auto["value"], rel=1e-6)
    # the MAD also holds the field's fine structure (the phantom's texture, edges, background-removal residue),
    # so it grows less than the noise does: 1.18 times here
    assert 1.1 * found[0] < found[1] < 2.0 * found[0]


def test_a_given_weight_still_overrides(head_2mm, noiseless_field):
    field, mask, _ = noiseless_field
    result = reconstruct(local_field_hz=field * hz_per_ppm(3.0), mask=mask, b0_t=3.0, voxel_size=(2, 2, 2),
                         b0_dir=(0, 0, 1),
                         config=PipelineConfig(inversion="tv-admm", options={"tv-admm": {"lam": 7e-4, "max_iter": 2}}))
    stage = _inversion_stage(result)
    assert stage["parameters"]["lam"] == 7e-4 and "auto_regularisation" not in stage
    assert stage["regularisation_source"] == {"lam": "given"}
