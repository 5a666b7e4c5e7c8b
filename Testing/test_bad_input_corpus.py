"""A bad-input corpus and a seeded fuzz test of the qsm command (issue 13, item 7).

Every generated case starts from valid inputs (a small multi-echo scan as NIfTI, as a BIDS
dataset with sidecars, and as a DICOM series; a local field and mask) and breaks exactly one
thing: a NIfTI header field, the data, a sidecar value, a DICOM tag or file, or an option
string. Each case must end with exit status 2 and exactly one error line, no traceback and no
internal error, nothing written anywhere (the output folder included) and every input unchanged.
The cases are drawn from a seeded generator (random.Random), so every run tests the same few
hundred inputs and a failure names its case; ``test_the_unbroken_inputs_work`` shows that the
valid inputs run, so each refusal comes from the fault alone.
"""

import gzip
import json
import os
import random
import shutil
import struct
import time

import nibabel as nib
import numpy as np
import pytest

import qsmlib.memory
from bad_inputs import gzip_bomb, header_only
from cli_checks import one_error_line, save, small_scan, snapshot
from dicom_fixtures import _Writer, TE_S
from qsmlib.cli import main
from qsmlib.io import OutputDirectory, megre_names, write_megre

SEED = 13
N_CASES = 300
SHAPE = (12, 12, 10)
DICOM_SHAPE = (8, 8, 4)

# Byte offsets of NIfTI-1 header fields (nifti1.h).
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET, SCL_SLOPE, QFORM_CODE, SFORM_CODE = 40, 70, 72, 76, 108, 112, 252, 254


# --- the valid inputs --------------------------------------------------------------------------

def _write_dicom(folder, magnitude, phase_levels):
    """A Siemens-style magnitude and 12-bit phase series of DICOM_SHAPE and the echo times TE_S."""
    writer = _Writer(folder, np.diag([3.0, 3.0, 3.0, 1.0]), "SIEMENS", seed=2)
    mag_series, phase_series = writer.series(5, "gre_mag"), writer.series(6, "gre_pha")
    for e in range(len(TE_S)):
        for k in range(DICOM_SHAPE[2]):
            writer.write(mag_series, magnitude[:, :, k, e], k, e, image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
                         bits_stored=12)
            writer.write(phase_series, phase_levels[:, :, k, e], k, e,
                         image_type=("ORIGINAL", "PRIMARY", "P", "ND"), bits_stored=12, rescale=("2", "-4096"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    scan = small_scan(root / "scan", shape=SHAPE)
    mag = np.asarray(nib.load(scan["mag"]).dataobj)
    phase = np.asarray(nib.load(scan["phase"]).dataobj)
    with OutputDirectory(root / "bids", megre_names("01", 3)) as stage:
        write_megre(stage.path, "01", mag, phase, [float(t) for t in scan["te"]], 3.0, np.eye(4))
    rng = np.random.default_rng(0)
    dicom_mag = rng.integers(500, 4000, DICOM_SHAPE + (3,))
    dicom_phase = rng.integers(0, 4096, DICOM_SHAPE + (3,))
    _write_dicom(root / "dicom", dicom_mag, dicom_phase)
    grid = np.indices((20, 20, 20)).astype(np.float32)
    ball = sum((g - 9.5) ** 2 for g in grid) < 49
    (root / "field").mkdir()
    noise = np.random.default_rng(1).normal(0, 0.002, ball.shape)
    save(root / "field" / "local_field.nii.gz", np.where(ball, 0.01 * grid[2] + noise, 0))
    save(root / "field" / "mask.nii.gz", ball)
    return root


def _copy(base, case, *names):
    for name in names:
        source = base / name
        if source.is_dir():
            shutil.copytree(source, case / name)
        else:
            (case / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, case / name)


def _run_scan(case, *extra, mag="scan/mag.nii.gz", phase="scan/phase.nii.gz", mask="scan/mask.nii.gz",
              te=("0.004", "0.008", "0.012")):
    argv = ["run", "--mag", case / mag, "--phase", case / phase, "--te", *te, "--b0", "3", "--preset", "fast",
            "--out", case / "out"]
    return argv + (["--mask", case / mask] if mask else []) + list(extra)


# --- faults: each breaks one thing and returns the qsm arguments --------------------------------

def _patch(path, offset, fmt, value):
    """Write ``value`` into the (uncompressed) header of a NIfTI file at ``offset``."""
    raw = bytearray(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *np.atleast_1d(value))
    path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))


def _scan_target(case, rng):
    return case / "scan" / rng.choice(["mag.nii.gz", "phase.nii.gz", "mask.nii.gz"])


def fault_header_claims_huge(case, base, rng):
    _copy(base, case, "scan")
    target = _scan_target(case, rng)
    shape = tuple(rng.randint(1200, 32767) for _ in range(3)) + ((3,) if "mask" not in target.name else ())
    if rng.random() < 0.5:
        target.unlink()
        target = target.with_suffix("")  # .nii: an uncompressed header with no data
        header_only(target, shape)
        return _run_scan(case, **{target.stem: f"scan/{target.name}"})
    header_only(target, shape)
    return _run_scan(case)


def fault_truncated(case, base, rng):
    _copy(base, case, "scan")
    target = _scan_target(case, rng)
    raw = target.read_bytes()
    if rng.random() < 0.5:  # truncated gzip stream
        target.write_bytes(raw[:rng.randint(10, len(raw) - 20)])
        return _run_scan(case)
    plain = target.with_suffix("")  # uncompressed, cut inside the data
    data = gzip.decompress(raw)
    plain.write_bytes(data[:rng.randint(352, len(data) - 1)])
    target.unlink()
    return _run_scan(case, **{plain.stem: f"scan/{plain.name}"})


def fault_garbage_bytes(case, base, rng):
    _copy(base, case, "scan")
    target = _scan_target(case, rng)
    target.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000))))
    return _run_scan(case)


def fault_bad_dim(case, base, rng):
    _copy(base, case, "scan")
    target = _scan_target(case, rng)
    choice = rng.choice(["dim0", "negative", "zero"])
    if choice == "dim0":
        _patch(target, DIM, "<h", rng.choice([0, 8, 9, -1, 100]))
    else:
        axis = rng.randint(1, 3)
        _patch(target, DIM + 2 * axis, "<h", -rng.randint(1, 50) if choice == "negative" else 0)
    return _run_scan(case)


def fault_bad_datatype(case, base, rng):
    _copy(base, case, "scan")
    target = _scan_target(case, rng)
    _patch(target, DATATYPE, "<h", rng.choice([0, 3, 9999, -5, 1536, 2048]))
    return _run_scan(case)


def fault_bad_pixdim(case, base, rng):
    _copy(base, case, "scan")
    target = case / "scan" / rng.choice(["mag.nii.gz", "phase.nii.gz"])
    _patch(target, QFORM_CODE, "<hh", (0, 0))  # no qform/sform: the affine comes from pixdim
    _patch(target, PIXDIM + 4 * rng.randint(1, 3), "<f", rng.choice([0.0, float("nan"), float("inf"), -0.0]))
    return _run_scan(case)


def fault_vox_offset(case, base, rng):
    _copy(base, case, "scan")
    target = _scan_target(case, rng)
    _patch(target, VOX_OFFSET, "<f", rng.choice([1e6, 1e9, 2.0 ** 40, -352.0, float("nan")]))
    return _run_scan(case)


def fault_nonfinite_data(case, base, rng):
    _copy(base, case, "scan")
    target = case / "scan" / rng.choice(["mag.nii.gz", "phase.nii.gz"])
    image = nib.load(str(target))
    data = np.asarray(image.dataobj).copy()
    for _ in range(rng.randint(1, 5)):
        data[tuple(rng.randrange(n) for n in data.shape)] = rng.choice([np.nan, np.inf, -np.inf])
    nib.save(nib.Nifti1Image(data, image.affine), str(target))
    return _run_scan(case)


def fault_infinite_scale(case, base, rng):
    _copy(base, case, "scan")
    target = case / "scan" / rng.choice(["mag.nii.gz", "phase.nii.gz"])
    _patch(target, SCL_SLOPE, "<f", rng.choice([float("inf"), -float("inf")]))
    return _run_scan(case)


def fault_shape(case, base, rng):
    _copy(base, case, "scan")
    target = case / "scan" / rng.choice(["mag.nii.gz", "phase.nii.gz", "mask.nii.gz"])
    image = nib.load(str(target))
    data = np.asarray(image.dataobj)
    kind = rng.choice(["flat", "smaller", "five_d", "echoes"])
    if kind == "flat":
        data = data[:, :, :1]
    elif kind == "smaller":
        data = data[:, :-rng.randint(1, 3)]
    elif kind == "five_d":
        data = data[..., None, None] if data.ndim == 3 else data[..., None, :][..., None]
    elif data.ndim == 4:
        data = data[..., :2]
    else:
        data = data[:, :, :-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), image.affine), str(target))
    return _run_scan(case)


def fault_value_kind(case, base, rng):
    _copy(base, case, "scan")
    kind = rng.choice(["complex", "negative_magnitude", "empty_mask", "rgb"])
    if kind == "negative_magnitude":
        target = case / "scan" / "mag.nii.gz"
        image = nib.load(str(target))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj) - 1000.0, image.affine), str(target))
    elif kind == "empty_mask":
        save(case / "scan" / "mask.nii.gz", np.zeros(SHAPE))
    elif kind == "complex":
        target = case / "scan" / rng.choice(["mag.nii.gz", "phase.nii.gz"])
        image = nib.load(str(target))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj).astype(np.complex64) * 1j, image.affine), str(target))
    else:
        rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(case / "scan" / "mask.nii.gz"))
    return _run_scan(case)


def fault_affine(case, base, rng):
    _copy(base, case, "scan")
    target = case / "scan" / rng.choice(["phase.nii.gz", "mask.nii.gz"])
    image = nib.load(str(target))
    affine = image.affine.copy()
    affine[rng.randint(0, 2), 3] += rng.choice([-5.0, 2.5, 40.0])
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), str(target))
    return _run_scan(case)


def fault_special_path(case, base, rng):
    _copy(base, case, "scan")
    kind = rng.choice(["missing", "folder", "fifo", "not_nifti", "out_below_file"])
    if kind == "missing":
        return _run_scan(case, mag="scan/absent.nii.gz")
    if kind == "folder":
        (case / "scan" / "dir.nii.gz").mkdir()
        return _run_scan(case, phase="scan/dir.nii.gz")
    if kind == "fifo":
        os.mkfifo(case / "scan" / "pipe.nii.gz")
        return _run_scan(case, mask="scan/pipe.nii.gz")
    if kind == "not_nifti":
        (case / "scan" / "mag.txt").write_text("magnitude")
        return _run_scan(case, mag="scan/mag.txt")
    (case / "afile").write_text("x")
    argv = _run_scan(case)
    argv[argv.index("--out") + 1] = case / "afile" / "out"
    return argv


def fault_gzip_bomb(case, base, rng):
    _copy(base, case, "scan")
    bomb = case / "scan" / "bomb.nii.gz"
    gzip_bomb(bomb, (rng.randint(380, 420), 400, rng.randint(380, 420)), chunk_bytes=8 * 2 ** 20)  # ~250 MiB
    return _run_scan(case, **{rng.choice(["mag", "phase"]): "scan/bomb.nii.gz"})


# sidecars of the BIDS copy

def _sidecar(case, rng, part=None):
    anat = case / "bids" / "sub-01" / "anat"
    part = part or rng.choice(["mag", "phase"])
    return anat / f"sub-01_echo-{rng.randint(1, 3)}_part-{part}_MEGRE.json"


def _edit(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _run_bids(case, *extra):
    return ["run", "--bids", case / "bids", "--preset", "fast", "--out", case / "out", *extra]


def fault_sidecar_echo_time(case, base, rng):
    _copy(base, case, "bids")
    value = rng.choice(["0.004", None, [0.004], True, {}, -0.004, 0, float("nan"), 4, 4000, 1e-6, 1e300, ""])
    _edit(_sidecar(case, rng), EchoTime=value)
    return _run_bids(case)


def fault_sidecar_field_strength(case, base, rng):
    _copy(base, case, "bids")
    value = rng.choice(["3T", None, [3], -3, 0, 1e6, "", True, float("inf"), "3.0"])
    _edit(_sidecar(case, rng, "mag"), MagneticFieldStrength=value)
    return _run_bids(case)


def fault_sidecar_not_an_object(case, base, rng):
    _copy(base, case, "bids")
    path = _sidecar(case, rng)
    kind = rng.choice(["scalar", "broken", "empty", "bom", "deep", "binary", "huge"])
    if kind == "scalar":
        path.write_text(rng.choice(["3", "[]", "\"EchoTime\"", "null", "true", "[0.004, 3]"]))
    elif kind == "broken":
        text = path.read_text()
        path.write_text(text[:rng.randint(0, len(text) - 1)])
    elif kind == "empty":
        path.write_text("")
    elif kind == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    elif kind == "deep":
        path.write_text("[" * 200000 + "]" * 200000)
    elif kind == "binary":
        path.write_bytes(bytes(rng.randrange(128, 256) for _ in range(200)))
    else:
        path.write_text("{\"EchoTime\": 0.004, \"x\": \"" + "a" * (11 * 2 ** 20) + "\"}")
    return _run_bids(case)


def fault_sidecar_consistency(case, base, rng):
    _copy(base, case, "bids")
    anat = case / "bids" / "sub-01" / "anat"
    kind = rng.choice(["missing", "phase_differs", "not_increasing"])
    if kind == "missing":
        _sidecar(case, rng, "mag").unlink()
    elif kind == "phase_differs":
        path = _sidecar(case, rng, "phase")
        _edit(path, EchoTime=json.loads(path.read_text())["EchoTime"] + rng.choice([1e-4, -1e-3, 0.002]))
    else:
        for part in ("mag", "phase"):
            _edit(anat / f"sub-01_echo-2_part-{part}_MEGRE.json", EchoTime=rng.choice([0.004, 0.012, 0.002]))
    return _run_bids(case)


# the DICOM copy

def _dicom_files(case):
    return sorted((case / "dicom").iterdir())


def fault_dicom(case, base, rng):
    import pydicom

    _copy(base, case, "dicom")
    files = _dicom_files(case)
    target = rng.choice(files)
    kind = rng.choice(["echo_time_text", "no_echo_time", "field_zero", "spacing_zero", "truncated", "garbage",
                       "missing_slice", "rows", "orientation"])
    if kind in ("truncated", "garbage"):
        raw = target.read_bytes()
        target.write_bytes(raw[:rng.randint(0, 400)] if kind == "truncated" else
                           bytes(rng.randrange(256) for _ in range(len(raw))))
    elif kind == "missing_slice":
        target.unlink()
    else:
        ds = pydicom.dcmread(str(target))
        if kind == "echo_time_text":
            ds.EchoTime = rng.choice(["-4", "0", "1e9"])
        elif kind == "no_echo_time":
            del ds.EchoTime
        elif kind == "field_zero":
            for item in files:
                one = pydicom.dcmread(str(item))
                one.MagneticFieldStrength = rng.choice(["0", "-3", "3000000"])
                one.save_as(str(item))
            return ["dicom2bids", case / "dicom", "--out", case / "out"]
        elif kind == "spacing_zero":
            ds.PixelSpacing = ["0", "0"]
        elif kind == "rows":
            ds.Rows = ds.Rows + rng.randint(1, 5)
        else:
            ds.ImageOrientationPatient = ["0", "0", "0", "0", "0", "0"]
        ds.save_as(str(target))
    return ["dicom2bids", case / "dicom", "--out", case / "out"]


# option strings

def _junk(rng, alphabet="abcxyz019.-_=[]{}/\\'\" ", size=(0, 12)):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(*size)))


def fault_option_string(case, base, rng):
    _copy(base, case, "scan")
    kind = rng.choice(["no_equals", "no_dot", "unknown_method", "unknown_key", "not_in_use", "bad_value"])
    if kind == "no_equals":
        option = "tv-admm.lam" + _junk(rng, "abc.-_")
    elif kind == "no_dot":
        option = rng.choice(["lam", "tvadmm", ""]) + "=" + _junk(rng)
    elif kind == "unknown_method":
        option = rng.choice(["magic", "tv_admm", "TKD", "vsharp2", "x"]) + "." + rng.choice(["lam", "a"]) + "=1"
    elif kind == "unknown_key":
        option = rng.choice(["tkd", "vsharp", "romeo", "mask", "fieldmap"]) + "." + _junk(rng, "qwz", (1, 6)) + "=1"
    elif kind == "not_in_use":
        option = rng.choice(["tv-admm.lam=1e-3", "pdf.tol=1e-3", "laplacian.differences='wrapped'",
                             "csf.erode_mm=1", "medi.lam=1000", "sharp.radius_mm=4"])
    else:
        option = rng.choice(["tkd.threshold=", "tkd.threshold='abc'", "tkd.threshold=-1", "tkd.threshold=[1,2]",
                             "tkd.threshold=None", "tkd.threshold=1e400", "tkd.pad_voxels=-3", "tkd.pad_voxels=1e9",
                             "tkd.pad_voxels='x'", "vsharp.radii_mm=[]", "vsharp.radii_mm=[-1]",
                             "vsharp.radii_mm='abc'", "vsharp.radii_mm=[1e9]", "fieldmap.model='magic'",
                             "mask.erode_mm=-2", "mask.erode_mm='x'", "tkd.threshold=nan"])
    return _run_scan(case, "--option", option)


def fault_number_options(case, base, rng):
    _copy(base, case, "scan")
    kind = rng.choice(["te", "b0", "b0_dir", "reference", "labels"])
    if kind == "te":
        te = rng.choice([["abc", "0.008", "0.012"], ["0.004,0.008,0.012"], ["nan", "0.008", "0.012"],
                         ["-0.004", "0.008", "0.012"], ["0.004", "0.008"], ["4", "8", "12"], ["0", "0.008", "0.012"],
                         ["0.012", "0.008", "0.004"], ["inf", "1", "2"], ["0x10", "1", "2"]])
        return _run_scan(case, te=te)
    if kind == "b0":
        argv = _run_scan(case)
        argv[argv.index("--b0") + 1] = rng.choice(["0", "-3", "abc", "3T", "inf", "nan", "1e9", "3000", "0.001", ""])
        return argv
    if kind == "b0_dir":
        return _run_scan(case, "--b0-dir", *rng.choice([["0", "0", "0"], ["nan", "0", "1"], ["inf", "0", "0"],
                                                       ["a", "b", "c"]]))
    if kind == "reference":
        return _run_scan(case, *rng.choice([["--reference", "region"], ["--reference-labels", "4", "43"],
                                            ["--reference", "region", "--reference-mask", case / "nothere.nii.gz"],
                                            ["--reference", "magic"]]))
    label = rng.choice(["../x", "a_b", "sub-..", "", "a b", "é", "01/02", "..", "-1", "a.b"])
    return ["run", "--bids", case / "scan", rng.choice(["--subject", "--session"]), label, "--out", case / "out"]


def fault_other_commands(case, base, rng):
    kind = rng.choice(["simulate", "invert", "batch", "swi", "unknown"])
    if kind == "simulate":
        bad = rng.choice([["--voxel-size", "0"], ["--voxel-size", "-1"], ["--voxel-size", "nan"],
                          ["--voxel-size", "1", "2"], ["--subject", "../../x"], ["--te", "4", "8"],
                          ["--b0", "0"], ["--snr", "-1"], ["--coils", "4"], ["--b0-dir", "0", "0", "0"]])
        return ["simulate", "--out", case / "out", *bad]
    if kind == "invert":
        _copy(base, case, "field")
        bad = rng.choice([["--unit", "hz"], ["--unit", "tesla"], ["--option", "tv-admm.lam=-1", "--unit", "ppm"],
                          ["--option", "tkd.threshold=0.2", "--unit", "ppm"],
                          ["--unit", "ppm", "--b0-dir", "0", "0", "0"],
                          ["--unit", "ppm", "--option", "tv-admm.pad_voxels=100000"]])
        return ["invert", "--local-field", case / "field" / "local_field.nii.gz", "--mask",
                case / "field" / "mask.nii.gz", "--out", case / "out" / "chi.nii.gz", *bad]
    if kind == "batch":
        _copy(base, case, "bids")
        bad = rng.choice([["--labels-pattern", "x/{subjet}.nii.gz"], ["--labels-pattern", "{"],
                          ["--scheduler", "tcp://127.0.0.1:1"], ["--scheduler", str(case / "none.json")],
                          ["--scheduler", "magic"], ["--workers", "0"], ["--participant-label", "02"],
                          ["--participant-label", "a_b"], ["--mask", case / "m.nii.gz"]])
        return ["batch", case / "bids", "--out", case / "out", *bad]
    if kind == "swi":
        _copy(base, case, "scan")
        argv = ["swi", "--mag", case / "scan/mag.nii.gz", "--phase", case / "scan/phase.nii.gz", "--te", "0.004",
                "0.008", "0.012", "--out", case / "out"]
        return argv + rng.choice([["--power", "-1"], ["--slab", "nan"], ["--mip-axis", "3"], ["--te-ref", "0"],
                                  ["--filter-size", "0"], ["--sigma-mm", "2"], ["--highpass", "field",
                                                                                "--filter-size", "8"]])
    return [rng.choice(["runn", "", "--nope", "export"]), "--out", case / "out"]


FAULTS = {f.__name__[len("fault_"):]: f for f in (
    fault_header_claims_huge, fault_truncated, fault_garbage_bytes, fault_bad_dim, fault_bad_datatype,
    fault_bad_pixdim, fault_vox_offset, fault_nonfinite_data, fault_infinite_scale, fault_shape, fault_value_kind, fault_affine,
    fault_special_path, fault_gzip_bomb, fault_sidecar_echo_time, fault_sidecar_field_strength,
    fault_sidecar_not_an_object, fault_sidecar_consistency, fault_dicom, fault_option_string,
    fault_number_options, fault_other_commands)}


def _cases():
    rng = random.Random(SEED)
    names = sorted(FAULTS)
    # every fault at least four times, the rest drawn at random; gzip bombs are few (each takes a moment)
    drawn = [name for name in names for _ in range(4)]
    drawn += [rng.choice([n for n in names if n != "gzip_bomb"]) for _ in range(N_CASES - len(drawn))]
    return [(n, name) for n, name in enumerate(drawn)]


def _run(argv, capsys):
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.err + captured.out


@pytest.mark.filterwarnings("error")  # a warning would be a second line on the terminal
@pytest.mark.parametrize("number, fault", _cases(), ids=lambda value: str(value))
def test_bad_input_is_refused_in_one_line_and_changes_nothing(base, tmp_path, capsys, monkeypatch, number, fault):
    # A machine with 8 GiB available, whatever this one has: a 400^3 gzip bomb then needs more than it.
    monkeypatch.setattr(qsmlib.memory, "available_memory_bytes", lambda: 8 * 2 ** 30)
    case = tmp_path / "case"
    case.mkdir()
    argv = FAULTS[fault](case, base, random.Random(f"{SEED}-{number}"))
    before = snapshot(tmp_path)
    status, err = _run(argv, capsys)
    assert status == 2, f"{fault} #{number}: exit {status}\n{' '.join(map(str, argv))}\n{err}"
    one_error_line(err)
    assert snapshot(tmp_path) == before, f"{fault} #{number} changed files: {' '.join(map(str, argv))}"


def test_the_unbroken_inputs_work(base, tmp_path, capsys):
    """Each family's valid input runs, so the refusals above come from the faults."""
    for name in ("scan", "bids", "dicom", "field"):
        _copy(base, tmp_path, name)
    start = time.perf_counter()
    for argv in (_run_scan(tmp_path), ["run", "--bids", tmp_path / "bids", "--preset", "fast", "--out",
                                       tmp_path / "out2"],
                 ["dicom2bids", tmp_path / "dicom", "--out", tmp_path / "out3"],
                 ["invert", "--local-field", tmp_path / "field" / "local_field.nii.gz", "--mask",
                  tmp_path / "field" / "mask.nii.gz", "--unit", "ppm", "--out", tmp_path / "out4" / "chi.nii.gz"]):
        status, err = _run(argv, capsys)
        assert status == 0, f"{' '.join(map(str, argv))}\n{err}"
    assert time.perf_counter() - start < 120
