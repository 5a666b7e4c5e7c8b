"""Inputs of the web app: NIfTI files of the data folder into MRML nodes, sidecar metadata, typed numbers.

Files are read by :mod:`qsmlib.io` (the same readers as ``qsm run``) and
become one scalar volume node per echo through :mod:`qsmslicer.nodes` (the
same conversion as the Slicer modules), so the Logic gets what it gets in
Slicer.
"""

import numpy as np

from ..errors import QSMInputError
from ..io.bids import _sidecar, _sidecar_number, sidecar_path
from ..io.multiecho import load_echo_series
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


def parse_echo_times(text):
    """Echo times typed as "0.004, 0.008 0.012" (seconds), checked like ``qsm run --te``."""
    parts = [p for p in str(text or "").replace(",", " ").replace(";", " ").split() if p]
    if not parts:
        raise QSMInputError("echo times: none given; type one per echo in seconds, e.g. 0.004, 0.008, 0.012")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise QSMInputError(f"echo times {text!r}: not numbers; type one per echo in seconds, "
                            "e.g. 0.004, 0.008, 0.012") from None
    return [float(t) for t in check_echo_times(values, name="echo times")]


def parse_field_strength(text):
    """Field strength typed in tesla, checked like ``qsm run --b0``."""
    return check_b0(str(text or "").strip() or None, name="field strength (T)")


def load_echo_nodes(scene, path, kind, name):
    """One scalar volume per echo of a 4D (or 3D) NIfTI file, added to ``scene``.

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
    (list of vtkMRMLScalarVolumeNode, ndarray)
        The nodes and the file's affine.
    """
    from qsmslicer import nodes

    data, affine = load_echo_series([str(path)], kind)
    return [nodes.output_volume(scene, f"{name}_e{echo + 1}", np.ascontiguousarray(data[..., echo]), affine)
            for echo in range(data.shape[3])], affine
