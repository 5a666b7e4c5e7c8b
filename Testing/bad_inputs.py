"""Makers of hostile NIfTI files: headers that lie about their size, truncated files, gzip bombs."""

import gzip
import struct
import zlib

import nibabel as nib
import numpy as np


def header_bytes(shape, dtype=np.float32, affine=None):
    """The 348-byte NIfTI-1 header and the 4-byte extension flag of an image of ``shape`` (352 bytes)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4) if affine is None else affine, code=1)
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0\0\0\0"


def header_only(path, shape, dtype=np.float32):
    """A NIfTI file (``.nii`` or ``.nii.gz``) whose header claims ``shape`` but that holds no data."""
    data = header_bytes(shape, dtype)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, 9) if str(path).endswith(".gz") else data)
    return str(path)


def gzip_bomb(path, shape, *, chunk_bytes=32 * 2 ** 20):
    """A valid ``.nii.gz`` of float32 zeros of ``shape``: about 1000 times smaller than its data.

    The zeros are compressed once per chunk with a full flush (byte-aligned and
    independent of what precedes it), and that compressed chunk is repeated, so
    building a bomb of gigabytes takes a second. The CRC and size trailer are
    correct, so the file is a real gzip stream that decompresses to the image.
    """
    head = header_bytes(shape)
    total = int(np.prod(shape)) * 4
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk_bytes)) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(chunk_bytes)
    crc = zlib.crc32(head)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header: deflate, no name, no mtime
        tail = zlib.compressobj(9, zlib.DEFLATED, -15)
        f.write(tail.compress(head) + tail.flush(zlib.Z_FULL_FLUSH))
        written = 0
        while written + chunk_bytes <= total:
            f.write(block)
            crc = zlib.crc32(zeros, crc)
            written += chunk_bytes
        rest = bytes(total - written)
        last = zlib.compressobj(9, zlib.DEFLATED, -15)
        f.write(last.compress(rest) + last.flush(zlib.Z_FINISH))
        crc = zlib.crc32(rest, crc)
        f.write(struct.pack("<II", crc & 0xFFFFFFFF, (len(head) + total) & 0xFFFFFFFF))
    return str(path)
