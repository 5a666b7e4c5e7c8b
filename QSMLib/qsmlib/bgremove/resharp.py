"""RESHARP: SHARP with Tikhonov regularisation (Sun & Wilman, 2014)."""

import numpy as np

from .. import fourier
from ..masking import bounding_box, dilate_mask, erode_mask, sphere_padded_shape, uncrop
from ..validation import as_mask, as_volume, as_voxel_size, check_count, check_number
from . import smv
from ..solvers import conjugate_gradient

#: Default SMV radius in mm (RESHARP implementations use 3 to 5 mm); the same
#: as iSMV's, so that both keep the same eroded mask (82 % of the simulated
#: 1 mm brain).
DEFAULT_RADIUS_MM = 4.0
#: Default Tikhonov weight (dimensionless). Both terms of the objective are
#: sums of squared fields over voxels, as in the reference paper, and
#: ``C = delta - SMV`` is dimensionless, so ``lam`` depends neither on the
#: field's unit nor on the voxel count. It damps the spatial frequencies where
#: ``|1 - S(k)| < sqrt(lam)``, like SHARP's truncation ``threshold``. With a
#: 4 mm sphere, 1e-2 (a common choice) damps wavelengths above about 25 mm,
#: which takes contrast from the deep grey matter; 1e-3 moves that to about
#: 45 mm. On the simulated 1 mm head (true total field) the local-field RMSE
#: falls from 0.59 to 0.47 Hz; 1e-4 gains a little more but needs far more
#: iterations to converge.
DEFAULT_LAMBDA = 1e-3
#: Default tolerance: normal-equation residual relative to its initial value.
#: On the head, 1e-4 (about 15 iterations) gives the local-field RMSE of the
#: converged solution (0.47 Hz at 1e-4 and at 1e-6).
DEFAULT_TOL = 1e-4


def resharp(field, mask, voxel_size, *, radius_mm=DEFAULT_RADIUS_MM, lam=DEFAULT_LAMBDA,
            max_iter=300, tol=DEFAULT_TOL, callback=None):
    """Remove the background field with RESHARP (regularisation enabled SHARP).

    With ``C = delta - S`` (``S`` the spherical mean value, SMV) and ``M_E``
    the mask eroded by the sphere, where ``C`` removes any harmonic field,
    RESHARP finds the local field ``x`` as

        min_x || M_E C (x - f) ||^2 + lam || x ||^2,

    a Tikhonov-regularised deconvolution of SHARP's high-pass field instead
    of SHARP's truncated one. The normal equations
    ``(C M_E C + lam I) x = C M_E C f`` are solved by conjugate gradients from
    ``x = 0``, preconditioned by ``1 / (C(k)^2 + lam)`` (the inverse of the
    operator without the mask).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (Hz or ppm; the result has the same unit).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask, the region where the background field is harmonic.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float, optional
        SMV sphere radius in mm.
    lam : float, optional
        Tikhonov weight (dimensionless, > 0).
    max_iter : int, optional
        Maximum number of conjugate gradient iterations.
    tol : float, optional
        Stop when the residual norm of the normal equations falls below
        ``tol`` times its initial value.
    callback : callable, optional
        ``callback(iteration, residual)`` after each iteration (from 1), with
        the relative residual. It may raise :class:`qsmlib.Cancelled` to stop.

    Returns
    -------
    local_field : ndarray, float32, shape (X, Y, Z)
        Local field, 0 outside ``mask_out``.
    mask_out : ndarray of bool, shape (X, Y, Z)
        ``mask`` eroded by the sphere: where ``local_field`` is valid.

    Raises
    ------
    QSMInputError
        If the field is not a finite 3D volume, the mask does not match it or
        is empty, the voxel size or an option is invalid, or the erosion
        leaves no voxel.

    Notes
    -----
    Each iteration costs three FFT pairs on the mask's padded bounding box.
    The solution is 0 outside the eroded mask dilated by the sphere, so the
    unknowns are restricted to that region (the same minimiser).

    References
    ----------
    .. [1] Sun H, Wilman AH. Background field removal using spherical mean
       value filtering and Tikhonov regularization. Magn Reson Med
       2014;71:1151-1157.
    """
    field = as_volume(field, "field")
    mask = as_mask(mask, field.shape)
    voxel_size = as_voxel_size(voxel_size)
    lam = check_number(lam, "lam", strict=True)
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")

    # Work on the mask's bounding box, padded so that the sphere never wraps
    # around. The unknown is restricted to the voxels that M_E C reads, the
    # eroded mask dilated by the sphere (its "support"): elsewhere the normal
    # equations reduce to lam x = 0.
    box = bounding_box(mask)
    box_mask = mask[box]
    shape = box_mask.shape
    padded = sphere_padded_shape(shape, voxel_size, radius_mm)
    kernel = smv.smv_kernel(padded, voxel_size, radius_mm)
    eroded = erode_mask(box_mask, voxel_size, radius_mm, padded_shape=padded)
    smv.check_not_empty(eroded, f"radius_mm={radius_mm}")
    eroded_f = fourier.pad(eroded.astype(np.float32), padded)
    support = fourier.pad((dilate_mask(eroded, voxel_size, radius_mm) & box_mask)
                          .astype(np.float32), padded)
    highpass = np.float32(1.0) - kernel  # C(k), real and symmetric
    lam32 = np.float32(lam)
    # Preconditioner: the inverse of the normal operator without the mask,
    # 1 / (C(k)^2 + lam), restricted to the support (symmetric, positive).
    inverse = np.float32(1.0) / (highpass * highpass + lam32)

    def normal(x):
        """``C M_E C x`` on the padded grid."""
        y = fourier.irfft(fourier.rfft(x) * highpass, padded)
        y *= eroded_f
        return fourier.irfft(fourier.rfft(y) * highpass, padded).astype(np.float32, copy=False)

    def apply(x):
        out = normal(x)
        out += lam32 * x
        out *= support
        return out

    def precondition(r):
        out = fourier.irfft(fourier.rfft(r) * inverse, padded).astype(np.float32, copy=False)
        out *= support
        return out

    data = fourier.pad(np.where(box_mask, field[box], np.float32(0)), padded)
    residual = normal(data)
    residual *= support
    local = conjugate_gradient(apply, np.zeros(padded, dtype=np.float32), residual,
                               max_iter=max_iter, tol=tol, callback=callback,
                               precondition=precondition)
    local = fourier.crop(local, shape) * eroded
    return uncrop(local.astype(np.float32), box, field.shape), uncrop(eroded, box, field.shape)
