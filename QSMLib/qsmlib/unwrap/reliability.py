"""Exact 3D phase unwrapping by reliability-sorted path following.

Every voxel is given a reliability from the second differences of the wrapped
phase over its 3x3x3 neighbourhood (smooth phase is reliable). The edges
between face neighbours are sorted by the sum of their voxels' reliabilities
and joined most reliable first, each join shifting the smaller group by the
multiple of 2 pi that makes the edge's phase step smaller than pi
(Herraez et al., Appl Opt 2002; Abdul-Rahman et al., Appl Opt 2007). The
result is congruent with the input: it differs from it by an integer number
of 2 pi at every voxel.

The path following itself is scikit-image's implementation
(:func:`skimage.restoration.unwrap_phase`, a C port of the authors' code);
this module adds the mask handling, the cropping to the mask's bounding box
(which makes it several times faster on a head volume) and a reproducible
choice of the global 2 pi offset.
"""

import inspect

import numpy as np
from scipy import ndimage

from ..masking import bounding_box
from ..phase import TWO_PI, wrap_to_pi
from ..validation import as_mask, as_volume, as_voxel_size

def unwrap_reliability(phase, mask=None, voxel_size=(1, 1, 1)):
    """Unwrap a 3D phase image exactly by quality-guided (reliability) path following.

    Parameters
    ----------
    phase : ndarray, shape (X, Y, Z)
        Phase in radians, wrapped or not (it is wrapped to [-pi, pi) first).
    mask : ndarray of bool, shape (X, Y, Z), optional
        Region to unwrap. Voxels outside are ignored (they carry no path) and
        set to 0 in the result. Default: the whole volume.
    voxel_size : sequence of 3 float, optional
        Voxel size in mm. Not used by the method (the reliability is defined
        on voxel indices); accepted so that every unwrapper has the same
        signature.

    Returns
    -------
    ndarray, float32, shape (X, Y, Z)
        Unwrapped phase in radians, 0 outside ``mask``. At every voxel of the
        mask, ``(result - phase) / (2 pi)`` is an integer.

    Raises
    ------
    QSMInputError
        If ``phase`` is not a finite 3D volume, or ``mask`` does not match it
        or is empty.

    Notes
    -----
    Unwrapping fixes the phase only up to one multiple of 2 pi per connected
    region (face connectivity). Each connected component of the mask is
    therefore shifted by the multiple of 2 pi that puts its median phase in
    [-pi, pi). Separate components are unwrapped independently: their
    relative offset is not observable from the phase, so a component that is
    really offset by 2 pi k from its neighbour (for example a detached piece
    of cortex in a rapidly varying field) keeps the median rule instead.
    Give a mask with one connected brain region where that matters.

    Voxels with no signal (calcifications, the skull) carry random phase and
    may be unwrapped wrongly in small isolated clusters; the rest of the
    volume is not affected because they are joined last.

    References
    ----------
    Herraez MA, Burton DR, Lalor MJ, Gdeisat MA. Fast two-dimensional phase-
    unwrapping algorithm based on sorting by reliability following a
    noncontinuous path. Appl Opt 2002;41:7437-7444.

    Abdul-Rahman HS, Gdeisat MA, Burton DR, Lalor MJ, Lilley F, Moore CJ.
    Fast and robust three-dimensional best path phase unwrapping algorithm.
    Appl Opt 2007;46:6623-6635.

    van der Walt S, Schoenberger JL, Nunez-Iglesias J, et al. scikit-image:
    image processing in Python. PeerJ 2014;2:e453.
    """
    phase = as_volume(phase, "phase", dtype=np.float64)
    as_voxel_size(voxel_size)
    shape = phase.shape
    if mask is None:
        mask = np.ones(shape, dtype=bool)
    else:
        mask = as_mask(mask, shape)

    box = bounding_box(mask)
    region = mask[box]
    wrapped = np.ascontiguousarray(wrap_to_pi(phase[box]))
    unwrapped = _skimage_unwrap(wrapped, region)

    labels, n_components = ndimage.label(region)
    unwrapped -= TWO_PI * _offset_turns(unwrapped, labels, n_components)

    out = np.zeros(shape, dtype=np.float32)
    out[box] = np.where(region, unwrapped, 0.0)
    return out


def _skimage_unwrap(wrapped, region):
    """scikit-image's 3D reliability unwrapper with a fixed seed (float64 result)."""
    from skimage.restoration import unwrap_phase

    # A fixed seed makes ties in reliability, and so the result, reproducible;
    # scikit-image < 0.22 calls the argument ``seed``, later versions ``rng``.
    params = inspect.signature(unwrap_phase).parameters
    seed = {"rng": 0} if "rng" in params else {"seed": 0}
    image = wrapped if region.all() else np.ma.array(wrapped, mask=~region)
    result = unwrap_phase(image, wrap_around=False, **seed)
    return np.array(np.ma.getdata(result), dtype=np.float64)


def _offset_turns(unwrapped, labels, n_components):
    """Per-voxel number of 2 pi turns that puts each component's median in [-pi, pi)."""
    inside = labels > 0
    values = unwrapped[inside]
    if n_components <= 1:
        medians = np.array([np.median(values)]) if values.size else np.zeros(1)
    else:
        # Sort by component, then by value: each component's median sits mid-run.
        component = labels[inside]
        order = np.lexsort((values, component))
        values = values[order]
        counts = np.bincount(component, minlength=n_components + 1)[1:]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        medians = 0.5 * (values[starts + (counts - 1) // 2] + values[starts + counts // 2])
    turns = np.concatenate(([0.0], np.floor((medians + np.pi) / TWO_PI)))
    return turns[labels]
