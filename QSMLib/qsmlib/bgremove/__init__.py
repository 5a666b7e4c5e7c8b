"""Background field removal: the local field of the brain from the total field.

Every method has the shape ``method(field, mask, voxel_size, *, options)``
and returns ``(local_field, mask_out)``: the float32 local field, 0 outside
``mask_out``, the (possibly eroded) mask where it is valid. The methods are
linear, so the field may be in Hz or ppm.

- :func:`sharp`: SHARP, one spherical mean value (SMV) radius.
- :func:`vsharp`: V-SHARP, SMV radii shrinking towards the brain edge.
- :func:`pdf`: projection onto dipole fields; no erosion.

SHARP and V-SHARP share the SMV kernel and erosion of :mod:`.smv`.
"""

from .pdf import pdf
from .sharp import sharp
from .vsharp import vsharp

__all__ = ["pdf", "sharp", "vsharp"]
