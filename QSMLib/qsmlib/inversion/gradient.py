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
from ..slabs import cache_slices
from ..validation import as_volume, as_voxel_size


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
    _forward_planes(x, out, 0, x.shape[0], inv_h)
    return out


def backward_divergence(y, out, inv_h, scratch=None):
    """Write ``sum_d (y_d[n] - y_d[n - e_d]) * inv_h[d]`` into ``out``.

    Low-level: ``out`` (float32 3D) must not alias ``y``; ``scratch`` is an
    optional float32 3D work array of the same shape (allocated when needed).
    """
    if scratch is None:
        scratch = np.empty_like(out)
    _divergence_planes(y, out, 0, out.shape[0], inv_h, scratch)
    return out


def _periodic_steps(a, axis, out, *, forward):
    """``a[n + 1] - a[n]`` along ``axis``, periodic, into ``out`` at ``n`` (forward) or ``n + 1`` (backward)."""
    def along(part):
        index = [slice(None)] * 3
        index[axis] = part
        return tuple(index)

    after, before = along(slice(1, None)), along(slice(None, -1))
    first, last = along(slice(0, 1)), along(slice(-1, None))
    np.subtract(a[after], a[before], out=out[before if forward else after])
    np.subtract(a[first], a[last], out=out[last if forward else first])


def _forward_planes(x, out, start, stop, inv_h):
    """:func:`forward_differences` on the X planes ``start:stop`` only (periodic, as on the whole grid)."""
    n = x.shape[0]
    for d in range(3):
        g = out[d][start:stop]
        if d == 0:
            end = min(stop, n - 1)                  # planes whose next plane is not the wrapped first
            np.subtract(x[start + 1:end + 1], x[start:end], out=g[:end - start])
            if stop == n:
                np.subtract(x[0:1], x[n - 1:n], out=g[n - 1 - start:])
        else:
            _periodic_steps(x[start:stop], d, g, forward=True)
        if inv_h[d] != 1.0:
            g *= np.float32(inv_h[d])


def _divergence_planes(y, out, start, stop, inv_h, scratch):
    """:func:`backward_divergence` on the X planes ``start:stop`` only; ``scratch`` as there."""
    n = out.shape[0]
    for d in range(3):
        yd = y[d]
        target = out[start:stop] if d == 0 else scratch[start:stop]
        if d == 0:
            begin = max(start, 1)                   # planes whose previous plane is not the wrapped last
            np.subtract(yd[begin:stop], yd[begin - 1:stop - 1], out=out[begin:stop])
            if start == 0:
                np.subtract(yd[0:1], yd[n - 1:n], out=out[0:1])
        else:
            _periodic_steps(yd[start:stop], d, target, forward=False)
        scale = np.float32(inv_h[d])
        if scale != 1.0:
            target *= scale
        if d > 0:
            out[start:stop] += target


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
    for slab in cache_slices(radius.shape[0], radius[0].nbytes):
        _shrink_slab(work[..., slab, :, :], dual[..., slab, :, :], threshold, radius[slab],
                     None if scratch is None else scratch[slab])
    return work


def shrink_gradient_dual(chi, dual, threshold, inv_h, work, divergence, scratch):
    """The whole z/u step of a total-variation ADMM, fused slab by slab along X.

    Equal, value for value, to :func:`forward_differences` of ``chi`` into
    ``work``, ``work += dual``, :func:`shrink_dual` and
    :func:`backward_divergence` of ``work`` into ``divergence``, run one after
    the other on the whole grid; here each slab goes through all of them
    while it is in the CPU cache. On return ``dual`` holds the new dual ``u``,
    ``work`` holds ``z - u`` and ``divergence`` holds ``div(z - u)``, what the
    next chi-update transforms. All arrays are float32; ``work`` and ``dual``
    have shape (3, X, Y, Z), the others (X, Y, Z); ``scratch`` is work space.
    """
    slabs = cache_slices(chi.shape[0], chi[0].nbytes)
    for slab in slabs:
        _forward_planes(chi, work, slab.start, slab.stop, inv_h)
        work[:, slab] += dual[:, slab]
        _shrink_slab(work[:, slab], dual[:, slab], threshold, divergence[slab], scratch[slab])
        if slab.start > 0:                          # the first slab's divergence needs the last plane
            _divergence_planes(work, divergence, slab.start, slab.stop, inv_h, scratch)
    _divergence_planes(work, divergence, slabs[0].start, slabs[0].stop, inv_h, scratch)
    return divergence


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
