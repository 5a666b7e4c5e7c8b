"""The qsm swi and qsm r2star commands, and qsm run --also: outputs, values, bad input."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmlib.cli import EXIT_INPUT_ERROR, main
from qsmlib.io import load_multi_echo
from qsmlib.swi import swi
from qsmlib.workflow import simulate_dataset

TE = [0.005, 0.01, 0.015]
R2STAR = 30.0
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return str(path)


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture
def ball(tmp_path):
    """A 3-echo ball (R2* 30/s) on a zero background, with a paramagnetic spot of positive phase."""
    shape = (24, 24, 20)
    i, j, k = np.indices(shape, dtype=np.float32)
    inside = (i - 12) ** 2 + (j - 12) ** 2 + (k - 10) ** 2 < 8 ** 2
    spot = np.exp(-((i - 12) ** 2 + (j - 12) ** 2 + (k - 10) ** 2) / 2.0)
    field_hz = 0.5 * i + 20 * spot                        # smooth background plus the spot
    mag = np.stack([np.where(inside, 100.0 * np.exp(-R2STAR * t), 0.0) for t in TE], 3)
    phase = np.stack([np.angle(np.exp(1j * (0.4 + 2 * np.pi * field_hz * t))) for t in TE], 3)
    files = {"mag": _save(tmp_path / "mag.nii.gz", mag), "phase": _save(tmp_path / "phase.nii.gz", phase),
             "mask": _save(tmp_path / "mask.nii.gz", inside), "te": [str(t) for t in TE]}
    return tmp_path, files, inside


def _run(args, capsys):
    status = main(args)
    return status, capsys.readouterr().err


def _error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("qsm: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_swi_writes_the_library_result_and_provenance(ball, capsys):
    folder, f, inside = ball
    out = folder / "swi"
    status, err = _run(["swi", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--mask", f["mask"],
                        "--filter-size", "8", "--slab", "3", "--out", str(out)], capsys)
    assert status == 0, err
    data = load_multi_echo([f["mag"]], [f["phase"]], TE, 3.0)
    expected = swi(data.magnitude, data.phase, inside, (1, 1, 1), te_s=TE, filter_size=8, slab_mm=3)
    np.testing.assert_allclose(_load(out / "swi.nii.gz"), expected.swi, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_load(out / "mip.nii.gz"), expected.mip, rtol=1e-6, atol=1e-6)
    assert np.allclose(nib.load(str(out / "swi.nii.gz")).affine, AFFINE)
    # The paramagnetic spot is darkened by the default (negative) mask.
    assert expected.swi[12, 12, 10] < 0.5 * expected.magnitude[12, 12, 10]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["swi"]["kind"] == "negative" and provenance["swi"]["power"] == 4
    assert provenance["swi"]["mip_slices"] == 3 and provenance["swi"]["te_ref_s"] == pytest.approx(0.015)
    assert provenance["mask"]["voxels"] == int(inside.sum())
    assert sorted(p.name for p in out.iterdir()) == ["mip.nii.gz", "provenance.json", "swi.nii.gz"]


def test_swi_options_change_the_image(ball, capsys):
    folder, f, _ = ball
    common = ["swi", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--mask", f["mask"]]
    assert _run(common + ["--out", str(folder / "a")], capsys)[0] == 0
    assert _run(common + ["--phase-mask", "positive", "--out", str(folder / "b")], capsys)[0] == 0
    assert _run(common + ["--phase-convention", "right-handed", "--out", str(folder / "c")], capsys)[0] == 0
    a, b, c = (_load(folder / name / "swi.nii.gz") for name in "abc")
    assert a[12, 12, 10] < 0.5 * b[12, 12, 10]          # the spot is paramagnetic
    np.testing.assert_allclose(b, c, rtol=1e-5)          # flipped convention = the other mask
    status, err = _run(common + ["--highpass", "field", "--sigma-mm", "3", "--out", str(folder / "d")], capsys)
    assert status == 0, err
    d = _load(folder / "d" / "swi.nii.gz")
    assert d[12, 12, 10] < 0.5 * b[12, 12, 10]


def test_r2star_writes_exact_maps(ball, capsys):
    folder, f, inside = ball
    out = folder / "r2"
    for method in ("arlo", "loglinear", "nlls"):
        status, err = _run(["r2star", "--mag", f["mag"], "--te", *f["te"], "--mask", f["mask"], "--method", method,
                            "--out", str(out), "--force"], capsys)
        assert status == 0, err
        r2star, t2star, s0 = (_load(out / name) for name in ("r2star.nii.gz", "t2star.nii.gz", "s0.nii.gz"))
        np.testing.assert_allclose(r2star[inside], R2STAR, rtol=1e-4)
        np.testing.assert_allclose(t2star[inside], 1 / R2STAR, rtol=1e-4)
        np.testing.assert_allclose(s0[inside], 100.0, rtol=1e-4)
        assert np.all(r2star[~inside] == 0) and np.all(t2star[~inside] == 0)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["r2star"]["method"] == "nlls" and provenance["units"]["r2star"] == "1/s"


@pytest.mark.parametrize("problem, expected", [
    ("single_echo", "single echo"),
    ("echo_count", "2 echo times given"),
    ("milliseconds", "look like milliseconds"),
    ("no_te", "echo times are missing"),
])
def test_r2star_bad_input_gives_one_line_and_no_output(ball, capsys, problem, expected):
    folder, f, _ = ball
    mag, te = f["mag"], list(f["te"])
    if problem == "single_echo":
        mag = _save(folder / "one.nii.gz", _load(f["mag"])[..., 0])
        te = te[:1]
    elif problem == "echo_count":
        te = te[:2]
    elif problem == "milliseconds":
        te = ["5", "10", "15"]
    out = folder / "never"
    args = ["r2star", "--mag", mag, "--out", str(out)] + (["--te", *te] if problem != "no_te" else [])
    status, err = _run(args, capsys)
    assert status == EXIT_INPUT_ERROR
    assert expected in _error_line(err)
    assert not out.exists()


def test_swi_bad_input_and_existing_outputs(ball, capsys):
    folder, f, _ = ball
    common = ["swi", "--mag", f["mag"], "--phase", f["phase"], "--mask", f["mask"]]
    status, err = _run(common + ["--te", *f["te"][:2], "--out", str(folder / "x")], capsys)
    assert status == EXIT_INPUT_ERROR and "2 echo times given" in _error_line(err)
    assert not (folder / "x").exists()
    status, err = _run(common + ["--te", *f["te"], "--sigma-mm", "3", "--out", str(folder / "x")], capsys)
    assert status == EXIT_INPUT_ERROR and "--sigma-mm" in _error_line(err)
    assert _run(common + ["--te", *f["te"], "--out", str(folder / "y")], capsys)[0] == 0
    before = (folder / "y" / "swi.nii.gz").read_bytes()
    status, err = _run(common + ["--te", *f["te"], "--power", "1", "--out", str(folder / "y")], capsys)
    assert status == EXIT_INPUT_ERROR and "--force" in _error_line(err)
    assert (folder / "y" / "swi.nii.gz").read_bytes() == before
    assert _run(common + ["--te", *f["te"], "--power", "1", "--out", str(folder / "y"), "--force"], capsys)[0] == 0
    assert (folder / "y" / "swi.nii.gz").read_bytes() != before


def test_run_also_writes_swi_and_r2star_beside_chi(ball, capsys):
    folder, f, inside = ball
    out = folder / "run"
    status, err = _run(["run", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--b0", "3",
                        "--mask", f["mask"], "--bgremove", "pdf", "--inversion", "tkd", "--also", "swi", "r2star",
                        "--option", "swi.kind=positive", "--option", "r2star.method=nlls", "--out", str(out)], capsys)
    assert status == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["chi.nii.gz", "mask.nii.gz", "total_field.nii.gz", "local_field.nii.gz", "provenance.json",
                            "swi.nii.gz", "mip.nii.gz", "r2star.nii.gz", "t2star.nii.gz", "s0.nii.gz"])
    np.testing.assert_allclose(_load(out / "r2star.nii.gz")[inside], R2STAR, rtol=1e-4)
    swi_image = _load(out / "swi.nii.gz")
    assert np.all(np.isfinite(swi_image)) and np.all(swi_image[inside] <= _load(f["mag"])[inside].max())
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["also"]["swi"]["kind"] == "positive"
    assert provenance["also"]["r2star"]["method"] == "nlls"
    assert provenance["units"]["chi"] == "ppm" and provenance["units"]["r2star"] == "1/s"


def test_run_also_needs_magnitude_and_known_options(ball, capsys):
    folder, f, _ = ball
    field = _save(folder / "field.nii.gz", np.zeros((24, 24, 20)))
    status, err = _run(["run", "--local-field", field, "--mask", f["mask"], "--b0", "3", "--also", "swi",
                        "--out", str(folder / "z")], capsys)
    assert status == EXIT_INPUT_ERROR and "needs the multi-echo magnitude" in _error_line(err)
    status, err = _run(["run", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--b0", "3",
                        "--also", "swi", "--option", "swi.colour=1", "--out", str(folder / "z")], capsys)
    assert status == EXIT_INPUT_ERROR and "colour" in _error_line(err)
    assert not (folder / "z").exists()


def test_real_scan_swi_and_r2star_are_finite_inside_the_mask(test_data, tmp_path, capsys):
    mag, phase = str(test_data / "romeo-small" / "Mag.nii.gz"), str(test_data / "romeo-small" / "Phase.nii.gz")
    te = ["0.004", "0.008", "0.012"]
    status, err = _run(["swi", "--mag", mag, "--phase", phase, "--te", *te, "--out", str(tmp_path / "swi")], capsys)
    assert status == 0, err
    assert "rescaled" in err                                # the phase is not in radians
    provenance = json.loads((tmp_path / "swi" / "provenance.json").read_text())
    assert "radians" not in provenance["detected"]["phase_scaling"]["detected"]
    status, err = _run(["r2star", "--mag", mag, "--te", *te, "--out", str(tmp_path / "r2")], capsys)
    assert status == 0, err
    magnitude = _load(mag)
    mask = magnitude[..., 0] > 0.25 * np.median(magnitude[..., 0])
    for path in ("swi/swi.nii.gz", "swi/mip.nii.gz", "r2/r2star.nii.gz", "r2/t2star.nii.gz", "r2/s0.nii.gz"):
        image = _load(tmp_path / path)
        assert image.shape == magnitude.shape[:3] and np.all(np.isfinite(image[mask])), path
    assert 10 < np.median(_load(tmp_path / "r2" / "r2star.nii.gz")[mask]) < 60


def test_bids_input(tmp_path, capsys):
    sim = simulate_dataset(tmp_path / "bids", voxel_size_mm=3.0, snr=100)
    status, err = _run(["swi", "--bids", str(tmp_path / "bids"), "--out", str(tmp_path / "swi")], capsys)
    assert status == 0, err
    status, err = _run(["r2star", "--bids", str(tmp_path / "bids"), "--subject", "01",
                        "--out", str(tmp_path / "r2")], capsys)
    assert status == 0, err
    provenance = json.loads((tmp_path / "swi" / "provenance.json").read_text())
    assert provenance["inputs"]["b0_t"] == 3.0 and provenance["inputs"]["subject"] == "01"
    r2star = _load(tmp_path / "r2" / "r2star.nii.gz")
    white = (sim.labels == 8) & sim.brain_mask
    assert np.median(r2star[white]) == pytest.approx(21.0, rel=0.05)   # the phantom's white matter
