"""Arrays <-> SimpleITK images: the one place where the atlas code transposes and changes frame.

qsmlib works on (i, j, k) arrays with a NIfTI affine (voxel -> RAS mm).
SimpleITK's ``GetArrayFromImage`` returns (k, j, i), and ITK places images
in LPS millimetres. :func:`image_from_array` and :func:`array_from_image`
are the one transpose in each direction, and :data:`RAS_TO_LPS` the one
change of frame, so that transforms written by the atlas code are ordinary
ITK transforms that Slicer, ANTs or SimpleITK read the usual way.

SimpleITK is imported inside the functions: the rest of qsmlib imports without it.
"""

import numpy as np

from ..errors import QSMInputError

#: RAS (NIfTI, Slicer) to LPS (ITK) world coordinates, and back (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: Largest |cos| between two voxel axes that still counts as orthogonal (ITK needs an
#: orthonormal direction matrix; NIfTI headers store float32, hence the tolerance).
MAX_AXIS_COSINE = 1e-3


def sitk():
    """The SimpleITK module, or a one-line error saying how to install it."""
    try:
        import SimpleITK
    except ImportError:
        raise QSMInputError("atlas registration needs SimpleITK, which is not installed; install it with "
                            "pip install SimpleITK (3D Slicer already ships it)") from None
    return SimpleITK


def geometry_from_affine(affine, *, name="image"):
    """ITK origin, spacing and direction (LPS) of a NIfTI affine.

    Returns
    -------
    origin : tuple of 3 float
    spacing : tuple of 3 float (mm)
    direction : tuple of 9 float (row-major 3x3)

    Raises
    ------
    QSMInputError
        If the affine is sheared (ITK images have orthogonal axes).
    """
    affine = np.asarray(affine, dtype=np.float64)
    linear = RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
        raise QSMInputError(f"{name}: the affine has a zero or invalid voxel size; fix the image header")
    direction = linear / spacing
    cosines = np.abs(direction.T @ direction - np.eye(3))
    if cosines.max() > MAX_AXIS_COSINE:
        raise QSMInputError(f"{name}: the voxel axes are not orthogonal (a sheared affine); resample the image "
                            "onto an orthogonal grid first")
    # Re-orthonormalise the float32 noise away (ITK checks the direction matrix).
    u, _s, vt = np.linalg.svd(direction)
    direction = u @ vt
    origin = RAS_TO_LPS @ affine[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def image_from_array(array, affine, *, dtype=np.float32, name="image"):
    """A SimpleITK image of an (i, j, k) array on the grid of ``affine`` (NIfTI, RAS)."""
    SimpleITK = sitk()
    array = np.asarray(array)
    if array.ndim != 3:
        raise QSMInputError(f"{name}: expected a 3D volume, got shape {array.shape}")
    image = SimpleITK.GetImageFromArray(np.ascontiguousarray(np.transpose(array.astype(dtype, copy=False),
                                                                          (2, 1, 0))))
    origin, spacing, direction = geometry_from_affine(affine, name=name)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def array_from_image(image, dtype=None):
    """The voxels of a SimpleITK image as a new (i, j, k) array."""
    SimpleITK = sitk()
    kji = SimpleITK.GetArrayFromImage(image)
    ijk = np.ascontiguousarray(np.transpose(kji, (2, 1, 0)))
    return ijk if dtype is None else ijk.astype(dtype, copy=False)


def affine_from_image(image):
    """The NIfTI affine (voxel -> RAS mm) of a SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine
