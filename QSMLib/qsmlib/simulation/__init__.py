"""Head phantom and multi-echo gradient-echo forward simulation.

- :func:`load_head_phantom`: the shipped 1 mm head model (QSM challenge 2.0
  geometry, NeuroPoly, MIT licence), resampled on request.
- :func:`susceptibility_map`: susceptibility per voxel with brain texture.
- :func:`simulate_gre`: magnitude and phase of a multi-echo acquisition with
  ground truth (susceptibility, local and total field, R2*).
"""

from .forward import SimulatedGRE, simulate_gre
from .phantom import HeadPhantom, Tissue, load_head_phantom, susceptibility_map

__all__ = ["HeadPhantom", "SimulatedGRE", "Tissue", "load_head_phantom", "simulate_gre",
           "susceptibility_map"]
