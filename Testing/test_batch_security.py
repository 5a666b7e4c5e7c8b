"""qsm batch on its own TLS-secured cluster; dead runs' leftovers and oversize subjects (issue 13, items 2, 4, 6)."""

import json
import os
import subprocess
import sys

import distributed
import pytest

from bad_inputs import header_only
from cli_checks import run_cli
from qsmlib import batch
from qsmlib.io.lock import LOCK_NAME
from qsmlib.memory import run_bytes
from test_output_guard import _bids


def test_local_cluster_talks_tls_and_refuses_other_clients():
    from distributed import Client
    from distributed.security import Security

    cluster = batch._Cluster("local", workers=1, threads_per_worker=1, memory_limit=2 ** 30, task_bytes=2 ** 20)
    try:
        address = cluster.cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        assert "TLS" in cluster.description
        assert cluster.client.submit(sum, [1, 2, 3], resources=cluster.task_resources).result(timeout=60) == 6
        for attempt in ({"address": address.replace("tls://", "tcp://")},                     # no TLS at all
                        {"address": address, "security": Security.temporary()}):              # another certificate
            with pytest.raises((OSError, TypeError, distributed.comm.core.CommClosedError)):
                stranger = Client(timeout=5, **attempt)
                stranger.close()
    finally:
        cluster.close()


def _oversize_subject(bids, label, shape=(900, 900, 900)):
    """A subject whose three echoes claim a volume no worker here could reconstruct (headers only)."""
    anat = os.path.join(bids, f"sub-{label}", "anat")
    os.makedirs(anat)
    for echo, te in enumerate((0.004, 0.008, 0.012), start=1):
        for part in ("mag", "phase"):
            stem = os.path.join(anat, f"sub-{label}_echo-{echo}_part-{part}_MEGRE")
            header_only(stem + ".nii.gz", shape)
            with open(stem + ".json", "w") as f:
                json.dump({"EchoTime": te, "MagneticFieldStrength": 3.0}, f)


def test_batch_cleans_dead_runs_and_fails_an_oversize_subject_alone(tmp_path, capsys):
    bids = _bids(tmp_path / "bids")
    _oversize_subject(bids, "02")
    deriv = tmp_path / "deriv"
    deriv.mkdir()
    # What killed batches leave: a lock of a dead process, work and staging folders, temporary files.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from qsmlib.io.lock import FolderLock; "
                               "FolderLock(sys.argv[1], command='qsm batch (killed)').acquire(); "
                               "print('held', flush=True); time.sleep(600)", str(deriv)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait(timeout=60)
    (deriv / batch.WORK_FOLDER / "sub-01" / "maps").mkdir(parents=True)
    (deriv / batch.WORK_FOLDER / "sub-01" / "maps" / "chi.nii.gz").write_bytes(b"half")
    (deriv / ".qsm-partial-dead1").mkdir()
    (deriv / ".batch_report.json.99999.tmp").write_text("{")
    status, err = run_cli(["batch", bids, "--out", deriv, "--workers", "1", "--preset", "fast"], capsys)
    assert status == 1, err  # one subject failed
    assert f"took over the lock of a batch that no longer runs (process {holder.pid}" in err
    report = json.loads((deriv / "batch_report.json").read_text())
    by_key = {r["key"]: r for r in report["subjects"]}
    assert by_key["sub-01"]["status"] == "done" and by_key["sub-02"]["status"] == "failed"
    needed = run_bytes(900 ** 3, 3) / 2 ** 30
    assert by_key["sub-02"]["error"].startswith(f"needs about {needed:.1f} GiB of memory but")
    assert "TLS" in report["cluster"]["description"]
    left = sorted(os.listdir(deriv))
    assert left == ["batch_report.json", "batch_summary.txt", "dataset_description.json", "index.html", "sub-01"]
    assert not (deriv / LOCK_NAME).exists()
