"""Total field from multi-echo phase: echo combination and phase-offset correction.

- :func:`fit_multi_echo_field`: magnitude-weighted linear fit of the phase over
  echo time with the phase offset as intercept, after spatial unwrapping of the
  first echo difference and temporal unwrapping of later echoes.
"""

from .echo_fit import EchoFitResult, fit_multi_echo_field, trusted_field_mask

__all__ = ["EchoFitResult", "fit_multi_echo_field", "trusted_field_mask"]
