"""Input checks shared by the field-fitting methods of this package."""

import inspect

import numpy as np

from ..errors import QSMInputError
from ..phase import TWO_PI
from ..validation import as_volume


def as_echo_volumes(magnitude, phase):
    """Magnitude and phase as float32 (X, Y, Z, E) arrays of the same shape."""
    if np.issubdtype(np.asarray(phase).dtype, np.integer):
        raise QSMInputError("phase: integer values look like unscaled scanner phase; "
                            "rescale it to radians first (qsmlib.io does this on reading)")
    arrays = []
    for array, name in ((magnitude, "magnitude"), (phase, "phase")):
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[..., np.newaxis]
        elif array.ndim != 4:
            raise QSMInputError(f"{name}: got shape {array.shape}; give a 4D array "
                                "(X, Y, Z, echoes), or a 3D volume for one echo")
        arrays.append(as_volume(array, name, ndim=4))
    magnitude, phase = arrays
    if magnitude.shape != phase.shape:
        raise QSMInputError(f"magnitude has shape {magnitude.shape} but phase has shape "
                            f"{phase.shape}; give one magnitude and one phase volume per echo "
                            "on the same grid")
    if magnitude.min() < 0:
        raise QSMInputError("magnitude: negative values found; give the magnitude image "
                            "(not the real part or a phase image)")
    return magnitude, phase


def unwrap_checked(unwrap, phase, mask, voxel_size, magnitude=None):
    """Call the user's unwrapper, check its result, and make it congruent with ``phase``.

    ``magnitude`` is passed on to unwrappers that take it (quality weights, as in ROMEO).

    The temporal unwrapping builds on this result as if it were the measured
    phase plus whole turns. An estimate that is not (the Laplacian one) is
    snapped to the nearest such value, which leaves an exact unwrapper's
    result unchanged.
    """
    extra = {}
    if magnitude is not None:
        try:
            if "magnitude" in inspect.signature(unwrap).parameters:
                extra["magnitude"] = magnitude
        except (TypeError, ValueError):  # a callable without a signature: call it plainly
            pass
    result = np.asarray(unwrap(phase, mask, voxel_size, **extra))
    if result.shape != phase.shape or not np.all(np.isfinite(result[mask])):
        raise QSMInputError(f"unwrap: {getattr(unwrap, '__name__', unwrap)} returned shape "
                            f"{result.shape} or non-finite values; it must return a finite "
                            f"volume of shape {phase.shape}")
    wrapped = phase.astype(np.float64)
    return wrapped + TWO_PI * np.round((result - wrapped) / TWO_PI)
