"""Dipole inversion: local field (ppm) to susceptibility (ppm).

- :func:`tkd`: truncated k-space division (direct, fastest, underestimates).
- :func:`tikhonov`: closed-form L2 inversion with a gradient penalty (direct).
- :func:`tv_admm`: total-variation inversion by ADMM (iterative, the default).

All share the signature ``method(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), ...)``
and return float32 susceptibility in ppm, zero outside the mask.
"""

from .gradient import divergence, gradient, gradient_eigenvalues, gradient_norm_squared
from .tikhonov import tikhonov
from .tkd import tkd
from .tv_admm import tv_admm

__all__ = ["divergence", "gradient", "gradient_eigenvalues", "gradient_norm_squared",
           "tikhonov", "tkd", "tv_admm"]
