"""Early input checks shared by every stage.

Each check raises :class:`~qsmlib.errors.QSMInputError` with a message that
names the input, states the problem and says how to fix it. ``name`` is what
the user knows the input by: a file name from the I/O layer, or an argument
name when a function is called directly.
"""

import numpy as np

from .errors import QSMInputError

#: Echo times above this many seconds are refused: no gradient echo for QSM is that long
#: (brain signal is gone after about 0.1 s); usually milliseconds were given.
MAX_PLAUSIBLE_TE_S = 0.2
#: A last echo time below this many seconds is refused: the phase would hardly evolve
#: (usually microseconds, or milliseconds divided by 1000 twice).
MIN_PLAUSIBLE_LAST_TE_S = 5e-4
#: Field strengths outside this range (tesla) are refused.
B0_RANGE_T = (0.05, 21.2)


def as_volume(array, name, *, ndim=3, dtype=np.float32, allow_complex=False):
    """Return ``array`` as a finite ``ndim``-dimensional array of ``dtype``.

    The input is never modified: a converted copy is returned when needed.
    """
    array = np.asarray(array)
    if array.ndim != ndim:
        what = "a 2D image" if array.ndim == 2 else f"a {array.ndim}D array"
        raise QSMInputError(
            f"{name}: got {what} of shape {array.shape}, but a {ndim}D volume is needed; "
            "QSM needs a 3D acquisition (give the whole volume, not one slice)")
    if np.iscomplexobj(array) and not allow_complex:
        raise QSMInputError(f"{name}: complex values where real values are needed; "
                            "give magnitude and phase separately")
    if min(array.shape[:3]) < 2:
        raise QSMInputError(f"{name}: shape {array.shape} has an axis with one voxel; "
                            "QSM needs a 3D volume with at least 2 voxels along each axis")
    array = array.astype(np.result_type(dtype, np.complex64) if np.iscomplexobj(array)
                         else dtype, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        raise QSMInputError(
            f"{name}: {int(bad.sum())} voxels are NaN or infinite; "
            "replace them (for example with 0 outside the brain) before processing")
    return array


def as_mask(mask, shape, name="mask"):
    """Return ``mask`` as a non-empty boolean array of ``shape``."""
    if mask is None:
        raise QSMInputError(f"{name}: a brain mask is required here; "
                            "give one, or let the pipeline compute it from the magnitude")
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise QSMInputError(f"{name}: shape {mask.shape} does not match the data shape "
                            f"{tuple(shape)}; give a mask on the same voxel grid")
    if not np.all(np.isfinite(mask)):
        raise QSMInputError(f"{name}: the mask holds NaN values; give a 0/1 mask")
    mask = mask > 0.5 if mask.dtype != bool else mask
    if not mask.any():
        raise QSMInputError(f"{name}: the mask is empty (no voxel is set); "
                            "check the mask file or use the automatic mask")
    return mask


def as_voxel_size(voxel_size, name="voxel_size"):
    """Return the voxel size in mm as three positive floats."""
    vs = np.atleast_1d(np.asarray(voxel_size, dtype=np.float64)).ravel()
    if vs.size == 1:
        vs = np.repeat(vs, 3)
    if vs.size < 3 or not np.all(np.isfinite(vs[:3])) or np.any(vs[:3] <= 0):
        raise QSMInputError(f"{name}: {voxel_size!r} is not a valid voxel size; "
                            "give three positive numbers in mm")
    vs = vs[:3]
    if np.any(vs > 20) or np.any(vs < 0.01):
        raise QSMInputError(f"{name}: {tuple(vs)} mm is implausible; "
                            "give the voxel size in mm (for example 1 1 1)")
    return tuple(float(v) for v in vs)


def as_b0_dir(b0_dir, name="b0_dir"):
    """Return the B0 direction in voxel coordinates as a unit 3-vector."""
    v = np.asarray(b0_dir, dtype=np.float64).ravel()
    norm = np.linalg.norm(v) if v.size == 3 else 0.0
    if v.size != 3 or not np.isfinite(norm) or norm == 0:
        raise QSMInputError(f"{name}: {b0_dir!r} is not a direction; "
                            "give three numbers, for example 0 0 1")
    return tuple(float(x) for x in v / norm)


def _numbers(values):
    """``[0.004, 0.008]``: plain numbers for messages (no ``np.float64(...)``)."""
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def _plausible_te(te):
    return te.max() <= MAX_PLAUSIBLE_TE_S and te.max() >= MIN_PLAUSIBLE_LAST_TE_S


def check_echo_times(te_s, n_echoes=None, name="echo times"):
    """Return echo times in seconds as a float64 array, refusing other units.

    Milliseconds, microseconds and values 1000 times too small are refused
    with the corrected values when rescaling by 1000 (or 10^6) gives
    plausible echo times, and with the unit alone otherwise.

    Raises
    ------
    QSMInputError
        Naming ``name`` (the option or the sidecar the values came from).
    """
    try:
        te = np.atleast_1d(np.asarray(te_s, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        raise QSMInputError(f"{name}: {te_s!r} are not valid echo times; give numbers in seconds") from None
    if te.size == 0 or not np.all(np.isfinite(te)):
        raise QSMInputError(f"{name}: {_numbers(te) if te.size else '[]'} are not valid echo times; "
                            "give numbers in seconds")
    if np.any(te <= 0):
        raise QSMInputError(f"{name}: echo times must be positive, got {_numbers(te)} s")
    if te.max() > MAX_PLAUSIBLE_TE_S:
        if _plausible_te(te / 1e6) and te.max() >= 1000:
            raise QSMInputError(f"{name}: {_numbers(te)} look like microseconds; echo times are in seconds, "
                                f"so give {_numbers(te / 1e6)}")
        if _plausible_te(te / 1000):
            raise QSMInputError(f"{name}: {_numbers(te)} look like milliseconds; echo times are in seconds, "
                                f"so give {_numbers(te / 1000)}")
        raise QSMInputError(f"{name}: {_numbers(te)} s are longer than any gradient echo for QSM (brain signal "
                            f"is gone after about 0.1 s); give every echo time in seconds, for example 0.004 "
                            "for 4 ms")
    if te.max() < MIN_PLAUSIBLE_LAST_TE_S:
        fix = (f"; if they were milliseconds divided by 1000 twice, give {_numbers(te * 1000)}"
               if _plausible_te(te * 1000) else "")
        raise QSMInputError(f"{name}: {_numbers(te)} s are too short for QSM (the last echo before 0.5 ms: "
                            f"the phase hardly evolves); echo times are in seconds, for example 0.004 for 4 ms"
                            + fix)
    if te.size > 1 and np.any(np.diff(te) <= 0):
        raise QSMInputError(f"{name}: {_numbers(te)} s are not strictly increasing; "
                            "list the echoes in acquisition order")
    if n_echoes is not None and te.size != n_echoes:
        raise QSMInputError(f"{name}: {te.size} echo times given for {n_echoes} echoes; "
                            "give one echo time per echo")
    return te


def check_b0(b0_t, name="B0"):
    """Return the field strength in tesla, refusing implausible values."""
    try:
        b0 = float(b0_t)
    except (TypeError, ValueError):
        raise QSMInputError(f"{name}: {b0_t!r} is not a number; give the field strength in tesla") from None
    low, high = B0_RANGE_T
    if not (low <= b0 <= high):
        gamma_mhz = 42.577478
        if low <= b0 / 1000 <= high and b0 >= 1000:
            likely = f"; it looks like millitesla: give {b0 / 1000:.4g}"
        elif low <= b0 / (gamma_mhz * 1e6) <= high:
            likely = f"; it looks like the Larmor frequency in Hz: give {b0 / (gamma_mhz * 1e6):.4g}"
        elif low <= b0 / gamma_mhz <= high and b0 > high:
            likely = f"; it looks like the Larmor frequency in MHz: give {b0 / gamma_mhz:.4g}"
        else:
            likely = ""
        raise QSMInputError(f"{name}: {b0:g} T is outside {low:g}-{high:g} T; "
                            f"give the field strength in tesla (for example 3){likely}")
    return b0


def check_same_shape(shape_a, shape_b, name_a, name_b):
    """Refuse two inputs whose spatial shapes differ."""
    if tuple(shape_a[:3]) != tuple(shape_b[:3]):
        raise QSMInputError(f"{name_a} has shape {tuple(shape_a)} but {name_b} has shape "
                            f"{tuple(shape_b)}; they must be on the same voxel grid")


def check_number(value, name, *, minimum=0.0, strict=False, maximum=None, unit=""):
    """Return ``value`` as a finite float within bounds, else a QSMInputError naming ``name``.

    ``minimum`` is inclusive unless ``strict``; ``maximum`` (inclusive) is optional;
    ``unit`` (for example ``" mm"``) is quoted in the message.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QSMInputError(f"{name}: {value!r} is not a number; give a number{unit}") from None
    too_small = minimum is not None and (number <= minimum if strict else number < minimum)
    too_large = maximum is not None and number > maximum
    if not np.isfinite(number) or too_small or too_large:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if strict else '>='} {minimum:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        shown = f"{number:g}" if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else repr(value)
        raise QSMInputError(f"{name}: {shown} is out of range; give a number{unit} "
                            f"{' and '.join(bounds)}".rstrip())
    return number


def check_count(value, name, *, minimum=1):
    """Return ``value`` as an int of at least ``minimum`` (an iteration count, say)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise QSMInputError(f"{name}: {value!r} is not a whole number >= {minimum}")
    return int(value)


def check_padding_size(pads, shape, name="pad_voxels"):
    """Refuse a zero-padding wider than twice the image along an axis (it only costs memory).

    Parameters
    ----------
    pads : sequence of 3 int
        Padding in voxels per axis, already checked to be whole and non-negative.
    shape : sequence of 3 int
        The image shape.

    Returns
    -------
    tuple of int
        ``pads``.
    """
    limit = [2 * int(n) for n in shape[:3]]
    if any(int(p) > m for p, m in zip(pads, limit)):
        raise QSMInputError(f"{name}: {tuple(int(p) for p in pads)} voxels is wider than twice the image "
                            f"({' x '.join(str(int(n)) for n in shape[:3])}), which only costs memory; give at "
                            f"most {tuple(limit)}")
    return tuple(int(p) for p in pads)
