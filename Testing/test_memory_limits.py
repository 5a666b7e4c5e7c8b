"""Size checks before allocating: headers that lie, gzip bombs, runs too large for memory (issue 13, item 4)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import qsmlib.memory
from bad_inputs import gzip_bomb, header_only
from cli_checks import one_error_line, run_cli, save, snapshot
from qsmlib.batch import describe_failure
from qsmlib.errors import QSMInputError
from qsmlib.io import load_nifti
from qsmlib.memory import check_memory, run_bytes

GIB = 2 ** 30


@pytest.fixture
def sixteen_gib(monkeypatch):
    """This machine with 16 GiB available, so that the numbers in the messages are known."""
    monkeypatch.setattr(qsmlib.memory, "available_memory_bytes", lambda: 16 * GIB)
    return 16 * GIB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 1.3 MB gzip file that decompresses to a 700^3 float32 image of zeros (1.28 GiB)."""
    path = gzip_bomb(tmp_path_factory.mktemp("bomb") / "mag.nii.gz", (700, 700, 700))
    assert os.path.getsize(path) < 1.5e6
    return path


def _run(files, out, *extra):
    return ["run", "--mag", files, "--phase", files, "--te", "0.004", "--b0", "3", "--out", out, *extra]


def test_tiny_file_claiming_1200_cubed_is_refused_from_its_header(tmp_path, capsys, sixteen_gib):
    fake = header_only(tmp_path / "mag.nii.gz", (1200, 1200, 1200))
    assert os.path.getsize(fake) < 200
    before = snapshot(tmp_path)
    status, err = run_cli(_run(fake, tmp_path / "out"), capsys)
    assert status == 2
    line = one_error_line(err)
    assert f"needs about {run_bytes(1200 ** 3, 1) / GIB:.1f} GiB of memory but 16.0 GiB is available" in line
    assert str(fake) in line
    assert snapshot(tmp_path) == before


def test_refusal_of_a_lying_header_allocates_nothing(tmp_path):
    """As its own process on this machine: the refusal comes before any large allocation."""
    fake = header_only(tmp_path / "mag.nii.gz", (1200, 1200, 1200))
    # VmHWM: this process's peak resident memory since its exec (getrusage's ru_maxrss would also count
    # the parent's peak, which Linux carries over the fork and exec).
    code = ("import sys; from qsmlib.cli import main; status = main(sys.argv[1:]); "
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]); "
            "sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code] + _run(fake, tmp_path / "out"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "needs about" in one_error_line(done.stderr)
    assert int(done.stdout.split()[-1]) < 500 * 1024  # peak resident memory under 500 MB (VmHWM is in kB)


def test_uncompressed_file_shorter_than_its_header_is_refused(tmp_path, capsys):
    fake = header_only(tmp_path / "mag.nii", (1200, 1200, 1200))
    status, err = run_cli(_run(fake, tmp_path / "out"), capsys)
    assert status == 2
    line = one_error_line(err)
    assert "claims 1200 x 1200 x 1200 voxels" in line and "the file is truncated or its header is wrong" in line


def test_header_claiming_ten_thousand_cubed_is_refused(tmp_path, capsys, sixteen_gib):
    fake = header_only(tmp_path / "field.nii.gz", (10000, 10000, 10000))
    mask = save(tmp_path / "mask.nii.gz", np.ones((4, 4, 4)))
    status, err = run_cli(["invert", "--local-field", fake, "--unit", "ppm", "--mask", mask,
                           "--out", tmp_path / "chi.nii.gz"], capsys)
    assert status == 2
    assert f"needs about {run_bytes(10 ** 12, 1) / GIB:.1f} GiB" in one_error_line(err)


def test_compressed_file_without_the_data_it_claims_is_refused_before_reading(tmp_path, sixteen_gib):
    fake = header_only(tmp_path / "chi.nii.gz", (400, 400, 400))  # 244 MiB claimed, fits in memory
    with pytest.raises(QSMInputError, match="the compressed data is shorter or corrupt"):
        load_nifti(fake)


def test_gzip_bomb_is_refused_in_a_moment(bomb, tmp_path, capsys, sixteen_gib):
    start = time.perf_counter()
    status, err = run_cli(_run(bomb, tmp_path / "out"), capsys)
    elapsed = time.perf_counter() - start
    assert status == 2
    needed = run_bytes(700 ** 3, 1) / GIB
    assert f"needs about {needed:.1f} GiB of memory but 16.0 GiB is available" in one_error_line(err)
    assert elapsed < 2.0  # decompressing the bomb alone takes longer
    assert not (tmp_path / "out").exists()


def test_a_large_compressed_file_that_holds_its_data_is_read(tmp_path):
    # 100 MiB of zeros in a 0.1 MB file: above the size that is verified, streamed, and then read as it is.
    shape = (256, 256, 400)
    path = gzip_bomb(tmp_path / "zeros.nii.gz", shape, chunk_bytes=4 * 2 ** 20)
    assert 4 * np.prod(shape) > qsmlib.memory.VERIFY_GZIP_ABOVE_BYTES
    assert qsmlib.memory._gzip_holds(path, 352 + 4 * np.prod(shape))
    assert not qsmlib.memory._gzip_holds(path, 352 + 4 * np.prod(shape) + 1)
    data, affine = load_nifti(path)
    assert data.shape == shape and not data.any() and np.array_equal(affine, np.eye(4))


def test_memory_check_says_how_much_is_needed():
    with pytest.raises(QSMInputError, match="needs about 10.0 GiB of memory but 4.0 GiB is available"):
        check_memory(10 * GIB, "x", available_bytes=4 * GIB)
    assert check_memory(3 * GIB, "x", available_bytes=4 * GIB) == 3 * GIB


def test_a_subjects_memory_error_is_described_not_left_blank():
    assert describe_failure(MemoryError()).startswith("out of memory: the subject needs more memory")
    assert "Unable to allocate 8.00 GiB" in describe_failure(MemoryError("Unable to allocate 8.00 GiB"))
    assert describe_failure(KeyError()) == "KeyError: no message"
    assert describe_failure(QSMInputError("x.nii: bad")) == "x.nii: bad"
