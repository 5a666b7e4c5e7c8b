"""Background field removal: the local field of the brain from the total field.

Every method has the shape ``method(field, mask, voxel_size, *, options)``
and returns ``(local_field, mask_out)``: the float32 local field, 0 outside
``mask_out``, the (possibly eroded) mask where it is valid. The methods are
linear, so the field may be in Hz or ppm.

- :func:`sharp`: SHARP, one spherical mean value (SMV) radius.
- :func:`vsharp`: V-SHARP, SMV radii shrinking towards the brain edge.
- :func:`resharp`: RESHARP, SHARP with Tikhonov regularisation.
- :func:`ismv`: iSMV, the mean value property iterated to a fixed point.
- :func:`lbv`: LBV, Laplace's equation with the total field on the boundary.
- :func:`pdf`: projection onto dipole fields; no erosion.

SHARP, V-SHARP, RESHARP and iSMV share the SMV kernel and erosion of
:mod:`.smv`; LBV, RESHARP and iSMV share the conjugate gradient solver.
"""

from .ismv import ismv
from .lbv import lbv
from .pdf import pdf
from .resharp import resharp
from .sharp import sharp
from .vsharp import vsharp

__all__ = ["ismv", "lbv", "pdf", "resharp", "sharp", "vsharp"]
