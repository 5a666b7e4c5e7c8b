"""Phase unwrapping.

Every unwrapper has the signature ``unwrap_X(phase, mask=None, voxel_size=(1, 1, 1))``
and returns the unwrapped phase in radians as float32, 0 outside the mask.

- :func:`unwrap_reliability`: exact (congruent) 3D path following sorted by
  reliability (Herraez et al. 2002; Abdul-Rahman et al. 2007).
- :func:`unwrap_romeo`: exact (congruent) quality-guided region growing with
  ROMEO's edge weights from phase coherence, second-echo phase gradient
  coherence and magnitude (Dymerska et al. 2021), computed as the maximum
  spanning tree of the voxel graph. Accepts ``magnitude=`` (and ``phase2=``,
  ``te_ratio=``) as keyword options.
- :func:`unwrap_laplacian`: fast Laplacian estimate, smooth but not congruent
  (Schofield & Zhu 2003; Ghiglia & Romero 1994).

Multi-echo phase:

- :func:`unwrap_echoes_temporal`: every echo of a 4D phase unwrapped, one echo
  in space by :func:`unwrap_romeo` and the others in time against it
  (phase proportional to TE), as in ROMEO's multi-echo mode.

Phase quality:

- :func:`voxel_quality`: ROMEO's edge weights averaged per voxel and over echo
  pairs, a map in [0, 1] of how trustworthy the phase is (used for masking).
"""

from .laplacian import unwrap_laplacian
from .reliability import unwrap_reliability
from .romeo import unwrap_echoes_temporal, unwrap_romeo, voxel_quality

__all__ = ["unwrap_echoes_temporal", "unwrap_laplacian", "unwrap_reliability", "unwrap_romeo", "voxel_quality"]
