"""Load multi-echo magnitude and phase from NIfTI files into checked arrays."""

from dataclasses import dataclass, field

import numpy as np

from ..dipole import voxel_size_from_affine
from ..errors import QSMInputError
from ..validation import check_b0, check_echo_times
from .nifti import load_nifti
from .phase_scaling import phase_to_radians


@dataclass
class MultiEchoData:
    """Multi-echo GRE data in memory: arrays are (X, Y, Z, E), phase in radians."""

    magnitude: np.ndarray
    phase: np.ndarray
    te_s: np.ndarray
    b0_t: float
    affine: np.ndarray
    phase_scaling: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    @property
    def voxel_size(self):
        return voxel_size_from_affine(self.affine)

    @property
    def shape(self):
        return self.magnitude.shape[:3]


def _label(files):
    return files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"


def load_echo_series(files, kind):
    """Stack one 4D file or several 3D files into an (X, Y, Z, E) array and an affine."""
    files = [str(f) for f in files]
    if not files:
        raise QSMInputError(f"--{kind}: no file given; give one 4D file or one 3D file per echo")
    volumes, affine = [], None
    for f in files:
        data, aff = load_nifti(f)
        if data.ndim == 5 and data.shape[3] == 1:
            data = data[:, :, :, 0, :]
        if data.ndim < 3 or (data.ndim == 3 and min(data.shape) == 1):
            raise QSMInputError(f"{f}: got a 2D image of shape {data.shape}; QSM needs a 3D "
                                "volume per echo (give the whole multi-slice acquisition)")
        if data.ndim > 4:
            raise QSMInputError(f"{f}: {data.ndim}D data of shape {data.shape}; give 3D volumes "
                                "(one per echo) or one 4D file with echoes along the 4th axis")
        if data.ndim == 4 and len(files) > 1:
            raise QSMInputError(f"{f}: is 4D but several --{kind} files were given; give either one "
                                "4D file or one 3D file per echo")
        if affine is None:
            affine, first = aff, f
        elif not np.allclose(aff, affine, atol=1e-3):
            raise QSMInputError(f"{f}: its affine differs from {first}; all echoes must share one "
                                "voxel grid")
        bad = ~np.isfinite(data)
        if bad.any():
            raise QSMInputError(f"{f}: {int(bad.sum())} voxels are NaN or infinite; replace them "
                                "(for example with 0) before running QSM")
        volumes.append(data if data.ndim == 4 else data[..., None])
    stacked = np.concatenate(volumes, axis=3) if len(volumes) > 1 else volumes[0]
    if min(stacked.shape[:3]) < 2:
        raise QSMInputError(f"{_label(files)}: got a 2D image of shape {stacked.shape[:3]}; "
                            "QSM needs a 3D volume per echo")
    return stacked, affine


def load_magnitude(magnitude_files, te_s, *, te_name="echo times (--te)"):
    """Load and check multi-echo magnitude with its echo times (s).

    ``te_name`` says where the echo times came from, for messages.

    Returns
    -------
    magnitude : ndarray (X, Y, Z, E), te_s : ndarray, affine : ndarray
    """
    magnitude_files = [str(f) for f in magnitude_files]
    magnitude, affine = load_echo_series(magnitude_files, "mag")
    name = _label(magnitude_files)
    te = check_echo_times(te_s, name=te_name)
    if te.size != magnitude.shape[3]:
        raise QSMInputError(f"{te_name}: {te.size} echo times given but {name} holds {magnitude.shape[3]} "
                            "echoes; give one echo time (s) per echo")
    if magnitude.min() < 0:
        raise QSMInputError(f"{name}: holds negative values, so it is not a magnitude image; "
                            "give the magnitude (check that --mag and --phase are not swapped)")
    return magnitude, te, affine


def load_multi_echo(magnitude_files, phase_files, te_s, b0_t, *, phase_sign=1, phase_unwrapped=False,
                    te_name="echo times (--te)", b0_name="B0 (--b0)"):
    """Load and check multi-echo magnitude and phase.

    Parameters
    ----------
    magnitude_files, phase_files : list of path
        One 4D file each, or one 3D file per echo in echo order.
    te_s : sequence of float
        Echo times in seconds.
    b0_t : float
        Field strength in tesla.
    phase_sign : {1, -1}
        -1 flips the phase, for data whose phase decreases with field.
    phase_unwrapped : bool
        The phase is already unwrapped and in radians: it is used as it is.
    te_name, b0_name : str
        Where the echo times and the field strength came from, for messages.

    Returns
    -------
    MultiEchoData
    """
    magnitude_files = [str(f) for f in magnitude_files]
    phase_files = [str(f) for f in phase_files]
    b0 = check_b0(b0_t, name=b0_name)
    magnitude, te, affine = load_magnitude(magnitude_files, te_s, te_name=te_name)
    phase, phase_affine = load_echo_series(phase_files, "phase")
    mag_name, phase_name = _label(magnitude_files), _label(phase_files)
    if magnitude.shape != phase.shape:
        raise QSMInputError(f"{mag_name} has shape {magnitude.shape} but {phase_name} has shape "
                            f"{phase.shape}; magnitude and phase must have the same voxels and echoes")
    if not np.allclose(affine, phase_affine, atol=1e-3):
        raise QSMInputError(f"{phase_name}: its affine differs from {mag_name}; magnitude and phase "
                            "must share one voxel grid")
    if phase_unwrapped:
        phase_rad, scaling = phase, {"detected": "unwrapped radians (given)", "scale": 1.0, "offset": 0.0}
    else:
        phase_rad, scaling = phase_to_radians(phase, name=phase_name)
    if phase_sign not in (1, -1):
        raise QSMInputError(f"phase sign must be 1 or -1, got {phase_sign}")
    if phase_sign == -1:
        phase_rad = -phase_rad
    scaling["sign"] = phase_sign
    return MultiEchoData(magnitude=magnitude, phase=phase_rad, te_s=te, b0_t=b0,
                         affine=affine, phase_scaling=scaling,
                         sources={"magnitude": magnitude_files, "phase": phase_files})


def _load_on_grid(path, shape, affine, what):
    data, image_affine = load_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(shape):
        raise QSMInputError(f"{path}: {what} shape {data.shape} does not match the data shape "
                            f"{tuple(shape)}; give a {what} on the same voxel grid")
    if not np.allclose(image_affine, affine, atol=1e-3):
        raise QSMInputError(f"{path}: the {what}'s affine differs from the data's; resample the {what} "
                            "onto the data grid")
    return data


def load_mask(path, shape, affine):
    """Load a mask file on the data grid as a boolean array."""
    mask = _load_on_grid(path, shape, affine, "mask") > 0.5
    if not mask.any():
        raise QSMInputError(f"{path}: the mask is empty (no voxel is set); give a mask that covers "
                            "the brain, or leave out --mask to compute one")
    return mask


def load_labels(path, shape, affine):
    """Load a label image (an integer per voxel, e.g. a segmentation) on the data grid."""
    labels = _load_on_grid(path, shape, affine, "label image")
    if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
        raise QSMInputError(f"{path}: the label image holds non-integer values; give a segmentation "
                            "with one integer label per voxel")
    return labels.astype(np.int64)


def load_field(path, shape=None, *, name=None):
    """Load a 3D field map (Hz or ppm), with its affine."""
    data, affine = load_nifti(path, name=name)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise QSMInputError(f"{path}: shape {data.shape} is not a 3D volume; give a 3D field map")
    if shape is not None and data.shape != tuple(shape):
        raise QSMInputError(f"{path}: shape {data.shape} differs from {tuple(shape)}")
    if not np.all(np.isfinite(data)):
        raise QSMInputError(f"{path}: holds NaN or infinite values; replace them with 0 outside the brain")
    return data, affine
