"""Conjugate gradients for symmetric positive definite systems (LBV, RESHARP, iSMV, MEDI) and least squares (PDF)."""

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


def cgls(forward, adjoint, data, *, max_iter, tol, callback=None):
    """Least squares ``min ||data - forward(x)||`` by CGLS from ``x = 0``.

    Conjugate gradients on the normal equations in the stable form of
    Hestenes & Stiefel (CGLS; J Res Natl Bur Stand 1952;49:409-436). ``adjoint``
    is the transpose of the linear ``forward``; both return new arrays (the
    iteration scales ``forward``'s result in place). Stops when an iteration changes
    the residual ``data - forward(x)`` (for PDF, the weighted local field) by
    less than ``tol`` times its norm, or after ``max_iter`` iterations.
    ``callback(iteration, change)`` is called after each iteration.
    """
    residual = data.copy()
    gradient = adjoint(residual)
    x = np.zeros_like(gradient)
    direction = gradient.copy()
    scaled = np.empty_like(direction)
    gg = _dot(gradient, gradient)
    if gg == 0.0:
        return x
    for iteration in range(1, max_iter + 1):
        image = forward(direction)
        image_norm_sq = _dot(image, image)
        if image_norm_sq == 0.0:
            break
        step = np.float32(gg / image_norm_sq)
        x += np.multiply(step, direction, out=scaled)
        image *= step
        residual -= image
        residual_norm_sq = _dot(residual, residual)
        change = float(step * np.sqrt(image_norm_sq / residual_norm_sq)) if residual_norm_sq > 0 else 0.0
        if callback is not None:
            callback(iteration, change)
        if change < tol:
            break
        gradient = adjoint(residual)
        gg_new = _dot(gradient, gradient)
        direction *= np.float32(gg_new / gg)
        direction += gradient
        gg = gg_new
    return x


def _dot(a, b):
    return float(np.dot(a.ravel(), b.ravel()))


def _norm(a):
    return float(np.sqrt(_dot(a, a)))
