"""Inputs of the web app: NIfTI files, BIDS subjects and DICOM folders of the data folder into MRML nodes,
sidecar metadata, typed numbers.

Files are read by :mod:`qsmlib.io` and :mod:`qsmlib.workflow` (the same readers as ``qsm run``) and
become one scalar volume node per echo through :mod:`qsmslicer.nodes`
(:func:`~qsmslicer.nodes.echo_series`: the nodes show one 4D array, which the
Logic reads as it is, so a run holds its inputs once, as ``qsm run`` does).
"""

from ..errors import QSMInputError
from ..io.bids import _sidecar, _sidecar_number, sidecar_path
from ..io.multiecho import load_echo_series
from ..io.phase_scaling import phase_to_radians
from ..validation import check_b0, check_echo_times


def sidecar_acquisition(nifti_path, n_echoes):
    """Echo times (s) and field strength (T) from the JSON sidecar beside a NIfTI file.

    ``EchoTime`` may be one number per echo (a list) or, for a single echo, a
    number. Returns ``(te_s or None, b0_t or None, note)``: what the sidecar
    holds, and a sentence saying where the values came from or why they are
    missing. A sidecar that exists but is malformed raises the same
    :class:`QSMInputError` as ``qsm run --bids``.
    """
    path = sidecar_path(nifti_path)
    if not path.exists():
        return None, None, f"no sidecar {path.name}: type the echo times and field strength"
    meta = _sidecar(nifti_path)
    te = None
    if "EchoTime" in meta:
        value = meta["EchoTime"]
        values = value if isinstance(value, list) else [value]
        numbers = [_sidecar_number({"EchoTime": v}, "EchoTime", path, "seconds", "0.004") for v in values]
        if len(numbers) == n_echoes:
            te = check_echo_times(numbers, name=f"{path}: EchoTime")
    b0 = None
    if "MagneticFieldStrength" in meta:
        b0 = check_b0(_sidecar_number(meta, "MagneticFieldStrength", path, "tesla", "3"),
                      name=f"{path}: MagneticFieldStrength")
    found = [what for what, value in (("echo times", te), ("field strength", b0)) if value is not None]
    note = (f"{' and '.join(found)} from {path.name}" if found
            else f"{path.name} has no EchoTime list of {n_echoes} values nor MagneticFieldStrength: type them")
    return (None if te is None else [float(t) for t in te]), b0, note


def parse_echo_times(text, n_echoes=None):
    """Echo times typed as "0.004, 0.008 0.012" (seconds), checked like ``qsm run --te`` (one per echo)."""
    parts = [p for p in str(text or "").replace(",", " ").replace(";", " ").split() if p]
    if not parts:
        raise QSMInputError("echo times: none given; type one per echo in seconds, e.g. 0.004, 0.008, 0.012")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise QSMInputError(f"echo times {text!r}: not numbers; type one per echo in seconds, "
                            "e.g. 0.004, 0.008, 0.012") from None
    return [float(t) for t in check_echo_times(values, n_echoes=n_echoes, name="echo times")]


def parse_field_strength(text):
    """Field strength typed in tesla, checked like ``qsm run --b0``."""
    return check_b0(str(text or "").strip() or None, name="field strength (T)")


def load_echo_nodes(scene, path, kind, name):
    """One scalar volume per echo of a 4D (or 3D) NIfTI file, added to ``scene``.

    The phase is converted to radians here, as ``qsm run`` does when it reads
    its files, so the run holds it once.

    Parameters
    ----------
    scene : vtkMRMLScene
    path : path
        A file already checked by :meth:`DataFolder.resolve`.
    kind : {"mag", "phase"}
        For messages.
    name : str
        Base name of the nodes ("Magnitude" gives Magnitude_e1, Magnitude_e2, ...).

    Returns
    -------
    (qsmslicer.nodes.EchoSeries, ndarray)
        The nodes (with the array they show) and the file's affine.
    """
    from qsmslicer import nodes

    data, affine = load_echo_series([str(path)], kind)
    scaling = None
    if kind == "phase":
        data, scaling = phase_to_radians(data, name=str(path))
    return nodes.echo_series(scene, data, affine, name, phase_scaling=scaling), affine


def parse_whole_number(text, name, example):
    """A typed whole number (``"32"``), else a QSMInputError naming ``name`` with ``example``."""
    try:
        return int(str(text).strip())
    except ValueError:
        raise QSMInputError(f"{name}: {text!r} is not a whole number; give one, for example {example}") from None


def load_mask_file(data_folder, name, shape, affine):
    """The brain mask file ``name`` of the data folder on the magnitude's grid (``qsm run --mask``'s reader).

    Returns a boolean array; raises :class:`QSMInputError` naming the file
    (relative to the data folder), the problem and the browser's fix.
    """
    from ..io import load_mask

    path = data_folder.resolve(name)
    try:
        return load_mask(path, shape, affine)
    except QSMInputError as exc:
        message = str(exc).replace(f"{path}: ", "", 1)  # the server's path: the panel names the file
        raise QSMInputError(f"brain mask {name}: {_in_the_browser(message, MASK_FIXES)}") from None


def bids_datasets(data_folder):
    """Folders of the data folder that hold ``sub-*`` folders (BIDS datasets), as names for the panel."""
    names = []
    for name in data_folder.folders():
        try:
            if any(child.name.startswith("sub-") and child.is_dir() for child in (data_folder.root / name).iterdir()):
                names.append(name)
        except OSError:  # an unreadable folder is not offered
            continue
    return names


def bids_subjects(data_folder, dataset):
    """Subject labels (without ``sub-``) of a BIDS dataset of the data folder; empty for a bad name."""
    return _labels(data_folder, dataset, "sub-")


def bids_sessions(data_folder, dataset, subject):
    """Session labels (without ``ses-``) of one subject; empty when the subject has no session folders."""
    if not subject:
        return []
    return _labels(data_folder, f"{dataset or '.'}/sub-{subject}", "ses-")


def _labels(data_folder, name, prefix):
    try:
        folder = data_folder.resolve_folder(name, check_tree=False)
        return sorted(child.name[len(prefix):] for child in folder.iterdir()
                      if child.name.startswith(prefix) and child.is_dir() and not child.is_symlink())
    except (QSMInputError, OSError):  # nothing to offer: the load names the problem
        return []


#: The readers' fixes name ``qsm run``'s options; in the browser they become what the panel offers.
BIDS_FIXES = (
    ("choose one with --subject", "choose one in the Subject box"),
    ("choose with --session, or give the files with --mag/--phase",
     "choose one in the Session box, or load the magnitude and phase as NIfTI files"),
    ("or give --te", "or load the images as NIfTI files and type the echo times"),
    ("give --b0 in tesla", "add MagneticFieldStrength (T) to the sidecars, or load the images as NIfTI files "
                           "and type the field strength"),
)
DICOM_FIXES = (
    ("give --te in seconds, one per echo", "convert the folder with qsm dicom2bids --te S [S ...] into the data "
                                           "folder and load that BIDS subject"),
    ("give --b0 in tesla", "convert the folder with qsm dicom2bids --b0 T into the data folder and load that "
                           "BIDS subject"),
    ("convert it with dcm2niix and use --mag/--phase", "convert it with dcm2niix into the data folder and load "
                                                       "the NIfTI files"),
)

MASK_FIXES = (("leave out --mask", "clear the Brain mask box"),)


def _in_the_browser(message, fixes):
    for cli_fix, web_fix in fixes:
        message = message.replace(cli_fix, web_fix)
    return message


def load_bids(data_folder, dataset, subject=None, session=None):
    """The MEGRE series of one subject (and session) of a BIDS dataset in the data folder.

    The dataset is found and read by ``qsm run --bids``'s code
    (:func:`qsmlib.workflow.load_run_inputs`, :func:`qsmlib.io.bids.find_megre`):
    echo times and field strength from the sidecars. The dataset folder, and
    the subject's folder with everything in it, must lie inside the data
    folder (links included).

    Returns
    -------
    (MultiEchoData, dict)
        The data, and what ``find_megre`` found (files, subject, session, series).

    Raises
    ------
    QSMInputError
        Naming the dataset, what is wrong and the fix.
    """
    from ..workflow import load_run_inputs

    name = dataset or "."
    root = data_folder.resolve_folder(name, what="BIDS dataset", check_tree=subject is None)
    if subject:
        data_folder.resolve_folder(f"{name}/sub-{subject}" + (f"/ses-{session}" if session else ""),
                                   what="BIDS subject folder")
    try:
        return load_run_inputs(bids_dir=root, subject=subject or None, session=session or None,
                               what="the web app's inputs")
    except QSMInputError as exc:
        raise QSMInputError(f"BIDS dataset {name}: {_in_the_browser(str(exc), BIDS_FIXES)}") from None


def load_dicom_folder(data_folder, name):
    """A multi-echo GRE acquisition from a DICOM folder of the data folder (``qsm run --dicom``'s reader).

    Echo times and field strength come from the DICOM attributes (EchoTime,
    MagneticFieldStrength); the phase is rescaled to radians by the vendor's
    convention. The folder and everything in it must lie inside the data folder.

    Returns
    -------
    MultiEchoData

    Raises
    ------
    QSMInputError
        Naming the folder, what is wrong and the fix.
    """
    from ..workflow import load_run_inputs

    folder = data_folder.resolve_folder(name, what="DICOM folder")
    try:
        data, _bids = load_run_inputs(dicom_dir=folder, what="the web app's inputs")
    except QSMInputError as exc:
        raise QSMInputError(f"DICOM folder {name or '.'}: {_in_the_browser(str(exc), DICOM_FIXES)}") from None
    return data
