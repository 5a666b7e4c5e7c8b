"""Conjugate gradients for symmetric positive definite systems: LBV, RESHARP, iSMV and MEDI use this one."""

import numpy as np


def conjugate_gradient(apply, x, residual, *, max_iter, tol, callback=None, precondition=None):
    """Solve ``apply(x) = b`` from ``x`` whose residual ``b - apply(x)`` is ``residual``.

    Both ``x`` and ``residual`` are updated in place and ``x`` is returned.
    ``apply`` and ``precondition`` must be symmetric positive definite linear
    operators (``precondition=None``: plain conjugate gradients). Stops when
    ``||residual||`` falls below ``tol`` times its initial value, after
    ``max_iter`` iterations, or when the search direction stops decreasing the
    energy. ``callback(iteration, relative_residual)`` is called after each
    iteration; whatever it raises (for example ``Cancelled``) propagates.
    """
    norm0 = _norm(residual)
    if norm0 == 0.0:
        return x
    z = residual if precondition is None else precondition(residual)
    direction = z.copy()
    rz = _dot(residual, z)
    for iteration in range(1, max_iter + 1):
        image = apply(direction)
        curvature = _dot(direction, image)
        if not curvature > 0.0:
            break
        step = np.float32(rz / curvature)
        x += step * direction
        residual -= step * image
        relative = _norm(residual) / norm0
        if callback is not None:
            callback(iteration, relative)
        if relative < tol:
            break
        z = residual if precondition is None else precondition(residual)
        rz_new = _dot(residual, z)
        direction *= np.float32(rz_new / rz)
        direction += z
        rz = rz_new
    return x


def _dot(a, b):
    return float(np.dot(a.ravel(), b.ravel()))


def _norm(a):
    return float(np.sqrt(_dot(a, a)))
