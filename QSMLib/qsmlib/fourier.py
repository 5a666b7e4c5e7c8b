"""FFT helpers: worker count, fast padded shapes, k-space coordinates.

All convolutions in QSMLib are done with real FFTs (``scipy.fft.rfftn``) on a
zero-padded grid of a fast FFT size. Data sit at the start of the padded grid
and are cropped back with :func:`crop`; kernels are defined in k-space on the
padded grid, so circular wrap-around falls into the padding. Every FFT runs on
:func:`fft_workers` threads (set them with :func:`qsmlib.set_threads`).
"""

import threading
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from .parallel import get_threads


def fft_workers():
    """Number of threads for scipy.fft: :func:`qsmlib.parallel.get_threads`.

    Pass it as ``workers=`` to every ``scipy.fft`` call, so that
    :func:`qsmlib.set_threads`, ``QSMLIB_FFT_WORKERS`` and ``--threads`` hold.
    """
    return get_threads()


def padded_shape(shape, pad_voxels=0):
    """Smallest fast real-FFT shape holding ``shape`` plus ``pad_voxels`` per axis.

    ``pad_voxels`` is one int for all axes or one per axis.
    """
    pads = np.broadcast_to(np.asarray(pad_voxels, dtype=int), (len(shape),))
    return tuple(int(sfft.next_fast_len(int(n) + int(p), real=True)) for n, p in zip(shape, pads))


def pad(array, shape):
    """Zero-pad ``array`` at the end of each axis up to ``shape`` (a new array)."""
    if tuple(array.shape) == tuple(shape):
        return array.copy()
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def crop(array, shape):
    """Inverse of :func:`pad`: the leading ``shape`` block of ``array``."""
    return array[tuple(slice(0, n) for n in shape)]


def rfft(array, shape=None):
    """Real 3D FFT of ``array`` zero-padded to ``shape``."""
    grid = tuple(array.shape) if shape is None else tuple(shape)
    _tally_transform(grid)
    return sfft.rfftn(array, s=shape, workers=fft_workers())


def irfft(spectrum, shape):
    """Inverse of :func:`rfft` onto the padded ``shape`` (crop the result yourself)."""
    _tally_transform(tuple(shape))
    return sfft.irfftn(spectrum, s=shape, workers=fft_workers())


_open_tallies = threading.local()


@contextmanager
def fft_tally():
    """Count the real FFTs that :func:`rfft` and :func:`irfft` run in this thread within the block.

    Yields a dict that fills up as the block runs: ``{grid shape: number of
    transforms}``, one forward or one inverse transform counting 1 (a pair is
    2). Tallies nest; each counts every transform of its block. The pipeline
    reports each stage's cost in FFT pairs of its own grid with it (issue 16).
    """
    tally = {}
    stack = getattr(_open_tallies, "stack", None)
    if stack is None:
        stack = _open_tallies.stack = []
    stack.append(tally)
    try:
        yield tally
    finally:
        stack.remove(tally)


def _tally_transform(grid):
    for tally in getattr(_open_tallies, "stack", ()):
        tally[grid] = tally.get(grid, 0) + 1


@lru_cache(maxsize=8)
def kspace_coordinates(shape, voxel_size_mm):
    """Spatial frequencies (cycles/mm) of an rfft grid, as three broadcastable arrays.

    ``shape`` is the real-space shape; the last axis is halved as in ``rfftn``.
    The arrays are float64 views of small 1D vectors and cost almost no memory.
    """
    k = []
    for axis, (n, d) in enumerate(zip(shape, voxel_size_mm)):
        freq = sfft.rfftfreq(n, d) if axis == len(shape) - 1 else sfft.fftfreq(n, d)
        view = [1] * len(shape)
        view[axis] = freq.size
        k.append(freq.reshape(view))
    return tuple(k)


@lru_cache(maxsize=4)
def laplacian_eigenvalues(shape, voxel_size_mm):
    """Eigenvalues (rfft layout, float32) of the 7-point discrete Laplacian, in 1/mm^2.

    The periodic second difference along an axis of spacing ``h`` has the
    eigenvalue ``-(4 / h^2) sin^2(pi m / n)`` at index ``m``.
    """
    total = np.zeros(_rfft_shape(shape), dtype=np.float32)
    for axis, (n, h) in enumerate(zip(shape, voxel_size_mm)):
        m = np.arange(n // 2 + 1 if axis == len(shape) - 1 else n)
        view = [1] * len(shape)
        view[axis] = m.size
        total += (-(4.0 / h ** 2) * np.sin(np.pi * m / n) ** 2).astype(np.float32).reshape(view)
    return total


def _rfft_shape(shape):
    return tuple(shape[:-1]) + (shape[-1] // 2 + 1,)
