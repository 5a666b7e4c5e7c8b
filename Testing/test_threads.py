"""Thread counts: qsmlib.set_threads / threads, QSMLIB_FFT_WORKERS, qsm --threads, qsm batch --threads-per-worker.

The FFT checks count the OS threads of this process that use CPU time during
the call (``/proc/self/task``); the BLAS checks read the pools' sizes with
threadpoolctl. No timing is asserted.
"""

import ast
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import qsmlib
from qsmlib import fourier, parallel
from qsmlib.cli import EXIT_INPUT_ERROR, THREADED_COMMANDS, _get_parser, main
from qsmlib.errors import QSMInputError
from test_cli import small_inputs  # noqa: F401  (a fixture, used through small_run)

QSMLIB = Path(qsmlib.__file__).resolve().parent
TASKS = Path("/proc/self/task")


@pytest.fixture(autouse=True)
def _default_threads(monkeypatch):
    """Every test starts from the default (no setting, no QSMLIB_FFT_WORKERS) and leaves it so."""
    monkeypatch.delenv(parallel.ENV_VAR, raising=False)
    qsmlib.set_threads(None)
    yield
    qsmlib.set_threads(None)


def _blas_threads():
    return [pool["num_threads"] for pool in threadpool_info()]


def _cpu_ticks():
    """CPU time (user + system, in clock ticks) of each thread of this process, by thread id."""
    ticks = {}
    for task in TASKS.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks


def _helper_threads_busy(work, min_ticks=30):
    """Threads other than the calling one that did at least a tenth of the CPU work of ``work()``.

    ``work`` is repeated until the process has used ``min_ticks`` clock ticks of CPU time for it.
    """
    me = threading.get_native_id()
    before = _cpu_ticks()
    for _ in range(100):
        work()
        used = {tid: ticks - before.get(tid, 0) for tid, ticks in _cpu_ticks().items()}
        total = sum(used.values())
        if total >= min_ticks:
            break
    assert total >= min_ticks, "the work was too short to measure"
    return sorted(tid for tid, ticks in used.items() if tid != me and ticks >= max(2, total // 10))


def _fft_heavy():
    """FFT pairs of the library (fourier.rfft/irfft and the DCT of the Laplacian unwrapper)."""
    from qsmlib.unwrap import unwrap_laplacian

    rng = np.random.default_rng(0)
    volume = rng.standard_normal((96, 96, 96)).astype(np.float32)
    shape = fourier.padded_shape(volume.shape, 8)
    for _ in range(4):
        fourier.irfft(fourier.rfft(volume, shape), shape)
    unwrap_laplacian(np.angle(np.exp(3j * volume[:64, :64, :64])), np.ones((64, 64, 64), bool), (1.0, 1.0, 1.0))


@pytest.mark.skipif(not TASKS.is_dir(), reason="counts threads through /proc/self/task (Linux)")
def test_threads_1_runs_the_ffts_on_the_calling_thread_alone():
    with qsmlib.threads(2):  # the measurement sees FFT helper threads when there are some
        assert _helper_threads_busy(_fft_heavy), "no helper thread ran the FFTs with threads(2)"
    with qsmlib.threads(1):
        assert _helper_threads_busy(_fft_heavy) == []


def test_threads_limits_the_blas_pools_and_restores_them():
    import scipy.linalg  # noqa: F401  (its BLAS is one of the pools)

    before = _blas_threads()
    assert before, "no BLAS pool found"
    with qsmlib.threads(1) as count:
        assert count == 1 and qsmlib.get_threads() == fourier.fft_workers() == 1
        assert _blas_threads() == [1] * len(before)
        with qsmlib.threads(3):  # nested blocks
            assert fourier.fft_workers() == 3 and _blas_threads() == [3] * len(before)
        assert fourier.fft_workers() == 1 and _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
    assert parallel.thread_info() == {"count": parallel.available_cpus(), "source": "CPU count"}


def test_set_threads_holds_until_reset():
    before = _blas_threads()
    qsmlib.set_threads(1)
    assert fourier.fft_workers() == 1 and _blas_threads() == [1] * len(before)
    qsmlib.set_threads(3)
    assert fourier.fft_workers() == 3 and _blas_threads() == [3] * len(before)
    assert parallel.thread_info() == {"count": 3, "source": "set_threads"}
    qsmlib.set_threads(None)
    assert _blas_threads() == before and fourier.fft_workers() == parallel.available_cpus()
    qsmlib.set_threads(1)
    with qsmlib.threads(None) as count:  # None passes an optional setting through: no change
        assert count is None and fourier.fft_workers() == 1 and _blas_threads() == [1] * len(before)


def test_environment_variable_is_the_default_below_the_setting(monkeypatch):
    monkeypatch.setenv(parallel.ENV_VAR, "3")
    assert fourier.fft_workers() == 3
    assert parallel.thread_info() == {"count": 3, "source": "QSMLIB_FFT_WORKERS"}
    with qsmlib.threads(1):
        assert fourier.fft_workers() == 1
    assert fourier.fft_workers() == 3
    for bad in ("0", "-1", "x", "1.5"):
        monkeypatch.setenv(parallel.ENV_VAR, bad)
        with pytest.raises(QSMInputError, match=rf"QSMLIB_FFT_WORKERS '{bad}' is not a thread count.*"
                                                rf"QSMLIB_FFT_WORKERS=4"):
            fourier.fft_workers()


@pytest.mark.parametrize("bad", [0, -1, "x", "", True, 2.5, [2]])
def test_invalid_counts_are_refused_and_change_nothing(bad):
    qsmlib.set_threads(2)
    with pytest.raises(QSMInputError, match="is not a thread count: give a whole number of 1 or more"):
        qsmlib.set_threads(bad)
    with pytest.raises(QSMInputError, match="is not a thread count"):
        with qsmlib.threads(bad):
            pass
    assert parallel.thread_info() == {"count": 2, "source": "set_threads"}
    assert qsmlib.get_threads() == 2


def test_every_scipy_fft_call_passes_the_worker_count():
    """Each call of a scipy.fft transform in qsmlib gives workers= (else it runs on one thread)."""
    import scipy.fft

    transforms = {name for name in scipy.fft.__all__ if name.rstrip("n").lstrip("ir").rstrip("2")
                  in ("fft", "rfft", "hfft", "dct", "dst", "fht")} - {"fftfreq", "rfftfreq", "fftshift", "ifftshift"}
    assert {"rfftn", "irfftn", "fftn", "ifftn", "dctn", "idctn", "fft", "ifft", "rfft", "irfft"} <= transforms
    calls, missing = 0, []
    for path in sorted(QSMLIB.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names if alias.name == "scipy.fft"}
        from_imports = {alias.asname or alias.name for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and node.module == "scipy.fft"
                        for alias in node.names if alias.name in transforms}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            is_transform = (isinstance(func, ast.Attribute) and func.attr in transforms
                            and isinstance(func.value, ast.Name) and func.value.id in aliases) or \
                           (isinstance(func, ast.Name) and func.id in from_imports)
            if is_transform:
                calls += 1
                if "workers" not in {k.arg for k in node.keywords}:
                    missing.append(f"{path.relative_to(QSMLIB)}:{node.lineno}")
    assert calls >= 10, "the scan found too few scipy.fft calls to be looking at the right thing"
    assert missing == []


@pytest.fixture
def small_run(small_inputs):
    """``qsm run`` arguments on test_cli's small ball (SHARP and TKD: seconds), and the folder."""
    folder, files = small_inputs
    return ["run", "--mag", files["mag"], "--phase", files["phase"], "--te", *files["te"], "--b0", "3",
            "--mask", files["mask"], "--bgremove", "sharp", "--option", "sharp.radius_mm=2", "--inversion", "tkd"], folder


def test_cli_threads_reaches_the_provenance_and_ends_with_the_run(small_run, capsys, monkeypatch):
    args, folder = small_run
    assert main(args + ["--out", str(folder / "one"), "--threads", "1"]) == 0
    provenance = json.loads((folder / "one" / "provenance.json").read_text())
    assert provenance["threads"] == {"count": 1, "source": "set_threads"}
    assert parallel.thread_info()["source"] == "CPU count"  # the setting ended with the command
    monkeypatch.setenv(parallel.ENV_VAR, "3")
    assert main(args + ["--out", str(folder / "env")]) == 0
    provenance = json.loads((folder / "env" / "provenance.json").read_text())
    assert provenance["threads"] == {"count": 3, "source": "QSMLIB_FFT_WORKERS"}
    # the other commands' provenance too (here SWI and R2*)
    mag, phase, te = args[2], args[4], args[6:9]
    assert main(["swi", "--mag", mag, "--phase", phase, "--te", *te, "--out", str(folder / "swi"),
                 "--threads", "1"]) == 0
    assert main(["r2star", "--mag", mag, "--te", *te, "--out", str(folder / "r2s"), "--threads", "2"]) == 0
    assert json.loads((folder / "swi" / "provenance.json").read_text())["threads"]["count"] == 1
    assert json.loads((folder / "r2s" / "provenance.json").read_text())["threads"]["count"] == 2


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_cli_refuses_an_invalid_thread_count_naming_the_flag(small_run, capsys, bad):
    args, folder = small_run
    with pytest.raises(SystemExit) as stop:
        main(args + ["--out", str(folder / "out"), "--threads", bad])
    assert stop.value.code == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"qsm: error: run: argument --threads: '{bad}' is not a thread count: give a whole "
                          "number of 1 or more (e.g. --threads 4)")
    assert len(err.splitlines()) == 1 and not (folder / "out").exists()
    with pytest.raises(SystemExit) as stop:
        main(["batch", str(folder), "--out", str(folder / "d"), "--threads-per-worker", bad])
    assert stop.value.code == EXIT_INPUT_ERROR
    assert "argument --threads-per-worker: " in capsys.readouterr().err


def test_every_computing_command_takes_threads():
    parser = _get_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in THREADED_COMMANDS:
        dests = {action.dest: action for action in commands[name]._actions}
        assert dests["threads"].type("2") == 2, name
    assert "threads" not in {action.dest for action in commands["batch"]._actions}


def test_batch_sets_the_thread_count_inside_each_worker(tmp_path, monkeypatch):
    """Workers get --threads-per-worker through qsmlib.threads (the sidecar says set_threads, not the variable)."""
    pytest.importorskip("distributed")
    from qsmlib import batch
    from qsmlib.workflow import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, voxel_size_mm=4.0, subject="01", seed=1)
    report = batch.run_batch(bids, tmp_path / "deriv", workers=1, threads_per_worker=2)
    assert [r["status"] for r in report["subjects"]] == ["done"], report["subjects"]
    assert report["cluster"]["threads_per_worker"] == 2
    sidecar = json.loads((tmp_path / "deriv" / batch.SubjectJob("01").anat(batch.SIDECAR_SUFFIX)).read_text())
    assert sidecar["threads"] == {"count": 2, "source": "set_threads"}
    assert report["subjects"][0]["pid"] != os.getpid()  # it ran in a worker process
