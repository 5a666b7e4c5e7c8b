"""Regions without painting in qsm run --atlas and qsm batch --atlas, on simulated subjects with known labels.

Three heads, each the 2 mm head model under its own known deformation and
affine (labels and truth by nearest neighbour); and a fourth subject that is a lower leg, a body part the
head template cannot match. The batch must label every nucleus of every head,
and report the leg's registration failure for that subject alone.
"""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from atlas_fixtures import BUMPS, dice, known_warp, other_body_part, warp_volume, warped_phantom
from qsmlib import batch, cli
from qsmlib.atlas import DEEP_GREY_MATTER_SEGMENTS, write_head_model_template
from qsmlib.atlas.template import head_model_segments
from qsmlib.io import load_nifti, write_megre
from qsmlib.simulation import load_head_phantom, simulate_gre

NAMES = [name for name, _rgb in DEEP_GREY_MATTER_SEGMENTS]
#: Per head subject: rotation (degrees), scale and the displacement bumps scaled by a factor.
HEADS = {"01": (10.0, 1.1, 1.0), "02": (-8.0, 0.95, -1.0), "03": (6.0, 1.05, 0.7)}
LEG = "04"


def _write_subject(root, subject, sim):
    def path_for(name):
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    write_megre(path_for, subject, sim.magnitude, sim.phase, sim.te_s, sim.b0_t, sim.affine,
                dataset_name="atlas test cohort")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    start = time.perf_counter()
    phantom = load_head_phantom(2.0)
    labels, table, _ = head_model_segments(phantom)
    truths = {}
    for n, (subject, (angle, scale, factor)) in enumerate(HEADS.items()):
        bumps = tuple((centre, tuple(factor * v for v in vector)) for centre, vector in BUMPS)
        warp = known_warp(phantom, angle_deg=angle, scale=scale, bumps=bumps)
        sim = simulate_gre(warped_phantom(phantom, warp), te_s=(0.004, 0.010, 0.016), seed=10 + n)
        _write_subject(root / "bids", subject, sim)
        truths[subject] = warp_volume(labels, phantom.affine, warp)
    _write_subject(root / "bids", LEG, simulate_gre(other_body_part(2.0), te_s=(0.004, 0.010, 0.016), seed=20))
    template = Path(write_head_model_template(root / "template", voxel_size_mm=2.0))
    print(f"cohort written in {time.perf_counter() - start:.1f} s")
    return {"root": root, "bids": root / "bids", "template": template, "truths": truths, "table": table}


def test_batch_labels_every_nucleus_of_every_head_and_fails_the_leg_alone(cohort, capsys):
    out = cohort["root"] / "deriv"
    start = time.perf_counter()
    status = cli.main(["-q", "batch", str(cohort["bids"]), "--out", str(out), "--workers", "2",
                       "--atlas", str(cohort["template"])])
    print(f"qsm batch --atlas, 4 subjects at 2 mm on 2 workers: {time.perf_counter() - start:.1f} s")
    assert status == batch.EXIT_SOME_FAILED
    report = json.loads((out / "batch_report.json").read_text())
    by_key = {r["key"]: r for r in report["subjects"]}
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    leg = by_key[f"sub-{LEG}"]
    print("leg:", leg["error"])
    assert leg["status"] == "failed" and leg["error"].startswith("atlas registration failed: ")
    assert f"FAILED  sub-{LEG}: atlas registration failed" in (out / "batch_summary.txt").read_text()
    # its reconstruction stays; no labels were written for it
    assert (out / f"sub-{LEG}/anat/sub-{LEG}_Chimap.nii.gz").is_file()
    assert not list(out.glob(f"sub-{LEG}/anat/*desc-atlas*"))
    # every nucleus of every head in regions.csv, and nothing for the leg
    with open(out / "regions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for subject in HEADS:
        assert [r["region"] for r in rows if r["subject"] == subject] == NAMES, subject
    assert {r["subject"] for r in rows} == set(HEADS)
    # the labels are right: Dice against the known deformation's labels, and the statistics are theirs
    for subject, truth in cohort["truths"].items():
        labels = np.rint(load_nifti(out / f"sub-{subject}/anat/sub-{subject}_desc-atlas_dseg.nii.gz")[0]).astype(int)
        chi = load_nifti(out / f"sub-{subject}/anat/sub-{subject}_Chimap.nii.gz")[0]
        mask = load_nifti(out / f"sub-{subject}/anat/sub-{subject}_desc-brain_mask.nii.gz")[0] > 0
        dices = [dice(labels == v, truth == v) for v in cohort["table"]]
        print(f"sub-{subject}: mean Dice {np.mean(dices):.3f}, lowest {min(dices):.3f}")
        assert np.mean(dices) >= 0.8
        for row in (r for r in rows if r["subject"] == subject):
            region = mask & (labels == int(row["label"]))
            assert int(row["voxels"]) == int(region.sum())
            assert float(row["mean_ppm"]) == pytest.approx(float(chi[region].mean()), abs=1e-6)
        sidecar = json.loads((out / f"sub-{subject}/anat/sub-{subject}_desc-atlas_dseg.json").read_text())
        assert sidecar["batch"]["complete"] and sidecar["quality"]["problems"] == []
        assert (out / f"sub-{subject}/figures/sub-{subject}_desc-atlas_montage.png").is_file()
    # the QC index shows the regions of the template as columns
    index = (out / "index.html").read_text()
    assert all(f"<th>{name} (ppm)</th>" in index for name in NAMES)

    # a rerun skips what is done: the reconstruction and the segmentation
    dseg = out / "sub-01/anat/sub-01_desc-atlas_dseg.nii.gz"
    before = dseg.stat().st_mtime_ns
    status = cli.main(["-q", "batch", str(cohort["bids"]), "--out", str(out), "--workers", "1",
                       "--participant-label", "01", "--atlas", str(cohort["template"])])
    assert status == 0
    again = json.loads((out / "batch_report.json").read_text())
    assert again["counts"] == {"done": 0, "skipped": 1, "failed": 0}
    assert dseg.stat().st_mtime_ns == before
    assert [r["region"] for r in again["subjects"][0]["regions"]] == NAMES


def test_atlas_and_labels_pattern_together_are_refused(cohort, capsys):
    status = cli.main(["batch", str(cohort["bids"]), "--out", str(cohort["root"] / "both"), "--atlas",
                       str(cohort["template"]), "--labels-pattern", "derivatives/x/sub-{subject}_dseg.nii.gz"])
    assert status == cli.EXIT_INPUT_ERROR
    assert "give either --atlas or --labels-pattern" in capsys.readouterr().err


def test_run_with_atlas_writes_the_regions_of_one_subject(cohort):
    out = cohort["root"] / "run-01"
    start = time.perf_counter()
    status = cli.main(["-q", "run", "--bids", str(cohort["bids"]), "--subject", "01", "--out", str(out),
                       "--atlas", str(cohort["template"])])
    print(f"qsm run --atlas at 2 mm: {time.perf_counter() - start:.1f} s")
    assert status == 0
    with open(out / "regions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["region"] for r in rows] == NAMES and {r["subject"] for r in rows} == {"01"}
    labels = np.rint(load_nifti(out / "labels.nii.gz")[0]).astype(int)
    dices = [dice(labels == v, cohort["truths"]["01"] == v) for v in cohort["table"]]
    assert np.mean(dices) >= 0.8
    assert {"chi.nii.gz", "atlas_qc.png", "atlas_transform.h5", "atlas_registration.json", "labels.tsv"} <= {
        p.name for p in out.iterdir()}
