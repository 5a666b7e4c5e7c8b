"""DICOM in and out: vendor phase conventions, geometry, clear errors, and export round trip."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

import dicom_fixtures as fixtures
from qsmlib.cli import main
from qsmlib.dipole import b0_direction_from_affine
from qsmlib.errors import QSMInputError
from qsmlib.io import find_megre, load_multi_echo, load_nifti, save_nifti
from qsmlib.io.dicom import load_dicom, load_dicom_volume
from qsmlib.phase import wrap_to_pi

WRITERS = {"siemens": fixtures.write_siemens, "philips": fixtures.write_philips, "ge": fixtures.write_ge}
EXPECTED_CONVERSION = {"siemens": "Siemens 12-bit phase", "philips": "Philips phase: floating-point value",
                       "ge": "GE real and imaginary images"}


@pytest.fixture(scope="module")
def vendor_series(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    return {name: write(root / name) for name, write in WRITERS.items()}


@pytest.mark.parametrize("vendor", sorted(WRITERS))
def test_reader_recovers_the_encoded_arrays(vendor_series, vendor):
    fixture = vendor_series[vendor]
    data = load_dicom(fixture["folder"])
    np.testing.assert_allclose(data.magnitude, fixture["magnitude"], rtol=1e-6)
    assert np.abs(wrap_to_pi(data.phase - fixture["phase"])).max() < 1e-5
    np.testing.assert_allclose(data.affine, fixture["affine"], atol=1e-6)
    np.testing.assert_allclose(data.te_s, fixtures.TE_S, rtol=1e-9)
    assert data.b0_t == fixtures.B0_T
    assert data.phase_scaling["detected"].startswith(EXPECTED_CONVERSION[vendor])
    # The phase carries the simulated field: it matches the simulation to quantisation.
    sim = fixture["sim"]
    inside = sim.brain_mask
    error = np.abs(wrap_to_pi(data.phase[inside] - sim.phase[inside]))
    assert np.percentile(error, 99) < 2 * np.pi / 4096 * 1.01 + 2e-3


def _run(args, capsys):
    code = main(["-q"] + [str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("vendor", sorted(WRITERS))
def test_run_dicom_equals_run_on_equivalent_nifti(vendor_series, vendor, tmp_path, capsys):
    fixture = vendor_series[vendor]
    mag, phase = fixtures.write_equivalent_nifti(fixture, tmp_path / "nifti")
    # The fast preset is direct (no iterative solver whose stopping point could amplify the
    # float32 rounding of the two readers), so the maps must agree to 1e-4 ppm.
    code, err = _run(["run", "--dicom", fixture["folder"], "--out", tmp_path / "from_dicom", "--preset", "fast"],
                     capsys)
    assert code == 0, err
    te = [str(t) for t in fixtures.TE_S]
    code, err = _run(["run", "--mag", mag, "--phase", phase, "--te", *te, "--b0", fixtures.B0_T,
                      "--out", tmp_path / "from_nifti", "--preset", "fast"], capsys)
    assert code == 0, err
    chi_dicom, affine_dicom = load_nifti(tmp_path / "from_dicom" / "chi.nii.gz")
    chi_nifti, affine_nifti = load_nifti(tmp_path / "from_nifti" / "chi.nii.gz")
    np.testing.assert_allclose(affine_dicom, affine_nifti, atol=1e-5)
    assert np.abs(chi_nifti).max() > 0.05
    np.testing.assert_allclose(chi_dicom, chi_nifti, atol=1e-4)
    provenance = json.loads((tmp_path / "from_dicom" / "provenance.json").read_text())
    assert provenance["detected"]["phase_scaling"]["detected"].startswith(EXPECTED_CONVERSION[vendor])
    assert provenance["inputs"]["echo_times_s"] == pytest.approx(list(fixtures.TE_S))
    assert provenance["inputs"]["dicom_series"]


def test_oblique_series_gives_the_b0_direction(tmp_path):
    fixture = fixtures.write_siemens(tmp_path / "oblique", b0_dir=fixtures.OBLIQUE_B0_DIR)
    data = load_dicom(fixture["folder"])
    expected = np.asarray(fixtures.OBLIQUE_B0_DIR) / np.linalg.norm(fixtures.OBLIQUE_B0_DIR)
    np.testing.assert_allclose(b0_direction_from_affine(data.affine), expected, atol=1e-6)
    # Independently of the affine: B0 is the patient z axis (LPS), so its voxel
    # components are the z cosines of the row, column and slice directions.
    ds = pydicom.dcmread(next(p for p in fixture["folder"].iterdir()), stop_before_pixels=True)
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    assert 0.1 < abs(iop[5]) < 0.9  # the columns really are tilted against the axes
    from_header = np.array([iop[2], iop[5], np.cross(iop[:3], iop[3:])[2]])
    np.testing.assert_allclose(from_header / np.linalg.norm(from_header), expected, atol=1e-6)
    np.testing.assert_allclose(data.affine, fixture["affine"], atol=1e-5)


def test_missing_slice_is_named(tmp_path, capsys):
    fixture = fixtures.write_siemens(tmp_path / "gap", drop_slice=20)
    with pytest.raises(QSMInputError, match=r"gre_qsm_\w+.*missing slice: 1 slice\(s\) absent between positions"):
        load_dicom(fixture["folder"])
    code, err = _run(["run", "--dicom", fixture["folder"], "--out", tmp_path / "out"], capsys)
    assert code == 2 and "missing slice" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_slice_missing_from_one_echo_is_named(tmp_path):
    fixture = fixtures.write_siemens(tmp_path / "gap_echo", drop_slice=7, drop_echo_part=(1, "phase"))
    with pytest.raises(QSMInputError, match=r"missing slice: phase echo 2 \(TE 12 ms\) has 67 slices but the "
                                            r"series has 68"):
        load_dicom(fixture["folder"])


def test_mixed_series_are_named(tmp_path):
    fixture = fixtures.write_siemens(tmp_path / "mixed", duplicate_magnitude=True)
    with pytest.raises(QSMInputError, match=r"mixed series: series \d 'gre_qsm_mag(_repeat)?' .* and series \d "
                                            r"'gre_qsm_mag(_repeat)?' .* both hold magnitude"):
        load_dicom(fixture["folder"])


def test_inconsistent_echo_counts_are_named(tmp_path):
    fixture = fixtures.write_siemens(tmp_path / "echoes")
    removed = 0
    for path in fixture["folder"].iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SeriesDescription == "gre_qsm_pha" and float(ds.EchoTime) == 20.0:
            path.unlink()
            removed += 1
    assert removed == 68
    with pytest.raises(QSMInputError, match=r"inconsistent echo counts: phase has 2 echoes \(TE 4, 12 ms\)"):
        load_dicom(fixture["folder"])


def test_dicom2bids_writes_what_run_bids_reads(vendor_series, tmp_path, capsys):
    fixture = vendor_series["philips"]
    code, err = _run(["dicom2bids", fixture["folder"], "--out", tmp_path / "bids", "--subject", "p01"], capsys)
    assert code == 0, err
    found = find_megre(tmp_path / "bids")
    assert found["subject"] == "p01" and found["b0_t"] == fixtures.B0_T
    np.testing.assert_allclose(found["te_s"], fixtures.TE_S)
    data = load_multi_echo(found["magnitude"], found["phase"], found["te_s"], found["b0_t"])
    np.testing.assert_allclose(data.magnitude, fixture["magnitude"], rtol=1e-6)
    assert np.abs(wrap_to_pi(data.phase - fixture["phase"])).max() < 1e-5
    np.testing.assert_allclose(data.affine, fixture["affine"], atol=1e-5)


REQUIRED_TYPE1 = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                  "Modality", "ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                  "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                  "SamplesPerPixel", "PhotometricInterpretation", "ScanningSequence", "SequenceVariant",
                  "MRAcquisitionType", "PixelData", "InstanceNumber", "SeriesNumber")
REQUIRED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber", "Manufacturer", "Laterality",
                  "PatientPosition", "PositionReferenceIndicator", "ScanOptions", "RepetitionTime", "EchoTime",
                  "EchoTrainLength", "SliceThickness")


def test_export_round_trips_values_and_geometry(vendor_series, tmp_path, capsys):
    fixture = vendor_series["siemens"]
    sim = fixture["sim"]
    rng = np.random.default_rng(5)
    chi = (sim.chi_ppm + rng.normal(0, 0.02, sim.chi_ppm.shape)).astype(np.float32)
    chi[10, 10, 10], chi[11, 10, 10] = 2.7, -1.3
    save_nifti(tmp_path / "chi.nii.gz", chi, fixture["affine"])
    code, err = _run(["export-dicom", tmp_path / "chi.nii.gz", "--reference", fixture["folder"],
                      "--out", tmp_path / "export"], capsys)
    assert code == 0, err

    values, affine = load_dicom_volume(tmp_path / "export")
    assert np.abs(values - chi).max() <= 0.0005 + 1e-6
    np.testing.assert_allclose(affine, fixture["affine"], atol=1e-5)

    reference = {}
    for path in fixture["folder"].iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SeriesDescription == "gre_qsm_mag" and float(ds.EchoTime) == 4.0:
            reference[round(float(ds.ImagePositionPatient[2]), 3)] = ds
    exported = sorted((tmp_path / "export").iterdir())
    assert len(exported) == len(reference) == chi.shape[2]
    series_uids, sop_uids = set(), set()
    for path in exported:
        ds = pydicom.dcmread(path)  # every file validates with pydicom
        for keyword in REQUIRED_TYPE1:
            assert keyword in ds and ds.data_element(keyword).value not in (None, ""), keyword
        for keyword in REQUIRED_TYPE2:
            assert keyword in ds, keyword
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        source = reference[round(float(ds.ImagePositionPatient[2]), 3)]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                                   [float(v) for v in source.ImageOrientationPatient], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in source.PixelSpacing])
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                        "AccessionNumber", "FrameOfReferenceUID"):
            assert ds.data_element(keyword).value == source.data_element(keyword).value
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert "QSM" in ds.SeriesDescription and "ppm" in ds.SeriesDescription
        assert float(ds.WindowCenter) == 0.0 and float(ds.WindowWidth) == 0.3
        assert ds.VOILUTFunction == "LINEAR_EXACT"
        assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
        assert float(ds.RescaleSlope) <= 0.001 and float(ds.RescaleIntercept) == 0.0
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        series_uids.add(ds.SeriesInstanceUID)
        sop_uids.add(ds.SOPInstanceUID)
    assert len(series_uids) == 1 and len(sop_uids) == len(exported)


def test_export_validates_with_dciodvfy_where_installed(vendor_series, tmp_path, capsys):
    """dciodvfy (Debian dicom3tools) must report no error where it exists; otherwise
    check the attributes it flags on MR images (type 1 present and non-empty, type 2
    present, window width under 1 only with LINEAR_EXACT) ourselves."""
    fixture = vendor_series["ge"]
    save_nifti(tmp_path / "chi.nii.gz", fixture["sim"].chi_ppm, fixture["affine"])
    code, err = _run(["export-dicom", tmp_path / "chi.nii.gz", "--reference", fixture["folder"],
                      "--out", tmp_path / "export"], capsys)
    assert code == 0, err
    files = sorted((tmp_path / "export").iterdir())
    tool = shutil.which("dciodvfy")
    if tool:
        for path in files[:: max(1, len(files) // 6)]:
            report = subprocess.run([tool, str(path)], capture_output=True, text=True)
            errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], f"{path.name}: {errors}"
            assert "MRImage" in report.stdout + report.stderr
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        for keyword in REQUIRED_TYPE1:
            assert keyword in ds and ds.data_element(keyword).value not in (None, ""), keyword
        for keyword in REQUIRED_TYPE2:
            assert keyword in ds, keyword
        assert float(ds.WindowWidth) >= 1 or ds.VOILUTFunction == "LINEAR_EXACT"
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2


def test_export_refuses_a_map_off_the_reference_grid(vendor_series, tmp_path, capsys):
    fixture = vendor_series["siemens"]
    shifted = np.array(fixture["affine"], dtype=np.float64)
    shifted[0, 3] += 1.5
    save_nifti(tmp_path / "chi.nii.gz", fixture["sim"].chi_ppm, shifted)
    code, err = _run(["export-dicom", tmp_path / "chi.nii.gz", "--reference", fixture["folder"],
                      "--out", tmp_path / "export"], capsys)
    assert code == 2 and "affine differs from the reference" in err
    assert not (tmp_path / "export").exists()


def test_qsmlib_io_imports_without_pydicom():
    code = ("import sys; sys.modules['pydicom'] = None\n"
            "import qsmlib.io, qsmlib.io.dicom, qsmlib.io.dicom_export\n"
            "from qsmlib.errors import QSMInputError\n"
            "try:\n    qsmlib.io.dicom.load_dicom('.')\nexcept QSMInputError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install pydicom" in out
