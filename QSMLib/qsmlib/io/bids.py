"""BIDS multi-echo GRE (MEGRE) datasets: find the files and metadata, and write them.

Files follow ``sub-<S>[_ses-<T>][_<entities>]_echo-<N>_part-<mag|phase>_MEGRE.nii.gz``
with JSON sidecars giving ``EchoTime`` (s) and ``MagneticFieldStrength`` (T).
"""

import json
import re
from pathlib import Path

from .. import __version__
from ..errors import QSMInputError
from .nifti import save_nifti
from .output import bids_label

_MEGRE = re.compile(r"^(?P<stem>sub-[^_]+.*?)_echo-(?P<echo>\d+)_part-(?P<part>mag|phase)_MEGRE\.nii(\.gz)?$")


def _sidecar(nifti_path):
    base = re.sub(r"\.nii(\.gz)?$", "", str(nifti_path))
    path = Path(base + ".json")
    if not path.exists():
        raise QSMInputError(f"{nifti_path}: no JSON sidecar ({path.name}); BIDS needs EchoTime (s) "
                            "and MagneticFieldStrength (T) there")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QSMInputError(f"{path}: not valid JSON ({exc}); fix or regenerate the sidecar") from None


def find_megre(bids_dir, subject=None, session=None):
    """Locate one MEGRE series in a BIDS dataset.

    Returns
    -------
    dict
        ``magnitude`` and ``phase`` (lists of paths in echo order), ``te_s``
        (list of float), ``b0_t`` (float), ``subject``, ``session``.
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
    te_s, b0_values = [], set()
    for n in echoes:
        meta = _sidecar(parts["mag"][n])
        if "EchoTime" not in meta:
            raise QSMInputError(f"{parts['mag'][n]}: the sidecar has no EchoTime (s)")
        te_s.append(float(meta["EchoTime"]))
        if "MagneticFieldStrength" in meta:
            b0_values.add(float(meta["MagneticFieldStrength"]))
    if len(b0_values) != 1:
        raise QSMInputError(f"{stem}: MagneticFieldStrength is missing or inconsistent in the sidecars "
                            f"({sorted(b0_values)}); give --b0 in tesla")
    return {"magnitude": [str(parts["mag"][n]) for n in echoes],
            "phase": [str(parts["phase"][n]) for n in echoes],
            "te_s": te_s, "b0_t": b0_values.pop(), "subject": subject, "session": session}


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

