"""Total field from multi-echo phase: echo combination and phase-offset correction.

- :func:`fit_multi_echo_field`: magnitude-weighted linear fit of the phase over
  echo time with the phase offset as intercept, after spatial unwrapping of the
  first echo difference and temporal unwrapping of later echoes;
  ``model="nonlinear"`` refines it by Gauss-Newton on the complex signal
  (Liu et al. 2013), ``phase_offset="mcpc3ds"`` removes a smooth offset first.
- :func:`mcpc3ds_phase_offset`: smooth phase offset from echoes 1 and 2
  (MCPC-3D-S, Eckstein et al. 2018).
- :func:`trusted_field_mask`: voxels whose fitted field enters the data terms.
- :func:`residual_exclusion_mask`: the brain mask without the high-residual
  clusters at its edge.
"""

from .echo_fit import (EchoFitResult, fit_multi_echo_field, residual_exclusion_mask,
                       trusted_field_mask)
from .mcpc3ds import mcpc3ds_phase_offset

__all__ = ["EchoFitResult", "fit_multi_echo_field", "mcpc3ds_phase_offset",
           "residual_exclusion_mask", "trusted_field_mask"]
