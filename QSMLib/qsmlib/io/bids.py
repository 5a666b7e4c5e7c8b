"""BIDS multi-echo GRE (MEGRE) datasets: find the files and metadata, and write them.

Files follow ``sub-<S>[_ses-<T>][_<entities>]_echo-<N>_part-<mag|phase>_MEGRE.nii.gz``
with JSON sidecars giving ``EchoTime`` (s) and ``MagneticFieldStrength`` (T).
"""

import json
import os
import re
from pathlib import Path

from .. import __version__
from ..errors import QSMInputError
from .nifti import save_nifti
from .output import bids_label

_MEGRE = re.compile(r"^(?P<stem>sub-[^_]+.*?)_echo-(?P<echo>\d+)_part-(?P<part>mag|phase)_MEGRE\.nii(\.gz)?$")


#: Largest sidecar read (bytes); a BIDS sidecar is a few kilobytes.
MAX_SIDECAR_BYTES = 10 * 2 ** 20


def sidecar_path(nifti_path):
    """The JSON sidecar beside a NIfTI file."""
    return Path(re.sub(r"\.nii(\.gz)?$", "", str(nifti_path)) + ".json")


def _sidecar(nifti_path):
    """The sidecar's JSON object (a dict), or a one-line refusal naming the file."""
    path = sidecar_path(nifti_path)
    if not path.exists():
        raise QSMInputError(f"{nifti_path}: no JSON sidecar ({path.name}); BIDS needs EchoTime (s) "
                            "and MagneticFieldStrength (T) there")
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise QSMInputError(f"{path}: {path.stat().st_size} bytes is not a BIDS sidecar (a few kB); "
                                "fix or regenerate the sidecar")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QSMInputError(f"{path}: not valid JSON ({first}); fix or regenerate the sidecar") from None
    if not isinstance(meta, dict):
        raise QSMInputError(f"{path}: holds a JSON {type(meta).__name__}, not an object of BIDS fields; "
                            "fix or regenerate the sidecar ({{\"EchoTime\": 0.004, ...}})")
    return meta


def _sidecar_number(meta, key, path, unit, example):
    """A sidecar field that must be a plain number (not a string, list, null or boolean)."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QSMInputError(f"{path}: {key} {json.dumps(value)[:40]} is not a number; BIDS gives it in {unit} "
                            f"as a plain number (for example {example}); fix the sidecar")
    return float(value)


def find_megre(bids_dir, subject=None, session=None, *, te_s=None, b0_t=None):
    """Locate one MEGRE series in a BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        The dataset root.
    subject, session : str, optional
        BIDS labels (with or without ``sub-`` / ``ses-``).
    te_s, b0_t : optional
        Echo times (s) and field strength (T) given by the user: then the
        sidecars' ``EchoTime`` or ``MagneticFieldStrength`` are not read.

    Returns
    -------
    dict
        ``magnitude`` and ``phase`` (lists of paths in echo order), ``te_s``
        (list of float), ``te_source`` (where they came from, for messages),
        ``b0_t`` (float), ``subject``, ``session``.

    Raises
    ------
    QSMInputError
        When the files or sidecars are missing or malformed: a sidecar that is
        not a JSON object, an ``EchoTime`` or ``MagneticFieldStrength`` that is
        not a number, a phase echo time that differs from the magnitude's.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise QSMInputError(f"{bids_dir}: not a folder; give the root of a BIDS dataset")
    subjects = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
    if not subjects:
        raise QSMInputError(f"{bids_dir}: holds no sub-* folders; give the root of a BIDS dataset")
    if subject is None:
        if len(subjects) > 1:
            raise QSMInputError(f"{bids_dir}: holds {len(subjects)} subjects ({', '.join(subjects[:5])}"
                                f"{' ...' if len(subjects) > 5 else ''}); choose one with --subject")
        subject = subjects[0]
    subject = bids_label(subject, "--subject", "sub-")
    if subject not in subjects:
        raise QSMInputError(f"{bids_dir}: no subject sub-{subject}; it holds {', '.join(subjects[:5])}")
    folder = root / f"sub-{subject}"
    if session is not None:
        session = bids_label(session, "--session", "ses-")
        folder = folder / f"ses-{session}"
    series = {}
    for path in sorted(folder.rglob("*_MEGRE.nii*")):
        match = _MEGRE.match(path.name)
        if match and path.parent.name == "anat":
            series.setdefault(match["stem"], {}).setdefault(match["part"], {})[int(match["echo"])] = path
    if not series:
        where = f"sub-{subject}" + (f"/ses-{session}" if session else "")
        raise QSMInputError(f"{bids_dir}: no *_echo-N_part-mag|phase_MEGRE.nii.gz files under {where}/anat; "
                            "check the BIDS naming")
    if len(series) > 1:
        raise QSMInputError(f"{bids_dir}: several MEGRE series for sub-{subject} ({', '.join(series)}); "
                            "choose with --session, or give the files with --mag/--phase")
    stem, parts = next(iter(series.items()))
    if "mag" not in parts or "phase" not in parts or sorted(parts["mag"]) != sorted(parts["phase"]):
        raise QSMInputError(f"{stem}: magnitude and phase echoes do not match "
                            f"(mag {sorted(parts.get('mag', {}))}, phase {sorted(parts.get('phase', {}))}); "
                            "every echo needs both parts")
    echoes = sorted(parts["mag"])
    found_te, b0_values = [], set()
    for n in echoes if te_s is None or b0_t is None else ():
        meta = _sidecar(parts["mag"][n])
        path = sidecar_path(parts["mag"][n])
        if te_s is None:
            if "EchoTime" not in meta:
                raise QSMInputError(f"{path}: the sidecar has no EchoTime; add it in seconds, or give --te")
            found_te.append(_sidecar_number(meta, "EchoTime", path, "seconds", "0.004"))
            phase_meta = _sidecar(parts["phase"][n]) if sidecar_path(parts["phase"][n]).exists() else {}
            if "EchoTime" in phase_meta:
                phase_path = sidecar_path(parts["phase"][n])
                phase_te = _sidecar_number(phase_meta, "EchoTime", phase_path, "seconds", "0.004")
                if abs(phase_te - found_te[-1]) > 1e-6 * max(1.0, abs(phase_te)):
                    raise QSMInputError(f"{phase_path}: EchoTime {phase_te:g} s differs from {path.name}'s "
                                        f"{found_te[-1]:g} s; magnitude and phase of one echo share one echo "
                                        "time: fix the sidecars, or give --te")
        if b0_t is None and "MagneticFieldStrength" in meta:
            b0_values.add(_sidecar_number(meta, "MagneticFieldStrength", path, "tesla", "3"))
    if b0_t is None and len(b0_values) != 1:
        raise QSMInputError(f"{stem}: MagneticFieldStrength is missing or inconsistent in the sidecars "
                            f"({', '.join(f'{b:g}' for b in sorted(b0_values)) or 'none'}); give --b0 in tesla")
    where = os.path.dirname(str(parts["mag"][echoes[0]]))
    return {"magnitude": [str(parts["mag"][n]) for n in echoes],
            "phase": [str(parts["phase"][n]) for n in echoes],
            "te_s": found_te if te_s is None else list(te_s),
            "te_source": f"EchoTime of the sidecars in {where}" if te_s is None else "echo times (--te)",
            "b0_t": b0_values.pop() if b0_t is None else b0_t, "subject": subject, "session": session,
            "stem": stem}


def megre_names(subject, n_echoes, session=None):
    """Relative paths of the files :func:`write_megre` writes."""
    folder = f"sub-{subject}" + (f"/ses-{session}" if session else "") + "/anat"
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    names = ["dataset_description.json"]
    for n in range(1, n_echoes + 1):
        for part in ("mag", "phase"):
            base = f"{folder}/{stem}_echo-{n}_part-{part}_MEGRE"
            names += [base + ".nii.gz", base + ".json"]
    return names


def write_megre(path_for, subject, magnitude, phase, te_s, b0_t, affine, *, session=None,
                dataset_name="QSMLib dataset"):
    """Write a BIDS MEGRE series.

    ``path_for(relative_name)`` maps each relative name of :func:`megre_names`
    to the path to write (an :class:`~qsmlib.io.output.OutputDirectory`'s
    ``path``), so writing stays atomic.
    """
    n_echoes = magnitude.shape[3]
    names = megre_names(subject, n_echoes, session)
    description = {"Name": dataset_name, "BIDSVersion": "1.9.0", "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "QSMLib", "Version": __version__}]}
    Path(path_for(names[0])).write_text(json.dumps(description, indent=2) + "\n")
    it = iter(names[1:])
    for n in range(n_echoes):
        for part, data in (("mag", magnitude), ("phase", phase)):
            nifti_name, json_name = next(it), next(it)
            save_nifti(path_for(nifti_name), data[..., n], affine)
            meta = {"EchoTime": float(te_s[n]), "MagneticFieldStrength": float(b0_t),
                    "EchoNumber": n + 1, "PhaseEncodingDirection": "j"}
            if part == "phase":
                meta["Units"] = "rad"
            Path(path_for(json_name)).write_text(json.dumps(meta, indent=2) + "\n")
    return names

