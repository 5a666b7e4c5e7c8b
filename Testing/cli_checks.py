"""Checks shared by the hardening tests: run the CLI in-process, read its one error line, snapshot folders."""

import hashlib
import os

import nibabel as nib
import numpy as np

from qsmlib.cli import main


def run_cli(args, capsys):
    """Run ``qsm ARGS`` in-process; return (exit status, stderr)."""
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.err + captured.out


def one_error_line(err):
    """The single ``qsm: error:`` line of a refusal; fails on a traceback or an internal error."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("qsm: error:")]
    assert len(lines) == 1, err
    assert "internal error" not in lines[0], err
    return lines[0]


def snapshot(folder):
    """Every entry below ``folder``: relative path -> (kind, content hash or link target, mode)."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            st = os.lstat(path)
            if os.path.islink(path):
                entries[relative] = ("link", os.readlink(path), st.st_mode)
            elif os.path.isdir(path):
                entries[relative] = ("dir", None, st.st_mode)
            elif not os.path.isfile(path):  # a FIFO or a device: never read (it could block)
                entries[relative] = ("other", None, st.st_mode)
            else:
                with open(path, "rb") as f:
                    entries[relative] = ("file", hashlib.sha256(f.read()).hexdigest(), st.st_mode)
    return entries


def save(path, data, affine=None):
    """Write ``data`` as float32 NIfTI (identity affine unless given); return the path as str."""
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), str(path))
    return str(path)


def small_scan(folder, shape=(16, 16, 12), te=(0.004, 0.008, 0.012)):
    """A 3-echo bright ball in radians (magnitude, phase, mask files and echo times as strings)."""
    grid = np.indices(shape).astype(np.float32)
    centre = [(n - 1) / 2 for n in shape]
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) < (min(shape) / 2.4) ** 2
    mag = np.stack([np.where(ball, 100.0, 1.0) * np.exp(-20 * t) for t in te], axis=3)
    phase = np.stack([np.angle(np.exp(1j * (0.3 + 2 * np.pi * 20 * t * grid[0] / shape[0]))) for t in te], axis=3)
    os.makedirs(folder, exist_ok=True)
    return {"mag": save(os.path.join(folder, "mag.nii.gz"), mag),
            "phase": save(os.path.join(folder, "phase.nii.gz"), phase),
            "mask": save(os.path.join(folder, "mask.nii.gz"), ball),
            "te": [str(t) for t in te]}
