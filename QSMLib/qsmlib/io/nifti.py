"""NIfTI reading and atomic writing. The only place that turns NIfTI files into arrays.

nibabel is imported when a file is read or written, so that the rest of
QSMLib imports without it (3D Slicer does not ship nibabel).
"""

import errno
import os
import secrets
import zlib

import numpy as np

from ..errors import QSMInputError
from ..memory import check_reading


def check_nifti_path(path, *, name=None):
    """Refuse a path that is missing, not a file, or not named .nii or .nii.gz."""
    path = os.fspath(path)
    name = name or path
    if not os.path.exists(path):
        raise QSMInputError(f"{name}: file not found; check the path")
    if not os.path.isfile(path):
        raise QSMInputError(f"{name}: is {'a folder' if os.path.isdir(path) else 'not a regular file'}, not a "
                            "NIfTI file; give the .nii or .nii.gz file")
    if not path.endswith((".nii", ".nii.gz")):
        raise QSMInputError(f"{name}: not a NIfTI file (.nii or .nii.gz); convert it first "
                            "(for example DICOM with dcm2niix)")


def load_nifti(path, *, name=None):
    """Read a NIfTI file as ``(data, affine)`` with data float32 in (i, j, k[, t]) order.

    Raises
    ------
    QSMInputError
        If the file is missing, is not NIfTI, or is corrupt, or its data (as
        float32) would not fit in the available memory; the last two are found
        from the header, before any data is read.
    """
    import nibabel as nib

    path = os.fspath(path)
    name = name or path
    check_nifti_path(path, name=name)
    try:
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise QSMInputError(f"{name}: this is a {type(image).__name__}, not NIfTI; "
                                "convert it to .nii or .nii.gz (for example with dcm2niix)")
        check_reading(path, name=name)  # the header's claim against the file and the free memory, before reading
        kind = np.dtype(image.get_data_dtype())
        if kind.kind == "c" or kind.fields is not None:
            raise QSMInputError(f"{name}: holds {'complex' if kind.kind == 'c' else 'colour (RGB)'} values; give "
                                "real images (magnitude and phase as separate files)")
        data = np.asarray(image.dataobj, dtype=np.float32)
    except QSMInputError:
        raise
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, OSError, EOFError, ValueError,
            zlib.error) as exc:
        raise QSMInputError(f"{name}: cannot be read as NIfTI ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt data'}); "
                            "give an intact .nii or .nii.gz file") from None
    affine = image.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise QSMInputError(f"{name}: the header has no valid voxel-to-world affine; "
                            "fix the qform/sform of the file")
    return data, np.asarray(affine, dtype=np.float64)


def save_nifti(path, data, affine, *, dtype=np.float32, description=None):
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    import nibabel as nib

    path = os.fspath(path)
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm", "sec")
    if description:
        image.header["descrip"] = description[:79].encode()
    directory = os.path.dirname(os.path.abspath(path))
    suffix = ".nii.gz" if path.endswith(".gz") else ".nii"
    tmp = _new_private_name(directory, suffix)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _new_private_name(directory, suffix):
    """Create an empty temporary file in ``directory`` and return its path.

    Unlike :func:`tempfile.mkstemp` (always mode 0600), the file gets the mode
    that the umask gives new files, like every other output.
    """
    for _attempt in range(100):
        path = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)
