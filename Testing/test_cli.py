"""The qsm command: every bad input ends in one clear line, exit status 2, and no output."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmlib.cli import EXIT_INPUT_ERROR, ProgressPrinter, _get_parser, main


def _save(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return str(path)


@pytest.fixture
def small_inputs(tmp_path):
    """A 3-echo dataset of a bright ball, in radians; small enough to fail fast."""
    shape = (16, 16, 12)
    grid = np.indices(shape).astype(np.float32)
    ball = ((grid[0] - 8) ** 2 + (grid[1] - 8) ** 2 + (grid[2] - 6) ** 2) < 25
    te = [0.004, 0.008, 0.012]
    mag = np.stack([np.where(ball, 100.0, 1.0) * np.exp(-20 * t) for t in te], axis=3)
    phase = np.stack([np.angle(np.exp(1j * (0.3 + 2 * np.pi * 20 * t * grid[0] / 16))) for t in te], axis=3)
    files = {
        "mag": _save(tmp_path / "mag.nii.gz", mag),
        "phase": _save(tmp_path / "phase.nii.gz", phase),
        "mask": _save(tmp_path / "mask.nii.gz", ball),
        "te": [str(t) for t in te],
    }
    return tmp_path, files


def _run(args, capsys):
    status = main(args)
    err = capsys.readouterr().err
    return status, err


def _error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("qsm: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("problem, expected", [
    ("shape", "must have the same voxels"),
    ("echo_count", "2 echo times given"),
    ("milliseconds", "look like milliseconds"),
    ("two_d", "2D image"),
    ("nan", "NaN"),
    ("empty_mask", "the mask is empty"),
    ("not_nifti", "not a NIfTI file"),
    ("corrupt", "cannot be read as NIfTI"),
])
def test_bad_input_gives_one_line_and_no_output(small_inputs, capsys, problem, expected):
    folder, f = small_inputs
    mag, phase, mask, te = f["mag"], f["phase"], f["mask"], list(f["te"])
    named = None
    if problem == "shape":
        phase = _save(folder / "phase_small.nii.gz", np.zeros((16, 16, 11, 3)))
        named = "phase_small.nii.gz"
    elif problem == "echo_count":
        te = te[:2]
    elif problem == "milliseconds":
        te = ["4", "8", "12"]
    elif problem == "two_d":
        mag = _save(folder / "flat.nii.gz", np.ones((16, 16, 1, 3)))
        named = "flat.nii.gz"
    elif problem == "nan":
        data = np.asarray(nib.load(phase).dataobj).copy()
        data[3, 3, 3, 1] = np.nan
        phase = _save(folder / "phase_nan.nii.gz", data)
        named = "phase_nan.nii.gz"
    elif problem == "empty_mask":
        mask = _save(folder / "empty.nii.gz", np.zeros((16, 16, 12)))
        named = "empty.nii.gz"
    elif problem == "not_nifti":
        (folder / "scan.txt").write_text("hello")
        mag = str(folder / "scan.txt")
        named = "scan.txt"
    elif problem == "corrupt":
        raw = open(f["mag"], "rb").read()
        (folder / "broken.nii.gz").write_bytes(raw[: len(raw) // 2])
        mag = str(folder / "broken.nii.gz")
        named = "broken.nii.gz"
    out = folder / "out"
    status, err = _run(["run", "--mag", mag, "--phase", phase, "--te", *te, "--b0", "3",
                        "--mask", mask, "--out", str(out)], capsys)
    line = _error_line(err)
    assert status == EXIT_INPUT_ERROR
    assert expected in line
    if named:
        assert named in line
    assert not out.exists()


def test_existing_output_needs_force(small_inputs, capsys):
    folder, f = small_inputs
    out = folder / "out"
    out.mkdir()
    (out / "chi.nii.gz").write_bytes(b"precious")
    status, err = _run(["run", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--b0", "3",
                        "--mask", f["mask"], "--out", str(out)], capsys)
    assert status == EXIT_INPUT_ERROR and "--force" in _error_line(err)
    assert (out / "chi.nii.gz").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["chi.nii.gz"]


def test_inputs_are_never_modified(small_inputs, capsys):
    folder, f = small_inputs
    before = {k: open(f[k], "rb").read() for k in ("mag", "phase", "mask")}
    status, _ = _run(["run", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--b0", "3",
                      "--mask", f["mask"], "--out", str(folder / "out"), "--bgremove", "sharp",
                      "--option", "sharp.radius_mm=2", "--inversion", "tkd"], capsys)
    assert status == 0
    assert {k: open(f[k], "rb").read() for k in before} == before
    written = sorted(p.name for p in (folder / "out").iterdir())
    assert written == sorted(["chi.nii.gz", "mask.nii.gz", "total_field.nii.gz", "local_field.nii.gz",
                              "provenance.json"])
    provenance = json.loads((folder / "out" / "provenance.json").read_text())
    assert provenance["detected"]["phase_scaling"]["detected"] == "radians in [-pi, pi]"
    assert [s["stage"] for s in provenance["stages"]] == ["mask", "total field", "background removal",
                                                         "dipole inversion", "referencing"]
    assert provenance["stages"][2]["parameters"]["radius_mm"] == 2


def test_unknown_method_option_is_refused(small_inputs, capsys):
    folder, f = small_inputs
    status, err = _run(["run", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--b0", "3",
                        "--mask", f["mask"], "--out", str(folder / "out"), "--option", "vsharp.radius=3"], capsys)
    assert status == EXIT_INPUT_ERROR and "has no option radius" in _error_line(err)
    assert not (folder / "out").exists()


def test_every_help_string_names_units():
    parser = _get_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    helps = {a.dest: a.help for a in run._actions}
    for dest, unit in (("te", "seconds"), ("b0", "tesla"), ("total_field", "Hz"), ("local_field", "Hz")):
        assert unit in helps[dest]


def test_progress_printer_reports_stages_and_percentages():
    import io
    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    for fraction in (0.0, 0.05, 0.25, 0.26, 0.5, 1.0):
        printer("dipole inversion", fraction)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "qsm: dipole inversion ..."
    assert lines[1:3] == ["qsm: dipole inversion 20 %", "qsm: dipole inversion 50 %"]
    assert lines[3].startswith("qsm: dipole inversion done in")


def test_presets_choose_methods_and_single_stages_override_them(small_inputs, capsys):
    from qsmlib.errors import QSMInputError
    from qsmlib.pipeline import PRESETS, PipelineConfig

    fast = PipelineConfig.from_preset("fast")
    assert (fast.unwrap, fast.bgremove, fast.inversion) == ("romeo", "vsharp", "tkd")
    assert PipelineConfig.from_preset("consensus", inversion="tikhonov").inversion == "tikhonov"
    assert PipelineConfig() == PipelineConfig.from_preset("consensus")
    assert set(PRESETS) == {"consensus", "fast"}
    with pytest.raises(QSMInputError, match="preset 'slow' is unknown"):
        PipelineConfig.from_preset("slow")
    folder, f = small_inputs
    status, _ = _run(["run", "--mag", f["mag"], "--phase", f["phase"], "--te", *f["te"], "--b0", "3",
                      "--mask", f["mask"], "--out", str(folder / "out"), "--preset", "fast",
                      "--bgremove", "sharp", "--option", "sharp.radius_mm=2"], capsys)
    assert status == 0
    stages = json.loads((folder / "out" / "provenance.json").read_text())["stages"]
    methods = {s["stage"]: s["method"] for s in stages}
    assert methods["dipole inversion"] == "tkd" and methods["background removal"] == "sharp"
