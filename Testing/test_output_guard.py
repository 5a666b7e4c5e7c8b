"""One guarded place for every path the tools write (issue 13, item 1).

Outputs stay inside the declared output folder (symbolic links resolved), BIDS labels follow the
BIDS grammar, inputs are never overwritten (not even with --force), derivatives never land in the
raw folders of a BIDS dataset, and written files get the mode the umask gives.
"""

import json
import os
import stat

import numpy as np
import pytest

from cli_checks import one_error_line, run_cli, save, small_scan, snapshot
from dicom_fixtures import write_siemens
from qsmlib.errors import QSMInputError
from qsmlib.io import OutputDirectory, bids_label, megre_names, save_nifti, write_megre
from qsmlib.io.output import check_outside_raw_bids, resolve_output_folder


def _bids(root, subjects=("01",)):
    """A small BIDS MEGRE dataset (3 echoes of a 16x16x12 ball) with one or more subjects."""
    scan = small_scan(os.path.join(root, ".scan"))
    import nibabel as nib

    mag = np.asarray(nib.load(scan["mag"]).dataobj)
    phase = np.asarray(nib.load(scan["phase"]).dataobj)
    for subject in subjects:
        names = megre_names(subject, 3)
        os.makedirs(root, exist_ok=True)
        with OutputDirectory(root, names, force=True) as stage:
            write_megre(stage.path, subject, mag, phase, [0.004, 0.008, 0.012], 3.0, np.eye(4))
    return str(root)


@pytest.mark.parametrize("label, expected", [("01", "01"), ("sub-01", "01"), ("control3", "control3"),
                                             ("ABC", "ABC")])
def test_bids_labels_of_letters_and_digits_are_accepted(label, expected):
    assert bids_label(label, "--subject", "sub-") == expected


@pytest.mark.parametrize("label", ["", "sub-", "a_b", "a-b", "..", "../../x", "a/b", "a b", "01\n", "é1", "a.b"])
def test_labels_outside_the_bids_grammar_are_refused(label):
    with pytest.raises(QSMInputError, match="letters and digits only"):
        bids_label(label, "--subject", "sub-")


def test_simulate_subject_with_dot_dot_writes_nothing_anywhere(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    out.mkdir(parents=True)
    victim = tmp_path / "x_echo-1_part-mag_MEGRE.nii.gz"
    victim.write_bytes(b"keep me")
    before = snapshot(tmp_path)
    status, err = run_cli(["simulate", "--out", out, "--subject", "../../../../x", "--voxel-size", "4"], capsys)
    assert status == 2
    assert "--subject '../../../../x'" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_dicom2bids_session_with_dot_dot_writes_nothing_anywhere(tmp_path, capsys):
    write_siemens(tmp_path / "dicom")
    out = tmp_path / "p" / "q" / "bids"
    out.mkdir(parents=True)
    before = snapshot(tmp_path)
    status, err = run_cli(["dicom2bids", tmp_path / "dicom", "--out", out, "--session", "../../../../x"], capsys)
    assert status == 2
    assert "--session '../../../../x'" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_run_subject_and_session_must_be_bids_labels(tmp_path, capsys):
    bids = _bids(tmp_path / "bids")
    for option in ("--subject", "--session"):
        status, err = run_cli(["run", "--bids", bids, option, "../01", "--out", tmp_path / "out"], capsys)
        assert status == 2 and f"{option} '../01'" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_batch_participant_label_must_be_a_bids_label(tmp_path, capsys):
    bids = _bids(tmp_path / "bids")
    status, err = run_cli(["batch", bids, "--out", tmp_path / "deriv", "--participant-label", "01/../.."], capsys)
    assert status == 2 and "--participant-label '01/../..'" in one_error_line(err)
    assert not (tmp_path / "deriv").exists()


@pytest.mark.parametrize("where", ["root", "subject", "symlink_to_root", "symlink_to_subject"])
def test_batch_derivatives_never_go_into_the_raw_dataset(tmp_path, capsys, where):
    bids = _bids(tmp_path / "bids")
    target = {"root": bids, "subject": os.path.join(bids, "sub-01"),
              "symlink_to_root": tmp_path / "link", "symlink_to_subject": tmp_path / "link"}[where]
    if where.startswith("symlink"):
        os.symlink(bids if where == "symlink_to_root" else os.path.join(bids, "sub-01"), tmp_path / "link")
    before = snapshot(bids)
    status, err = run_cli(["batch", bids, "--out", target], capsys)
    assert status == 2
    assert "raw BIDS dataset" in one_error_line(err)
    assert snapshot(bids) == before


def test_run_derivatives_never_go_into_the_raw_dataset(tmp_path, capsys):
    bids = _bids(tmp_path / "bids")
    before = snapshot(bids)
    for out in (os.path.join(bids, "sub-01"), os.path.join(bids, "sub-01", "anat"), bids):
        status, err = run_cli(["run", "--bids", bids, "--out", out, "--force"], capsys)
        assert status == 2 and "raw BIDS dataset" in one_error_line(err)
    assert snapshot(bids) == before


def test_derivatives_folder_of_the_dataset_is_allowed(tmp_path):
    bids = _bids(tmp_path / "bids")
    out = resolve_output_folder(os.path.join(bids, "derivatives", "qsm"))
    check_outside_raw_bids(out, bids)  # no exception
    check_outside_raw_bids(resolve_output_folder(tmp_path / "elsewhere"), bids)
    with pytest.raises(QSMInputError, match="contains the BIDS dataset"):
        check_outside_raw_bids(resolve_output_folder(tmp_path), bids, allow_parent=False)


def test_mask_inside_out_is_never_overwritten_even_with_force(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    mask = out / "mask.nii.gz"
    os.replace(scan["mask"], mask)
    before = snapshot(tmp_path)
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0", "3",
                           "--mask", mask, "--out", out, "--force"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "would overwrite the input" in line and "mask.nii.gz" in line
    assert snapshot(tmp_path) == before


def test_invert_never_overwrites_its_own_field_even_with_force(tmp_path, capsys):
    field = save(tmp_path / "field.nii.gz", np.zeros((8, 8, 8)))
    mask = save(tmp_path / "mask.nii.gz", np.ones((8, 8, 8)))
    before = snapshot(tmp_path)
    status, err = run_cli(["invert", "--local-field", field, "--unit", "ppm", "--mask", mask,
                           "--out", field, "--force"], capsys)
    assert status == 2 and "would overwrite the input" in one_error_line(err)
    # a link to the input, or a hard link to it, is the input too
    os.symlink(field, tmp_path / "link.nii.gz")
    os.link(field, tmp_path / "hard.nii.gz")
    before = snapshot(tmp_path)
    for out in ("link.nii.gz", "hard.nii.gz"):
        status, err = run_cli(["invert", "--local-field", field, "--unit", "ppm", "--mask", mask,
                               "--out", tmp_path / out, "--force"], capsys)
        assert status == 2 and "would overwrite the input" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_invert_into_an_existing_folder_is_refused_before_computing(tmp_path, capsys, monkeypatch):
    import qsmlib.workflow

    field = save(tmp_path / "field.nii.gz", np.zeros((8, 8, 8)))
    mask = save(tmp_path / "mask.nii.gz", np.ones((8, 8, 8)))
    (tmp_path / "outdir").mkdir()

    def must_not_run(**kwargs):
        raise AssertionError("reconstruct was called before the output was checked")

    monkeypatch.setattr(qsmlib.workflow, "reconstruct", must_not_run)
    status, err = run_cli(["invert", "--local-field", field, "--unit", "ppm", "--mask", mask,
                           "--out", tmp_path / "outdir", "--force"], capsys)
    assert status == 2 and "is a folder there" in one_error_line(err)


def test_an_output_that_is_a_link_leading_outside_is_refused(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.nii.gz"
    precious.write_bytes(b"not yours")
    os.symlink(precious, out / "chi.nii.gz")
    before = snapshot(tmp_path)
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0", "3",
                           "--out", out, "--force"], capsys)
    assert status == 2 and "outside the output folder" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_a_linked_subfolder_of_the_output_cannot_carry_files_outside(tmp_path, capsys):
    out = tmp_path / "sim"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "derivatives")
    before = snapshot(tmp_path)
    status, err = run_cli(["simulate", "--out", out, "--voxel-size", "4", "--force"], capsys)
    assert status == 2 and "outside the output folder" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_output_names_cannot_leave_the_folder(tmp_path):
    for name in ("../x.txt", "/etc/x.txt", "a/../../x.txt", "."):
        with pytest.raises(QSMInputError, match="leaves the output folder"):
            OutputDirectory(tmp_path / "out", [name])
    with OutputDirectory(tmp_path / "out", ["a.txt"]) as stage:
        with pytest.raises(ValueError, match="not declared"):
            stage.path("b.txt")
        open(stage.path("a.txt"), "w").write("a")
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt"]


def test_out_below_a_file_is_one_line(tmp_path, capsys):
    scan = small_scan(tmp_path / "in")
    (tmp_path / "file").write_text("a file")
    status, err = run_cli(["run", "--mag", scan["mag"], "--phase", scan["phase"], "--te", *scan["te"], "--b0", "3",
                           "--out", tmp_path / "file" / "out"], capsys)
    assert status == 2 and "is a file, not a folder" in one_error_line(err)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_nifti_and_json_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with OutputDirectory(tmp_path / "out", ["map.nii.gz", "meta.json"]) as stage:
            save_nifti(stage.path("map.nii.gz"), np.zeros((4, 4, 4)), np.eye(4))
            with open(stage.path("meta.json"), "w") as f:
                json.dump({}, f)
    finally:
        os.umask(old)
    for name in ("map.nii.gz", "meta.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "out" / name).st_mode) == mode, name
