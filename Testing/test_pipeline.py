"""End to end: the pipeline and the qsm command on the simulated head against its ground truth."""

import json
import threading

import nibabel as nib
import numpy as np
import pytest

from qsmlib import Cancelled, fourier, pipeline
from qsmlib.cli import EXIT_CANCELLED, main
from qsmlib.constants import hz_per_ppm
from qsmlib.dipole import b0_direction_from_affine
from qsmlib.inversion import tv_admm
from qsmlib.masking import bounding_box
from qsmlib.metrics import nrmse
from qsmlib.pipeline import reconstruct
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.workflow import DGM_STRUCTURES, accuracy_metrics, run_qsm

#: The issue's acceptance bound on deep grey matter means after whole-brain referencing (ppm).
DGM_TOLERANCE_PPM = 0.03


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def head_2mm():
    """The head phantom at 2 mm: small enough to run every stage in seconds."""
    phantom = load_head_phantom(2.0)
    return phantom, simulate_gre(phantom, seed=3)


def _reconstruct(sim, **kwargs):
    args = dict(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir)
    args.update(kwargs)
    return reconstruct(**args)


#: A texture and noise seed that no default was tuned on (the issue's held-out head).
HELD_OUT_SEED = "2026"


def test_bids_run_meets_the_consensus_targets_at_1mm(tmp_path, capsys):
    """qsm simulate (held-out seed) then qsm run --bids with the consensus preset: every deep grey
    matter mean within 0.02 ppm of the truth, NRMSE at least 10 points below TKD's on the same local field."""
    bids = tmp_path / "bids"
    assert main(["simulate", "--out", str(bids), "--seed", HELD_OUT_SEED]) == 0
    assert main(["run", "--bids", str(bids), "--out", str(tmp_path / "out"), "--preset", "consensus"]) == 0
    chi = _load(tmp_path / "out" / "chi.nii.gz")
    mask = _load(tmp_path / "out" / "mask.nii.gz") > 0
    truth_dir = bids / "derivatives" / "truth" / "sub-01" / "anat"
    chi_true = _load(truth_dir / "sub-01_Chimap.nii.gz")
    brain = _load(truth_dir / "sub-01_desc-brain_mask.nii.gz") > 0
    labels = _load(truth_dir / "sub-01_dseg.nii.gz").astype(int)
    scored = mask & brain
    assert scored.sum() > 0.95 * brain.sum()
    metrics = accuracy_metrics(chi, chi_true, scored, labels, load_head_phantom(1.0).tissues)
    assert set(metrics["dgm_error_ppm"]) == set(DGM_STRUCTURES)
    assert metrics["dgm_max_abs_error_ppm"] < 0.02, metrics["dgm_error_ppm"]  # measured 0.012 ppm
    assert main(["invert", "--local-field", str(tmp_path / "out" / "local_field.nii.gz"), "--unit", "hz",
                 "--b0", "3", "--mask", str(tmp_path / "out" / "mask.nii.gz"), "--method", "tkd",
                 "--out", str(tmp_path / "tkd.nii.gz")]) == 0
    tkd_nrmse = nrmse(_load(tmp_path / "tkd.nii.gz"), chi_true, scored)
    assert metrics["nrmse_percent"] <= tkd_nrmse - 10, (metrics["nrmse_percent"], tkd_nrmse)  # 41 % against 59 %
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["inputs"]["echo_times_s"] == [0.004, 0.010, 0.016, 0.022, 0.028]
    assert provenance["detected"]["b0_dir"] == [0.0, 0.0, 1.0]
    assert provenance["checks"]["phase_sign"]["ok"]
    assert provenance["warnings"] == []
    assert all(stage["time_s"] >= 0 for stage in provenance["stages"])
    inversion = [s for s in provenance["stages"] if s["stage"] == "dipole inversion"][0]
    assert inversion["method"] == "nltv" and 0 < inversion["iterations"] <= inversion["parameters"]["max_iter"]
    # nonlinear TV's weight was chosen from the local field's own noise, and recorded with its inputs; the
    # echo fit's field noise is recorded by its stage (for chi-separation and the TV-ADMM rule)
    auto = inversion["auto_regularisation"]
    assert auto["noise_source"].startswith("field high-pass MAD") and auto["noise_sd_ppm"] > 0
    assert auto["value"] == pytest.approx(0.2 * auto["noise_sd_ppm"]) and auto["voxel_exponent"] == 0.0
    fit = [s for s in provenance["stages"] if s["stage"] == "total field"][0]
    assert 0 < fit["field_noise_sd_ppm"] < auto["noise_sd_ppm"]
    assert inversion["parameters"]["lam"] == auto["value"] and inversion["regularisation_source"]["lam"] == "automatic"


def test_demo_writes_maps_and_a_report_that_match_the_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert (out / "qsm" / "chi.nii.gz").exists()
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['nrmse_percent']:.1f}" in report
    # the metrics are those of the written map against the written truth
    truth = out / "derivatives" / "truth" / "sub-01" / "anat"
    chi = _load(out / "qsm" / "chi.nii.gz")
    scored = (_load(out / "qsm" / "mask.nii.gz") > 0) & (_load(truth / "sub-01_desc-brain_mask.nii.gz") > 0)
    assert nrmse(chi, _load(truth / "sub-01_Chimap.nii.gz"), scored) == pytest.approx(metrics["nrmse_percent"], rel=1e-4)
    assert metrics["dgm_max_abs_error_ppm"] < DGM_TOLERANCE_PPM
    assert main(["demo", "--out", str(out)]) == 2  # no overwrite without --force


def test_oblique_acquisition_uses_b0_from_the_affine(head_2mm):
    phantom = head_2mm[0]
    b0_dir = np.array([0.35, -0.2, 0.9])
    b0_dir /= np.linalg.norm(b0_dir)
    sim = simulate_gre(phantom, b0_dir=tuple(b0_dir), seed=4)
    found = b0_direction_from_affine(sim.affine)
    assert abs(abs(np.dot(found, b0_dir)) - 1) < 1e-9
    right = _reconstruct(sim, b0_dir=found, mask=sim.brain_mask)
    wrong = _reconstruct(sim, b0_dir=(0, 0, 1), mask=sim.brain_mask)
    scored = right.mask & wrong.mask
    right_error = nrmse(right.chi_ppm, sim.chi_ppm, scored)
    wrong_error = nrmse(wrong.chi_ppm, sim.chi_ppm, scored)
    assert right_error < 0.8 * wrong_error, (right_error, wrong_error)


def test_every_entry_stage_gives_the_same_inversion(head_2mm):
    _phantom, sim = head_2mm
    # V-SHARP: unweighted, so a total field given as a file carries everything it uses (PDF and the
    # nonlinear inversions also use the echo fit's noise map, which only the multi-echo entry has);
    # the TV weight's noise is given, since by default each entry measures it its own way
    config = pipeline.PipelineConfig(bgremove="vsharp", inversion="tv-admm",
                                     options={"tv-admm": {"noise_sd_ppm": 0.002}})
    full = _reconstruct(sim, mask=sim.brain_mask, config=config)
    from_total = reconstruct(total_field_hz=full.total_field_hz, mask=sim.brain_mask, b0_t=sim.b0_t,
                             voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=config)
    np.testing.assert_allclose(from_total.chi_ppm, full.chi_ppm, atol=1e-5)
    from_local = reconstruct(local_field_hz=full.local_field_hz, mask=full.mask, b0_t=sim.b0_t,
                             voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=config)
    np.testing.assert_allclose(from_local.chi_ppm, full.chi_ppm, atol=1e-5)
    assert [s["stage"] for s in from_local.provenance["stages"]] == ["mask", "dipole inversion", "referencing"]
    # the local-field entry is exactly tv_admm plus whole-brain referencing
    direct = tv_admm(full.local_field_hz / hz_per_ppm(sim.b0_t), full.mask, sim.voxel_size_mm, b0_dir=sim.b0_dir,
                     lam="auto", noise_sd_ppm=0.002)
    direct = np.where(full.mask, direct - direct[full.mask].mean(), 0)
    np.testing.assert_allclose(from_local.chi_ppm, direct, atol=1e-5)
    # unwrapped phase given as such skips unwrapping and gives the same field
    unwrapped = sim.phase_offset_rad[..., None] + 2 * np.pi * sim.total_field_hz[..., None] * np.asarray(sim.te_s)
    given = _reconstruct(sim, phase=unwrapped.astype(np.float32), mask=sim.brain_mask, phase_unwrapped=True,
                         config=config)
    inside = sim.brain_mask & (sim.magnitude[..., -1] > 0.2 * sim.magnitude[..., -1].max())
    assert np.median(np.abs(given.total_field_hz - full.total_field_hz)[inside]) < 0.5


def test_phase_sign_check_flags_inverted_phase(head_2mm):
    _phantom, sim = head_2mm
    normal = _reconstruct(sim, mask=sim.brain_mask)
    flipped = _reconstruct(sim, phase=-sim.phase, mask=sim.brain_mask)
    assert normal.provenance["checks"]["phase_sign"]["ok"]
    assert normal.provenance["checks"]["phase_sign"]["median_chi_ppm"] > 0
    assert not flipped.provenance["checks"]["phase_sign"]["ok"]
    assert any("inverted" in w for w in flipped.provenance["warnings"])


def test_cancel_from_progress_stops_and_writes_nothing(head_2mm, tmp_path):
    _phantom, sim = head_2mm
    seen = []

    def progress(stage, fraction):
        seen.append((stage, fraction))
        if stage == "dipole inversion" and fraction > 0:
            raise Cancelled()

    with pytest.raises(Cancelled):
        _reconstruct(sim, mask=sim.brain_mask, progress=progress)
    assert ("background removal", 1.0) in seen
    field = tmp_path / "local.nii.gz"
    nib.save(nib.Nifti1Image(sim.local_field_ppm * hz_per_ppm(sim.b0_t), sim.affine), str(field))
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(sim.brain_mask.astype(np.uint8), sim.affine), str(mask))
    with pytest.raises(Cancelled):
        run_qsm(tmp_path / "out", local_field_file=field, mask_file=mask, b0_t=3.0, progress=progress)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_in_the_command_exits_130_without_outputs(head_2mm, tmp_path, monkeypatch, capsys):
    _phantom, sim = head_2mm
    field = tmp_path / "local.nii.gz"
    nib.save(nib.Nifti1Image(sim.local_field_ppm, sim.affine), str(field))
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(sim.brain_mask.astype(np.uint8), sim.affine), str(mask))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline.INVERSION_METHODS, pipeline.PRESETS["consensus"]["inversion"], interrupted)
    status = main(["invert", "--local-field", str(field), "--unit", "ppm", "--mask", str(mask),
                   "--out", str(tmp_path / "chi.nii.gz")])
    assert status == EXIT_CANCELLED
    assert "cancelled" in capsys.readouterr().err
    assert not (tmp_path / "chi.nii.gz").exists()


def test_real_scan_runs_with_rescaled_phase(test_data, tmp_path, capsys):
    """romeo-small: scaled 12-bit phase, no ground truth; finite maps and no 2 pi jumps."""
    folder = test_data / "romeo-small"
    out = tmp_path / "romeo"
    status = main(["run", "--mag", str(folder / "Mag.nii.gz"), "--phase", str(folder / "Phase.nii.gz"),
                   "--te", "0.004", "0.008", "0.012", "--b0", "3", "--bgremove", "pdf", "--out", str(out)])
    assert status == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert "arbitrary" in provenance["detected"]["phase_scaling"]["detected"]
    chi = _load(out / "chi.nii.gz")
    mask = _load(out / "mask.nii.gz") > 0
    total = _load(out / "total_field.nii.gz")
    assert mask.sum() > 0.5 * mask.size and np.all(np.isfinite(chi))
    # the total field is smooth: neighbour steps far below one wrap (1 / (TE2 - TE1) = 250 Hz)
    steps = np.abs(np.diff(total, axis=0))[mask[1:] & mask[:-1]]
    assert np.percentile(steps, 99.9) < 50
    # no ground truth: brain tissue lies within a few tenths of a ppm (veins may exceed it)
    magnitude = np.abs(chi[mask])
    assert np.median(magnitude) < 0.05 and np.percentile(magnitude, 99) < 0.3


def test_csf_and_label_references_shift_the_map_by_the_region_mean(head_2mm, tmp_path, capsys):
    phantom, sim = head_2mm
    fast = pipeline.PipelineConfig.from_preset("fast")
    brain = _reconstruct(sim, config=fast)
    csf = _reconstruct(sim, config=pipeline.PipelineConfig.from_preset("fast", reference="csf"))
    record = csf.provenance["stages"][-1]
    assert record["method"] == "csf" and record["csf_volume_ml"] > 5
    # the same map, moved by a constant: the mean over the detected ventricles
    shift = brain.chi_ppm - csf.chi_ppm
    assert np.ptp(shift[brain.mask]) < 1e-6
    assert shift[brain.mask][0] == pytest.approx(record["offset_ppm"] - brain.provenance["stages"][-1]["offset_ppm"],
                                                 abs=1e-6)
    # referenced to CSF, deep grey matter reads as the truth minus the true CSF value
    csf_label = next(k for k, t in phantom.tissues.items() if t.name == "CSF")
    true_csf = phantom.tissues[csf_label].chi_ppm
    for name in ("GP", "Putamen", "RN"):
        label = next(k for k, t in phantom.tissues.items() if t.name == name)
        region = (sim.labels == label) & csf.mask
        true = float(sim.chi_ppm[region].mean()) - true_csf
        assert float(csf.chi_ppm[region].mean()) == pytest.approx(true, abs=DGM_TOLERANCE_PPM), name
    with pytest.raises(pipeline.QSMInputError, match="two echoes"):
        reconstruct(local_field_hz=brain.local_field_hz, mask=brain.mask, b0_t=sim.b0_t,
                    voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir,
                    config=pipeline.PipelineConfig(reference="csf", inversion="tkd"))

    # a label image and label values from the command line: the region is the union of those labels
    affine = np.diag([*sim.voxel_size_mm, 1.0])
    local = tmp_path / "local.nii.gz"
    nib.save(nib.Nifti1Image(brain.local_field_hz, affine), str(local))
    nib.save(nib.Nifti1Image(brain.mask.astype(np.uint8), affine), str(tmp_path / "mask.nii.gz"))
    nib.save(nib.Nifti1Image(sim.labels.astype(np.int16), affine), str(tmp_path / "labels.nii.gz"))
    gp, put = (next(k for k, t in phantom.tissues.items() if t.name == n) for n in ("GP", "Putamen"))
    assert main(["run", "--local-field", str(local), "--b0", "3", "--mask", str(tmp_path / "mask.nii.gz"),
                 "--inversion", "tkd", "--reference", "region", "--reference-mask", str(tmp_path / "labels.nii.gz"),
                 "--reference-labels", str(gp), str(put), "--out", str(tmp_path / "out")]) == 0
    chi = _load(tmp_path / "out" / "chi.nii.gz")
    region = np.isin(sim.labels, [gp, put]) & brain.mask
    assert abs(float(chi[region].mean())) < 1e-6
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["inputs"]["reference_labels"] == [gp, put]
    assert main(["run", "--local-field", str(local), "--b0", "3", "--mask", str(tmp_path / "mask.nii.gz"),
                 "--reference", "region", "--reference-mask", str(tmp_path / "labels.nii.gz"),
                 "--reference-labels", "250", "--out", str(tmp_path / "out2")]) == 2
    assert "no voxel carries them" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_tikhonov_weight_is_chosen_by_gcv_by_default_and_recorded(head_2mm):
    _phantom, sim = head_2mm
    from_local = dict(local_field_hz=sim.local_field_ppm * hz_per_ppm(sim.b0_t), mask=sim.brain_mask,
                      b0_t=sim.b0_t, voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir)
    auto = reconstruct(**from_local, config=pipeline.PipelineConfig(inversion="tikhonov"))
    record = next(s for s in auto.provenance["stages"] if s["stage"] == "dipole inversion")
    chosen = record["parameters"]["lam"]
    curve = record["auto_regularisation"]
    assert isinstance(chosen, float) and chosen == curve["value"] and min(curve["values"]) <= chosen <= max(curve["values"])
    assert curve["rule"] == "gcv" and record["regularisation_source"] == {"lam": "automatic"}
    assert curve["gcv_scores"][curve["values"].index(chosen)] == min(curve["gcv_scores"])
    # the other rules by name
    lcurve = reconstruct(**from_local, config=pipeline.PipelineConfig(
        inversion="tikhonov", options={"tikhonov": {"lam": "lcurve"}}))
    assert next(s for s in lcurve.provenance["stages"]
                if s["stage"] == "dipole inversion")["auto_regularisation"]["rule"] == "lcurve"
    # the recorded value reproduces the map
    fixed = reconstruct(**from_local, config=pipeline.PipelineConfig(inversion="tikhonov",
                                                                     options={"tikhonov": {"lam": chosen}}))
    np.testing.assert_allclose(auto.chi_ppm, fixed.chi_ppm, atol=1e-6)


def test_cosmos_command_recovers_the_head_from_three_orientations(head_2mm, tmp_path, capsys):
    _phantom, sim = head_2mm
    from qsmlib.dipole import dipole_convolve
    affine = np.diag([*sim.voxel_size_mm, 1.0])
    directions = [(0.0, 0.0, 1.0), (0.0, 0.5, 0.866), (0.5, 0.0, 0.866)]
    args = ["cosmos", "--unit", "hz", "--b0", "3"]
    for n, direction in enumerate(directions):
        field_hz = np.where(sim.brain_mask, dipole_convolve(sim.chi_ppm, sim.voxel_size_mm, direction), 0)
        nib.save(nib.Nifti1Image((field_hz * hz_per_ppm(3.0)).astype(np.float32), affine), str(tmp_path / f"f{n}.nii.gz"))
    nib.save(nib.Nifti1Image(sim.brain_mask.astype(np.uint8), affine), str(tmp_path / "mask.nii.gz"))
    fields = [str(tmp_path / f"f{n}.nii.gz") for n in range(3)]
    dirs = [a for d in directions for a in ("--b0-dir", *map(str, d))]
    out = str(tmp_path / "chi.nii.gz")
    assert main(args + ["--local-field", *fields, *dirs, "--mask", str(tmp_path / "mask.nii.gz"), "--out", out]) == 0
    chi = _load(out)
    # the noiseless fields of three orientations determine the map: a few percent error at most
    assert nrmse(chi, sim.chi_ppm, sim.brain_mask) < 5
    assert abs(float(chi[sim.brain_mask].mean())) < 1e-6  # whole-brain referenced
    # one direction per field, and a second run needs --force
    assert main(args + ["--local-field", *fields, *dirs[:8], "--mask", str(tmp_path / "mask.nii.gz"),
                        "--out", str(tmp_path / "other.nii.gz")]) == 2
    assert "3 field files but 2 B0 directions" in capsys.readouterr().err
    assert main(args + ["--local-field", *fields, *dirs, "--mask", str(tmp_path / "mask.nii.gz"), "--out", out]) == 2
    assert "--force" in capsys.readouterr().err


def test_nonlinear_echo_fit_and_mcpc3ds_run_through_the_pipeline_and_are_recorded(head_2mm, tmp_path):
    phantom, sim = head_2mm
    config = pipeline.PipelineConfig.from_preset("fast", shrink_mask_by_residual=True,
                                                 options={"fieldmap": {"model": "nonlinear",
                                                                       "phase_offset": "mcpc3ds"}})
    result = _reconstruct(sim, config=config)
    record = next(s for s in result.provenance["stages"] if s["stage"] == "total field")
    assert record["method"] == "nonlinear complex echo fit"
    assert record["parameters"]["phase_offset"] == "mcpc3ds" and record["iterations"] >= 1
    assert record["mask_voxels_removed_by_residual"] >= 0
    # the field is the simulation's within a fraction of a Hz in the brain's well-measured voxels
    inside = result.brain_mask & sim.brain_mask & (sim.magnitude[..., -1] > 0.3 * sim.magnitude[..., -1].max())
    offset = np.median((result.total_field_hz - sim.total_field_hz)[inside])
    assert np.median(np.abs(result.total_field_hz - sim.total_field_hz - offset)[inside]) < 0.5
    metrics = accuracy_metrics(result.chi_ppm, sim.chi_ppm, result.mask & sim.brain_mask, sim.labels,
                               phantom.tissues)
    assert metrics["dgm_max_abs_error_ppm"] < DGM_TOLERANCE_PPM
    with pytest.raises(pipeline.QSMInputError, match="fieldmap"):
        _reconstruct(sim, config=pipeline.PipelineConfig(options={"fieldmap": {"modle": "nonlinear"}}))


def test_medi_plus_zero_gets_magnitude_noise_weights_csf_and_phase_scale_from_the_acquisition(head_2mm):
    phantom, sim = head_2mm
    result = _reconstruct(sim, config=pipeline.PipelineConfig(inversion="medi+0", check_phase_sign=False))
    record = next(s for s in result.provenance["stages"] if s["stage"] == "dipole inversion")
    assert record["data_from_acquisition"] == ["csf_mask", "magnitude", "weights"]
    assert record["csf_volume_ml"] > 5
    assert record["parameters"]["rad_per_ppm"] == pytest.approx(2 * np.pi * hz_per_ppm(3.0) * np.mean(sim.te_s))
    assert 0 < record["iterations"] <= record["parameters"]["max_iter"]
    metrics = accuracy_metrics(result.chi_ppm, sim.chi_ppm, result.mask & sim.brain_mask, sim.labels,
                               phantom.tissues)
    assert metrics["dgm_max_abs_error_ppm"] < DGM_TOLERANCE_PPM
    # what comes from the acquisition is not an option
    with pytest.raises(pipeline.QSMInputError, match="has no option magnitude"):
        pipeline.PipelineConfig(inversion="medi", options={"medi": {"magnitude": 1}}).validate()
    with pytest.raises(pipeline.QSMInputError, match="two echoes"):
        reconstruct(local_field_hz=result.local_field_hz, mask=result.mask, b0_t=sim.b0_t,
                    voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir,
                    config=pipeline.PipelineConfig(inversion="medi+0"))


def test_local_field_entry_takes_the_magnitude_for_medi_edges_and_csf(head_2mm):
    _phantom, sim = head_2mm
    local_hz = sim.local_field_ppm * hz_per_ppm(sim.b0_t)
    args = dict(local_field_hz=local_hz, mask=sim.brain_mask, b0_t=sim.b0_t, voxel_size=sim.voxel_size_mm,
                b0_dir=sim.b0_dir, config=pipeline.PipelineConfig(inversion="medi+0"))
    with_magnitude = reconstruct(magnitude=sim.magnitude, te_s=sim.te_s, **args)
    record = next(s for s in with_magnitude.provenance["stages"] if s["stage"] == "dipole inversion")
    assert record["data_from_acquisition"] == ["csf_mask", "magnitude"]  # no echo fit, so no noise weights
    assert with_magnitude.provenance["checks"]["phase_sign"]["ok"]
    # edges from the magnitude help: closer to the truth than MEDI without them
    plain = reconstruct(**dict(args, config=pipeline.PipelineConfig(inversion="medi")))
    assert nrmse(with_magnitude.chi_ppm, sim.chi_ppm, sim.brain_mask) < nrmse(plain.chi_ppm, sim.chi_ppm,
                                                                                sim.brain_mask)
    with pytest.raises(pipeline.QSMInputError, match="same voxels"):
        reconstruct(magnitude=sim.magnitude[:-1], te_s=sim.te_s, **args)


def test_discrepancy_rule_uses_the_echo_fit_noise(head_2mm):
    _phantom, sim = head_2mm
    config = pipeline.PipelineConfig.from_preset("fast", inversion="tkd",
                                                 options={"tkd": {"threshold": "discrepancy"}})
    result = _reconstruct(sim, config=config)
    record = next(s for s in result.provenance["stages"] if s["stage"] == "dipole inversion")
    choice = record["auto_regularisation"]
    assert choice["rule"] == "discrepancy" and record["parameters"]["threshold"] == choice["value"]
    total = next(s for s in result.provenance["stages"] if s["stage"] == "total field")
    assert total["noise_sd"] > 0 and choice["target_residual"] > 0
    # without the echo fit there is no noise estimate: a clear refusal
    with pytest.raises(pipeline.QSMInputError, match="noise SD"):
        reconstruct(local_field_hz=result.local_field_hz, mask=result.mask, b0_t=sim.b0_t,
                    voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=config)


def test_each_stage_reports_its_cost_in_fft_pairs_of_its_own_grid(head_2mm):
    """Known counts: CGLS for PDF runs one FFT pair for its first gradient, two per iteration and one
    for the final background field; TKD one pair; all on the padded grid of the mask's bounding box."""
    _, sim = head_2mm
    iterations = 7
    result = _reconstruct(sim, config=pipeline.PipelineConfig(
        bgremove="pdf", inversion="tkd", options={"pdf": {"max_iter": iterations, "tol": 0.0}}))
    stages = {s["stage"]: s for s in result.provenance["stages"]}
    pdf_stage, tkd_stage = stages["background removal"], stages["dipole inversion"]
    assert pdf_stage["iterations"] == iterations
    assert pdf_stage["fft_pairs"] == 2 * iterations + 2
    assert tkd_stage["fft_pairs"] == 1
    box = [s.stop - s.start for s in bounding_box(result.mask)]
    # TKD pads the box by 12 voxels, PDF by 20 mm (10 voxels at 2 mm), then round up to a fast size
    assert tkd_stage["fft_grid"] == list(fourier.padded_shape(box, 12))
    assert pdf_stage["fft_grid"] == list(fourier.padded_shape(box, 10))
    assert "fft_pairs" not in stages["referencing"]


def test_fft_tallies_nest_and_count_only_their_own_thread():
    """Both open tallies count a transform; a transform in another thread is not counted."""
    x = np.ones((8, 6, 4), dtype=np.float32)
    with fourier.fft_tally() as outer:
        fourier.irfft(fourier.rfft(x), x.shape)
        with fourier.fft_tally() as inner:
            fourier.rfft(x, (10, 6, 4))
            worker = threading.Thread(target=lambda: fourier.rfft(x))
            worker.start()
            worker.join()
    assert outer == {(8, 6, 4): 2, (10, 6, 4): 1}
    assert inner == {(10, 6, 4): 1}
