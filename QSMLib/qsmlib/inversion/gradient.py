"""Finite-difference gradient and divergence on a periodic grid, and their k-space eigenvalues.

The regularised inversions penalise the spatial gradient of the susceptibility.
To solve their quadratic sub-problems exactly with FFTs, the difference
operators are circulant: they wrap around the (zero-padded) FFT grid, so they
are diagonalised by the same transform as the dipole kernel.

Voxel-size scaling
------------------
Differences are divided by the voxel size along their axis, so the gradient is
in ppm per mm, whatever the resolution or anisotropy of the grid:

    (G_d x)[n] = (x[n + e_d] - x[n]) / h_d                (forward difference)
    (div y)[n] = sum_d (y_d[n] - y_d[n - e_d]) / h_d      (backward difference)

so that ``div = -G^T`` exactly. On the rfft grid, a forward difference along an
axis of ``N`` samples and spacing ``h`` multiplies Fourier index ``m`` by

    E(m) = (exp(2 pi i m / N) - 1) / h,    |E(m)|^2 = (4 / h^2) sin^2(pi m / N),

and ``sum_d |E_d|^2`` is minus the eigenvalue of the 7-point Laplacian
(:func:`qsmlib.fourier.laplacian_eigenvalues`). A regularisation weight
therefore carries the unit that makes its term match the data term: mm^2 for
the L2 gradient penalty and ppm mm for total variation. At 1 mm isotropic the
operators equal the plain voxel differences used in most published code, so
published 1 mm parameter values carry over unchanged.
"""

from functools import lru_cache

import numpy as np

from .. import fourier
from ..errors import QSMInputError
from ..validation import as_volume, as_voxel_size

#: Size of one array's slab in slab-by-slab pointwise steps (:func:`shrink_dual`): with the other
#: arrays of the step (eight in all, about 6 MB) it stays in a typical L3 cache between passes.
#: Measured best at 4 planes of 216 x 216 (0.75 MB) on a two-core host with 32 MB of L3.
SLAB_BYTES = 768 * 1024


def gradient(x, voxel_size, *, out=None):
    """Periodic forward-difference gradient in units of ``x`` per mm.

    Parameters
    ----------
    x : ndarray, shape (X, Y, Z)
        Volume (for example susceptibility in ppm).
    voxel_size : sequence of 3 float
        Voxel size in mm; the difference along axis ``d`` is divided by
        ``voxel_size[d]``.
    out : ndarray, shape (3, X, Y, Z), float32, optional
        Where to write the result.

    Returns
    -------
    ndarray, shape (3, X, Y, Z), float32
        ``out[d]`` is the difference along axis ``d``; the last sample of each
        axis differences against the first (periodic boundary).

    Raises
    ------
    QSMInputError
        If ``x`` is not a finite 3D volume or ``voxel_size`` is invalid.
    """
    x = as_volume(x, "x")
    inv_h = [1.0 / h for h in as_voxel_size(voxel_size)]
    if out is None:
        out = np.empty((3,) + x.shape, dtype=np.float32)
    forward_differences(x, out, inv_h)
    return out


def divergence(y, voxel_size, *, out=None):
    """Periodic backward-difference divergence, the negative adjoint of :func:`gradient`.

    Parameters
    ----------
    y : ndarray, shape (3, X, Y, Z)
        Vector field; ``y[d]`` is the component along voxel axis ``d``.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    out : ndarray, shape (X, Y, Z), float32, optional
        Where to write the result.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        ``sum_d (y_d[n] - y_d[n - e_d]) / h_d``, so that
        ``<gradient(x), y> == -<x, divergence(y)>``.

    Raises
    ------
    QSMInputError
        If ``y`` is not a finite (3, X, Y, Z) array or ``voxel_size`` is invalid.
    """
    y = as_volume(y, "y", ndim=4)
    if y.shape[0] != 3:
        raise QSMInputError(f"y: shape {y.shape} is not a 3-component vector field; "
                            "give an array of shape (3, X, Y, Z)")
    inv_h = [1.0 / h for h in as_voxel_size(voxel_size)]
    if out is None:
        out = np.empty(y.shape[1:], dtype=np.float32)
    backward_divergence(y, out, inv_h)
    return out


def gradient_eigenvalues(shape, voxel_size):
    """Eigenvalues of the three forward differences on the rfft grid of real-space ``shape``.

    Parameters
    ----------
    shape : sequence of 3 int
        Real-space (padded) grid shape.
    voxel_size : sequence of 3 float
        Voxel size in mm.

    Returns
    -------
    tuple of 3 ndarray, complex128
        Broadcastable 1D views ``E_d = (exp(2 pi i m / N_d) - 1) / h_d``, in 1/mm,
        such that ``rfft(gradient(x)[d]) == E_d * rfft(x)``.
    """
    return _gradient_eigenvalues(tuple(int(n) for n in shape), as_voxel_size(voxel_size))


def gradient_norm_squared(shape, voxel_size):
    """``sum_d |E_d|^2`` on the rfft grid (float32, 1/mm^2): the eigenvalues of ``-div grad``."""
    return _gradient_norm_squared(tuple(int(n) for n in shape), as_voxel_size(voxel_size))


@lru_cache(maxsize=4)
def _gradient_eigenvalues(shape, voxel_size):
    eig = []
    last = len(shape) - 1
    for axis, (n, h) in enumerate(zip(shape, voxel_size)):
        m = np.arange(n // 2 + 1 if axis == last else n)
        view = [1] * len(shape)
        view[axis] = m.size
        e = (np.exp(2j * np.pi * m / n) - 1.0) / h
        e = e.reshape(view)
        e.setflags(write=False)
        eig.append(e)
    return tuple(eig)


@lru_cache(maxsize=4)
def _gradient_norm_squared(shape, voxel_size):
    # -Laplacian eigenvalues equal sum_d |E_d|^2 exactly for these differences.
    e2 = -fourier.laplacian_eigenvalues(shape, voxel_size)
    e2.setflags(write=False)
    return e2


def forward_differences(x, out, inv_h):
    """Write the periodic forward differences of ``x`` times ``inv_h[d]`` into ``out[d]``.

    Low-level and allocation-free: ``x`` is float32 3D, ``out`` a float32
    (3, X, Y, Z) array (or a sequence of three 3D arrays) not aliasing ``x``.
    """
    for d in range(3):
        lead = [slice(None)] * 3
        lag = [slice(None)] * 3
        lead[d], lag[d] = slice(1, None), slice(None, -1)
        g = out[d]
        np.subtract(x[tuple(lead)], x[tuple(lag)], out=g[tuple(lag)])
        first, last = [slice(None)] * 3, [slice(None)] * 3
        first[d], last[d] = slice(0, 1), slice(-1, None)
        np.subtract(x[tuple(first)], x[tuple(last)], out=g[tuple(last)])
        if inv_h[d] != 1.0:
            g *= np.float32(inv_h[d])
    return out


def backward_divergence(y, out, inv_h, scratch=None):
    """Write ``sum_d (y_d[n] - y_d[n - e_d]) * inv_h[d]`` into ``out``.

    Low-level: ``out`` (float32 3D) must not alias ``y``; ``scratch`` is an
    optional float32 3D work array of the same shape (allocated when needed).
    """
    for d in range(3):
        yd = y[d]
        cur, prev = [slice(None)] * 3, [slice(None)] * 3
        cur[d], prev[d] = slice(1, None), slice(None, -1)
        first, last = [slice(None)] * 3, [slice(None)] * 3
        first[d], last[d] = slice(0, 1), slice(-1, None)
        scale = np.float32(inv_h[d])
        if d == 0:
            target = out
        else:
            if scratch is None:
                scratch = np.empty_like(out)
            target = scratch
        np.subtract(yd[tuple(cur)], yd[tuple(prev)], out=target[tuple(cur)])
        np.subtract(yd[tuple(first)], yd[tuple(last)], out=target[tuple(first)])
        if scale != 1.0:
            target *= scale
        if d > 0:
            out += target
    return out


def shrink_dual(work, dual, threshold, radius, scratch=None):
    """The ADMM shrinkage step of an L1 term, in place, with the scaled dual.

    On entry ``work`` holds ``v = T chi + u`` (T the gradient, shape (3, X, Y, Z),
    or the identity, shape (X, Y, Z)). On return ``dual`` holds the new dual
    ``u = v - shrink(v, threshold)``, the projection of ``v`` onto the ball of
    radius ``threshold`` (isotropic over the first axis for gradients), and
    ``work`` holds ``z - u = v - 2 u``, what the chi-update needs. ``radius``
    (and, for gradients, ``scratch``) are float32 3D work arrays.

    The steps run slab by slab along X, each slab small enough to stay in the
    CPU cache between them: the same arithmetic, in about half the time.
    """
    plane_bytes = radius[0].nbytes
    planes = max(1, SLAB_BYTES // plane_bytes)
    for start in range(0, radius.shape[0], planes):
        slab = slice(start, start + planes)
        _shrink_slab(work[..., slab, :, :], dual[..., slab, :, :], threshold, radius[slab],
                     None if scratch is None else scratch[slab])
    return work


def _shrink_slab(work, dual, threshold, radius, scratch):
    if work.ndim == 4:
        np.multiply(work[0], work[0], out=radius)
        for d in range(1, work.shape[0]):
            np.multiply(work[d], work[d], out=scratch)
            radius += scratch
        np.sqrt(radius, out=radius)
    else:
        np.abs(work, out=radius)
    np.maximum(radius, threshold, out=radius)
    np.divide(threshold, radius, out=radius)
    np.multiply(work, radius, out=dual)
    work -= dual
    work -= dual
