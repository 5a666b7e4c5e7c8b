"""iSMV: iterative spherical mean value background field removal (Wen et al., 2014)."""

import numpy as np

from ..masking import bounding_box, erode_mask, sphere_padded_shape, uncrop
from ..validation import as_mask, as_volume, as_voxel_size, check_count, check_number
from . import smv
from ..solvers import conjugate_gradient

#: Default SMV radius in mm. The boundary shell (the mask minus its erosion by
#: the sphere) carries the boundary values, where the local field is taken as
#: zero. On the simulated 1 mm head (true total field) radii of 3, 4 and 5 mm
#: keep 86, 82 and 77 % of the brain with local-field RMSEs of 0.45, 0.39 and
#: 0.34 Hz in what they keep (V-SHARP: 96 %, 0.57 Hz): 4 mm balances the two.
DEFAULT_RADIUS_MM = 4.0
#: Default tolerance: residual relative to its value for a zero local field;
#: tighter tolerances change the local-field RMSE by under 1 % on the head.
DEFAULT_TOL = 1e-3


def ismv(field, mask, voxel_size, *, radius_mm=DEFAULT_RADIUS_MM, max_iter=500,
         tol=DEFAULT_TOL, callback=None):
    """Remove the background field with the iterative spherical mean value method (iSMV).

    A harmonic background field equals its own spherical mean value (SMV).
    iSMV iterates

        b <- SMV(b) in the eroded mask E,   b = f in the shell M - E,

    from ``b = f``: the mean value property holds inside ``E`` (the mask
    eroded by the sphere, where the sphere lies inside the brain), and the
    total field ``f`` is the boundary value on the shell, where the local
    field is small. The local field is ``f - b`` in ``E``.

    The fixed point of that iteration solves the symmetric positive definite
    system ``(I - M_E S M_E) b_E = M_E S (M - M_E) f``, which is solved here
    by conjugate gradients from the same start: the same answer in far fewer
    iterations (each one SMV filtering) than the plain iteration.

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Unwrapped total field (Hz or ppm; the result has the same unit).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask, the region where the background field is harmonic.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float, optional
        SMV sphere radius in mm; the boundary shell is this thick.
    max_iter : int, optional
        Maximum number of conjugate gradient iterations.
    tol : float, optional
        Stop when the residual norm of the mean value equations falls below
        ``tol`` times its initial value (for a zero local field).
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

    References
    ----------
    .. [1] Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical
       mean value method for background field removal in MRI. Magn Reson Med
       2014;72:1065-1071.
    """
    field = as_volume(field, "field")
    mask = as_mask(mask, field.shape)
    voxel_size = as_voxel_size(voxel_size)
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")

    # Work on the mask's bounding box, padded so that the sphere never wraps around.
    box = bounding_box(mask)
    box_mask = mask[box]
    shape = box_mask.shape
    padded = sphere_padded_shape(shape, voxel_size, radius_mm)
    kernel = smv.smv_kernel(padded, voxel_size, radius_mm)
    eroded = erode_mask(box_mask, voxel_size, radius_mm, padded_shape=padded)
    smv.check_not_empty(eroded, f"radius_mm={radius_mm}")
    eroded_f = eroded.astype(np.float32)
    box_field = np.where(box_mask, field[box], np.float32(0))

    def apply(x):
        """``(I - M_E S M_E) x`` for ``x`` zero outside E."""
        out = smv.smv_filter(x, kernel, padded)
        out *= eroded_f
        np.subtract(x, out, out=out)
        return out

    # Start from b = f in E (zero local field): the residual
    # M_E S (M - M_E) f - (I - M_E S) f_E is then -M_E (f - SMV(f)).
    background = box_field * eroded_f
    residual = smv.smv_filter(box_field, kernel, padded)
    residual -= box_field
    residual *= eroded_f
    background = conjugate_gradient(apply, background, residual, max_iter=max_iter, tol=tol,
                                    callback=callback)
    local = (box_field - background) * eroded_f
    return uncrop(local, box, field.shape), uncrop(eroded, box, field.shape)
