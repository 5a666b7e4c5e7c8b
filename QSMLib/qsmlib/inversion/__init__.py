"""Dipole inversion: local field (ppm) to susceptibility (ppm).

Direct (closed form in k-space):

- :func:`tkd`: truncated k-space division (kernel clamped near its zero cone).
- :func:`tsvd`: truncated SVD (kernel inverse set to 0 near the cone).
- :func:`tikhonov`: L2 inversion with a gradient penalty.
- :func:`cosmos`: two or more head orientations, least squares over them.

Iterative:

- :func:`tv_admm`: total-variation inversion by ADMM (the consensus default).
- :func:`ilsqr`: LSQR with streaking estimation and removal (iLSQR).
- :func:`rts`: rapid two-step: well-conditioned k-space first, TV fill-in of the cone.
- :func:`medi`: MEDI-L1, gradient sparsity outside the magnitude's edges, nonlinear
  data term; with ``csf_mask`` MEDI+0 (uniform CSF, zero reference).
- :func:`nltv`: nonlinear TV (FANSI-style ADMM on the complex exponential of the field).
- :func:`star`: STAR-QSM, strong sources first, then TV for the rest.

All share the signature ``method(field_ppm, mask, voxel_size, *, b0_dir=(0, 0, 1), ...)``
(COSMOS takes a list of fields and ``b0_dirs``) and return float32
susceptibility in ppm, zero outside the mask. :func:`choose_regularisation`
picks the parameter of the one-parameter methods by the L-curve.
"""

from .cosmos import cosmos
from .gradient import divergence, gradient, gradient_eigenvalues, gradient_norm_squared
from .ilsqr import ilsqr
from .lcurve import (AUTO_PARAMETERS, PARAMETER_RULES, RegularisationChoice, choose_regularisation, lcurve_choice,
                     lcurve_corner)
from .medi import magnitude_edges, medi
from .nltv import nltv
from .rts import rts
from .star import star
from .tikhonov import tikhonov
from .tkd import tkd
from .tsvd import tsvd
from .tv_admm import tv_admm

__all__ = ["AUTO_PARAMETERS", "PARAMETER_RULES", "RegularisationChoice", "choose_regularisation", "cosmos",
           "divergence", "gradient", "gradient_eigenvalues", "gradient_norm_squared", "ilsqr", "lcurve_choice",
           "lcurve_corner", "magnitude_edges", "medi", "nltv", "rts", "star", "tikhonov", "tkd", "tsvd",
           "tv_admm"]
