"""Calculation of susceptibility through multiple orientation sampling (COSMOS).

With the head scanned at several orientations to B0, the dipole kernels of
the orientations have their zero cones in different places, and the
susceptibility follows from the least-squares fit of all fields at once.
The forward model is diagonal in k-space, so the fit is one division:

    chi = IFFT( sum_i D_i F_i / (sum_i D_i^2 + eps) ),

where ``F_i`` is the spectrum of the field measured at orientation ``i`` and
``D_i`` the kernel of its B0 direction (in the common, registered voxel
frame). ``eps`` only guards the lines where all cones meet (with two
orientations) and the k = 0 term.
"""

import numpy as np

from .. import fourier
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..validation import as_b0_dir, as_mask, check_count, check_number
from ._grid import DEFAULT_PAD_VOXELS, WorkGrid

#: Smallest angle (degrees) that the B0 directions must span. Below it the
#: cones of all orientations nearly coincide and the fit inherits the
#: single-orientation ill-conditioning. Liu et al. (2009) rotated the head
#: by 10-30 degrees; 5 degrees is a floor against mistakes (the same
#: direction given twice, directions not moved into the registered frame).
MIN_ANGLE_DEG = 5.0
#: Guard added to sum_i D_i^2 (dimensionless). Where the sum is 0.1 (a
#: poorly covered k-space region) it biases the fit by 0.01 %.
DEFAULT_COSMOS_EPS = 1e-5
#: Exterior refills. Iteration 1 is the closed form with zero field outside the
#: mask; each further one refills the exterior with the model's field, which
#: converges to the fit inside the mask only (3 orientations, 64^3 ellipsoid
#: phantom: relative error 8.1 % after 1, 2.7 % after 10, 2.1 % after 30).
DEFAULT_COSMOS_MAX_ITER = 10
DEFAULT_COSMOS_TOL = 1e-3


def cosmos(fields_ppm, mask, voxel_size, *, b0_dirs, eps=DEFAULT_COSMOS_EPS,
           max_iter=DEFAULT_COSMOS_MAX_ITER, tol=DEFAULT_COSMOS_TOL, callback=None,
           pad_voxels=DEFAULT_PAD_VOXELS):
    """Susceptibility from fields measured at several head orientations (COSMOS).

    Parameters
    ----------
    fields_ppm : sequence of ndarray, shape (X, Y, Z) each
        Local fields in ppm of B0, one per orientation, registered to one
        common voxel grid (a 4D array with orientations on the last axis is
        accepted too).
    mask : ndarray, shape (X, Y, Z)
        Brain mask on the common grid: the intersection of the orientations'
        masks. Fields are set to zero outside it.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dirs : sequence of 3-vectors
        B0 direction of each orientation in the common voxel frame (after
        registration), in the order of ``fields_ppm``. The sign of a
        direction does not matter.
    eps : float, optional
        Guard added to ``sum_i D_i^2``; keep it small (it regularises only
        where every orientation is blind).
    max_iter : int, optional
        1 gives the closed form with the field taken as zero outside the
        mask; more iterations refill the exterior with the current model's
        field (the field there is unknown, not zero), converging to the
        least-squares fit of the fields inside the mask.
    tol : float, optional
        Stop when ``||chi_k - chi_{k-1}|| / ||chi_k||`` inside the mask falls
        below this.
    callback : callable, optional
        ``callback(iteration, relative_change)`` after every iteration; it may
        raise :class:`qsmlib.Cancelled` (propagated).
    pad_voxels : int or sequence of 3 int, optional
        Zero margin added to the mask's bounding box (per axis) before
        rounding up to a fast FFT size.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility in ppm, zero outside the mask. The k = 0 term is not
        determined and is set to zero: reference the map before reading values.

    Raises
    ------
    QSMInputError
        On fewer than two orientations, a different number of fields and
        directions, fields of different shapes, directions that are nearly
        parallel (fewer than ``MIN_ANGLE_DEG`` apart: the message names the
        closest pair), or any invalid field, mask, voxel size or option.

    References
    ----------
    .. [1] Liu T, Spincemaille P, de Rochefort L, Kressler B, Wang Y.
       Calculation of susceptibility through multiple orientation sampling
       (COSMOS): a method for conditioning the inverse problem from measured
       magnetic field map to susceptibility source image in MRI. Magn Reson
       Med 2009;61:196-204.
    """
    fields = _as_field_list(fields_ppm)
    directions = _as_directions(b0_dirs, len(fields))
    eps = check_number(eps, "eps", strict=True)
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    if callback is not None and not callable(callback):
        raise QSMInputError(f"callback: {callback!r} is not callable; "
                            "give a function callback(iteration, residual) or None")
    shape = np.shape(fields[0])
    for i, field in enumerate(fields[1:], start=1):
        if np.shape(field) != shape:
            raise QSMInputError(f"fields_ppm: orientation {i} has shape {np.shape(field)} but "
                                f"orientation 0 has {shape}; register all fields to one grid")
    mask = as_mask(mask, shape if len(shape) == 3 else shape[:3])

    grids = [WorkGrid(field, mask, voxel_size, direction, pad_voxels)
             for field, direction in zip(fields, directions)]
    shape = grids[0].shape
    kernels = [dipole_kernel(shape, g.voxel_size, g.b0_dir) for g in grids]
    denominator = np.full(kernels[0].shape, np.float32(eps), dtype=np.float32)
    for kernel in kernels:
        denominator += kernel * kernel
    inside = grids[0].inside()
    in_mask = inside.astype(np.float32)
    current = [g.field for g in grids]          # measured inside, model outside
    chi = None
    for iteration in range(1, max_iter + 1):
        numerator = None
        for kernel, field in zip(kernels, current):
            spectrum = fourier.rfft(field)
            spectrum *= kernel
            numerator = spectrum if numerator is None else numerator + spectrum
        numerator /= denominator
        chi_new = fourier.irfft(numerator, shape).astype(np.float32)
        change = 1.0 if chi is None else _relative_change(chi_new, chi, in_mask)
        chi = chi_new
        if callback is not None:
            callback(iteration, change)
        if change < tol or iteration == max_iter:
            break
        for i, (kernel, g) in enumerate(zip(kernels, grids)):
            model = fourier.irfft(kernel * numerator, shape).astype(np.float32)
            np.copyto(model, g.field, where=inside)
            current[i] = model
    return grids[0].to_image(chi)


def _relative_change(x, x_prev, weight):
    norm = float(np.sqrt(np.sum(x * x * weight)))
    change = float(np.sqrt(np.sum((x - x_prev) ** 2 * weight)))
    return change / norm if norm > 0 else 0.0


def _as_field_list(fields_ppm):
    if isinstance(fields_ppm, np.ndarray):
        if fields_ppm.ndim == 4:
            return [fields_ppm[..., i] for i in range(fields_ppm.shape[3])]
        if fields_ppm.ndim == 3:
            raise QSMInputError("fields_ppm: one 3D field is one orientation; COSMOS needs fields "
                                "from at least 2 head orientations (use tkd, tv_admm, ... for one)")
    try:
        fields = list(fields_ppm)
    except TypeError:
        raise QSMInputError(f"fields_ppm: {type(fields_ppm).__name__} is not a sequence of fields; "
                            "give a list of 3D fields, one per orientation") from None
    if len(fields) < 2:
        raise QSMInputError(f"fields_ppm: {len(fields)} orientation given; COSMOS needs fields from "
                            "at least 2 head orientations (3 or more condition it well)")
    return fields


def _as_directions(b0_dirs, count):
    try:
        directions = [as_b0_dir(d, name=f"b0_dirs[{i}]") for i, d in enumerate(b0_dirs)]
    except TypeError:
        raise QSMInputError(f"b0_dirs: {b0_dirs!r} is not a sequence of directions; "
                            "give one 3-vector per orientation") from None
    if len(directions) != count:
        raise QSMInputError(f"b0_dirs: {len(directions)} directions for {count} fields; "
                            "give one B0 direction per orientation, in the same order")
    vectors = np.asarray(directions)
    # the kernel depends on (k . b)^2, so b and -b are the same orientation
    cosines = np.clip(np.abs(vectors @ vectors.T), 0.0, 1.0)
    angles = np.degrees(np.arccos(cosines))
    widest = np.unravel_index(np.argmax(angles), angles.shape)
    if angles[widest] < MIN_ANGLE_DEG:
        i, j = sorted(int(v) for v in widest)
        raise QSMInputError(
            f"b0_dirs: the orientations are nearly parallel (at most {angles[widest]:.1f} degrees "
            f"apart, between b0_dirs[{i}] and b0_dirs[{j}]); COSMOS is then as ill-conditioned as a "
            f"single orientation. Rotate the head by at least {MIN_ANGLE_DEG:g} degrees "
            "(10-30 is usual), or check that the directions are in the registered voxel frame")
    return directions
