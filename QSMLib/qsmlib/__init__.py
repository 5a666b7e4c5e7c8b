"""QSMLib: quantitative susceptibility mapping and SWI from multi-echo gradient-echo MRI.

Arrays are in NIfTI voxel order (i, j, k). Units: echo times in s, B0 in T,
voxel sizes in mm, fields in Hz or ppm as named, susceptibility in ppm.
"""

__version__ = "0.1.0"

from .errors import Cancelled, ImplausibleMaskError, QSMInputError  # noqa: E402

__all__ = ["Cancelled", "ImplausibleMaskError", "QSMInputError", "__version__"]
