"""Phase unwrapping.

Every unwrapper has the signature ``unwrap_X(phase, mask=None, voxel_size=(1, 1, 1))``
and returns the unwrapped phase in radians as float32, 0 outside the mask.

- :func:`unwrap_reliability`: exact (congruent) 3D path following sorted by
  reliability (Herraez et al. 2002; Abdul-Rahman et al. 2007).
- :func:`unwrap_laplacian`: fast Laplacian estimate, smooth but not congruent
  (Schofield & Zhu 2003; Ghiglia & Romero 1994).
"""

from .laplacian import unwrap_laplacian
from .reliability import unwrap_reliability

__all__ = ["unwrap_laplacian", "unwrap_reliability"]
