"""Safe side by side: one writer per output folder, stale locks and dead runs' leftovers (issue 13, item 2)."""

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from cli_checks import one_error_line, run_cli, small_scan, snapshot
from qsmlib.errors import QSMInputError
from qsmlib.io import OutputDirectory
from qsmlib.io.lock import LOCK_NAME, FolderLock
from qsmlib.io.output import PARTIAL_PREFIX

RUN_OUTPUTS = ("chi.nii.gz", "mask.nii.gz", "total_field.nii.gz", "local_field.nii.gz", "provenance.json")


def _qsm(args, **kwargs):
    """Start ``qsm ARGS`` as its own process (the installed command's module)."""
    return subprocess.Popen([sys.executable, "-m", "qsmlib"] + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _run_args(scan, out, *extra):
    return ["run", "--mag", scan["mag"], "--phase", scan["phase"], "--mask", scan["mask"], "--te", *scan["te"],
            "--b0", "3", "--out", out, "--force", *extra]


def _wait_for(predicate, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _partials(folder):
    return [n for n in os.listdir(folder) if n.startswith(PARTIAL_PREFIX)] if os.path.isdir(folder) else []


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 3-echo ball large enough that a run takes a few seconds."""
    return small_scan(tmp_path_factory.mktemp("scan"), shape=(64, 64, 48))


def _arrays(folder):
    return {name: np.asarray(nib.load(os.path.join(folder, name)).dataobj) for name in RUN_OUTPUTS[:4]}


def test_two_concurrent_runs_one_succeeds_the_other_is_refused(scan, tmp_path):
    out = tmp_path / "out"
    # Two different reconstructions (TKD and TV-ADMM), started together into one folder.
    first = _qsm(_run_args(scan, out, "--inversion", "tkd"))
    second = _qsm(_run_args(scan, out, "--inversion", "tv-admm"))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    statuses = sorted(status for status, _err in results)
    assert statuses == [0, 2], results
    winner = 0 if results[0][0] == 0 else 1
    refusal = one_error_line(results[1 - winner][1])
    assert "in use by another qsm run" in refusal and "process" in refusal
    assert sorted(os.listdir(out)) == sorted(RUN_OUTPUTS)
    provenance = json.loads((out / "provenance.json").read_text())
    method = ("tkd", "tv-admm")[winner]
    assert [s["method"] for s in provenance["stages"] if s["stage"] == "dipole inversion"] == [method]
    # Every map in the folder is the winner's: the same run alone into a fresh folder gives the same arrays.
    alone = tmp_path / "alone"
    status = subprocess.run([sys.executable, "-m", "qsmlib"] + [str(a) for a in _run_args(scan, alone, "--inversion",
                                                                                          method)],
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    for name, values in _arrays(alone).items():
        np.testing.assert_array_equal(_arrays(out)[name], values, err_msg=name)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, command="qsm run --out elsewhere-test"):
        before = snapshot(tmp_path)
        status, err = run_cli(_run_args(scan, out), capsys)
        assert status == 2
        line = one_error_line(err)
        assert f"process {os.getpid()}" in line and "qsm run --out elsewhere-test" in line
        assert snapshot(tmp_path) == before
    assert not (out / LOCK_NAME).exists()


def test_library_output_folders_take_the_lock_too(tmp_path):
    with OutputDirectory(tmp_path / "out", ["a.txt"]) as stage:
        open(stage.path("a.txt"), "w").write("a")
        with pytest.raises(QSMInputError, match="in use by another qsm run"):
            with OutputDirectory(tmp_path / "out", ["b.txt"]):
                pass
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt"]


def test_sigterm_and_sighup_stop_like_ctrl_c_and_leave_nothing(scan, tmp_path):
    for signum in (signal.SIGTERM, signal.SIGHUP):
        out = tmp_path / f"out-{signum}"
        process = _qsm(_run_args(scan, out))
        assert _wait_for(lambda: _partials(out), process), process.communicate()
        process.send_signal(signum)
        status = process.wait(timeout=120)
        err = process.stderr.read()
        assert status == 128 + signum, err
        assert f"stopped by {signal.Signals(signum).name}; no outputs were written" in err
        assert "Traceback" not in err
        assert not out.exists(), os.listdir(out)


class _SignalInFinaliser:
    """Sends ``signum`` to this process from ``__del__``, where Python prints the handler's exception and drops it."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)


def _swallow_a_signal_then(function, signum):
    def wrapped(*args, **kwargs):
        _SignalInFinaliser(signum)  # dropped at once: __del__ runs here
        return function(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("signum, status, message", [
    (signal.SIGTERM, 128 + signal.SIGTERM, "stopped by SIGTERM; no outputs were written"),
    (signal.SIGINT, 130, "cancelled; no outputs were written")])
@pytest.mark.parametrize("where", ["before the stages", "while writing"])
def test_a_stop_signal_whose_exception_python_drops_still_stops_the_run(monkeypatch, tmp_path, capsys, where,
                                                                         signum, status, message):
    # CI once saw SIGHUP land in an import's weakref callback: the run ignored it and wrote its outputs.
    import qsmlib.workflow
    scan = small_scan(tmp_path / "in")
    name = "resolve_b0_dir" if where == "before the stages" else "save_nifti"
    monkeypatch.setattr(qsmlib.workflow, name, _swallow_a_signal_then(getattr(qsmlib.workflow, name), signum))
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda record: dropped.append(record.exc_type))
    out = tmp_path / "out"
    got, err = run_cli(_run_args(scan, out), capsys)
    assert dropped and issubclass(dropped[0], KeyboardInterrupt)  # the handler's exception really was dropped
    assert got == status, err
    assert message in err
    assert not out.exists(), os.listdir(out)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_killed_runs_lock_and_staging_folder_are_cleaned_by_the_next_run(scan, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    process = _qsm(_run_args(scan, out))
    assert _wait_for(lambda: _partials(out), process), process.communicate()
    process.kill()  # SIGKILL: no clean-up of its own
    process.wait(timeout=60)
    left = _partials(out)
    assert left and (out / LOCK_NAME).exists()
    record = json.loads((out / LOCK_NAME).read_text())
    assert record["pid"] == process.pid
    status, err = run_cli(_run_args(scan, out, "--inversion", "tkd"), capsys)
    assert status == 0, err
    assert f"took over the lock of a run that no longer runs (process {process.pid}" in err
    assert sorted(os.listdir(out)) == sorted(RUN_OUTPUTS + ("notes.txt",))


def test_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from qsmlib.io.lock import FolderLock; "
                              "FolderLock(sys.argv[1], command='holder').acquire(); print('held', flush=True); "
                              "time.sleep(600)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(QSMInputError, match=f"process {child.pid} .*'holder'"):
            FolderLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait(timeout=60)
    lock = FolderLock(tmp_path).acquire()
    try:
        assert lock.stale["pid"] == child.pid and lock.stale["command"] == "holder"
    finally:
        lock.release()
    assert os.listdir(tmp_path) == []


def test_a_second_batch_on_one_output_is_refused_before_starting(tmp_path, capsys):
    from test_output_guard import _bids

    bids = _bids(tmp_path / "bids")
    deriv = tmp_path / "deriv"
    deriv.mkdir()
    with FolderLock(deriv, command="qsm batch first"):
        before = snapshot(tmp_path)
        status, err = run_cli(["batch", bids, "--out", deriv], capsys)
        assert status == 2
        assert "in use by another qsm run" in one_error_line(err) and "'qsm batch first'" in err
        assert snapshot(tmp_path) == before


def test_a_stop_leaves_a_ctrl_c_handler_it_did_not_install_in_place():
    from qsmlib.cli import Stopped, _signals_stop_like_ctrl_c

    def own_handler(_signum, _frame):
        raise AssertionError("not called here")

    saved = signal.signal(signal.SIGINT, own_handler)
    try:
        with pytest.raises(Stopped):
            with _signals_stop_like_ctrl_c():
                assert signal.getsignal(signal.SIGINT) is own_handler  # an embedding program's: left alone
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is own_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, saved)
