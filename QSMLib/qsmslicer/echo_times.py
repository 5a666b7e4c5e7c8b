"""Echo times and field strength from the DICOM attributes of Slicer volumes.

Where the values come from:

- a volume loaded through Slicer's DICOM module carries the attribute
  ``DICOM.instanceUIDs`` (its SOP instance UIDs, space separated); the tags
  EchoTime (0018,0081, in ms) and MagneticFieldStrength (0018,0087, in T) are
  then read from Slicer's DICOM database (``slicer.dicomDatabase.instanceValue``);
- a multi-volume made by the MultiVolume importer over echo time carries
  ``MultiVolume.FrameIdentifyingDICOMTagName`` = EchoTime,
  ``MultiVolume.FrameLabels`` (comma separated) and
  ``MultiVolume.FrameIdentifyingDICOMTagUnits`` (ms);
- a Sequence node indexed by echo time has index name EchoTime and its unit
  (ms or s) as index unit.

Milliseconds are converted to seconds here, where the unit is known. Values
without a unit are returned as found, so that qsmlib's check refuses
millisecond-looking values with a clear message rather than guessing.
"""

import re

import slicer

from qsmlib.errors import QSMInputError
from qsmslicer.i18n import tr

ECHO_TIME_TAG = "0018,0081"
FIELD_STRENGTH_TAG = "0018,0087"
_UNIT_TO_SECONDS = {"ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0}


def default_dicom_lookup():
    """``lookup(uid, tag) -> str`` over Slicer's DICOM database, or None outside full Slicer."""
    database = getattr(slicer, "dicomDatabase", None)
    if database is None:
        return None
    return database.instanceValue


def _first_uid(node):
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    return uids[0] if uids else None


def _float(text):
    try:
        return float(str(text).split("\\")[0])
    except (TypeError, ValueError):
        return None


def _is_echo_time_name(name):
    return (name or "").replace(" ", "").lower() in ("echotime", "te", "echotime(ms)", "echotimes")


def echo_times_s(source, volume_nodes, dicom_lookup=None):
    """Echo times in seconds, one per echo, or None when the nodes do not carry them.

    Parameters
    ----------
    source : vtkMRMLNode or list of vtkMRMLVolumeNode
        What the user selected: a list of volumes, a sequence or a multi-volume.
    volume_nodes : list of vtkMRMLVolumeNode
        The per-echo volumes (:func:`qsmslicer.nodes.echo_volume_nodes`).
    dicom_lookup : callable(uid, tag) -> str, optional
        Default: Slicer's DICOM database when available.
    """
    if not isinstance(source, (list, tuple)):
        if source.IsA("vtkMRMLSequenceNode") and _is_echo_time_name(source.GetIndexName()):
            scale = _UNIT_TO_SECONDS.get((source.GetIndexUnit() or "").strip().lower(), 1.0)
            values = [_float(source.GetNthIndexValue(n)) for n in range(source.GetNumberOfDataNodes())]
            return None if None in values else [v * scale for v in values]
        if _is_echo_time_name(source.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagName")):
            labels = (source.GetAttribute("MultiVolume.FrameLabels") or "").split(",")
            unit = (source.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits") or "").strip().lower()
            values = [_float(label) for label in labels if label.strip()]
            return None if not values or None in values else [v * _UNIT_TO_SECONDS.get(unit, 1.0) for v in values]
    lookup = dicom_lookup or default_dicom_lookup()
    if lookup is None:
        return None
    values = []
    for node in volume_nodes:
        uid = _first_uid(node)
        value = _float(lookup(uid, ECHO_TIME_TAG)) if uid else None
        if value is None:
            return None
        values.append(value * 1e-3)  # the DICOM EchoTime tag is in ms
    return values


def field_strength_t(volume_nodes, dicom_lookup=None):
    """MagneticFieldStrength (T) from the DICOM database, or None."""
    lookup = dicom_lookup or default_dicom_lookup()
    if lookup is None or not volume_nodes:
        return None
    uid = _first_uid(volume_nodes[0])
    return _float(lookup(uid, FIELD_STRENGTH_TAG)) if uid else None


# -- the echo inputs of a module's parameter node (QSM Reconstruction and SWI share them) ---------

def selected_echo_series(parameter_node):
    """Magnitude and phase as the user chose them: a sequence or multi-volume each, else the checked lists.

    The parameter node has ``magnitudeSeries``, ``phaseSeries``, ``magnitudeEchoes`` and ``phaseEchoes``.
    """
    return (parameter_node.magnitudeSeries or list(parameter_node.magnitudeEchoes),
            parameter_node.phaseSeries or list(parameter_node.phaseEchoes))


def missing_echo_series(parameter_node):
    """Why the echo inputs are incomplete ("" when both magnitude and phase are chosen)."""
    magnitude, phase = selected_echo_series(parameter_node)
    if not magnitude:
        return tr("Select the magnitude echoes")
    if not phase:
        return tr("Select the phase echoes")
    return ""


def parse_seconds(text, what="echo times (s)"):
    """Numbers typed as "0.004, 0.008 0.012" (commas, semicolons or spaces); [] for empty text."""
    try:
        return [float(v) for v in re.split(r"[,;\s]+", (text or "").strip()) if v]
    except ValueError:
        raise QSMInputError(f"{what}: '{text}' is not a list of numbers") from None


def format_seconds(values):
    """Echo times for the parameter node's text field (the inverse of :func:`parse_seconds`)."""
    return ", ".join(f"{t:g}" for t in values)
