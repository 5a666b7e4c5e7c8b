"""Accuracy metrics of the QSM reconstruction challenges.

NRMSE and HFEN follow the 2016 challenge (Langkammer et al., MRM 2018); the
deep grey matter error follows the 2019 challenge (QSM Challenge 2.0
Organization Committee, MRM 2021). Both maps are compared after removing their
mean over the mask, since susceptibility is only defined up to a constant.
"""

import numpy as np
from scipy import ndimage

from .validation import as_mask


def _demeaned(a, mask):
    values = np.asarray(a, dtype=np.float64)[mask]
    return values - values.mean()


def nrmse(estimate, truth, mask, *, demean=True):
    """Normalised root-mean-square error in percent: 100 ||x - y|| / ||y|| over ``mask``."""
    mask = as_mask(mask, np.shape(truth))
    if demean:
        x, y = _demeaned(estimate, mask), _demeaned(truth, mask)
    else:
        x, y = np.asarray(estimate, np.float64)[mask], np.asarray(truth, np.float64)[mask]
    return float(100.0 * np.linalg.norm(x - y) / np.linalg.norm(y))


def hfen(estimate, truth, mask, *, sigma_voxels=1.5):
    """High-frequency error norm: NRMSE of Laplacian-of-Gaussian filtered maps (percent).

    Ravishankar & Bresler, IEEE TMI 2011; sigma 1.5 voxels as in the 2016 challenge.
    """
    mask = as_mask(mask, np.shape(truth))
    x = np.where(mask, np.asarray(estimate, np.float64) - np.mean(np.asarray(estimate)[mask]), 0)
    y = np.where(mask, np.asarray(truth, np.float64) - np.mean(np.asarray(truth)[mask]), 0)
    log_x = ndimage.gaussian_laplace(x, sigma_voxels)
    log_y = ndimage.gaussian_laplace(y, sigma_voxels)
    return float(100.0 * np.linalg.norm((log_x - log_y)[mask]) / np.linalg.norm(log_y[mask]))


def region_means(chi, labels, label_names, mask=None):
    """Mean of ``chi`` per label, as ``{name: mean}`` for labels that have voxels."""
    labels = np.asarray(labels)
    out = {}
    for value, name in label_names.items():
        region = labels == value
        if mask is not None:
            region &= mask
        if region.any():
            out[name] = float(np.mean(np.asarray(chi)[region], dtype=np.float64))
    return out


def region_errors(estimate, truth, labels, label_names, mask):
    """Per-region mean error (ppm) after referencing both maps to their mean over ``mask``."""
    mask = as_mask(mask, np.shape(truth))
    est = np.asarray(estimate, np.float64) - np.mean(np.asarray(estimate)[mask])
    tru = np.asarray(truth, np.float64) - np.mean(np.asarray(truth)[mask])
    est_means = region_means(est, labels, label_names, mask)
    tru_means = region_means(tru, labels, label_names, mask)
    return {name: est_means[name] - tru_means[name] for name in est_means}
