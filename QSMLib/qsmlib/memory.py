"""Memory checks before allocating: read image headers, estimate the peak, compare with what is free.

A NIfTI header says how many voxels follow; an 83-byte file or a small
gzip file can claim billions. Every command checks the claim against the
file and the run's estimated peak memory against the memory available now
(the machine's, or the container's limit when that is lower) before it
reads any data, and a refusal says how much would be needed.
"""

import os
import zlib

import numpy as np

from .errors import QSMInputError

#: Peak memory of one reconstruction per voxel: a fixed part plus a part per echo (bytes).
#: Calibrated on the 1 mm simulated head (164x205x205, 5 echoes: 1.5 GiB measured).
BYTES_PER_VOXEL = 120
BYTES_PER_VOXEL_ECHO = 24
#: Fraction of the available memory one run may plan to use.
MEMORY_FRACTION = 0.8
GIB = 2 ** 30


def _cgroup_available():
    """Memory left under this process's cgroup limit (bytes), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:
            return max(0, int(limit) - usage)
    return None


def available_memory_bytes():
    """Memory available to new allocations now (bytes).

    psutil's ``available`` (else ``MemAvailable`` of /proc/meminfo, else 4 GiB),
    lowered to what the cgroup's memory limit leaves, if there is one.
    """
    available = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    if available is None:
        available = 4 * GIB
    limited = _cgroup_available()
    return available if limited is None else min(available, limited)


def run_bytes(voxels, echoes):
    """Estimated peak memory (bytes) of a reconstruction of ``voxels`` voxels and ``echoes`` echoes."""
    return int(voxels) * (BYTES_PER_VOXEL + BYTES_PER_VOXEL_ECHO * int(echoes))


def check_memory(needed_bytes, what, *, available_bytes=None):
    """Refuse when ``needed_bytes`` exceeds :data:`MEMORY_FRACTION` of the available memory.

    Raises
    ------
    QSMInputError
        Saying how much is needed and how much is available.
    """
    available = available_memory_bytes() if available_bytes is None else available_bytes
    if needed_bytes > MEMORY_FRACTION * available:
        raise QSMInputError(f"{what}: needs about {needed_bytes / GIB:.1f} GiB of memory but "
                            f"{available / GIB:.1f} GiB is available; nothing was read: free memory, crop the "
                            "image to the head, or use a machine with more memory")
    return needed_bytes


def nifti_header(path, *, name=None):
    """Shape and data size of a NIfTI file from its header, checked against the file, without reading data.

    Returns
    -------
    shape : tuple of int
        The image shape the header claims.
    nbytes : int
        The bytes of data it claims.

    Raises
    ------
    QSMInputError
        If the header cannot be read, claims a non-positive or absurd shape, or
        an uncompressed file is shorter than its header says (a truncated file
        or a header that lies).
    """
    import nibabel as nib

    from .io.nifti import check_nifti_path

    path = os.fspath(path)
    name = name or path
    check_nifti_path(path, name=name)
    try:
        image = nib.load(path)
        header = image.header
        shape = tuple(int(n) for n in image.shape)
        itemsize = np.dtype(header.get_data_dtype()).itemsize
        offset = int(header.get_data_offset())
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, OSError, EOFError, ValueError,
            TypeError, OverflowError, MemoryError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QSMInputError(f"{name}: cannot be read as NIfTI ({text}); give an intact .nii or .nii.gz file") from None
    if not shape or any(n < 1 for n in shape):
        raise QSMInputError(f"{name}: the header claims the shape {shape}; give an intact NIfTI file")
    scaling = _raw_scaling(path, type(header))  # nibabel replaces an infinite scaling by "none" on loading
    if any(np.isinf(v) for v in scaling):
        raise QSMInputError(f"{name}: the header's intensity scaling (scl_slope {scaling[0]:g}, scl_inter "
                            f"{scaling[1]:g}) is infinite; the header is corrupt: fix it or export the image again")
    nbytes = int(np.prod(shape, dtype=object)) * itemsize
    if not path.endswith(".gz"):
        size = os.path.getsize(path)
        if offset + nbytes > size:
            raise QSMInputError(f"{name}: the header claims {' x '.join(map(str, shape))} voxels "
                                f"({(offset + nbytes) / 2 ** 20:.1f} MiB) but the file holds "
                                f"{size / 2 ** 20:.3g} MiB; the file is truncated or its header is wrong")
    return shape, nbytes


#: Compressed files claiming more data than this are decompressed once (streamed, in bounded
#: memory) to check that the data is really there before it is read into an array.
VERIFY_GZIP_ABOVE_BYTES = 64 * 2 ** 20
_verified = set()


def _gzip_holds(path, needed, *, block=1 << 20, step=1 << 22):
    """True when the gzip file decompresses to at least ``needed`` bytes; reads in bounded memory."""
    got = 0
    decompressor = zlib.decompressobj(31)
    pending = b""
    with open(path, "rb") as f:
        while got < needed:
            if not pending:
                pending = f.read(block)
                if not pending:
                    break
            try:
                got += len(decompressor.decompress(pending, step))
            except zlib.error:
                return False
            pending = decompressor.unconsumed_tail
            if decompressor.eof:  # the next gzip member, if any
                pending = decompressor.unused_data
                decompressor = zlib.decompressobj(31)
    return got >= needed


def verify_data(path, *, name=None):
    """Check, without holding it in memory, that a compressed file holds the data its header claims.

    Only files claiming more than :data:`VERIFY_GZIP_ABOVE_BYTES` are checked
    (streamed once); uncompressed files are checked by size in :func:`nifti_header`.
    """
    path = os.fspath(path)
    if not path.endswith(".gz"):
        return
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    shape, nbytes = nifti_header(path, name=name)
    if nbytes > VERIFY_GZIP_ABOVE_BYTES:
        import nibabel as nib

        needed = int(nib.load(path).header.get_data_offset()) + nbytes
        if not _gzip_holds(path, needed):
            raise QSMInputError(f"{name or path}: the header claims {' x '.join(map(str, shape))} voxels "
                                f"({needed / 2 ** 20:.1f} MiB) but the compressed data is shorter or corrupt; the "
                                "file is truncated or its header is wrong")
    _verified.add(key)


def _raw_scaling(path, header_class):
    """scl_slope and scl_inter as the file holds them, before nibabel's header fixes."""
    from nibabel.openers import ImageOpener
    from nibabel.spatialimages import HeaderDataError

    try:
        with ImageOpener(path) as f:
            raw = header_class.from_fileobj(f, check=False)
        return [float(np.asarray(raw[key]).item()) for key in ("scl_slope", "scl_inter")]
    except (OSError, EOFError, ValueError, KeyError, HeaderDataError, zlib.error):
        return []  # the header was read once already; this is a second look only


def check_reading(path, *, name=None, dtype_bytes=4):
    """Refuse a NIfTI file whose data, read as float32, would not fit in memory or is not all there.

    Returns
    -------
    tuple of int
        The shape from the header.
    """
    shape, _nbytes = nifti_header(path, name=name)
    voxels = int(np.prod(shape, dtype=object))
    check_memory(voxels * dtype_bytes, f"{name or path}: {' x '.join(map(str, shape))} voxels")
    verify_data(path, name=name)
    return shape


def check_run_inputs(files, *, what):
    """Refuse before reading when a reconstruction of these files would not fit in memory.

    ``files`` is one 4D file or one 3D file per echo (or a single 3D field
    map). The estimate is :func:`run_bytes` of the first file's voxel count
    and the echo count of all files, from the headers alone; only then is
    each file's data checked to be there (:func:`check_reading`).

    Returns
    -------
    int
        The estimated peak memory (bytes).
    """
    voxels, echoes = None, 0
    for path in files:
        shape, _nbytes = nifti_header(path)
        if voxels is None:
            voxels = int(np.prod(shape[:3], dtype=object))
        echoes += int(np.prod(shape[3:], dtype=object))
    if voxels is None:
        return 0
    needed = check_memory(run_bytes(voxels, echoes), f"{what} of {files[0]} ({voxels} voxels, {echoes} echo(es))")
    for path in files:
        check_reading(path)
    return needed
