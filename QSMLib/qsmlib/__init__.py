"""QSMLib: quantitative susceptibility mapping and SWI from multi-echo gradient-echo MRI.

Arrays are in NIfTI voxel order (i, j, k). Units: echo times in s, B0 in T,
voxel sizes in mm, fields in Hz or ppm as named, susceptibility in ppm.

Threads: ``qsmlib.set_threads(n)`` or ``with qsmlib.threads(n):`` sets how many
threads the FFTs and the BLAS/OpenMP pools use; ``qsmlib.get_threads()`` says
how many are in effect (see :mod:`qsmlib.parallel`).
"""

__version__ = "0.1.0"

from .errors import Cancelled, ImplausibleMaskError, QSMInputError  # noqa: E402
from .parallel import get_threads, set_threads, threads  # noqa: E402

__all__ = ["Cancelled", "ImplausibleMaskError", "QSMInputError", "__version__", "get_threads", "set_threads",
           "threads"]
