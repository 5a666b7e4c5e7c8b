"""Atlas templates and registration (qsmlib.atlas): known answers, checks, the qsm segment and qsm atlas commands.

The known answer: the head model deformed by a known smooth deformation plus an
affine (10 degrees about an oblique axis, 10 % scale) and acquired at 2 mm with
partial volume and texture; the undeformed 1 mm model, as a template folder,
registered back. The true labels are the template's carried by the known
deformation (majority vote per 2 mm voxel).
"""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from atlas_fixtures import dice, known_subject, known_warp, other_body_part
from qsmlib import Cancelled, cli
from qsmlib.atlas import (DEEP_GREY_MATTER_SEGMENTS, RegistrationFailed, RegistrationOptions, check_template,
                          load_template, read_label_table, register_template, warp_labels, write_head_model_template)
from qsmlib.atlas.registration import DETERMINANT_RANGE, MIN_CORRELATION, load_transform
from qsmlib.atlas.sitk_image import affine_from_image, array_from_image, image_from_array
from qsmlib.atlas.template import head_model_images, head_model_segments
from qsmlib.io import load_nifti, save_nifti
from qsmlib.simulation import load_head_phantom
from test_batch import _png_rgb

SEED = 3


def _png_size_and_colours(path):
    pixels = _png_rgb(path)
    colours = {tuple(int(c) for c in p) for p in np.unique(pixels.reshape(-1, 3), axis=0)}
    return (pixels.shape[1], pixels.shape[0]), colours


# --- SimpleITK images keep the NIfTI geometry ------------------------------------------------------

def test_sitk_images_keep_the_nifti_voxel_order_and_world_coordinates():
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((7, 5, 4)).astype(np.float32)
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 1.0, 2.5])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    image = image_from_array(volume, affine)
    np.testing.assert_array_equal(array_from_image(image), volume)
    np.testing.assert_allclose(affine_from_image(image), affine, atol=1e-9)
    # ITK places voxel (i, j, k) at the LPS point of the affine's RAS point
    for index in ((0, 0, 0), (6, 1, 3), (2, 4, 1)):
        ras = affine[:3, :3] @ index + affine[:3, 3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), ras * [-1, -1, 1], atol=1e-9)


# --- label tables and template folders ---------------------------------------------------------------

def test_label_tables_in_tsv_and_csv_and_their_errors(tmp_path):
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("index\tname\tcolor\n1\tLeft caudate\t#7abadc\n2\tRed nucleus\t220 20 60\n")
    table = read_label_table(tsv)
    assert {k: (v.name, v.color) for k, v in table.items()} == {1: ("Left caudate", (122, 186, 220)),
                                                               2: ("Red nucleus", (220, 20, 60))}
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("# a comment\nlabel,name\n3,Putamen\n")
    assert read_label_table(csv_file)[3].name == "Putamen"
    for text, problem in (("index\tname\n1\tA\n1\tB\n", "index 1 appears twice"),
                          ("index\tname\n0\tbackground\n", "must be a positive integer"),
                          ("index\tname\n1\tA\n2\tA\n", "label name(s) A appear more than once"),
                          ("number\tname\n1\tA\n", "needs the columns index (or label) and name"),
                          ("index\tname\tcolor\n1\tA\tpink\n", "colour 'pink' is not #RRGGBB")):
        tsv.write_text(text)
        with pytest.raises(ValueError, match="labels.tsv") as error:
            read_label_table(tsv)
        assert problem in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def template_2mm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas") / "head-2mm"
    assert cli.main(["-q", "atlas", "head-model", "--out", str(folder), "--voxel-size", "2"]) == 0
    return folder


def test_head_model_template_is_written_and_checked(template_2mm, capsys):
    assert cli.main(["atlas", "check", str(template_2mm)]) == 0
    out = capsys.readouterr().out
    assert "QSMLib head model: magnitude, susceptibility image(s), 11 labels" in out and "licence: MIT" in out
    report = check_template(template_2mm)
    names = [label["name"] for label in report["labels"].values()]
    assert names == [name for name, _rgb in DEEP_GREY_MATTER_SEGMENTS]
    assert [label["color"] for label in report["labels"].values()] == [
        "#" + "".join(f"{c:02x}" for c in rgb) for _name, rgb in DEEP_GREY_MATTER_SEGMENTS]
    volumes = {label["name"]: label["volume_mm3"] for label in report["labels"].values()}
    for structure in ("caudate", "putamen", "globus pallidus"):  # split at the midline: halves within 10 %
        left, right = volumes[f"Left {structure}"], volumes[f"Right {structure}"]
        assert abs(left - right) < 0.1 * (left + right) / 2, structure
    # the labels are the model's tissues: the two halves of a nucleus make up all of it
    phantom = load_head_phantom(2.0)
    template = load_template(template_2mm)
    for value, info in template.table.items():
        tissue = info.abbreviation.lstrip("LR") if value <= 8 else info.abbreviation
        assert np.all(phantom.labels[template.labels == value] == phantom.label_of(tissue))
    assert template.mask is not None and np.array_equal(template.mask, phantom.brain_mask)


def test_broken_template_folders_are_refused_with_one_line_naming_the_file(template_2mm, tmp_path, capsys):
    def copy(name):
        folder = tmp_path / name
        folder.mkdir()
        for path in template_2mm.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        return folder

    missing = copy("missing-table")
    (missing / "labels.tsv").unlink()
    unnamed = copy("unnamed-label")
    (unnamed / "labels.tsv").write_text("index\tname\n1\tLeft caudate\n")
    shifted = copy("other-grid")
    chi, affine = load_nifti(shifted / "template_chi.nii.gz")
    moved = affine.copy()
    moved[0, 3] += 3.0  # 3 mm off the labels' grid
    save_nifti(shifted / "template_chi.nii.gz", chi, moved)
    fractional = copy("fractional-labels")
    labels, affine = load_nifti(fractional / "labels.nii.gz")
    save_nifti(fractional / "labels.nii.gz", labels * 0.5, affine)
    cases = [(missing, "labels.tsv: file of the atlas template not found"),
             (unnamed, "label(s) 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 of labels.nii.gz have no row"),
             (shifted, "template_chi.nii.gz: the template susceptibility image (shape (82, 103, 103)) is not on the "
                       "grid of the label image"),
             (fractional, "labels.nii.gz: the label image must hold non-negative integers"),
             (tmp_path / "nowhere", "atlas template folder not found")]
    for folder, message in cases:
        assert cli.main(["atlas", "check", str(folder)]) == cli.EXIT_INPUT_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith("qsm: error: ") and message in err and "\n" not in err, (folder.name, err)


# --- the known answer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """The deformed head at 2 mm (files for qsm segment), its true labels, and the 1 mm model as a template."""
    root = tmp_path_factory.mktemp("known")
    start = time.perf_counter()
    template = Path(write_head_model_template(root / "template", voxel_size_mm=1.0))
    phantom = load_head_phantom(1.0)
    labels, table, _ = head_model_segments(phantom)
    subject = known_subject(phantom, known_warp(phantom), labels, voxel_size_mm=2.0, seed=SEED)
    save_nifti(root / "chi.nii.gz", subject["chi"], subject["affine"])
    save_nifti(root / "mag.nii.gz", subject["magnitude"], subject["affine"])
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    status = cli.main(["-q", "segment", "--chi", str(root / "chi.nii.gz"), "--mag", str(root / "mag.nii.gz"),
                       "--atlas", str(template), "--out", str(root / "seg")])
    registration_s = time.perf_counter() - start
    print(f"known answer: setup {setup_s:.1f} s, qsm segment {registration_s:.1f} s")
    return {"root": root, "template": template, "subject": subject, "table": table, "status": status}


def test_known_deformation_is_recovered_to_the_issues_tolerances(known):
    """Mean Dice of the deep grey matter >= 0.8 and every regional mean within 0.01 ppm of the truth's."""
    assert known["status"] == 0
    out = known["root"] / "seg"
    labels, affine = load_nifti(out / "labels.nii.gz")
    labels = labels.astype(np.int32)
    np.testing.assert_allclose(affine, known["subject"]["affine"])
    truth, chi = known["subject"]["truth"], known["subject"]["chi"]
    dices, errors = {}, {}
    for value, info in known["table"].items():
        dices[info.name] = dice(labels == value, truth == value)
        errors[info.name] = float(chi[labels == value].mean() - chi[truth == value].mean())
    print("Dice:", {k: round(v, 3) for k, v in dices.items()})
    print("mean error (ppm):", {k: round(v, 4) for k, v in errors.items()})
    assert np.mean(list(dices.values())) >= 0.8
    assert min(dices.values()) >= 0.8
    assert max(abs(e) for e in errors.values()) <= 0.01
    # regions.csv holds the same means (over the brain, which holds every label)
    with open(out / "regions.csv", newline="") as f:
        rows = {r["region"]: r for r in csv.DictReader(f)}
    assert list(rows) == [info.name for info in known["table"].values()]
    for value, info in known["table"].items():
        assert float(rows[info.name]["mean_ppm"]) == pytest.approx(float(chi[labels == value].mean()), abs=1e-6)
        assert int(rows[info.name]["voxels"]) == int((labels == value).sum())


def test_segment_writes_table_qc_transform_and_report(known):
    out = known["root"] / "seg"
    assert sorted(p.name for p in out.iterdir()) == ["atlas_qc.png", "atlas_registration.json",
                                                     "atlas_transform.h5", "labels.nii.gz", "labels.tsv",
                                                     "regions.csv"]
    assert read_label_table(out / "labels.tsv") == load_template(known["template"]).table
    report = json.loads((out / "atlas_registration.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["rigid", "affine", "deformable"]
    assert [s["pair"] for s in report["stages"]] == [["magnitude", "magnitude"], ["magnitude", "magnitude"],
                                                    ["susceptibility", "susceptibility"]]
    assert report["stages"][2]["method"] == "demons" and report["quality"]["problems"] == []
    # the affine found is the known one's volume change (the deformation's bumps change it by < 1 %)
    assert report["quality"]["determinant"] == pytest.approx(1.1 ** 3, rel=0.02)
    assert report["quality"]["similarity"]["value"] > MIN_CORRELATION
    # the saved transform reproduces the labels
    template = load_template(known["template"])
    labels, affine = load_nifti(out / "labels.nii.gz")
    again = warp_labels(template.labels, template.affine, load_transform(out / "atlas_transform.h5"),
                        labels.shape, affine)
    assert np.array_equal(again, labels.astype(np.int32))
    # the QC picture shows the label outlines in their colours
    (width, height), colours = _png_size_and_colours(out / "atlas_qc.png")
    assert height >= 240 and width > height
    assert {rgb for _name, rgb in DEEP_GREY_MATTER_SEGMENTS} & colours


def test_existing_outputs_are_kept_without_force(known, capsys):
    root = known["root"]
    before = (root / "seg" / "labels.nii.gz").stat().st_mtime_ns
    status = cli.main(["segment", "--chi", str(root / "chi.nii.gz"), "--atlas", str(known["template"]),
                       "--out", str(root / "seg")])
    assert status == cli.EXIT_INPUT_ERROR and "add --force" in capsys.readouterr().err
    assert (root / "seg" / "labels.nii.gz").stat().st_mtime_ns == before


def test_magnitude_alone_uses_mutual_information_and_a_bspline(known):
    """Without a susceptibility map the metric is Mattes MI and the deformable stage a B-spline.

    GRE magnitude shows the deep grey matter only faintly: with this 1 mm
    template the mean Dice is 0.83 (measured; with the 2 mm template the affine
    alone gives 0.78 and the B-spline 0.76), against 0.93 from susceptibility.
    The check here is that the path works and stays near that.
    """
    template = load_template(known["template"])
    subject = known["subject"]
    result = register_template({"magnitude": subject["magnitude"]}, subject["affine"],
                               {"magnitude": template.images["magnitude"]}, template.affine, template.labels,
                               subject_mask=subject["mask"], template_mask=template.mask)
    assert [s["metric"] for s in result.stages] == ["mattes"] * 3 and result.stages[2]["method"] == "bspline"
    assert result.quality["similarity"]["metric"] == "normalised mutual information"
    dices = [dice(result.labels == v, subject["truth"] == v) for v in template.table]
    print("magnitude only: mean Dice", round(float(np.mean(dices)), 3))
    assert np.mean(dices) >= 0.7


# --- failures are detected, never accepted --------------------------------------------------------------

def test_a_template_of_another_body_part_is_refused_naming_the_checks(known, tmp_path, capsys):
    leg, leg_labels = other_body_part(2.0, with_labels=True)
    images = head_model_images(leg)
    subject = known["subject"]
    with pytest.raises(RegistrationFailed) as failure:
        register_template({"susceptibility": subject["chi"], "magnitude": subject["magnitude"]}, subject["affine"],
                          images, leg.affine, leg_labels, subject_mask=subject["mask"], template_mask=leg.brain_mask)
    message = str(failure.value)
    print(message)
    problems = failure.value.quality["problems"]
    assert problems and message.startswith("atlas registration failed: ") and "\n" not in message
    assert all(problem in message for problem in problems)
    # through the command line: exit status 2, the same message, nothing written
    folder = tmp_path / "leg-template"
    folder.mkdir()
    save_nifti(folder / "template_chi.nii.gz", images["susceptibility"], leg.affine)
    save_nifti(folder / "template_magnitude.nii.gz", images["magnitude"], leg.affine)
    save_nifti(folder / "labels.nii.gz", leg_labels, leg.affine, dtype=np.uint8)
    (folder / "labels.tsv").write_text("index\tname\n" + "".join(
        f"{n}\t{name}\n" for n, (name, _rgb) in enumerate(DEEP_GREY_MATTER_SEGMENTS, start=1)))
    root = known["root"]
    status = cli.main(["segment", "--chi", str(root / "chi.nii.gz"), "--mag", str(root / "mag.nii.gz"),
                       "--atlas", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == cli.EXIT_INPUT_ERROR and "qsm: error: atlas registration failed: " in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_check_registration_flags_an_implausible_affine_and_vanished_labels(known):
    """The checks themselves, on registrations forced wrong: a template magnified twice, one moved away."""
    import SimpleITK as sitk

    from qsmlib.atlas.registration import check_registration

    template = load_template(known["template"])
    subject = known["subject"]

    def checked(transform):
        labels = warp_labels(template.labels, template.affine, transform, subject["chi"].shape, subject["affine"])
        warped = array_from_image(sitk.Resample(
            image_from_array(template.images["susceptibility"], template.affine),
            image_from_array(subject["chi"], subject["affine"]), transform))
        return check_registration(transform, None, template.labels, template.affine, labels, subject["affine"],
                                  subject_mask=subject["mask"], subject_image=subject["chi"], warped_template=warped,
                                  metric="correlation", label_names=template.label_names())

    magnify = sitk.AffineTransform(3)
    magnify.SetMatrix([0.5, 0, 0, 0, 0.5, 0, 0, 0, 0.5])  # subject points -> template points at half the distance
    quality = checked(magnify)
    text = "; ".join(quality["problems"])
    assert quality["determinant"] == pytest.approx(0.125) and quality["determinant"] < DETERMINANT_RANGE[0]
    assert "implausible affine: determinant 0.1" in text and "low final similarity: correlation" in text
    away = sitk.AffineTransform(3)
    away.SetTranslation([200.0, 0.0, 0.0])  # the template's nuclei land outside the subject's field of view
    quality = checked(away)
    assert quality["determinant"] == pytest.approx(1.0)
    assert f"{', '.join(info.name for info in template.table.values())} vanished on the subject grid" in \
        quality["problems"]


def test_cancel_from_progress_stops_the_registration(known):
    template = load_template(known["template"])
    subject = known["subject"]
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if stage == "atlas deformable":
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        register_template({"susceptibility": subject["chi"]}, subject["affine"], template.images, template.affine,
                          template.labels, template_mask=template.mask,
                          options=RegistrationOptions(iterations=20, demons_iterations=(5, 5, 5)), progress=progress)
    assert seen[0] == "atlas rigid" and seen[-1] == "atlas deformable"
    assert "atlas labels" not in seen
