"""qsm batch: a BIDS cohort on Dask distributed, resumable, with QC and a cohort table."""

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from qsmlib import batch, cli
from qsmlib.errors import QSMInputError
from qsmlib.io import load_nifti
from qsmlib.workflow import run_qsm, simulate_dataset

LABELS = "derivatives/truth/sub-{subject}/anat/sub-{subject}_dseg.nii.gz"


def _cohort(root, subjects, voxel_size_mm=4.0):
    for n, subject in enumerate(subjects):
        simulate_dataset(root, voxel_size_mm=voxel_size_mm, subject=subject, seed=n + 1, force=n > 0)
    return root


def _corrupt(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) // 3])  # a truncated gzip stream


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _png_rgb(path):
    """Decode the 8-bit RGB, filter-0 PNGs that qsmlib.report.write_png writes."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert np.all(rows[:, 0] == 0)
    return rows[:, 1:].reshape(height, width, 3)


class _Table(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.images, self._row = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = {"class": attrs.get("class"), "subject": attrs.get("data-subject"), "text": ""}
            self.rows.append(self._row)
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        if self._row is not None:
            self._row["text"] += data


def _reference_chi(bids, subject, tmp_path):
    run_qsm(tmp_path / f"ref-{subject}", bids_dir=str(bids), subject=subject)
    return load_nifti(tmp_path / f"ref-{subject}" / "chi.nii.gz")[0]


def test_batch_two_worker_cluster_failure_resume_qc_and_table(tmp_path):
    from distributed import Client, LocalCluster

    bids = _cohort(tmp_path / "bids", ["01", "02", "03"])
    _corrupt(bids / "sub-02/anat/sub-02_echo-3_part-phase_MEGRE.nii.gz")
    out = tmp_path / "deriv"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert len(client.scheduler_info()["workers"]) == 2
        status = cli.main(["-q", "batch", str(bids), "--out", str(out), "--scheduler", cluster.scheduler_address,
                           "--labels-pattern", LABELS])
    assert status == batch.EXIT_SOME_FAILED
    report = json.loads((out / "batch_report.json").read_text())
    by_key = {r["key"]: r for r in report["subjects"]}
    assert report["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    assert by_key["sub-02"]["status"] == "failed"
    assert "sub-02_echo-3_part-phase_MEGRE.nii.gz: cannot be read as NIfTI" in by_key["sub-02"]["error"]
    assert "FAILED  sub-02: " in (out / "batch_summary.txt").read_text()
    # ran in the cluster's worker processes, not here
    assert os.getpid() not in {by_key[k]["pid"] for k in ("sub-01", "sub-03")}
    maps = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_Chimap.nii.gz"))
    assert maps == ["sub-01/anat/sub-01_Chimap.nii.gz", "sub-03/anat/sub-03_Chimap.nii.gz"]
    assert not (out / "sub-02").exists() and not (out / batch.WORK_FOLDER).exists()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "QSMLib"

    # the batch map is the map of a plain qsm run of the same subject
    chi01 = load_nifti(out / "sub-01/anat/sub-01_Chimap.nii.gz")[0]
    np.testing.assert_allclose(chi01, _reference_chi(bids, "01", tmp_path), atol=1e-6)
    sidecar = json.loads((out / "sub-01/anat/sub-01_Chimap.json").read_text())
    assert sidecar["batch"]["complete"] and sidecar["batch"]["content_hash"] == by_key["sub-01"]["content_hash"]
    assert sidecar["units"]["chi"] == "ppm" and sidecar["inputs"]["subject"] == "01"

    # cohort table: one row per subject and region, statistics over labels inside the mask
    with open(out / "regions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.rint(load_nifti(bids / LABELS.format(subject="01"))[0]).astype(int)
    mask = load_nifti(out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz")[0] > 0
    putamen = [r for r in rows if r["subject"] == "01" and r["region"] == "Putamen"]
    assert len(putamen) == 1
    inside = chi01[mask & (labels == int(putamen[0]["label"]))].astype(np.float64)
    assert int(putamen[0]["voxels"]) == inside.size > 0
    assert float(putamen[0]["mean_ppm"]) == pytest.approx(inside.mean(), abs=1e-9)
    assert float(putamen[0]["median_ppm"]) == pytest.approx(np.median(inside), abs=1e-9)
    assert float(putamen[0]["sd_ppm"]) == pytest.approx(inside.std(ddof=1), abs=1e-9)
    assert {r["subject"] for r in rows} == {"01", "03"}
    assert len(rows) == 2 * len(set(np.unique(labels[mask])) - {0})

    # QC index: one row per subject, thumbnails that exist and show the map and the mask outline
    page = _Table()
    page.feed((out / "index.html").read_text())
    subjects = {r["subject"]: r for r in page.rows if r["subject"]}
    assert sorted(subjects) == ["sub-01", "sub-02", "sub-03"]
    assert subjects["sub-02"]["class"] == "failed" and "cannot be read as NIfTI" in subjects["sub-02"]["text"]
    assert "Putamen" in page.rows[0]["text"]
    assert batch._ppm(by_key["sub-03"]["regions"][0]["mean_ppm"]) in subjects["sub-03"]["text"]
    assert sorted(page.images) == ["sub-01/figures/sub-01_desc-qc_montage.png",
                                   "sub-03/figures/sub-03_desc-qc_montage.png"]
    picture = _png_rgb(out / page.images[0])
    assert np.all(picture == (255, 220, 0), axis=-1).sum() > 50  # the mask outline on magnitude
    assert np.all(picture == (48, 48, 48), axis=-1).sum() > 50  # outside the mask in the map row

    # rerun on a fresh local cluster: the finished subjects are skipped, not recomputed
    before = _mtimes(out / "sub-01") | _mtimes(out / "sub-03")
    status = cli.main(["-q", "batch", str(bids), "--out", str(out), "--workers", "2"])
    assert status == batch.EXIT_SOME_FAILED
    report = json.loads((out / "batch_report.json").read_text())
    assert [(r["key"], r["status"]) for r in report["subjects"]] == [
        ("sub-01", "skipped"), ("sub-02", "failed"), ("sub-03", "skipped")]
    assert report["cluster"]["description"].startswith("local: 2 worker process(es)")
    assert _mtimes(out / "sub-01") | _mtimes(out / "sub-03") == before

    # repairing the corrupt subject: only it is processed, and the batch succeeds
    simulate_dataset(bids, voxel_size_mm=4.0, subject="02", seed=2, force=True)
    assert cli.main(["-q", "batch", str(bids), "--out", str(out), "--workers", "2"]) == 0
    report = json.loads((out / "batch_report.json").read_text())
    assert report["counts"] == {"done": 1, "skipped": 2, "failed": 0}
    assert (out / "sub-02/anat/sub-02_Chimap.nii.gz").exists()
    assert _mtimes(out / "sub-01") | _mtimes(out / "sub-03") == before


def test_batch_killed_mid_subject_is_completed_by_the_rerun(tmp_path):
    bids = _cohort(tmp_path / "bids", ["01"], voxel_size_mm=2.0)
    out = tmp_path / "deriv"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "qsmlib.cli", "-q", "batch", str(bids), "--out", str(out),
                             "--workers", "1"], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / batch.WORK_FOLDER / "sub-01" / "maps"
    deadline = time.monotonic() + 60
    try:
        # wait until the worker is reconstructing the subject (run_qsm's staging folder exists)
        while not (staging.is_dir() and any(staging.glob(".qsm-partial-*"))):
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and the worker
        proc.wait()
    job = batch.SubjectJob("01")
    assert not (out / job.anat(batch.SIDECAR_SUFFIX)).exists()
    assert batch.completed_hash(out, job) is None
    assert (out / batch.WORK_FOLDER).exists()  # the debris of the killed run

    report = batch.run_batch(bids, out, workers=1, labels_pattern=LABELS)
    assert [(r["key"], r["status"]) for r in report["subjects"]] == [("sub-01", "done")]
    # the completed map is right: deep grey matter means against the simulation's truth
    with open(bids / LABELS.format(subject="01").replace(".nii.gz", ".tsv"), newline="") as f:
        truth = {row["name"]: float(row["susceptibility_ppm"]) for row in csv.DictReader(f, delimiter="\t")}
    with open(out / "regions.csv", newline="") as f:
        measured = {row["region"]: float(row["mean_ppm"]) for row in csv.DictReader(f)}
    for region in ("GP", "Putamen", "caudate"):
        assert measured[region] == pytest.approx(truth[region], abs=0.02), region
    chi = load_nifti(out / job.anat("Chimap.nii.gz"))[0]
    np.testing.assert_allclose(chi, _reference_chi(bids, "01", tmp_path), atol=1e-6)
    assert batch.completed_hash(out, job) == report["subjects"][0]["content_hash"]
    assert not (out / batch.WORK_FOLDER).exists()


def test_interrupted_commit_is_not_taken_as_done(tmp_path, monkeypatch):
    bids = _cohort(tmp_path / "bids", ["01"])
    out = tmp_path / "deriv"
    job = batch.SubjectJob("01")
    kwargs = {"config": None}
    first = batch.process_subject(str(bids), str(out), job, kwargs, {"p": 1})
    assert first["status"] == "done" and batch.completed_hash(out, job) == first["content_hash"]

    # changed parameters, and the process dies after the new map replaced the old one
    real_replace, moved = os.replace, []

    class Killed(Exception):
        pass

    def dying_replace(src, dst):
        if Path(dst).parent == out / "sub-01" / "anat":  # batch's final renames; staging renames pass
            if len(moved) == 1:
                raise Killed("killed between two renames")
            moved.append(Path(dst))
        real_replace(src, dst)

    monkeypatch.setattr(batch.os, "replace", dying_replace)
    second = batch.process_subject(str(bids), str(out), job, kwargs, {"p": 2})
    monkeypatch.setattr(batch.os, "replace", real_replace)
    assert second["status"] == "failed" and "killed between two renames" in second["error"]
    assert moved == [out / job.anat("Chimap.nii.gz")]
    assert batch.completed_hash(out, job) is None  # neither the old nor the new hash

    third = batch.process_subject(str(bids), str(out), job, kwargs, {"p": 2})
    expected = batch.content_hash(batch.input_files(str(bids), job), {"p": 2}, str(bids))
    assert third["status"] == "done" and third["content_hash"] == expected == batch.completed_hash(out, job)
    assert batch.process_subject(str(bids), str(out), job, kwargs, {"p": 2})["status"] == "skipped"
    assert batch.process_subject(str(bids), str(out), job, kwargs, {"p": 3})["status"] == "done"


def test_content_hash_follows_bytes_and_parameters(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.nii.gz"
    a.write_text('{"EchoTime": 0.004}')
    b.write_bytes(b"\x00" * 100)
    base = batch.content_hash([str(a), str(b)], {"bgremove": "vsharp"}, tmp_path)
    assert base == batch.content_hash([str(a), str(b)], {"bgremove": "vsharp"}, tmp_path)
    assert base != batch.content_hash([str(a), str(b)], {"bgremove": "pdf"}, tmp_path)
    a.write_text('{"EchoTime": 0.005}')
    assert base != batch.content_hash([str(a), str(b)], {"bgremove": "vsharp"}, tmp_path)


def test_robust_z_and_outlier_flags():
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 5.0]
    # median 1.025, MAD 0.075
    np.testing.assert_allclose(batch.robust_z(values), (np.array(values) - 1.025) / (1.4826 * 0.075))
    np.testing.assert_allclose(batch.robust_z(values, min_scale=1.0), np.array(values) - 1.025)
    np.testing.assert_allclose(batch.robust_z([2.0, 2.0, 2.0, 2.0, 6.0]), [0, 0, 0, 0, 4.0 / (1.2533 * 0.8)])
    np.testing.assert_array_equal(batch.robust_z([3.0, 3.0, 3.0]), [0, 0, 0])
    records = [{"key": f"sub-{n}", "status": "done",
                "metrics": {"mask_volume_ml": v, "chi_mean_ppm": 0.0, "chi_sd_ppm": 0.05}}
               for n, v in enumerate([1400.0, 1450.0, 1380.0, 1420.0, 700.0])]
    batch.flag_outliers(records)
    assert [bool(r["outlier"]) for r in records] == [False, False, False, False, True]
    assert records[4]["outlier"][0].startswith("mask volume robust z -")
    # a 4 % spread of SDs stays below the 5 % relative floor; 1e-9 ppm means stay below 0.01 ppm
    close = [{"key": str(n), "status": "done",
              "metrics": {"mask_volume_ml": 1400.0, "chi_mean_ppm": m, "chi_sd_ppm": sd}}
             for n, (m, sd) in enumerate([(1e-9, 0.100), (-1e-9, 0.101), (2e-9, 0.099), (0.0, 0.104)])]
    assert [r["outlier"] for r in batch.flag_outliers(close)] == [[], [], [], []]
    few = batch.flag_outliers(records[3:])
    assert [r["outlier"] for r in few] == [[], []]


def test_worker_count_fits_the_memory():
    gib = 2 ** 30
    n, limit, note = batch.choose_workers(2 * gib, available_bytes=8 * gib, cpus=16, n_tasks=100)
    assert n == int(0.8 * 8 * gib // (2 * gib + batch.WORKER_OVERHEAD_BYTES)) == 2
    assert limit == int(0.8 * 8 * gib // 2) and "2 worker(s) instead of 16" in note
    assert batch.choose_workers(2 * gib, available_bytes=64 * gib, cpus=16, n_tasks=3)[:1] == (3,)
    assert batch.choose_workers(1 * gib, requested=2, available_bytes=64 * gib, cpus=2)[0] == 2
    assert "may swap" in batch.choose_workers(10 * gib, available_bytes=8 * gib, cpus=2)[2]


def test_memory_estimate_scales_with_the_grid(tmp_path):
    bids = _cohort(tmp_path / "bids", ["01"])
    estimate = batch.estimate_task_bytes(bids, batch.SubjectJob("01"))
    shape = load_nifti(bids / "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz")[0].shape
    assert estimate == np.prod(shape) * (batch.BYTES_PER_VOXEL + 5 * batch.BYTES_PER_VOXEL_ECHO)


def test_discovery_sessions_and_participants(tmp_path):
    for folder in ("sub-a/ses-1/anat", "sub-a/ses-2/anat", "sub-b/anat", "sub-c/anat"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("sub-a/ses-1/anat/sub-a_ses-1_echo-1_part-mag_MEGRE.nii.gz",
                 "sub-a/ses-2/anat/sub-a_ses-2_echo-1_part-mag_MEGRE.nii.gz",
                 "sub-b/anat/sub-b_echo-1_part-mag_MEGRE.nii.gz", "sub-c/anat/sub-c_T1w.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    jobs = batch.discover_subjects(tmp_path)
    assert [j.key for j in jobs] == ["sub-a_ses-1", "sub-a_ses-2", "sub-b"]
    assert jobs[1].anat("Chimap.nii.gz") == "sub-a/ses-2/anat/sub-a_ses-2_Chimap.nii.gz"
    assert [j.key for j in batch.discover_subjects(tmp_path, ["sub-b"])] == ["sub-b"]
    with pytest.raises(QSMInputError, match="--participant-label z: no such subject"):
        batch.discover_subjects(tmp_path, ["z"])
    with pytest.raises(QSMInputError, match="no sub-"):
        batch.discover_subjects(tmp_path, ["c"])


def test_job_queue_without_dask_jobqueue_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if not installed
    bids = _cohort(tmp_path / "bids", ["01"])
    status = cli.main(["-q", "batch", str(bids), "--out", str(tmp_path / "d"), "--scheduler", "slurm"])
    assert status == cli.EXIT_INPUT_ERROR
    assert "--scheduler slurm needs dask-jobqueue" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
