"""Read multi-echo gradient-echo DICOM series into checked (X, Y, Z, E) arrays.

The reader takes a folder (searched recursively) or a list of files, splits the
images into magnitude, phase, real and imaginary parts (ImageType or
ComplexImageComponent, else the GE private image type), groups them by echo
time, sorts slices along the slice normal, builds the NIfTI-style RAS affine
from ImagePositionPatient and ImageOrientationPatient (DICOM's LPS axes), and
converts the phase to radians from each vendor's encoding:

- Siemens: 12-bit stored values with RescaleSlope/RescaleIntercept, giving
  -4096..4095 (times pi/4096) or 0..4095 (times 2 pi/4096, minus pi);
- Philips: the floating-point value (SV * RS + RI) / (RS * SS) with the private
  Scale Slope SS (2005,100E), in radians, or the displayed value in mrad;
- GE: real and imaginary images (phase = atan2(imaginary, real)), or a phase
  image in mrad.

pydicom is imported only when a DICOM function is called, so that the rest of
:mod:`qsmlib.io` works without it.
"""

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import QSMInputError
from ..phase import wrap_to_pi
from ..validation import check_b0, check_echo_times
from .multiecho import MultiEchoData
from .phase_scaling import phase_to_radians

#: LPS (DICOM patient axes) to RAS (NIfTI world axes).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: GE private image type (0043,102F): stored value -> part.
GE_IMAGE_TYPE_TAG = (0x0043, 0x102F)
GE_IMAGE_TYPES = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}
#: Philips private scale slope (2005,100E) and scale intercept (2005,100D).
PHILIPS_SCALE_SLOPE_TAG = (0x2005, 0x100E)
PHILIPS_SCALE_INTERCEPT_TAG = (0x2005, 0x100D)
PARTS = ("magnitude", "phase", "real", "imaginary")
_IMAGE_TYPE_PARTS = {
    "phase": {"P", "PHASE", "PHASE MAP", "P_FFE", "PHASE_MAP"},
    "real": {"R", "REAL", "R_FFE"},
    "imaginary": {"I", "IMAGINARY", "I_FFE"},
    "magnitude": {"M", "MAGNITUDE", "M_FFE", "MAG"},
}
#: Position tolerance (mm) when matching slices across echoes and parts.
POSITION_TOL_MM = 0.01
_MRAD_LIMIT = 1000.0 * np.pi + 1.0
_VENDOR_NAMES = {"siemens": "Siemens", "philips": "Philips", "ge": "GE", "other": "vendor"}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise QSMInputError("reading DICOM needs the pydicom package; install it with "
                            "'pip install pydicom'") from None
    return pydicom


def write_file(path, ds):
    """Write ``ds`` as a DICOM Part 10 file (preamble and file meta) with its own transfer syntax.

    pydicom 3 asks for this with ``enforce_file_format=True``; pydicom 2.x (bundled by
    3D Slicer up to 5.10) only knows the older spelling ``write_like_original=False``.
    """
    pydicom = _pydicom()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def list_dicom_files(source):
    """Paths of the candidate files of a folder (recursive), a file, or a list of either."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    files = []
    for item in source:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise QSMInputError(f"{item}: not found; give a DICOM folder or DICOM files")
    if not files:
        raise QSMInputError(f"{_describe(source)}: holds no files; give the folder of the DICOM series")
    return files


def _describe(source):
    source = [str(s) for s in source]
    return source[0] if len(source) == 1 else f"{source[0]} (+{len(source) - 1} more)"


def read_datasets(source):
    """Read every DICOM image file of ``source`` (others, such as DICOMDIR, are skipped)."""
    pydicom = _pydicom()
    files = list_dicom_files(source)
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path))
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "PixelData" not in ds:
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise QSMInputError(f"{path}: an enhanced multi-frame DICOM file ({ds.NumberOfFrames} frames); "
                                "this reader takes classic single-slice images: export the series as classic "
                                "images, or convert it with dcm2niix and use --mag/--phase")
        if "ImagePositionPatient" not in ds:
            continue
        ds.filename = str(path)
        datasets.append(ds)
    if not datasets:
        where = files[0].parent if len(files) > 1 else files[0]
        raise QSMInputError(f"{where}: holds no DICOM images with ImagePositionPatient; give the folder "
                            "of the multi-echo GRE series")
    return datasets


def series_label(ds):
    """How a series is named in messages: number, description and UID."""
    number = ds.get("SeriesNumber", "?")
    description = str(ds.get("SeriesDescription", "")).strip()
    return f"series {number} '{description}' ({ds.get('SeriesInstanceUID', 'no UID')})"


def vendor_of(ds):
    """'siemens', 'philips', 'ge' or 'other', from Manufacturer."""
    name = str(ds.get("Manufacturer", "")).lower()
    if "siemens" in name:
        return "siemens"
    if "philips" in name:
        return "philips"
    if name.startswith("ge") or "general electric" in name:
        return "ge"
    return "other"


def _private_value(ds, tag):
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):
        if len(value) == 2:
            return int(np.frombuffer(value, "<i2")[0])
        if len(value) == 4:
            if tag[0] == 0x2005:
                return float(np.frombuffer(value, "<f4")[0])
            return int(np.frombuffer(value, "<i4")[0])
        try:
            return float(value.decode().strip("\x00 "))
        except (UnicodeDecodeError, ValueError):
            return None
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
        value = value[0]
    return value


def image_part(ds):
    """'magnitude', 'phase', 'real' or 'imaginary' for one image, or None if it cannot be told."""
    component = str(ds.get("ComplexImageComponent", "")).upper()
    if component in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
        return component.lower()
    values = [str(v).upper().strip() for v in (ds.get("ImageType") or [])]
    for part in ("phase", "real", "imaginary", "magnitude"):
        if any(v in _IMAGE_TYPE_PARTS[part] for v in values[2:]):
            return part
    ge_type = _private_value(ds, GE_IMAGE_TYPE_TAG)
    if ge_type is not None:
        try:
            return GE_IMAGE_TYPES.get(int(ge_type))
        except (TypeError, ValueError):
            return None
    return None


def _orientation(ds):
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    row, col = iop[:3], iop[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if iop.size != 6 or not all(np.isfinite(n) and n > 1e-6 for n in norms):
        raise QSMInputError(f"{getattr(ds, 'filename', 'a DICOM file')}: ImageOrientationPatient "
                            f"{[float(v) for v in iop]} is not two directions; the header is corrupt: export the "
                            "series again")
    return row / norms[0], col / norms[1]


def _geometry_key(ds):
    row, col = _orientation(ds)
    spacing = tuple(round(float(v), 4) for v in ds.PixelSpacing)
    return (int(ds.Rows), int(ds.Columns), tuple(np.round(row, 4)), tuple(np.round(col, 4)), spacing)


def _echo_time_ms(ds):
    if "EchoTime" not in ds or ds.EchoTime in (None, ""):
        raise QSMInputError(f"{ds.filename}: has no EchoTime; give --te in seconds, one per echo")
    return float(ds.EchoTime)


class DicomGRE:
    """The images of one multi-echo acquisition, grouped and sorted (see :func:`collect_series`).

    Attributes
    ----------
    groups : dict
        ``{part: [slices of echo 1, slices of echo 2, ...]}``, each a list of
        datasets sorted along the slice normal.
    te_ms : list of float
        Echo times in ms, ascending.
    affine : ndarray (4, 4)
        Voxel (i = column, j = row, k = slice) to RAS world (mm).
    vendor : str
    series : list of str
        Labels of the series read.
    """

    def __init__(self, groups, te_ms, affine, vendor, series):
        self.groups, self.te_ms, self.affine, self.vendor, self.series = groups, te_ms, affine, vendor, series

    @property
    def shape(self):
        first = next(iter(self.groups.values()))[0]
        return (int(first[0].Columns), int(first[0].Rows), len(first))

    def reference_slices(self):
        """The slices of the first echo of the magnitude (else any part), in k order."""
        part = "magnitude" if "magnitude" in self.groups else sorted(self.groups)[0]
        return self.groups[part][0]


def collect_series(source, *, require_parts=True):
    """Read, split, group and sort the images of one multi-echo acquisition.

    Parameters
    ----------
    source : path or list of path
        A folder (searched recursively), a file, or a list of files.
    require_parts : bool
        Ask for magnitude and phase (or real and imaginary). When false, any
        single part (for example a derived map) is accepted.

    Returns
    -------
    DicomGRE

    Raises
    ------
    QSMInputError
        For mixed series (different studies, frames of reference or geometry,
        or two series holding the same images), missing slices, and echoes or
        parts with different slice counts; the message names the series.
    """
    datasets = read_datasets(source)
    by_series = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    labels = {uid: series_label(items[0]) for uid, items in by_series.items()}
    first_uid = next(iter(by_series))
    first = by_series[first_uid][0]
    for uid, items in by_series.items():
        ds = items[0]
        for key, what in (("StudyInstanceUID", "study"), ("FrameOfReferenceUID", "frame of reference")):
            if str(ds.get(key, "")) != str(first.get(key, "")):
                raise QSMInputError(f"mixed series: {labels[uid]} and {labels[first_uid]} belong to different "
                                    f"{what}s; put one acquisition per folder or give its files")
        for other in items:
            if _geometry_key(other) != _geometry_key(first):
                raise QSMInputError(f"mixed series: {labels[uid]} ({other.filename}) has a different matrix, "
                                    f"orientation or pixel spacing from {labels[first_uid]}; put one "
                                    "acquisition per folder or give its files")
    row, col = _orientation(first)
    normal = np.cross(row, col)

    # part -> TE (ms) -> list of (position along the normal, dataset)
    images = defaultdict(lambda: defaultdict(list))
    owner = {}
    for uid, items in by_series.items():
        for ds in items:
            part = image_part(ds)
            if part is None:
                if require_parts:
                    raise QSMInputError(f"{labels[uid]}: cannot tell whether {ds.filename} is magnitude, phase, "
                                        "real or imaginary (no M/P/R/I in ImageType, no ComplexImageComponent, "
                                        "no vendor image type); give a standard multi-echo GRE series")
                part = "magnitude"
            te = round(_echo_time_ms(ds) if require_parts else float(ds.get("EchoTime") or 0.0), 3)
            position = float(np.dot(np.asarray([float(v) for v in ds.ImagePositionPatient]), normal))
            key = (part, te, round(position / POSITION_TOL_MM))
            if key in owner:
                other_uid = owner[key]
                if other_uid != uid:
                    raise QSMInputError(f"mixed series: {labels[uid]} and {labels[other_uid]} both hold {part} "
                                        f"images at TE {te:g} ms and slice position {position:.2f} mm; put one "
                                        "acquisition per folder or give its files")
                raise QSMInputError(f"{labels[uid]}: two {part} images at TE {te:g} ms and slice position "
                                    f"{position:.2f} mm ({ds.filename}); the folder holds a repeated or mixed "
                                    "acquisition")
            owner[key] = uid
            images[part][te].append((position, ds))
    series = [labels[uid] for uid in by_series]
    name = series[0] if len(series) == 1 else f"{series[0]} (+{len(series) - 1} more series)"

    parts = set(images)
    if require_parts and not ({"magnitude", "phase"} <= parts or {"real", "imaginary"} <= parts):
        raise QSMInputError(f"{name}: holds only {', '.join(sorted(parts))} images; QSM needs magnitude and "
                            "phase (or real and imaginary) of every echo: add the missing series")
    echo_sets = {part: sorted(echoes) for part, echoes in images.items()}
    te_ms = max(echo_sets.values(), key=len)
    for part, tes in echo_sets.items():
        if tes != te_ms:
            raise QSMInputError(f"{name}: inconsistent echo counts: {part} has {len(tes)} echoes "
                                f"(TE {', '.join(f'{t:g}' for t in tes)} ms) but another part has {len(te_ms)} "
                                f"(TE {', '.join(f'{t:g}' for t in te_ms)} ms); every part needs every echo")

    all_positions = sorted({round(p / POSITION_TOL_MM) for echoes in images.values()
                            for slices in echoes.values() for p, _ in slices})
    positions = np.asarray(all_positions, dtype=np.float64) * POSITION_TOL_MM
    if positions.size < 2:
        raise QSMInputError(f"{name}: holds a single slice position; QSM needs the whole 3D multi-slice volume")
    steps = np.diff(positions)
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * step)
    if gaps.size:
        g = int(gaps[0])
        missing = int(round(steps[g] / step)) - 1
        raise QSMInputError(f"{name}: missing slice: {missing} slice(s) absent between positions "
                            f"{positions[g]:.2f} and {positions[g + 1]:.2f} mm along the slice normal "
                            f"(spacing {step:.3g} mm); give the complete series")
    if np.any(np.abs(steps - step) > max(0.01 * step, POSITION_TOL_MM)):
        raise QSMInputError(f"{name}: slices are unevenly spaced ({steps.min():.3g} to {steps.max():.3g} mm); "
                            "give one evenly spaced 3D acquisition")
    groups = {}
    for part in PARTS:
        if part not in images:
            continue
        groups[part] = []
        for te in te_ms:
            slices = sorted(images[part][te], key=lambda item: item[0])
            if len(slices) != positions.size:
                have = {round(p / POSITION_TOL_MM) for p, _ in slices}
                absent = [p * POSITION_TOL_MM for p in all_positions if p not in have]
                raise QSMInputError(f"{name}: missing slice: {part} echo {te_ms.index(te) + 1} (TE {te:g} ms) has "
                                    f"{len(slices)} slices but the series has {positions.size}; absent at "
                                    f"{', '.join(f'{p:.2f}' for p in absent[:3])} mm along the slice normal; "
                                    "give the complete series")
            groups[part].append([ds for _, ds in slices])

    reference = next(iter(groups.values()))[0]
    first_position = np.asarray([float(v) for v in reference[0].ImagePositionPatient])
    last_position = np.asarray([float(v) for v in reference[-1].ImagePositionPatient])
    spacing = [float(v) for v in reference[0].PixelSpacing]  # (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = (last_position - first_position) / (len(reference) - 1)
    lps[:3, 3] = first_position
    vendor = vendor_of(first)
    return DicomGRE(groups, [float(t) for t in te_ms], LPS_TO_RAS @ lps, vendor, series)


def _rescaled(ds, vendor):
    """Pixel values of one image in (i, j) order, with the modality rescale (and Philips scale) applied.

    Returns the values and whether the Philips floating-point formula was used.
    """
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64).T
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise QSMInputError(f"{ds.filename}: its pixel data cannot be decoded (transfer syntax {syntax}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); decompress the "
                            "series (for example with gdcmconv --raw) or install a pydicom pixel-data plugin") from None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = stored * slope + intercept
    if vendor == "philips":
        scale_slope = _private_value(ds, PHILIPS_SCALE_SLOPE_TAG)
        if scale_slope:
            return values / (slope * float(scale_slope)), True
    return values, False


def _stack(slices_per_echo, vendor):
    shape = (int(slices_per_echo[0][0].Columns), int(slices_per_echo[0][0].Rows), len(slices_per_echo[0]),
             len(slices_per_echo))
    out = np.empty(shape, dtype=np.float64)
    philips_fp = False
    for e, slices in enumerate(slices_per_echo):
        for k, ds in enumerate(slices):
            out[:, :, k, e], used = _rescaled(ds, vendor)
            philips_fp = philips_fp or used
    return out, philips_fp


def _phase_to_radians(values, vendor, philips_fp, name):
    """Vendor phase encoding to radians; returns (phase_rad, scaling dict)."""
    low, high = float(values.min()), float(values.max())
    if vendor == "siemens" and low >= -4096 and high <= 4095 and high - low > 1000:
        if low < 0:
            detected, scale, offset = ("Siemens 12-bit phase: (stored * RescaleSlope + RescaleIntercept) "
                                       "* pi / 4096", np.pi / 4096, 0.0)
        else:
            detected, scale, offset = ("Siemens 12-bit unsigned phase: (stored * RescaleSlope + "
                                       "RescaleIntercept) * 2 pi / 4096 - pi", 2 * np.pi / 4096, -np.pi)
    elif vendor == "philips" and philips_fp and low >= -np.pi - 1e-3 and high <= np.pi + 1e-3:
        detected, scale, offset = ("Philips phase: floating-point value (stored * RS + RI) / (RS * SS) "
                                   "with the private Scale Slope SS (2005,100E), in radians", 1.0, 0.0)
    elif vendor == "philips" and low >= -_MRAD_LIMIT and high <= _MRAD_LIMIT and high - low > 1000:
        how = "floating-point value (stored * RS + RI) / (RS * SS)" if philips_fp else \
              "displayed value stored * RS + RI"
        detected, scale, offset = f"Philips phase: {how} in mrad, divided by 1000", 1e-3, 0.0
    elif vendor == "ge" and low >= -_MRAD_LIMIT and high <= _MRAD_LIMIT and high - low > 1000:
        detected, scale, offset = "GE phase image in mrad (stored * RescaleSlope + RescaleIntercept) / 1000", \
            1e-3, 0.0
    else:
        phase_rad, scaling = phase_to_radians(values, name=name)
        scaling["detected"] = f"{_VENDOR_NAMES[vendor]} phase, generic detection: {scaling['detected']}"
        return phase_rad, scaling
    phase_rad = wrap_to_pi(values * scale + offset, np.float32)
    return phase_rad, {"detected": detected, "scale": float(scale), "offset": float(offset),
                       "range": [low, high]}


def load_dicom(source, *, te_s=None, b0_t=None, phase_sign=1):
    """Load a multi-echo GRE DICOM acquisition as :class:`~qsmlib.io.multiecho.MultiEchoData`.

    Parameters
    ----------
    source : path or list of path
        A folder (searched recursively), or the DICOM files.
    te_s : sequence of float, optional
        Echo times in seconds; default: EchoTime of the images.
    b0_t : float, optional
        Field strength in tesla; default: MagneticFieldStrength.
    phase_sign : {1, -1}
        -1 flips the phase, for data whose phase decreases with field.

    Returns
    -------
    MultiEchoData
        Magnitude and phase (radians) as (X, Y, Z, E) float32 in (column, row,
        slice) voxel order, the RAS affine, and ``phase_scaling`` naming the
        vendor conversion.

    Raises
    ------
    QSMInputError
        When the folder holds no suitable series, mixes acquisitions, misses
        slices or echoes, or lacks echo times or field strength.

    References
    ----------
    DICOM PS3.3 C.7.6.2 (Image Plane Module: ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing in the LPS patient system).
    """
    gre = collect_series(source)
    name = gre.series[0] if len(gre.series) == 1 else f"{gre.series[0]} (+{len(gre.series) - 1} more series)"
    if "real" in gre.groups and "imaginary" in gre.groups:
        real, _ = _stack(gre.groups["real"], gre.vendor)
        imaginary, _ = _stack(gre.groups["imaginary"], gre.vendor)
        phase = wrap_to_pi(np.arctan2(imaginary, real), np.float32)
        scaling = {"detected": f"{_VENDOR_NAMES[gre.vendor]} real and imaginary "
                               "images: phase = atan2(imaginary, real)", "scale": 1.0, "offset": 0.0}
        if "magnitude" in gre.groups:
            magnitude, _ = _stack(gre.groups["magnitude"], gre.vendor)
        else:
            magnitude = np.hypot(real, imaginary)
            scaling["magnitude"] = "sqrt(real^2 + imaginary^2)"
    else:
        magnitude, _ = _stack(gre.groups["magnitude"], gre.vendor)
        raw_phase, philips_fp = _stack(gre.groups["phase"], gre.vendor)
        phase, scaling = _phase_to_radians(raw_phase, gre.vendor, philips_fp, name)
    scaling["vendor"] = gre.vendor
    if not np.all(np.isfinite(magnitude)) or not np.all(np.isfinite(phase)):
        raise QSMInputError(f"{name}: pixel values are not finite after rescaling; check the rescale tags")
    if magnitude.min() < 0:
        raise QSMInputError(f"{name}: the magnitude images hold negative values; check the series")
    if te_s is None:
        te = check_echo_times(np.asarray(gre.te_ms) / 1000.0, name=f"{name}: EchoTime")
    else:
        te = check_echo_times(te_s, name="echo times (--te)")
        if te.size != len(gre.te_ms):
            raise QSMInputError(f"{te.size} echo times given but {name} holds {len(gre.te_ms)} echoes; "
                                "give one echo time (s) per echo, or leave out --te to use EchoTime")
    if b0_t is None:
        first = gre.reference_slices()[0]
        if "MagneticFieldStrength" not in first or first.MagneticFieldStrength in (None, ""):
            raise QSMInputError(f"{name}: has no MagneticFieldStrength; give --b0 in tesla")
        b0 = check_b0(float(first.MagneticFieldStrength), name=f"{name}: MagneticFieldStrength")
    else:
        b0 = check_b0(b0_t, name="B0 (--b0)")
    if phase_sign not in (1, -1):
        raise QSMInputError(f"phase sign must be 1 or -1, got {phase_sign}")
    if phase_sign == -1:
        phase = -phase
    scaling["sign"] = phase_sign
    sources = {"dicom": [str(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)],
               "dicom_series": gre.series}
    return MultiEchoData(magnitude=magnitude.astype(np.float32), phase=phase.astype(np.float32), te_s=te,
                         b0_t=b0, affine=gre.affine, phase_scaling=scaling, sources=sources)


def load_dicom_volume(source):
    """Load a single-part 3D DICOM series (for example an exported map) as ``(data, affine)``.

    Values are the rescaled pixel values (RescaleSlope and RescaleIntercept
    applied), float64, in (column, row, slice) order; the affine is RAS.
    """
    gre = collect_series(source, require_parts=False)
    if len(gre.groups) != 1 or len(gre.te_ms) != 1:
        raise QSMInputError(f"{gre.series[0]}: holds several parts or echoes; give a single 3D series")
    part = next(iter(gre.groups))
    data, _ = _stack(gre.groups[part], gre.vendor)
    return data[..., 0], gre.affine
