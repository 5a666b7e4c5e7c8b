"""Nonlinear complex fit of multi-echo data (MEDI-style), refining a spatially unwrapped field.

Signal model per voxel and echo time ``t_n``, with the magnitude taken from
the data as in Liu et al. (MRM 2013)::

    S_n = |S_n| exp(i (phi0 + 2 pi f t_n)) + noise.

The fit minimises the complex misfit

    C(phi0, f) = sum_n |S_n - |S_n| e^{i theta_n}|^2 = 2 sum_n w_n (1 - cos(psi_n - theta_n)),

with ``psi_n`` the measured phase, ``theta_n = phi0 + 2 pi f t_n`` and
``w_n = |S_n|^2``. For complex Gaussian noise this is the maximum-likelihood
fit; unlike the least-squares line through unwrapped phases it is periodic in
every ``psi_n``, so a wrong temporal unwrap of one echo costs nothing, and a
noisy echo far from the line pulls on it with ``sin`` of its misfit, not with
the misfit itself.

Gauss-Newton: the Jacobian of the model ``|S_n| e^{i theta_n}`` with respect
to ``(phi0, omega = 2 pi f)`` is ``i |S_n| e^{i theta_n} (1, t_n)``, so the
Gauss-Newton normal matrix ``sum_n w_n (1, t_n)^T (1, t_n)`` does not depend
on the parameters, and the step solves the weighted least-squares line
through ``sin(psi_n - theta_n)``. Because ``d^2/dx^2 (1 - cos x) = cos x <= 1``,
that matrix bounds the Hessian of ``C / 2`` from above: each step minimises a
quadratic majoriser of the cost, so the cost never increases (a
majorise-minimise iteration) and no line search is needed. Near the
solution the step is Newton's up to a factor ``cos(misfit)``, so the
iteration converges in a few steps wherever the noise is moderate.

The covariance of the parameters is ``sigma^2`` times the inverse of the same
matrix (the noise of the residual per real channel is ``sigma``), hence the
field SD ``sigma / (2 pi sqrt(sum_n w_n (t_n - tbar_w)^2))``; with the phase
offset removed beforehand (no intercept) it is
``sigma / (2 pi sqrt(sum_n w_n t_n^2))``.

Phase wraps: the cost is invariant to ``psi_n -> psi_n + 2 pi``, and the
iteration moves each voxel's field only down the cost from its start. It is
started from the magnitude-weighted linear fit, whose field is unwrapped in
space and time, so it only refines that field and keeps its spatial unwrap
(the field is not re-wrapped into ``+-1 / (2 dTE)``).
"""

import numpy as np

from ..phase import TWO_PI

#: Voxels updated at once (bounds the float64 work arrays to some tens of MB).
CHUNK_VOXELS = 1 << 18


def complex_gauss_newton(magnitude, phase, te_s, field_hz, offset_rad, weight_floor, *,
                         fit_offset=True, max_iter=20, tol=1e-3, callback=None):
    """Refine per-voxel field and phase offset by Gauss-Newton on the complex signal.

    Parameters
    ----------
    magnitude : ndarray, shape (N, E)
        Magnitude per voxel and echo.
    phase : ndarray, shape (N, E)
        Measured phase in radians (wrapped or not: only ``exp(i phase)`` is used).
    te_s : ndarray, shape (E,)
        Echo times in seconds.
    field_hz : ndarray, shape (N,)
        Initial field (Hz), spatially unwrapped; the result stays in its basin.
    offset_rad : ndarray, shape (N,)
        Initial phase offset (rad); held fixed when ``fit_offset`` is False.
    weight_floor : float
        Lower bound of the weights ``|S|^2`` (keeps voxels without signal finite).
    fit_offset : bool, optional
        Fit the offset with the field (intercept) or keep it fixed.
    max_iter : int, optional
        Most Gauss-Newton steps per voxel.
    tol : float, optional
        A voxel stops once its field step is below ``tol`` Hz.
    callback : callable, optional
        ``callback(iteration, step_hz)`` after each step, with the largest
        field step (Hz) of the voxels still iterating.

    Returns
    -------
    field_hz, offset_rad : ndarray of float64, shape (N,)
        Refined field and offset (the offset not wrapped; returned unchanged
        when ``fit_offset`` is False).
    iterations : int
        Steps taken (by the slowest voxel).

    References
    ----------
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear
    formulation of the magnetic field to source relationship for robust
    quantitative susceptibility mapping. Magn Reson Med 2013;69:467-476.

    Lange K, Hunter DR, Yang I. Optimization transfer using surrogate objective
    functions. J Comput Graph Stat 2000;9:1-20.
    """
    te = np.asarray(te_s, dtype=np.float64)
    # Centre the echo times for a well-conditioned 2x2 system (fit_offset only).
    centre = float(np.mean(te)) if fit_offset else 0.0
    t = te - centre
    omega = TWO_PI * np.asarray(field_hz, dtype=np.float64).copy()
    # Offset at the centre time: theta_n = level + omega t_n (centred t).
    level = np.asarray(offset_rad, dtype=np.float64) + omega * centre
    n_voxels = omega.size
    active = np.arange(n_voxels)
    iterations = 0
    for iteration in range(1, max_iter + 1):
        if active.size == 0:
            break
        largest = 0.0
        moving = []
        for start in range(0, active.size, CHUNK_VOXELS):
            index = active[start:start + CHUNK_VOXELS]
            weights = np.maximum(magnitude[index].astype(np.float64) ** 2, weight_floor)
            misfit = phase[index] - (level[index, None] + omega[index, None] * t)
            pull = weights * np.sin(misfit)
            if fit_offset:
                s0, s1, s2 = weights.sum(1), weights @ t, weights @ (t * t)
                b0, b1 = pull.sum(1), pull @ t
                d_omega = (s0 * b1 - s1 * b0) / (s0 * s2 - s1 * s1)
                level[index] += (b0 - s1 * d_omega) / s0
            else:
                d_omega = (pull @ t) / (weights @ (t * t))
            omega[index] += d_omega
            step_hz = np.abs(d_omega) / TWO_PI
            if step_hz.size:
                largest = max(largest, float(step_hz.max()))
            moving.append(index[step_hz >= tol])
        active = np.concatenate(moving)
        iterations = iteration
        if callback is not None:
            callback(iteration, largest)
    return omega / TWO_PI, level - omega * centre, iterations
