"""I/O: phase scaling, NIfTI loading errors, BIDS round trip, atomic output folders."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmlib.errors import QSMInputError
from qsmlib.io import (OutputDirectory, find_megre, load_multi_echo, load_nifti, megre_names,
                       phase_to_radians, save_nifti, write_megre)


@pytest.fixture
def true_phase():
    rng = np.random.default_rng(1)
    return rng.uniform(-np.pi, np.pi, size=(12, 10, 8)).astype(np.float32)


def test_radians_are_kept(true_phase):
    rad, info = phase_to_radians(true_phase)
    np.testing.assert_array_equal(rad, true_phase)
    assert info["detected"] == "radians in [-pi, pi]"


@pytest.mark.parametrize("encode, detected", [
    (lambda p: np.round(p / np.pi * 4096).clip(-4096, 4095), "12-bit signed"),
    (lambda p: np.round((p + np.pi) / (2 * np.pi) * 4096).clip(0, 4095), "12-bit unsigned"),
    (lambda p: p * 180 / np.pi, "degrees"),
    (lambda p: p % (2 * np.pi), "[0, 2 pi]"),
])
def test_scanner_scales_are_detected(true_phase, encode, detected):
    rad, info = phase_to_radians(encode(true_phase))
    assert detected in info["detected"]
    # equal modulo 2 pi, within the 12-bit quantisation step
    error = np.angle(np.exp(1j * (rad - true_phase)))
    assert np.max(np.abs(error)) < 2 * np.pi / 4096 * 0.51 + 1e-5
    pi = np.float32(np.pi)  # [-pi, pi) in the float32 of the result (wrap_to_pi's contract)
    assert rad.dtype == np.float32 and rad.min() >= -pi and rad.max() < pi


def test_arbitrary_scale_is_min_max_rescaled(true_phase):
    # a 12-bit phase stored as small floats, like the romeo-small scan (about +-0.00367)
    levels = np.round(true_phase / np.pi * 2048).clip(-2048, 2047)
    levels.flat[:2] = -2048, 2047
    rad, info = phase_to_radians(levels * (0.00367 / 2048))
    assert "arbitrary" in info["detected"]
    error = np.angle(np.exp(1j * (rad - levels * np.pi / 2048)))
    assert np.max(np.abs(error)) < 1e-5


def test_romeo_phase_is_rescaled(test_data):
    data, _ = load_nifti(test_data / "romeo-small" / "Phase.nii.gz")
    rad, info = phase_to_radians(data)
    assert "arbitrary" in info["detected"]
    pi = np.float32(np.pi)  # -pi rounds to float32 -3.1415927, below float64 -pi
    assert rad.dtype == np.float32 and rad.min() >= -pi and rad.max() < pi
    assert rad.max() - rad.min() > 0.99 * 2 * np.pi


def test_magnitude_is_refused_as_phase():
    rng = np.random.default_rng(0)
    magnitude = rng.rayleigh(10, size=(20, 20, 20)).astype(np.float32)
    magnitude[5:15, 5:15, 5:15] = rng.normal(300, 30, size=(10, 10, 10))
    with pytest.raises(QSMInputError, match="do not look like phase"):
        phase_to_radians(magnitude, name="mag.nii.gz")
    with pytest.raises(QSMInputError, match="constant"):
        phase_to_radians(np.ones((4, 4, 4)))


def test_input_is_not_modified(true_phase):
    encoded = np.round(true_phase / np.pi * 4096)
    before = encoded.copy()
    phase_to_radians(encoded)
    np.testing.assert_array_equal(encoded, before)


def _write(path, data, affine=np.diag([1.0, 1.0, 2.0, 1.0])):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return str(path)


def test_nifti_errors_name_the_file(tmp_path):
    with pytest.raises(QSMInputError, match="missing.nii.gz: file not found"):
        load_nifti(tmp_path / "missing.nii.gz")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(QSMInputError, match="notes.txt"):
        load_nifti(text)
    good = _write(tmp_path / "good.nii.gz", np.ones((4, 4, 4)))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(open(good, "rb").read()[:60])
    with pytest.raises(QSMInputError, match="corrupt.nii.gz: cannot be read"):
        load_nifti(corrupt)


def test_save_round_trip_keeps_affine(tmp_path):
    affine = np.array([[0.9, 0.1, 0, -20], [-0.1, 0.9, 0, 10], [0, 0, 2, 5], [0, 0, 0, 1]])
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    save_nifti(tmp_path / "x.nii.gz", data, affine)
    back, back_affine = load_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]


def test_multi_echo_from_3d_files_and_4d_file(tmp_path, true_phase):
    mag = np.stack([np.full(true_phase.shape, 100.0 * (3 - e)) for e in range(3)], axis=3)
    phase = np.stack([true_phase] * 3, axis=3)
    mags = [_write(tmp_path / f"m{e}.nii.gz", mag[..., e]) for e in range(3)]
    phases = [_write(tmp_path / f"p{e}.nii.gz", phase[..., e]) for e in range(3)]
    one = load_multi_echo(mags, phases, [0.004, 0.008, 0.012], 3)
    four = load_multi_echo([_write(tmp_path / "m.nii.gz", mag)], [_write(tmp_path / "p.nii.gz", phase)],
                           [0.004, 0.008, 0.012], 3)
    for data in (one, four):
        assert data.magnitude.shape == (12, 10, 8, 3)
        np.testing.assert_allclose(data.phase, phase, atol=1e-6)
        assert data.voxel_size == (1.0, 1.0, 2.0)
    flipped = load_multi_echo(mags, phases, [0.004, 0.008, 0.012], 3, phase_sign=-1)
    np.testing.assert_allclose(flipped.phase, -phase, atol=1e-6)


@pytest.mark.parametrize("problem, message", [
    ("shape", "magnitude and phase must have the same"),
    ("echo_count", "2 echo times given but"),
    ("milliseconds", "look like milliseconds"),
    ("two_d", "2D image"),
    ("nan", "NaN"),
    ("swapped", "not a magnitude image"),
])
def test_bad_multi_echo_input(tmp_path, true_phase, problem, message):
    mag = np.full(true_phase.shape + (3,), 100.0, np.float32)
    phase = np.stack([true_phase] * 3, axis=3)
    te = [0.004, 0.008, 0.012]
    if problem == "shape":
        phase = phase[:-1]
    elif problem == "echo_count":
        te = te[:2]
    elif problem == "milliseconds":
        te = [4, 8, 12]
    elif problem == "two_d":
        mag, phase = mag[:, :, :1], phase[:, :, :1]
    elif problem == "nan":
        phase = phase.copy()
        phase[1, 1, 1, 0] = np.nan
    elif problem == "swapped":
        mag, phase = phase, mag
    m = _write(tmp_path / "mag.nii.gz", mag)
    p = _write(tmp_path / "phase.nii.gz", phase)
    with pytest.raises(QSMInputError, match=message):
        load_multi_echo([m], [p], te, 3)


def test_bids_round_trip(tmp_path, true_phase):
    mag = np.random.default_rng(2).uniform(50, 100, true_phase.shape + (2,)).astype(np.float32)
    phase = np.stack([true_phase, -true_phase], axis=3)
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    with OutputDirectory(tmp_path / "bids", megre_names("07", 2)) as stage:
        write_megre(stage.path, "07", mag, phase, [0.005, 0.010], 7.0, affine)
    found = find_megre(tmp_path / "bids")
    assert found["te_s"] == [0.005, 0.010] and found["b0_t"] == 7.0 and found["subject"] == "07"
    data = load_multi_echo(found["magnitude"], found["phase"], found["te_s"], found["b0_t"])
    np.testing.assert_allclose(data.magnitude, mag, rtol=1e-6)
    np.testing.assert_allclose(data.phase, phase, atol=1e-6)
    np.testing.assert_allclose(data.affine, affine)
    sidecar = json.loads((tmp_path / "bids/sub-07/anat/sub-07_echo-2_part-phase_MEGRE.json").read_text())
    assert sidecar["EchoTime"] == 0.010 and sidecar["Units"] == "rad"


def test_bids_errors(tmp_path):
    with pytest.raises(QSMInputError, match="no sub-"):
        find_megre(tmp_path)
    (tmp_path / "sub-a" / "anat").mkdir(parents=True)
    (tmp_path / "sub-b").mkdir()
    with pytest.raises(QSMInputError, match="choose one with --subject"):
        find_megre(tmp_path)
    with pytest.raises(QSMInputError, match="no \\*_echo-N"):
        find_megre(tmp_path, subject="a")


def test_output_directory_is_atomic_and_refuses_overwrite(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputDirectory(out, ["a.txt"]) as stage:
            open(stage.path("a.txt"), "w").write("partial")
            raise RuntimeError("failure mid-run")
    assert not out.exists()
    with OutputDirectory(out, ["a.txt", "sub/b.txt"]) as stage:
        open(stage.path("a.txt"), "w").write("one")
        open(stage.path("sub/b.txt"), "w").write("two")
    assert (out / "a.txt").read_text() == "one" and (out / "sub" / "b.txt").read_text() == "two"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]
    with pytest.raises(QSMInputError, match="--force"):
        OutputDirectory(out, ["a.txt"])
    with OutputDirectory(out, ["a.txt"], force=True) as stage:
        open(stage.path("a.txt"), "w").write("new")
    assert (out / "a.txt").read_text() == "new"


def test_library_imports_without_nibabel():
    """3D Slicer ships numpy and scipy but not nibabel: only file I/O may need it."""
    import subprocess
    import sys

    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'nibabel':\n"
            "            raise ImportError('nibabel is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import qsmlib.io, qsmlib.io.phase_scaling, qsmlib.pipeline, qsmlib.swi, qsmlib.relaxometry\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
