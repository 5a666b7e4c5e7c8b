"""Head phantom and multi-echo gradient-echo forward simulation.

- :func:`load_head_phantom`: the shipped 1 mm head model (QSM challenge 2.0
  geometry, NeuroPoly, MIT licence), resampled on request.
- :func:`susceptibility_map`: susceptibility per voxel with brain texture.
- :func:`simulate_gre`: magnitude and phase of a multi-echo acquisition with
  ground truth (susceptibility, local and total field, R2*), computed on the
  acquisition grid with the inversions' discrete dipole kernel (fast; for
  tests of the pipeline's plumbing).
- :func:`load_fine_head_model` and :func:`simulate_realistic_gre`: the same
  head at its native 0.64 mm, with relaxation texture, the exact field of
  cuboid voxels and k-space truncation to the acquisition grid (a model that
  the inversions do not share; for choosing and judging defaults).
"""

from .fine_phantom import FineHeadModel, FineTissue, load_fine_head_model
from .forward import SimulatedGRE, simulate_gre
from .phantom import HeadPhantom, Tissue, load_head_phantom, susceptibility_map
from .realistic import RealisticGRE, simulate_realistic_gre

__all__ = ["FineHeadModel", "FineTissue", "HeadPhantom", "RealisticGRE", "SimulatedGRE", "Tissue",
           "load_fine_head_model", "load_head_phantom", "simulate_gre", "simulate_realistic_gre",
           "susceptibility_map"]
