"""Write a susceptibility map as a derived DICOM MR series in register with its source.

The map becomes a new series of the source study: new SeriesInstanceUID and
SOPInstanceUIDs, patient, study, frame of reference and equipment attributes
copied from the source, ImageType DERIVED\\SECONDARY, a SeriesDescription
naming QSM and ppm, signed 16-bit values with RescaleSlope and
RescaleIntercept that map back to ppm within half a step (0.0005 ppm or less),
and a window of centre 0 and width 0.3 ppm. Slices carry the geometry of the
source grid, so viewers show the map in register with the source.
"""

import datetime

import numpy as np

from .. import __version__
from ..errors import QSMInputError
from .dicom import LPS_TO_RAS, DicomGRE, _pydicom, collect_series, write_file

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Largest rescale step (ppm per stored unit): the round trip stays within half of it.
MAX_STEP_PPM = 0.001
WINDOW_CENTER_PPM = 0.0
WINDOW_WIDTH_PPM = 0.3
_INT16_MAX = 32767

_COPIED = (
    # Patient
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize", "IssuerOfPatientID", "OtherPatientIDs",
    # Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
    # Frame of reference and equipment
    "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer", "InstitutionName", "StationName",
    "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
    # MR acquisition (type 1/2 attributes of the MR Image module)
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTrainLength", "MagneticFieldStrength", "SliceThickness", "SpacingBetweenSlices", "FlipAngle",
    "ImagingFrequency", "ImagedNucleus", "PatientPosition", "BodyPartExamined", "Laterality",
)


def series_file_names(n_slices):
    """Relative names of the files :func:`write_qsm_series` writes, one per slice."""
    return [f"QSM_{k + 1:04d}.dcm" for k in range(n_slices)]


def rescale_step(chi_ppm):
    """Rescale slope (ppm per stored unit) for ``chi_ppm`` in signed 16-bit integers.

    The finest step of the form 10^-n (or 2 or 5 times it) that holds the
    largest magnitude; refuses maps that would need a step over
    :data:`MAX_STEP_PPM`.
    """
    peak = float(np.max(np.abs(chi_ppm))) if chi_ppm.size else 0.0
    for step in (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, MAX_STEP_PPM):
        if peak / step <= _INT16_MAX - 1:
            return step
    raise QSMInputError(f"susceptibility map: values up to {peak:.1f} ppm cannot be stored to 0.001 ppm in "
                        "16 bits; check the map's units (ppm expected)")


#: SeriesDescription is a DICOM LO (long string): at most 64 characters, no backslash or control character.
MAX_DESCRIPTION_CHARS = 64


def check_series_description(text, *, name="--description"):
    """Refuse a SeriesDescription that would make a non-conformant DICOM field, or that hides the unit.

    Returns
    -------
    str
        ``text``.
    """
    text = str(text)
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise QSMInputError(f"{name}: {len(text)} characters; DICOM's SeriesDescription holds at most "
                            f"{MAX_DESCRIPTION_CHARS}: shorten it")
    if "\\" in text or any(ord(c) < 32 for c in text):
        raise QSMInputError(f"{name} {text!r}: a backslash or a control character cannot go into a DICOM "
                            "SeriesDescription; remove it")
    if "qsm" not in text.lower() or "ppm" not in text.lower():
        raise QSMInputError(f"{name} {text!r}: must say QSM and ppm")
    return text


def write_qsm_series(path_for, chi_ppm, affine, reference, *, series_description="QSM susceptibility (ppm)",
                     series_number=None):
    """Write ``chi_ppm`` as a derived MR series beside the ``reference`` series.

    Parameters
    ----------
    path_for : callable
        Maps each relative name of :func:`series_file_names` to the path to write
        (an :class:`~qsmlib.io.output.OutputDirectory`'s ``path``).
    chi_ppm : ndarray (X, Y, Z)
        Susceptibility in ppm on the reference grid (column, row, slice order).
    affine : ndarray (4, 4)
        RAS affine of ``chi_ppm``; must match the reference grid.
    reference : path, list of path, or DicomGRE
        The source DICOM series (folder or files), or it already collected
        (:func:`~qsmlib.io.dicom.collect_series`).
    series_description : str
        Must say QSM and the unit, in at most 64 characters (:func:`check_series_description`).
    series_number : int, optional
        Default: the reference's SeriesNumber + 1000.

    Returns
    -------
    dict
        ``names`` (files written), ``series_instance_uid``, ``rescale_slope``.
    """
    check_series_description(series_description, name="series_description")
    _pydicom()  # a clear error when pydicom is missing
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    chi = np.asarray(chi_ppm, dtype=np.float64)
    if chi.ndim == 4 and chi.shape[3] == 1:
        chi = chi[..., 0]
    if chi.ndim != 3:
        raise QSMInputError(f"susceptibility map: shape {chi.shape} is not a 3D volume")
    if not np.all(np.isfinite(chi)):
        raise QSMInputError("susceptibility map: holds NaN or infinite values; replace them with 0")
    gre = reference if isinstance(reference, DicomGRE) else collect_series(reference, require_parts=False)
    name = gre.series[0]
    if tuple(chi.shape) != gre.shape:
        raise QSMInputError(f"susceptibility map: shape {chi.shape} differs from the reference {name} grid "
                            f"{gre.shape}; export only maps computed from this series")
    if not np.allclose(np.asarray(affine, dtype=np.float64), gre.affine, atol=1e-3):
        raise QSMInputError(f"susceptibility map: its affine differs from the reference {name} geometry; "
                            "export only maps on the grid of the source series")
    slices = gre.reference_slices()
    step = rescale_step(chi)
    stored = np.round(chi / step).astype(np.int16)
    lps = np.linalg.inv(LPS_TO_RAS) @ gre.affine
    series_uid = generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    first = slices[0]
    number = series_number if series_number is not None else int(first.get("SeriesNumber", 0) or 0) + 1000
    names = series_file_names(chi.shape[2])
    for k, (source, file_name) in enumerate(zip(slices, names)):
        ds = Dataset()
        for keyword in _COPIED:
            if keyword in source:
                setattr(ds, keyword, source.data_element(keyword).value)
        sop_uid = generate_uid()
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = series_description
        ds.Modality = "MR"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER", "QSM"]
        ds.DerivationDescription = f"Quantitative susceptibility map in ppm, QSMLib {__version__}"
        ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
        ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
        ds.InstanceNumber = k + 1
        ds.ImagesInAcquisition = chi.shape[2]
        ds.EchoTime = float(source.get("EchoTime") or 0.0)
        for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
                        "RepetitionTime", "EchoTrainLength", "PatientName", "PatientID", "PatientBirthDate",
                        "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                        "ReferringPhysicianName", "PositionReferenceIndicator", "Manufacturer", "Laterality",
                        "PatientPosition"):
            if keyword not in ds:
                setattr(ds, keyword, {"ScanningSequence": "GR", "SequenceVariant": "NONE", "MRAcquisitionType":
                                      "3D", "ScanOptions": ""}.get(keyword, ""))
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        row = lps[:3, 0] / np.linalg.norm(lps[:3, 0])
        col = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row, col])]
        ds.PixelSpacing = [_ds(np.linalg.norm(lps[:3, 1])), _ds(np.linalg.norm(lps[:3, 0]))]
        slice_step = float(np.linalg.norm(lps[:3, 2]))
        if "SliceThickness" not in ds:
            ds.SliceThickness = _ds(slice_step)
        ds.SpacingBetweenSlices = _ds(slice_step)
        ds.SliceLocation = _ds(float(np.dot(position[:3], np.cross(row, col))))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(chi.shape[1]), int(chi.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = _ds(step)
        ds.RescaleIntercept = "0"
        ds.RescaleType = "PPM"
        ds.WindowCenter = _ds(WINDOW_CENTER_PPM)
        ds.WindowWidth = _ds(WINDOW_WIDTH_PPM)
        ds.WindowCenterWidthExplanation = "susceptibility ppm"
        ds.VOILUTFunction = "LINEAR_EXACT"  # a width under 1 is valid only with LINEAR_EXACT
        ds.LossyImageCompression = "00"
        derivation = Dataset()
        derivation.ReferencedSOPClassUID = source.SOPClassUID
        derivation.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [derivation]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        write_file(path_for(file_name), ds)
    return {"names": names, "series_instance_uid": series_uid, "rescale_slope": step}


def _ds(value):
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    value = float(value)
    if abs(value) < 1e-10:
        return "0"
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"
