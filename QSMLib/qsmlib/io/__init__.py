"""Reading and writing: the only part of QSMLib that touches files."""

from .bids import find_megre, megre_names, write_megre
from .multiecho import (MultiEchoData, load_echo_series, load_field, load_labels, load_magnitude, load_mask,
                        load_multi_echo)
from .nifti import load_nifti, save_nifti
from .output import OutputDirectory, bids_label
from .phase_scaling import phase_to_radians

__all__ = ["MultiEchoData", "OutputDirectory", "bids_label", "find_megre", "load_echo_series", "load_field",
           "load_labels", "load_magnitude", "load_mask", "load_multi_echo", "load_nifti", "megre_names", "phase_to_radians",
           "save_nifti", "write_megre"]
