"""Every failure path ends in one line and exit status 2, never a traceback (issue 13, item 3)."""

import errno
import json
import os
import socket

import nibabel as nib
import numpy as np
import pytest

import qsmlib.workflow
from cli_checks import one_error_line, run_cli, small_scan, snapshot
from qsmlib.cli import main
from test_output_guard import _bids


def _sidecars(bids, part="mag"):
    return sorted((bids / "sub-01" / "anat").glob(f"*_part-{part}_MEGRE.json"))


def _edit_sidecar(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.fixture
def bids(tmp_path):
    from pathlib import Path

    return Path(_bids(tmp_path / "bids"))


@pytest.mark.parametrize("value", ["0.004", None, [0.004, 0.008], True, {"value": 0.004}])
def test_sidecar_echo_time_that_is_not_a_number_is_one_line(bids, tmp_path, capsys, value):
    sidecar = _sidecars(bids)[1]
    _edit_sidecar(sidecar, EchoTime=value)
    before = snapshot(tmp_path)
    status, err = run_cli(["run", "--bids", bids, "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert str(sidecar) in line and "EchoTime" in line and "is not a number" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content", ["3", "[1, 2]", "\"text\"", "null", "{\"EchoTime\": ", ""])
def test_sidecar_that_is_not_a_json_object_is_one_line(bids, tmp_path, capsys, content):
    sidecar = _sidecars(bids)[0]
    sidecar.write_text(content)
    status, err = run_cli(["run", "--bids", bids, "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert str(sidecar) in line and ("not an object" in line or "not valid JSON" in line)
    assert not (tmp_path / "out").exists()


def test_field_strength_written_3T_is_one_line_and_b0_overrides_it(bids, tmp_path, capsys):
    for sidecar in _sidecars(bids):
        _edit_sidecar(sidecar, MagneticFieldStrength="3T")
    status, err = run_cli(["run", "--bids", bids, "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "MagneticFieldStrength \"3T\" is not a number" in line and "--b0" not in line.split("fix")[0]
    status, err = run_cli(["run", "--bids", bids, "--b0", "3", "--preset", "fast", "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["inputs"]["b0_t"] == 3.0


def test_phase_echo_time_that_differs_from_the_magnitudes_is_refused(bids, tmp_path, capsys):
    phase_sidecar = _sidecars(bids, "phase")[2]
    _edit_sidecar(phase_sidecar, EchoTime=0.013)
    status, err = run_cli(["run", "--bids", bids, "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert str(phase_sidecar) in line and "0.013 s differs" in line and "0.012 s" in line


@pytest.mark.parametrize("values, message", [
    (["4", "8", "12"], "[4, 8, 12] look like milliseconds; echo times are in seconds, so give [0.004, 0.008, 0.012]"),
    (["4000", "8000", "12000"], "look like microseconds; echo times are in seconds, so give [0.004, 0.008, 0.012]"),
    (["0.000004", "0.000008", "0.000012"], "too short for QSM"),
    (["0.04", "0.16", "0.28"], "longer than any gradient echo for QSM"),
])
def test_echo_time_units_get_the_right_correction(tmp_path, capsys, values, message):
    scan = small_scan(tmp_path / "in")
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *values, "--b0", "3",
                           "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert message in line and "np.float64" not in line and "echo times (--te)" in line
    if values[0] == "0.04":  # neither ms nor us: no correction that would be wrong
        assert "so give" not in line and "0.00004" not in line


def test_echo_times_from_sidecars_are_named_by_their_sidecars(bids, tmp_path, capsys):
    for part in ("mag", "phase"):
        for n, sidecar in enumerate(_sidecars(bids, part)):
            _edit_sidecar(sidecar, EchoTime=4 * (n + 1))
    status, err = run_cli(["run", "--bids", bids, "--out", tmp_path / "out"], capsys)
    line = one_error_line(err)
    assert status == 2 and "EchoTime of the sidecars in" in line and "--te" not in line
    assert "[4, 8, 12] look like milliseconds" in line and "[0.004, 0.008, 0.012]" in line


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    scan = small_scan(tmp_path / "in")
    out = tmp_path / "out"

    def full_disk(image, filename):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(nib, "save", full_disk)
    before = snapshot(tmp_path)
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--mask", scan["mask"], "--te",
                           *scan["te"], "--b0", "3", "--preset", "fast", "--out", out], capsys)
    assert status == 2
    line = one_error_line(err)
    assert f"--out {out}: No space left on device" in line and "nothing was written" in line
    assert snapshot(tmp_path) == before


def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    scan = small_scan(tmp_path / "in")
    out = tmp_path / "readonly"
    out.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def read_only(function):
        def guarded(path, *args, **kwargs):
            if str(path).startswith(str(out)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return function(path, *args, **kwargs)
        return guarded

    monkeypatch.setattr(os, "open", read_only(real_open))
    monkeypatch.setattr(os, "mkdir", read_only(real_mkdir))
    for target in (out, out / "new"):
        status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0",
                               "3", "--out", target], capsys)
        assert status == 2
        assert f"--out {target}: cannot write there (Read-only file system)" in one_error_line(err)
    assert os.listdir(out) == []


def test_huge_padding_option_is_refused_before_allocating(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--mask", scan["mask"], "--te",
                           *scan["te"], "--b0", "3", "--option", "nltv.pad_voxels=100000", "--out",
                           tmp_path / "out"], capsys)
    assert status == 2
    assert "pad_voxels: (100000, 100000, 100000) voxels is wider than twice the image" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_slab_thicker_than_the_volume_projects_over_the_whole_axis(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    status, err = run_cli(["swi", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"],
                           "--slab", "1e9", "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    swi = np.asarray(nib.load(str(tmp_path / "out" / "swi.nii.gz")).dataobj)
    mip = np.asarray(nib.load(str(tmp_path / "out" / "mip.nii.gz")).dataobj)
    np.testing.assert_array_equal(mip, np.broadcast_to(swi.min(axis=2, keepdims=True), swi.shape))
    recorded = json.loads((tmp_path / "out" / "provenance.json").read_text())["swi"]["mip_slices"]
    assert recorded == 2 * swi.shape[2] - 1


@pytest.mark.parametrize("pattern, message", [
    ("labels/sub-{subjet}_dseg.nii.gz", "unknown placeholder {subjet}"),
    ("labels/{}_dseg.nii.gz", "unknown placeholder {}"),
    ("labels/{subject!z}.nii.gz", "not a valid pattern"),
    ("labels/{subject", "not a valid pattern"),
    ("labels/{subject.__class__}", "unknown placeholder {subject.__class__}"),
])
def test_bad_labels_pattern_is_one_line(bids, tmp_path, capsys, pattern, message):
    status, err = run_cli(["batch", bids, "--out", tmp_path / "deriv", "--labels-pattern", pattern], capsys)
    assert status == 2 and message in one_error_line(err)
    assert not (tmp_path / "deriv").exists()


def test_unreachable_scheduler_is_one_line(bids, tmp_path, capsys):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for scheduler, message in ((f"tcp://127.0.0.1:{port}", "no Dask scheduler answers at"),
                               (str(tmp_path / "missing.json"), "No such file or directory"),
                               ("nonsense", "not a scheduler address"),
                               ("http://127.0.0.1:80", "not a scheduler address")):
        status, err = run_cli(["batch", bids, "--out", tmp_path / "deriv", "--scheduler", scheduler], capsys)
        assert status == 2 and message in one_error_line(err), err
    assert not (tmp_path / "deriv").exists()


def test_option_for_a_method_not_in_use_is_refused(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    common = ["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0", "3",
              "--out", tmp_path / "out"]
    for option, message in (("vsharp.radii_mm=[8,4]", "vsharp is not the background removal in use (pdf)"),
                            ("tkd.threshold=0.2", "tkd is not the inversion in use (nltv)"),
                            ("laplacian.differences=wrapped", "laplacian is not the unwrap in use (romeo)"),
                            ("csf.r2star_max_hz=5", "the CSF reference is not in use")):
        status, err = run_cli(common + ["--option", option], capsys)
        assert status == 2 and message in one_error_line(err), err


def test_argument_errors_are_one_line(tmp_path, capsys):
    for args, message in ((["run", "--te", "x"], "run: argument --te: 'x' is not a number"),
                          (["run", "--b0", "inf", "--out", "o"], "argument --b0: 'inf' must be a positive number"),
                          (["swi", "--slab", "nan", "--out", "o"], "argument --slab: 'nan' must be a number"),
                          (["nonsense"], "invalid choice: 'nonsense'"),
                          (["run", "--inversion", "magic", "--out", "o"], "invalid choice: 'magic'")):
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2
        assert err.count("\n") == 1 and message in one_error_line(err), err


def test_unexpected_exception_is_one_line_with_a_log_of_the_traceback(tmp_path, capsys, monkeypatch):
    import tempfile

    scan = small_scan(tmp_path / "in")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(qsmlib.workflow, "reconstruct", broken)
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0", "3",
                           "--out", tmp_path / "out"], capsys)
    assert status == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("qsm: internal error:")]
    assert len(lines) == 1 and "ZeroDivisionError: a bug deep inside" in lines[0]
    log = lines[0].split("the traceback is in ")[1].split(";")[0]
    assert os.path.dirname(log) == str(tmp_path)
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "a bug deep inside" in text and "command: qsm run" in text
    assert not (tmp_path / "out").exists()


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    scan = small_scan(tmp_path / "in")

    def allocate_too_much(*args, **kwargs):
        return np.empty((2 ** 50,), dtype=np.float64)

    monkeypatch.setattr(qsmlib.workflow, "reconstruct", allocate_too_much)
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0", "3",
                           "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "out of memory (Unable to allocate 8.00 PiB" in line and "nothing was written" in line
    assert not (tmp_path / "out").exists()


def test_logging_is_restored_after_main(tmp_path, capsys):
    import logging

    logger = logging.getLogger("qsmlib")
    before = (list(logger.handlers), logger.level, logger.propagate)
    run_cli(["run", "--te", "0.004", "--out", tmp_path / "out"], capsys)
    assert (list(logger.handlers), logger.level, logger.propagate) == before



def test_export_dicom_description_longer_than_dicom_allows_is_refused_first(tmp_path, capsys):
    text = "QSM susceptibility (ppm) " + "x" * 40
    status, err = run_cli(["export-dicom", tmp_path / "missing.nii.gz", "--reference", tmp_path, "--out",
                           tmp_path / "out", "--description", text], capsys)
    assert status == 2 and f"--description: {len(text)} characters" in one_error_line(err)
    for bad, message in (("QSM\\ppm", "backslash"), ("susceptibility in ppm", "must say QSM and ppm")):
        status, err = run_cli(["export-dicom", tmp_path / "missing.nii.gz", "--reference", tmp_path, "--out",
                               tmp_path / "out", "--description", bad], capsys)
        assert status == 2 and message in one_error_line(err)


def test_regions_csv_cells_never_become_spreadsheet_formulas(tmp_path):
    import csv

    from qsmlib.batch import write_regions_csv

    records = [{"subject": "01", "session": None, "regions": [
        {"region": '=HYPERLINK("http://x","y")', "label": 1, "mean_ppm": -0.02, "median_ppm": -0.01,
         "sd_ppm": 0.01, "voxels": 10},
        {"region": "+cmd", "label": 2, "mean_ppm": 0.1, "median_ppm": 0.1, "sd_ppm": 0.0, "voxels": 3},
        {"region": "Putamen", "label": 3, "mean_ppm": 0.05, "median_ppm": 0.05, "sd_ppm": 0.0, "voxels": 3}]}]
    write_regions_csv(tmp_path / "regions.csv", records)
    with open(tmp_path / "regions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["region"] for r in rows] == ['\'=HYPERLINK("http://x","y")', "'+cmd", "Putamen"]
    assert rows[0]["mean_ppm"] == "-0.02"  # numbers stay numbers, negative ones included


def test_mask_help_says_what_counts_as_inside():
    from qsmlib.cli import _get_parser

    parser = _get_parser()
    for command in ("run", "swi", "unwrap", "r2star", "batch"):
        text = parser._subparsers._group_actions[0].choices[command].format_help()
        assert "non-zero inside" not in text and "values above 0.5" in " ".join(text.split()), command


# --- a real full disk and a real read-only file system --------------------------------------------
# A private tmpfs in a user namespace (util-linux unshare; no privileges needed where user
# namespaces are allowed) gives the kernel's own ENOSPC and EROFS, not a patched call.

def _in_private_tmpfs(mount_point, argv, *, size="16k", read_only=False):
    """Run ``python -m qsmlib ARGV`` with a fresh tmpfs of ``size`` on ``mount_point``.

    Returns the finished process; its stdout is what the tmpfs holds afterwards (``find``).
    """
    import shlex
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.fail("util-linux 'unshare' is missing: install it (Debian: util-linux) to test real file systems")
    remount = f" && mount -o remount,ro {shlex.quote(str(mount_point))}" if read_only else ""
    command = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount_point))}{remount} && "
               f"{{ {shlex.quote(sys.executable)} -m qsmlib {' '.join(shlex.quote(str(a)) for a in argv)} "
               f"> /dev/null; status=$?; cd {shlex.quote(str(mount_point))} && find . -mindepth 1; exit $status; }}")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"unshare -rm is refused here ({probe.stderr.strip()}): this test needs user namespaces")
    return subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300)


def test_a_really_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    scan = small_scan(tmp_path / "in")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    before = snapshot(tmp_path)
    out = mount_point / "out"
    done = _in_private_tmpfs(mount_point, ["run", "--mag", scan["mag"], "--phase", scan["phase"], "--mask",
                                           scan["mask"], "--te", *scan["te"], "--b0", "3", "--preset", "fast",
                                           "--out", out], size="12k")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert f"--out {out}: No space left on device" in line and "nothing was written" in line
    assert done.stdout == ""  # no partial file, no lock, no folder left on the full disk
    assert snapshot(tmp_path) == before  # inputs untouched


def test_a_really_read_only_file_system_is_one_line(tmp_path):
    scan = small_scan(tmp_path / "in")
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    for target in (mount_point, mount_point / "new"):
        done = _in_private_tmpfs(mount_point, ["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te",
                                               *scan["te"], "--b0", "3", "--out", target], read_only=True)
        assert done.returncode == 2, done.stderr
        assert f"--out {target}: cannot write there (Read-only file system)" in one_error_line(done.stderr)
        assert done.stdout == ""
