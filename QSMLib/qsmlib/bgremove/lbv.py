"""LBV: background field removal by the Laplacian boundary value problem (Zhou et al., 2014)."""

import numpy as np
from scipy import ndimage
from scipy import sparse
from scipy.sparse.linalg import splu

from ..errors import QSMInputError
from ..masking import bounding_box
from ..validation import as_mask, as_volume, as_voxel_size, check_count, check_number
from ..solvers import conjugate_gradient

#: Default stopping tolerance: the residual of the Laplace equation relative to
#: its value for a zero local field. On the simulated 1 mm head 1e-3 puts the
#: solver error two orders of magnitude below the method's own error (the local
#: field is not zero on the mask's boundary), in about 10 iterations.
DEFAULT_TOL = 1e-3
#: Weight of the damped Jacobi smoother, 6/7: the best smoothing factor for the
#: 7-point Laplacian in 3D.
_JACOBI_WEIGHT = 6.0 / 7.0
#: The multigrid hierarchy stops coarsening at this many unknowns, where a
#: sparse direct factorisation takes a small fraction of a second.
_COARSEST_UNKNOWNS = 5000


def lbv(field, mask, voxel_size, *, peel=0, max_iter=100, tol=DEFAULT_TOL, callback=None):
    """Remove the background field by solving the Laplacian boundary value problem (LBV).

    The background field ``b`` is harmonic inside the brain, and the local
    field is small on the brain's boundary, so ``b`` is taken as the solution
    of Laplace's equation inside the mask whose value on the mask's boundary
    layer is the total field:

        Laplace(b) = 0 in the interior,   b = f on the boundary,

    with the 7-point discrete Laplacian (anisotropic voxels weighted by
    1 / h^2). The local field is ``f - b`` in the interior. The boundary layer
    is the mask voxels with a face neighbour outside the mask; the interior
    is the rest.

    The linear system is solved by conjugate gradients preconditioned with one
    geometric multigrid V-cycle (damped Jacobi smoothing, full-weighting
    restriction, trilinear prolongation, sparse direct solve on the coarsest
    grid), starting from ``b = f`` (a zero local field).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (Hz or ppm; the result has the same unit).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask, the region where the background field is harmonic.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    peel : int, optional
        Number of further voxel layers (face connectivity) removed from the
        output mask after the solve. The local field is least accurate next
        to the boundary, where it is not zero as the method assumes.
    max_iter : int, optional
        Maximum number of conjugate gradient iterations.
    tol : float, optional
        Stop when the residual norm of the discrete Laplace equation falls
        below ``tol`` times its initial value (for a zero local field).
    callback : callable, optional
        ``callback(iteration, residual)`` after each iteration (from 1), with
        the relative residual. It may raise :class:`qsmlib.Cancelled` to stop.

    Returns
    -------
    local_field : ndarray, float32, shape (X, Y, Z)
        Local field, 0 outside ``mask_out``.
    mask_out : ndarray of bool, shape (X, Y, Z)
        The interior of ``mask`` (its boundary layer removed), eroded by
        ``peel`` more layers: where ``local_field`` is valid.

    Raises
    ------
    QSMInputError
        If the field is not a finite 3D volume, the mask does not match it or
        is empty, the voxel size or an option is invalid, or no voxel is left
        once the boundary layer and ``peel`` layers are removed.

    Notes
    -----
    The multigrid preconditioner makes the iteration count almost
    independent of the brain's size: each iteration costs a few fine-grid
    stencil passes, and the default tolerance takes 5 to 10 iterations
    (under a second for a 1 mm head on two cores).

    References
    ----------
    .. [1] Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by
       solving the Laplacian boundary value problem. NMR Biomed
       2014;27:312-319.
    """
    field = as_volume(field, "field")
    mask = as_mask(mask, field.shape)
    voxel_size = as_voxel_size(voxel_size)
    peel = check_count(peel, "peel", minimum=0)
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")

    interior = ndimage.binary_erosion(mask, border_value=0)
    if not interior.any():
        raise QSMInputError("mask: no voxel is left inside the mask's boundary layer; "
                            "the mask is too thin for LBV: give a larger mask")
    mask_out = interior
    if peel:
        mask_out = ndimage.binary_erosion(interior, iterations=peel, border_value=0)
        if not mask_out.any():
            raise QSMInputError(f"peel: removing {peel} layers leaves no voxel of the mask; "
                                "give a smaller peel")

    # The box holds the mask with one zero voxel around it, grown at the end to
    # sizes that the multigrid halves exactly (2^levels * m + 1 points).
    box = bounding_box(mask)
    box_shape = tuple(s.stop - s.start for s in box)
    levels = _level_count(box_shape, int(interior.sum()))
    step = 2 ** levels
    shape = tuple(-(-(n + 1) // step) * step + 1 for n in box_shape)
    inner = tuple(slice(1, 1 + n) for n in box_shape)
    box_field = np.zeros(shape, dtype=np.float32)
    box_field[inner] = np.where(mask[box], field[box], np.float32(0))
    box_interior = np.zeros(shape, dtype=bool)
    box_interior[inner] = interior[box]

    weights = tuple(1.0 / d ** 2 for d in voxel_size)
    hierarchy = _Hierarchy(box_interior, weights, levels)
    fine = hierarchy.levels[0]

    # b = f on the interior to start (zero local field); the Dirichlet data
    # enter through the residual: r0 = -A f = Laplacian of f in the interior.
    background = np.where(box_interior, box_field, np.float32(0))
    residual = fine.apply(box_field)
    residual *= np.float32(-1.0)
    residual *= fine.mask_f
    background = conjugate_gradient(fine.apply, background, residual, max_iter=max_iter, tol=tol,
                                    callback=callback, precondition=hierarchy.vcycle)

    local = np.zeros(field.shape, dtype=np.float32)
    local[box] = (box_field - background)[inner]
    local *= mask_out
    return local, mask_out


def _level_count(box_shape, unknowns):
    """Number of coarsenings: to about ``_COARSEST_UNKNOWNS`` unknowns, >= 3 points per axis."""
    levels = 0
    while (unknowns / 8 ** levels > _COARSEST_UNKNOWNS
           and min(box_shape) / 2 ** (levels + 1) >= 3):
        levels += 1
    return levels


class _Level:
    """One grid of the hierarchy: its unknowns (``mask``) and Laplacian weights 1 / h^2."""

    def __init__(self, mask, weights):
        self.mask = mask
        self.mask_f = mask.astype(np.float32)
        self.weights = tuple(np.float32(w) for w in weights)
        self.diagonal = np.float32(2.0 * sum(weights))
        self.smoothing = np.float32(_JACOBI_WEIGHT / self.diagonal)

    def apply(self, x):
        """``-Laplacian(x)`` on the unknowns (0 elsewhere), for ``x`` 0 at the box edge."""
        out = x * self.diagonal
        for axis, weight in enumerate(self.weights):
            low = _axis_slices(axis, slice(None, -1))
            high = _axis_slices(axis, slice(1, None))
            if weight == 1.0:
                out[high] -= x[low]
                out[low] -= x[high]
            else:
                out[high] -= weight * x[low]
                out[low] -= weight * x[high]
        out *= self.mask_f
        return out


class _Hierarchy:
    """Geometric multigrid on the vertex-centred grids ``mask[::2**l, ::2**l, ::2**l]``.

    Coarse operators rediscretise the Laplacian (h doubled per level) on the
    injected unknowns. Restriction is full weighting, ``P^T / 8``, and the
    smoother is one damped Jacobi sweep before and one after the coarse
    correction, so the V-cycle is a symmetric positive definite operator and a
    valid conjugate gradient preconditioner.
    """

    def __init__(self, mask, weights, n_levels):
        self.levels = [_Level(mask, weights)]
        for _ in range(n_levels):
            mask = mask[::2, ::2, ::2]
            weights = tuple(w / 4.0 for w in weights)
            self.levels.append(_Level(mask, weights))
        self._coarse = _DirectSolver(self.levels[-1])

    def vcycle(self, residual, index=0):
        level = self.levels[index]
        if index == len(self.levels) - 1:
            return self._coarse.solve(residual)
        x = residual * level.smoothing
        defect = residual - level.apply(x)
        coarse = _restrict(defect)
        coarse *= self.levels[index + 1].mask_f
        correction = _prolong(self.vcycle(coarse, index + 1), residual.shape)
        correction *= level.mask_f
        x += correction
        x += level.smoothing * (residual - level.apply(x))
        return x


class _DirectSolver:
    """Sparse LU factorisation of the coarsest grid's Dirichlet Laplacian."""

    def __init__(self, level):
        self.mask = level.mask
        count = int(level.mask.sum())
        self.lu = None
        if count == 0:
            return
        index = np.full(level.mask.shape, -1, dtype=np.int64)
        index[level.mask] = np.arange(count)
        rows = [np.arange(count)]
        cols = [np.arange(count)]
        values = [np.full(count, float(level.diagonal))]
        for axis, weight in enumerate(level.weights):
            a = index[_axis_slices(axis, slice(None, -1))]
            b = index[_axis_slices(axis, slice(1, None))]
            both = (a >= 0) & (b >= 0)
            a, b = a[both], b[both]
            rows += [a, b]
            cols += [b, a]
            values += [np.full(a.size, -float(weight))] * 2
        matrix = sparse.csc_matrix((np.concatenate(values),
                                    (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(count, count))
        self.lu = splu(matrix)

    def solve(self, residual):
        out = np.zeros(residual.shape, dtype=np.float32)
        if self.lu is not None:
            out[self.mask] = self.lu.solve(residual[self.mask].astype(np.float64))
        return out


def _axis_slices(axis, part):
    index = [slice(None)] * 3
    index[axis] = part
    return tuple(index)


def _restrict(fine):
    """Full weighting onto every second point (``P^T / 8``); each axis has 2 m + 1 points."""
    out = fine
    for axis in range(3):
        even = out[_axis_slices(axis, slice(0, None, 2))] * np.float32(0.5)
        odd = out[_axis_slices(axis, slice(1, None, 2))] * np.float32(0.25)
        even[_axis_slices(axis, slice(None, -1))] += odd
        even[_axis_slices(axis, slice(1, None))] += odd
        out = even
    return out


def _prolong(coarse, shape):
    """Trilinear interpolation from every second point onto ``shape``."""
    out = coarse
    for axis in range(3):
        grown = list(out.shape)
        grown[axis] = shape[axis]
        fine = np.empty(grown, dtype=np.float32)
        fine[_axis_slices(axis, slice(0, None, 2))] = out
        odd = fine[_axis_slices(axis, slice(1, None, 2))]
        np.add(out[_axis_slices(axis, slice(None, -1))], out[_axis_slices(axis, slice(1, None))],
               out=odd)
        odd *= np.float32(0.5)
        out = fine
    return out
