"""Input checks and the working FFT grid shared by the dipole inversions.

The local field is only known inside the mask and is set to zero outside it,
so each inversion works on the mask's bounding box, zero-padded at the end of
every axis by a margin and up to a fast FFT size. The padding keeps the
periodic images of the box apart, and cropping to the box keeps every FFT and
every array small: on a 1 mm head the brain's box is about half the image.
"""

import numpy as np

from ..errors import QSMInputError
from ..fourier import irfft, pad, padded_shape, rfft
from ..masking import bounding_box
from ..validation import as_b0_dir, as_mask, as_volume, as_voxel_size, check_padding_size

#: Default margin (voxels per axis) between the mask's bounding box and its
#: periodic image. The field is zero there; a gap of a dozen voxels keeps the
#: wrap-around of the inverted dipole pattern out of the brain (checked on the
#: 1 mm head model: a larger margin changes the brain NRMSE by < 0.2 %).
DEFAULT_PAD_VOXELS = 12


class WorkGrid:
    """The validated problem on its padded working grid.

    Attributes
    ----------
    field : ndarray, float32
        Field (ppm) on the padded grid, zero outside the mask.
    shape : tuple of int
        Padded (FFT) shape.
    box : tuple of slice
        Where the mask's bounding box sits in the full image.
    mask : ndarray of bool
        Full-size mask.
    voxel_size, b0_dir : tuple of float
    """

    def __init__(self, field_ppm, mask, voxel_size, b0_dir, pad_voxels):
        field = as_volume(field_ppm, "field_ppm")
        self.mask = as_mask(mask, field.shape)
        self.voxel_size = as_voxel_size(voxel_size)
        self.b0_dir = as_b0_dir(b0_dir)
        margin = check_padding_size(_as_pad_voxels(pad_voxels), field.shape)
        self.full_shape = field.shape
        self.box = bounding_box(self.mask)
        box_mask = self.mask[self.box]
        box_field = np.where(box_mask, field[self.box], np.float32(0))
        self.shape = padded_shape(box_field.shape, margin)
        self.box_shape = box_field.shape
        self.field = pad(box_field, self.shape)

    def inside(self):
        """The mask on the padded grid (bool)."""
        return self.on_grid(self.mask)

    def on_grid(self, image_mask):
        """A full-image boolean map, restricted to the mask, on the padded grid."""
        out = np.zeros(self.shape, dtype=bool)
        out[tuple(slice(0, n) for n in self.box_shape)] = image_mask[self.box] & self.mask[self.box]
        return out

    def on_grid_values(self, image):
        """A full-image map's values on the padded grid (its bounding box; 0 in the padding)."""
        out = np.zeros(self.shape, dtype=np.float64)
        out[tuple(slice(0, n) for n in self.box_shape)] = np.asarray(image, dtype=np.float64)[self.box]
        return out

    def filtered_image(self, kspace_filter):
        """The field multiplied by ``kspace_filter`` (rfft grid) in k-space, as a full image (see :meth:`to_image`)."""
        spectrum = rfft(self.field)
        spectrum *= kspace_filter
        return self.to_image(irfft(spectrum, self.shape))

    def to_image(self, work):
        """Crop a padded-grid map back to the full image, float32, zero outside the mask."""
        out = np.zeros(self.full_shape, dtype=np.float32)
        box = work[tuple(slice(0, n) for n in self.box_shape)]
        out[self.box] = np.where(self.mask[self.box], box, np.float32(0))
        return out


def _as_pad_voxels(pad_voxels, name="pad_voxels"):
    arr = np.atleast_1d(np.asarray(pad_voxels))
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if (arr.ndim != 1 or arr.size != 3 or not np.issubdtype(arr.dtype, np.number)
            or not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr))):
        raise QSMInputError(f"{name}: {pad_voxels!r} is not a padding; "
                            "give one or three non-negative whole numbers of voxels")
    return tuple(int(v) for v in arr)
