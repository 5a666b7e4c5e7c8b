"""Detect how scanner phase is scaled and convert it to radians in [-pi, pi).

Scanner phase arrives as radians, as 12-bit DICOM integers (-4096..4095 or
0..4095), in degrees, or as arbitrary floats. :func:`phase_to_radians` detects
which, rescales, and reports what it did so the log and provenance can say so.
Input that cannot be phase (for example a magnitude image) is refused.
"""

import numpy as np

from ..errors import QSMInputError
from ..phase import wrap_to_pi

_TOL = 1e-3
#: Phase spanning less than this (radians) is taken to be in other units.
MIN_RADIAN_SPAN = 0.5


#: Elements converted at a time: the float64 temporaries stay small beside the image.
_BLOCK_ELEMENTS = 1 << 21


def _sample(values, count):
    """About ``count`` values (every n-th along the first axis), as float64."""
    return np.asarray(values[:: max(1, values.size // count)], dtype=np.float64)


def _is_integer_valued(values):
    sample = _sample(values, 200000)
    return bool(np.all(np.abs(sample - np.round(sample)) < 1e-6))


def _quantisation_step(values):
    """Spacing of the levels of an integer phase stored as scaled floats (0 if continuous).

    A 12-bit phase has 4096 levels and its maximum is one step below +pi, so the
    full 2 pi corresponds to the observed range plus one step.
    """
    levels = np.unique(_sample(values, 2000000))
    if levels.size < 16 or levels.size > 65536:
        return 0.0
    return float(np.min(np.diff(levels)))


def _looks_like_phase(values, low, high):
    """Wrapped phase fills its range to both ends; magnitude piles up near zero."""
    span = high - low
    sample = _sample(values, 500000)
    top = np.mean(sample > high - 0.1 * span)
    bottom = np.mean(sample < low + 0.1 * span)
    return top > 0.01 and bottom > 0.01


def phase_to_radians(phase, name="phase"):
    """Return ``(phase_rad, scaling)`` for phase in any common scale.

    Parameters
    ----------
    phase : ndarray
        Phase image(s), any shape. Never modified.
    name : str
        How to name the input in messages (usually the file name).

    Returns
    -------
    phase_rad : ndarray, float32
        Phase in radians, wrapped to [-pi, pi).
    scaling : dict
        ``{"detected": ..., "scale": a, "offset": b, "range": [min, max]}`` with
        ``phase_rad = wrap(a * phase + b)``.

    Raises
    ------
    QSMInputError
        When the values are constant, or look like a magnitude image.
    """
    values = np.asarray(phase)
    if values.dtype.kind not in "biuf":
        raise QSMInputError(f"{name}: the phase image holds {values.dtype} values; give real numbers")
    low, high = float(values.min()), float(values.max())
    if not high > low:
        raise QSMInputError(f"{name}: the phase image is constant ({low}); "
                            "check that this is the phase file")
    # A span far below 2 pi inside [-pi, pi] cannot be radians (background noise
    # alone fills the range): it is a scaled integer phase, as in some NIfTI exports.
    if low >= -np.pi - _TOL and high <= np.pi + _TOL and high - low > MIN_RADIAN_SPAN:
        detected, scale, offset = "radians in [-pi, pi]", 1.0, 0.0
    elif low >= -_TOL and high <= 2 * np.pi + _TOL and high - low > np.pi:
        detected, scale, offset = "radians in [0, 2 pi]", 1.0, 0.0
    elif low >= -180.5 and high <= 180.5 and high - low > 300 and not _is_integer_valued(values):
        detected, scale, offset = "degrees", np.pi / 180.0, 0.0
    elif _is_integer_valued(values) and low >= -4096 and high <= 4095 and high - low > 1000:
        if low < 0:
            detected, scale, offset = "12-bit signed integers (-4096..4095)", np.pi / 4096.0, 0.0
        else:
            detected, scale, offset = "12-bit unsigned integers (0..4095)", 2 * np.pi / 4096.0, -np.pi
    else:
        detected = "arbitrary units, rescaled from the observed minimum and maximum"
        scale = 2 * np.pi / (high - low + _quantisation_step(values))
        offset = -np.pi - low * scale
    if detected != "radians in [-pi, pi]" and not _looks_like_phase(values, low, high):
        raise QSMInputError(
            f"{name}: values from {low:g} to {high:g} do not look like phase (too few voxels near "
            "the top of the range, as in a magnitude image); check that --phase and --mag are "
            "not swapped, or convert the phase to radians yourself")
    # Computed in float64 a block of the first axis at a time (same values as
    # the whole array at once), so the peak memory is the float32 result's.
    flat = values.reshape(1) if values.ndim == 0 else values
    phase_rad = np.empty(flat.shape, dtype=np.float32)
    rows = max(1, _BLOCK_ELEMENTS // max(1, flat[:1].size))
    for start in range(0, flat.shape[0], rows):
        block = np.asarray(flat[start:start + rows], dtype=np.float64)
        phase_rad[start:start + rows] = wrap_to_pi(block * scale + offset, np.float32)
    phase_rad = phase_rad.reshape(values.shape)
    return phase_rad, {"detected": detected, "scale": float(scale), "offset": float(offset),
                       "range": [low, high]}
