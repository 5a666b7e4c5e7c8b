"""Phase helpers shared by reading, unwrapping, field fitting and simulation."""

import numpy as np

TWO_PI = 2.0 * np.pi


def wrap_to_pi(phase, dtype=None):
    """Wrap radians to [-pi, pi) (a new array), computed in float64.

    The result has ``dtype`` if given, else the input's float precision
    (float64 for other inputs), and never equals +pi after that rounding.
    """
    phase = np.asarray(phase)
    if dtype is None:
        dtype = phase.dtype if phase.dtype in (np.float32, np.float64) else np.float64
    dtype = np.dtype(dtype)
    wrapped = (phase - TWO_PI * np.floor((phase.astype(np.float64) + np.pi) / TWO_PI)).astype(dtype)
    wrapped[wrapped >= dtype.type(np.pi)] = -dtype.type(np.pi)
    return wrapped
