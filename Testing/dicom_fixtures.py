"""DICOM test series built from the simulated head, following each vendor's published conventions.

- Siemens: magnitude and phase in two series (ImageType ...\\M\\... and ...\\P\\...);
  phase stored as 12-bit unsigned integers 0..4095 with RescaleSlope 2 and
  RescaleIntercept -4096, so that (stored * 2 - 4096) * pi / 4096 is radians.
- Philips: one series; ImageType M_FFE\\M and PHASE MAP\\P; the private Scale
  Slope SS (2005,100E) with RescaleSlope RS and RescaleIntercept RI so that the
  floating-point value FP = (SV * RS + RI) / (RS * SS) is the magnitude, and
  the phase in radians (its displayed value SV * RS + RI is in mrad).
- GE: real and imaginary images only, signed 16-bit, told apart by the private
  image type (0043,102F) = 2 (real) or 3 (imaginary), ImageType ORIGINAL\\PRIMARY\\OTHER.

Every writer returns the arrays the series encode, exactly as a NIfTI export
would hold them (magnitude, phase in radians, RAS affine), so tests can run the
same reconstruction from DICOM and from NIfTI. Files get random names, so the
reader must sort them itself.
"""

import functools
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from qsmlib.io import save_nifti
from qsmlib.io.dicom import LPS_TO_RAS, write_file
from qsmlib.simulation import load_head_phantom, simulate_gre

VOXEL_MM = 3.0
TE_S = (0.004, 0.012, 0.020)
B0_T = 3.0
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
OBLIQUE_B0_DIR = (0.0, 0.34, 0.94)


@functools.lru_cache(maxsize=4)
def simulated(b0_dir=None):
    """The simulated head at 3 mm, 3 echoes, 3 T (cached)."""
    return simulate_gre(load_head_phantom(VOXEL_MM), b0_t=B0_T, te_s=TE_S, snr=100.0, b0_dir=b0_dir, seed=3)


def _ds_string(value):
    return f"{float(value):.10g}"[:16]


class _Writer:
    """Writes slices of one study with shared patient, study and frame of reference attributes."""

    def __init__(self, folder, affine, manufacturer, seed=0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
        self.manufacturer = manufacturer
        self.study_uid = generate_uid()
        self.frame_uid = generate_uid()
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def series(self, number, description):
        return {"SeriesInstanceUID": generate_uid(), "SeriesNumber": number, "SeriesDescription": description}

    def write(self, series, stored_slice, k, echo, *, image_type, signed=False, bits_stored=16, rescale=None,
              private=None):
        """One slice: ``stored_slice`` in (i, j) order; ``echo`` counted from 0."""
        ds = Dataset()
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "MR"
        ds.Manufacturer = self.manufacturer
        ds.PatientName = "Phantom^Head"
        ds.PatientID = "QSM-PHANTOM-01"
        ds.PatientBirthDate = "19800101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = self.study_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.AccessionNumber = "A0001"
        ds.ReferringPhysicianName = ""
        ds.FrameOfReferenceUID = self.frame_uid
        ds.PositionReferenceIndicator = ""
        for key, value in series.items():
            setattr(ds, key, value)
        ds.ImageType = list(image_type)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "30"
        ds.EchoTime = _ds_string(TE_S[echo] * 1000.0)
        ds.EchoNumbers = echo + 1
        ds.EchoTrainLength = len(TE_S)
        ds.MagneticFieldStrength = _ds_string(B0_T)
        ds.InstanceNumber = int(self.rng.integers(1, 100000))
        position = self.lps @ np.array([0.0, 0.0, k, 1.0])
        row = self.lps[:3, 0] / np.linalg.norm(self.lps[:3, 0])
        col = self.lps[:3, 1] / np.linalg.norm(self.lps[:3, 1])
        ds.ImagePositionPatient = [_ds_string(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds_string(v) for v in np.concatenate([row, col])]
        ds.PixelSpacing = [_ds_string(np.linalg.norm(self.lps[:3, 1])), _ds_string(np.linalg.norm(self.lps[:3, 0]))]
        ds.SliceThickness = _ds_string(np.linalg.norm(self.lps[:3, 2]))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored_slice.shape[1], stored_slice.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        for (group, creator), elements in (private or {}).items():
            block = ds.private_block(group, creator, create=True)
            for offset, (vr, value) in elements.items():
                block.add_new(offset, vr, value)
        dtype = "<i2" if signed else "<u2"
        ds.PixelData = np.ascontiguousarray(stored_slice.T).astype(dtype).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        name = f"IM{self.rng.integers(0, 2**40):012x}"
        write_file(self.folder / name, ds)
        self.count += 1
        return ds


def _phase_levels(phase_rad):
    """12-bit levels 0..4095 of a phase in radians."""
    q = np.floor((phase_rad.astype(np.float64) + np.pi) / (2 * np.pi) * 4096.0)
    return np.clip(q, 0, 4095).astype(np.int64)


def _skip(k, e, part, drop_slice, drop_echo_part):
    if drop_slice is not None and k == drop_slice:
        if drop_echo_part is None or drop_echo_part == (e, part):
            return True
    return False


def write_siemens(folder, *, b0_dir=None, drop_slice=None, drop_echo_part=None, duplicate_magnitude=False):
    """Siemens magnitude and 12-bit phase series; returns the encoded arrays.

    ``drop_slice`` leaves out that slice (of every echo, or only of the
    ``drop_echo_part`` = (echo, part)); ``duplicate_magnitude`` adds a second
    magnitude series (a repeated acquisition in the same folder).
    """
    sim = simulated(b0_dir)
    writer = _Writer(folder, sim.affine, "SIEMENS", seed=1)
    peak = float(sim.magnitude.max())
    mag_stored = np.round(sim.magnitude / peak * 4000.0).astype(np.int64)
    levels = _phase_levels(sim.phase)
    mag_series = writer.series(5, "gre_qsm_mag")
    phase_series = writer.series(6, "gre_qsm_pha")
    repeat_series = writer.series(7, "gre_qsm_mag_repeat")
    for e in range(len(TE_S)):
        for k in range(sim.magnitude.shape[2]):
            if not _skip(k, e, "magnitude", drop_slice, drop_echo_part):
                writer.write(mag_series, mag_stored[:, :, k, e], k, e,
                             image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), bits_stored=12)
                if duplicate_magnitude:
                    writer.write(repeat_series, mag_stored[:, :, k, e], k, e,
                                 image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), bits_stored=12)
            if not _skip(k, e, "phase", drop_slice, drop_echo_part):
                writer.write(phase_series, levels[:, :, k, e], k, e, image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
                             bits_stored=12, rescale=("2", "-4096"))
    phase_rad = ((2.0 * levels - 4096.0) * np.pi / 4096.0).astype(np.float32)
    return {"folder": Path(folder), "magnitude": mag_stored.astype(np.float32), "phase": phase_rad,
            "sim": sim, "affine": sim.affine}


PHILIPS_PRIVATE = (0x2005, "Philips MR Imaging DD 001")


def write_philips(folder):
    """Philips single series with magnitude and phase, private Scale Slope; returns the encoded arrays."""
    sim = simulated(None)
    writer = _Writer(folder, sim.affine, "Philips Medical Systems", seed=2)
    series = writer.series(401, "QSM_ME_3D")
    peak = float(sim.magnitude.max())
    mag_stored = np.round(sim.magnitude / peak * 4000.0).astype(np.int64)
    mag_rs, mag_ri = "1.5", "0"
    mag_ss = np.float32(4000.0 / peak / 1.5)
    levels = _phase_levels(sim.phase)
    phase_rs = _ds_string(2000.0 * np.pi / 4096.0)
    phase_ri = _ds_string(-1000.0 * np.pi)
    phase_ss = np.float32(1000.0 / float(phase_rs))
    for e in range(len(TE_S)):
        for k in range(sim.magnitude.shape[2]):
            writer.write(series, mag_stored[:, :, k, e], k, e, image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                         bits_stored=12, rescale=(mag_rs, mag_ri),
                         private={PHILIPS_PRIVATE: {0x0D: ("FL", 0.0), 0x0E: ("FL", float(mag_ss))}})
            writer.write(series, levels[:, :, k, e], k, e,
                         image_type=("ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"), bits_stored=12,
                         rescale=(phase_rs, phase_ri),
                         private={PHILIPS_PRIVATE: {0x0D: ("FL", 0.0), 0x0E: ("FL", float(phase_ss))}})
    # Philips' floating-point value FP = (SV * RS + RI) / (RS * SS).
    magnitude = (mag_stored * float(mag_rs) + float(mag_ri)) / (float(mag_rs) * float(mag_ss))
    phase = (levels * float(phase_rs) + float(phase_ri)) / (float(phase_rs) * float(phase_ss))
    return {"folder": Path(folder), "magnitude": magnitude.astype(np.float32), "phase": phase.astype(np.float32),
            "sim": sim, "affine": sim.affine}


GE_PRIVATE = (0x0043, "GEMS_PARM_01")


def write_ge(folder):
    """GE real and imaginary images (private image type 2 and 3); returns the encoded arrays."""
    sim = simulated(None)
    writer = _Writer(folder, sim.affine, "GE MEDICAL SYSTEMS", seed=4)
    series = writer.series(3, "3D SWAN QSM")
    peak = float(sim.magnitude.max())
    signal = sim.magnitude.astype(np.float64) / peak * 8000.0 * np.exp(1j * sim.phase.astype(np.float64))
    real = np.round(signal.real).astype(np.int64)
    imaginary = np.round(signal.imag).astype(np.int64)
    for e in range(len(TE_S)):
        for k in range(sim.magnitude.shape[2]):
            for values, code in ((real, 2), (imaginary, 3)):
                writer.write(series, values[:, :, k, e], k, e, image_type=("ORIGINAL", "PRIMARY", "OTHER"),
                             signed=True, private={GE_PRIVATE: {0x2F: ("SS", code)}})
    return {"folder": Path(folder), "magnitude": np.hypot(real, imaginary).astype(np.float32),
            "phase": np.arctan2(imaginary, real).astype(np.float32), "sim": sim, "affine": sim.affine}


def write_equivalent_nifti(fixture, folder):
    """The encoded arrays as 4D NIfTI (phase in radians); returns (magnitude path, phase path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mag, phase = folder / "mag.nii.gz", folder / "phase.nii.gz"
    save_nifti(mag, fixture["magnitude"], fixture["affine"])
    save_nifti(phase, fixture["phase"], fixture["affine"])
    return mag, phase
