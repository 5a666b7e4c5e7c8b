"""qsm web's BIDS and DICOM inputs, without a browser.

BIDS datasets are written by ``qsmlib.io.write_megre`` and DICOM series by
``dicom_fixtures`` (the suite's vendor-conformant writers); the web app reads
them through ``qsm run``'s readers, inside ``--data`` only.
"""

import numpy as np
import pytest

import dicom_fixtures as fixtures
from qsmlib.errors import QSMInputError
from qsmlib.io import megre_names, write_megre
from qsmlib.phase import wrap_to_pi
from qsmlib.web import inputs
from qsmlib.web.data_folder import DataFolder, DataFolderError

SHAPE = (6, 5, 4)
#: (subject, session) -> (echo times in s, field strength in T) of the dataset below.
SERIES = {("01", None): ([0.005, 0.010, 0.015], 3.0), ("02", "a"): ([0.004, 0.009], 7.0),
          ("02", "b"): ([0.003, 0.006, 0.009, 0.012], 1.5)}


def _arrays(n_echoes, seed):
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(50, 100, SHAPE + (n_echoes,)).astype(np.float32)
    phase = rng.uniform(-3.0, 3.0, SHAPE + (n_echoes,)).astype(np.float32)
    return magnitude, phase


def _write_bids(root):
    """The dataset of SERIES at ``root``; returns (subject, session) -> (magnitude, phase) written."""
    written = {}
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    for seed, ((subject, session), (te_s, b0_t)) in enumerate(SERIES.items()):
        magnitude, phase = _arrays(len(te_s), seed)

        def path_for(name, root=root):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            return path

        assert megre_names(subject, len(te_s), session)
        write_megre(path_for, subject, magnitude, phase, te_s, b0_t, affine, session=session)
        written[(subject, session)] = (magnitude, phase)
    return written


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def test_bids_datasets_subjects_and_sessions_are_offered_from_the_folder(data):
    _write_bids(data / "study")
    (data / "notes").mkdir()
    (data / ".hidden" / "sub-x").mkdir(parents=True)
    folder = DataFolder(data)
    assert inputs.bids_datasets(folder) == ["study"]
    assert inputs.bids_subjects(folder, "study") == ["01", "02"]
    assert inputs.bids_sessions(folder, "study", "01") == []
    assert inputs.bids_sessions(folder, "study", "02") == ["a", "b"]
    # names that lead nowhere offer nothing (no error while the boxes are filled)
    assert inputs.bids_subjects(folder, "../..") == [] and inputs.bids_subjects(folder, "missing") == []
    assert inputs.bids_sessions(folder, "study", None) == []


@pytest.mark.parametrize("subject, session", list(SERIES))
def test_a_bids_subject_loads_with_its_sidecars_values(data, subject, session):
    written = _write_bids(data / "study")
    loaded, found = inputs.load_bids(DataFolder(data), "study", subject, session)
    te_s, b0_t = SERIES[(subject, session)]
    assert [float(t) for t in loaded.te_s] == te_s
    assert loaded.b0_t == b0_t
    assert (found["subject"], found["session"]) == (subject, session)
    magnitude, phase = written[(subject, session)]
    np.testing.assert_allclose(loaded.magnitude, magnitude, rtol=1e-6)
    assert np.abs(wrap_to_pi(loaded.phase - phase)).max() < 1e-5
    np.testing.assert_allclose(loaded.affine, np.diag([1.0, 1.5, 2.0, 1.0]))


def test_a_dataset_at_the_top_of_the_data_folder_is_offered_as_dot(data):
    _write_bids(data)
    folder = DataFolder(data)
    assert inputs.bids_datasets(folder) == ["."]
    loaded, _found = inputs.load_bids(folder, ".", "01")
    assert loaded.magnitude.shape == SHAPE + (3,)


def test_bids_errors_name_the_dataset_and_the_fix(data):
    _write_bids(data / "study")
    folder = DataFolder(data)
    # the fixes name what the panel offers, not qsm run's options
    with pytest.raises(QSMInputError, match=r"^BIDS dataset study: .*holds 2 subjects .*choose one in the Subject box"):
        inputs.load_bids(folder, "study", None)
    with pytest.raises(QSMInputError, match=r"^BIDS dataset study: .*several MEGRE series for sub-02 .*; choose one "
                                            r"in the Session box, or load the magnitude and phase as NIfTI files$"):
        inputs.load_bids(folder, "study", "02")
    for echo in (1, 2, 3):
        sidecar = data / "study" / "sub-01" / "anat" / f"sub-01_echo-{echo}_part-mag_MEGRE.json"
        sidecar.write_text(sidecar.read_text().replace('"MagneticFieldStrength"', '"FieldStrength"'))
    with pytest.raises(QSMInputError, match=r"^BIDS dataset study: .*MagneticFieldStrength is missing .*; add "
                                            r"MagneticFieldStrength \(T\) to the sidecars, or load the images as "
                                            r"NIfTI files and type the field strength$"):
        inputs.load_bids(folder, "study", "01")
    with pytest.raises(DataFolderError, match=r"^BIDS subject folder study/sub-03: no such folder"):
        inputs.load_bids(folder, "study", "03")
    (data / "study" / "sub-01" / "anat" / "sub-01_echo-2_part-mag_MEGRE.json").write_text('{"EchoTime": "soon"}')
    with pytest.raises(QSMInputError, match=r"^BIDS dataset study: .*sub-01_echo-2_part-mag_MEGRE.json.*EchoTime"):
        inputs.load_bids(folder, "study", "01")


def test_bids_folders_that_leave_the_data_folder_are_refused(data, tmp_path):
    _write_bids(tmp_path / "outside")
    (data / "linked-study").symlink_to(tmp_path / "outside")
    folder = DataFolder(data)
    assert inputs.bids_datasets(folder) == []  # links to folders are not offered
    with pytest.raises(DataFolderError, match=r"^BIDS dataset linked-study: leads to .*outside, outside the data"):
        inputs.load_bids(folder, "linked-study", "01")
    with pytest.raises(DataFolderError, match="outside the data folder"):
        inputs.load_bids(folder, "../outside", "01")
    # a dataset inside whose subject holds a link to a file outside: refused before anything is read
    _write_bids(data / "study")
    anat = data / "study" / "sub-01" / "anat"
    sidecar = anat / "sub-01_echo-1_part-mag_MEGRE.json"
    sidecar.unlink()
    sidecar.symlink_to(tmp_path / "outside" / "sub-01" / "anat" / sidecar.name)
    with pytest.raises(DataFolderError, match=r"^BIDS subject folder study/sub-01: "
                                              r"study/sub-01/anat/sub-01_echo-1_part-mag_MEGRE.json leads to "):
        inputs.load_bids(folder, "study", "01")


@pytest.fixture(scope="module")
def siemens(tmp_path_factory):
    data = tmp_path_factory.mktemp("web-dicom")
    return data, fixtures.write_siemens(data / "scans" / "gre")


def test_a_dicom_folder_loads_with_the_echo_times_and_field_of_its_attributes(siemens):
    data, fixture = siemens
    folder = DataFolder(data)
    assert "scans/gre" in folder.folders()
    loaded = inputs.load_dicom_folder(folder, "scans/gre")
    np.testing.assert_allclose(loaded.te_s, fixtures.TE_S, rtol=1e-9)
    assert loaded.b0_t == fixtures.B0_T
    np.testing.assert_allclose(loaded.magnitude, fixture["magnitude"], rtol=1e-6)
    assert np.abs(wrap_to_pi(loaded.phase - fixture["phase"])).max() < 1e-5
    np.testing.assert_allclose(loaded.affine, fixture["affine"], atol=1e-6)
    assert loaded.sources["dicom_series"]
    # the parent folder holds the same series
    assert inputs.load_dicom_folder(folder, "scans").magnitude.shape == fixture["magnitude"].shape


def test_dicom_folders_that_leave_the_data_folder_or_hold_no_series_are_refused(siemens, tmp_path):
    outside, _fixture = siemens
    data = tmp_path / "data"
    (data / "empty").mkdir(parents=True)
    (data / "empty" / "notes.txt").write_text("not DICOM")
    (data / "link").symlink_to(outside / "scans" / "gre")
    (data / "mixed").mkdir()
    (data / "mixed" / "one.dcm").symlink_to(next((outside / "scans" / "gre").iterdir()))
    folder = DataFolder(data)
    assert "link" not in folder.folders()
    with pytest.raises(DataFolderError, match=r"^DICOM folder link: leads to .*gre, outside the data folder"):
        inputs.load_dicom_folder(folder, "link")
    with pytest.raises(DataFolderError, match=r"^DICOM folder mixed: mixed/one.dcm leads to .*outside the data"):
        inputs.load_dicom_folder(folder, "mixed")
    with pytest.raises(DataFolderError, match=r"^DICOM folder /etc: is an absolute path"):
        inputs.load_dicom_folder(folder, "/etc")
    with pytest.raises(QSMInputError, match=r"^DICOM folder empty: .*notes.txt: holds no DICOM images"):
        inputs.load_dicom_folder(folder, "empty")
    with pytest.raises(DataFolderError, match=r"^DICOM folder empty/notes.txt: is a file, not a folder"):
        inputs.load_dicom_folder(folder, "empty/notes.txt")


def test_a_dicom_folder_without_field_strength_names_the_conversion_that_fixes_it(siemens, tmp_path):
    import pydicom

    source, _fixture = siemens
    data = tmp_path / "data"
    (data / "nob0").mkdir(parents=True)
    for path in sorted((source / "scans" / "gre").iterdir()):
        ds = pydicom.dcmread(str(path))
        del ds.MagneticFieldStrength
        ds.save_as(str(data / "nob0" / path.name))
    with pytest.raises(QSMInputError, match=r"^DICOM folder nob0: .*has no MagneticFieldStrength; convert the folder "
                                            r"with qsm dicom2bids --b0 T into the data folder and load that BIDS "
                                            r"subject$"):
        inputs.load_dicom_folder(DataFolder(data), "nob0")


def test_a_brain_mask_file_is_read_on_the_grid_with_the_browsers_fixes(tmp_path):
    from qsmlib.io import save_nifti

    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 1:3, 1:3] = 1
    save_nifti(tmp_path / "mask.nii.gz", mask, affine, dtype=np.uint8)
    save_nifti(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8), affine, dtype=np.uint8)
    folder = DataFolder(tmp_path)
    np.testing.assert_array_equal(inputs.load_mask_file(folder, "mask.nii.gz", SHAPE, affine), mask.astype(bool))
    with pytest.raises(QSMInputError) as empty:
        inputs.load_mask_file(folder, "empty.nii.gz", SHAPE, affine)
    assert str(empty.value) == ("brain mask empty.nii.gz: the mask is empty (no voxel is set); give a mask that "
                                "covers the brain, or clear the Brain mask box to compute one")
    with pytest.raises(QSMInputError, match=r"^brain mask mask.nii.gz: the mask's affine differs from the data's"):
        inputs.load_mask_file(folder, "mask.nii.gz", SHAPE, np.eye(4))
    with pytest.raises(DataFolderError, match="outside the data folder"):
        inputs.load_mask_file(folder, "../mask.nii.gz", SHAPE, affine)
