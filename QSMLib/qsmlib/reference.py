"""Referencing: susceptibility is only known up to a constant, so fix that constant.

The 2024 QSM consensus recommends the whole-brain mean as reference
(QSM Consensus Organization Committee, Magn Reson Med 2024).
"""

import numpy as np

from .errors import QSMInputError
from .validation import as_mask


def reference_to_region(chi, mask, region):
    """Subtract the mean of ``chi`` over ``region`` (within ``mask``).

    Parameters
    ----------
    chi : ndarray (X, Y, Z)
        Susceptibility in ppm.
    mask : ndarray of bool
        Where ``chi`` is defined; the output is 0 outside it.
    region : ndarray of bool
        The reference region, for example the whole brain or a ventricle.

    Returns
    -------
    chi_ref : ndarray, float32
    offset_ppm : float
        The mean that was subtracted.
    """
    mask = as_mask(mask, np.shape(chi))
    region = as_mask(region, np.shape(chi), name="reference region") & mask
    if not region.any():
        raise QSMInputError("reference region: it does not overlap the brain mask; "
                            "choose a region inside the mask")
    offset = float(np.mean(chi[region], dtype=np.float64))
    chi_ref = np.where(mask, chi - offset, 0).astype(np.float32)
    return chi_ref, offset


def reference_whole_brain(chi, mask):
    """Reference to the mean over the whole mask (the consensus default)."""
    return reference_to_region(chi, mask, mask)


def reference_to_labels(chi, mask, labels, label_values):
    """Reference to the mean over the voxels whose label is in ``label_values``."""
    region = np.isin(np.asarray(labels), np.atleast_1d(label_values))
    if not region.any():
        raise QSMInputError(f"reference labels {list(np.atleast_1d(label_values))}: no voxel carries them; "
                            "check the label image and values")
    return reference_to_region(chi, mask, region)
