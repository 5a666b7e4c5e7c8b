"""Accuracy metrics of the QSM reconstruction challenges.

Every metric compares an estimate with a ground truth inside a mask. As in
both challenges, the two maps are first referenced to their own mean over the
mask and set to 0 outside it (``demean=True``), since susceptibility is only
defined up to a constant.

- :func:`nrmse`: 100 ||x - y|| / ||y|| (2016 challenge "RMSE", Challenge
  2.0 "NRMSE").
- :func:`hfen`: the same norm ratio after a 15 x 15 x 15 Laplacian-of-
  Gaussian filter, sigma 1.5 voxels (2016 challenge).
- :func:`ssim`: structural similarity as the 2016 challenge computed it: maps
  shifted and scaled to [0, 255], K1 = 0.01, K2 = 0.03, L = 255.
- :func:`xsim`: the structural similarity of Milovic et al. (2025), computed
  on the maps in ppm: K1 = 0.01, K2 = 0.001, L = 1 ppm.
- :func:`dgm_mean_abs_error` and :func:`dgm_slope_error`: deep grey matter
  accuracy (Challenge 2.0): the mean absolute error of the region means, and
  the deviation of their regression slope from 1.

Filters work in voxel units, as the challenges did.

References
----------
Langkammer C, Schweser F, Shmueli K, et al. Quantitative susceptibility
mapping: report from the 2016 reconstruction challenge. Magn Reson Med
2018;79:1661-1673.

QSM Challenge 2.0 Organization Committee (Bilgic B, Langkammer C, Marques JP,
Meineke J, Milovic C, Schweser F). QSM reconstruction challenge 2.0: design
and report of results. Magn Reson Med 2021;86:1241-1255.

Milovic C, Tejos C, Silva J, Shmueli K, Irarrazaval P. XSIM: a structural
similarity index measure optimized for MRI QSM. Magn Reson Med
2025;93:411-421.

Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from
error visibility to structural similarity. IEEE Trans Image Process
2004;13:600-612.

Ravishankar S, Bresler Y. MR image reconstruction from highly undersampled
k-space data by dictionary learning. IEEE Trans Med Imaging 2011;30:1028-1041
(the HFEN and its 15 x 15 LoG kernel, sigma 1.5).
"""

import numpy as np
from scipy import ndimage

from .errors import QSMInputError
from .validation import as_mask, as_volume, check_count, check_number

#: Standard deviation (voxels) of the Gaussian window of SSIM and XSIM, and of the HFEN filter.
SIGMA_VOXELS = 1.5
#: HFEN: side (voxels) of the cubic LoG kernel (Ravishankar & Bresler; 2016 challenge).
HFEN_KERNEL_SIZE = 15
#: 2016 challenge SSIM: constants and dynamic range of Wang et al. for 8-bit images ...
SSIM_K = (0.01, 0.03)
SSIM_L = 255.0
#: ... and the half-width (voxels) of its cubic Gaussian window: 1, a 3 x 3 x 3
#: window, as in the 3D SSIM code (ssim_index3d) the challenge evaluation called.
SSIM_RADIUS_VOXELS = 1
#: XSIM: K2 ten times smaller than SSIM's, so that streaking (a structure
#: error) is penalised; L = 1 ppm, the native range of brain QSM; a 7 x 7 x 7
#: window (half-width 3). Milovic et al. 2025.
XSIM_K = (0.01, 0.001)
XSIM_L_PPM = 1.0
XSIM_RADIUS_VOXELS = 3


def nrmse(estimate, truth, mask, *, demean=True):
    """Normalised root-mean-square error in percent: ``100 ||x - y|| / ||y||`` over ``mask``.

    Parameters
    ----------
    estimate, truth : ndarray, shape (X, Y, Z)
        Susceptibility maps in ppm.
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels compared.
    demean : bool, optional
        Reference both maps to their mean over ``mask`` first (both challenges).

    Returns
    -------
    float
        NRMSE in percent.

    Raises
    ------
    QSMInputError
        If shapes differ, the mask is empty or the truth is 0 everywhere in it.

    References
    ----------
    Langkammer C et al. Magn Reson Med 2018;79:1661-1673.
    """
    x, y, mask = _prepared(estimate, truth, mask, demean)
    return _norm_ratio(x[mask] - y[mask], y[mask], "nrmse")


def hfen(estimate, truth, mask, *, demean=True, sigma_voxels=SIGMA_VOXELS, kernel_size=HFEN_KERNEL_SIZE):
    """High-frequency error norm in percent: NRMSE of Laplacian-of-Gaussian filtered maps.

    Both maps are referenced to their mean over ``mask`` and set to 0 outside
    it, then filtered by the zero-sum LoG kernel of ``kernel_size`` voxels per
    side (zero padding at the volume edge). The norms run over the whole
    volume, so that edge errors that the filter spreads out of the mask count,
    as in the 2016 challenge.

    Parameters
    ----------
    estimate, truth : ndarray, shape (X, Y, Z)
        Susceptibility maps in ppm.
    mask : ndarray of bool, shape (X, Y, Z)
    demean : bool, optional
        Reference both maps to their mean over ``mask`` first.
    sigma_voxels : float, optional
        Standard deviation of the Gaussian, in voxels (1.5 in the challenge).
    kernel_size : int, optional
        Odd side of the cubic kernel, in voxels (15 in the challenge).

    Returns
    -------
    float
        HFEN in percent.

    Raises
    ------
    QSMInputError
        If shapes differ, the mask is empty, the options are invalid, or the
        filtered truth is 0.

    References
    ----------
    Ravishankar S, Bresler Y. IEEE Trans Med Imaging 2011;30:1028-1041.
    Langkammer C et al. Magn Reson Med 2018;79:1661-1673.
    """
    x, y, mask = _prepared(estimate, truth, mask, demean)
    sigma = check_number(sigma_voxels, "sigma_voxels", strict=True, unit=" voxels")
    size = check_count(kernel_size, "kernel_size", minimum=3)
    if size % 2 == 0:
        raise QSMInputError(f"kernel_size: {size} is even; give an odd number of voxels (15 in the challenge)")
    return _norm_ratio(log_filter(x - y, sigma, size), log_filter(y, sigma, size), "hfen")


def log_filter(volume, sigma_voxels=SIGMA_VOXELS, kernel_size=HFEN_KERNEL_SIZE):
    """Convolve ``volume`` with the zero-sum 3D LoG kernel of the HFEN (zero padding).

    The kernel is the 3D form of MATLAB's ``fspecial('log')``: a Gaussian
    normalised over the cube, times ``(|r|^2 - 3 sigma^2) / sigma^4``, minus
    its mean so that it sums to 0. It is a sum of separable terms, so it is
    applied as 1D filters plus one box filter, exactly.
    """
    volume = np.asarray(volume, dtype=np.float64)
    half = kernel_size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-offsets ** 2 / (2 * sigma_voxels ** 2))
    gauss /= gauss.sum()
    # The cube's Gaussian is gauss x gauss x gauss; its Laplacian factor splits per axis.
    second = gauss * (offsets ** 2 / sigma_voxels ** 4 - 1.0 / sigma_voxels ** 2)
    out = np.zeros_like(volume)
    for axis in range(3):
        term = volume
        for other in range(3):
            weights = second if other == axis else gauss
            term = ndimage.correlate1d(term, weights, axis=other, mode="constant")
        out += term
    # Zero-sum correction: subtract the kernel's mean times a box of ones.
    kernel_sum = 3.0 * float(second.sum())
    box_mean = ndimage.uniform_filter(volume, size=kernel_size, mode="constant")
    return out - kernel_sum * box_mean


def ssim(estimate, truth, mask, *, demean=True, radius_voxels=SSIM_RADIUS_VOXELS):
    """Structural similarity as the 2016 QSM challenge computed it.

    Steps:

    1. Both maps are referenced to their mean over ``mask`` and set to 0
       outside it (``demean``).
    2. Rescaling to 8-bit grey levels: the smallest value of either map is
       subtracted from the voxels of ``mask``, and both maps are divided by
       the largest value of either and multiplied by 255. Outside the mask
       stays 0.
    3. Local means, variances and covariance with a cubic Gaussian window,
       sigma 1.5 voxels, half-width ``radius_voxels`` (zero padding at the
       volume edge).
    4. ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``
       with ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, averaged over ``mask``.

    Because the scale comes from the maps' extremes, one outlier (a streak,
    a vein) compresses the range of every other voxel and raises the score;
    :func:`xsim` avoids this.

    Parameters
    ----------
    estimate, truth : ndarray, shape (X, Y, Z)
        Susceptibility maps in ppm.
    mask : ndarray of bool, shape (X, Y, Z)
    demean : bool, optional
        Reference both maps to their mean over ``mask`` first.
    radius_voxels : int, optional
        Half-width of the Gaussian window in voxels.

    Returns
    -------
    float
        Mean SSIM over ``mask``; 1 for identical maps.

    Raises
    ------
    QSMInputError
        If shapes differ, the mask is empty, or both maps are constant.

    References
    ----------
    Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. IEEE Trans Image Process
    2004;13:600-612.
    Langkammer C et al. Magn Reson Med 2018;79:1661-1673.
    """
    x, y, mask = _prepared(estimate, truth, mask, demean)
    radius = check_count(radius_voxels, "radius_voxels", minimum=1)
    low = min(float(x.min()), float(y.min()))
    x[mask] -= low
    y[mask] -= low
    high = max(float(x.max()), float(y.max()))
    if not high > 0:
        raise QSMInputError("ssim: both maps are constant inside the mask; nothing to compare")
    x *= 255.0 / high
    y *= 255.0 / high
    return _structural_similarity(x, y, mask, SSIM_K, SSIM_L, radius, "constant")


def xsim(estimate, truth, mask, *, demean=True, radius_voxels=XSIM_RADIUS_VOXELS):
    """XSIM: structural similarity for QSM, on the maps in ppm (Milovic et al. 2025).

    The SSIM formula of :func:`ssim` without rescaling, with ``K1 = 0.01``,
    ``K2 = 0.001`` and ``L = 1`` ppm, a Gaussian window of sigma 1.5 voxels
    and half-width ``radius_voxels`` (3: 7 x 7 x 7; edge voxels replicated at
    the volume border), averaged over ``mask``. The maps are referenced to
    their mean over ``mask`` and set to 0 outside it first (``demean``).

    Parameters
    ----------
    estimate, truth : ndarray, shape (X, Y, Z)
        Susceptibility maps in ppm.
    mask : ndarray of bool, shape (X, Y, Z)
    demean : bool, optional
        Reference both maps to their mean over ``mask`` first.
    radius_voxels : int, optional
        Half-width of the Gaussian window in voxels.

    Returns
    -------
    float
        Mean XSIM over ``mask``; 1 for identical maps.

    Raises
    ------
    QSMInputError
        If shapes differ or the mask is empty.

    References
    ----------
    Milovic C, Tejos C, Silva J, Shmueli K, Irarrazaval P. XSIM: a structural
    similarity index measure optimized for MRI QSM. Magn Reson Med
    2025;93:411-421.
    """
    x, y, mask = _prepared(estimate, truth, mask, demean)
    radius = check_count(radius_voxels, "radius_voxels", minimum=1)
    return _structural_similarity(x, y, mask, XSIM_K, XSIM_L_PPM, radius, "nearest")


def region_means(chi, labels, label_names, mask=None):
    """Mean of ``chi`` per label, as ``{name: mean}`` for labels that have voxels (within ``mask``)."""
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
    """Per-region mean error (ppm) after referencing both maps to their mean over ``mask``.

    Returns ``{name: mean(estimate) - mean(truth)}`` over each region's voxels
    inside ``mask``, for the regions that have such voxels.
    """
    x, y, mask = _prepared(estimate, truth, mask, True)
    labels = _labels(labels, mask.shape)
    est_means = region_means(x, labels, label_names, mask)
    tru_means = region_means(y, labels, label_names, mask)
    return {name: est_means[name] - tru_means[name] for name in est_means}


def dgm_mean_abs_error(estimate, truth, labels, label_values, mask):
    """Mean absolute deep grey matter error (ppm), Challenge 2.0 style.

    Both maps are referenced to their mean over ``mask``; for each region (the
    voxels of ``mask`` whose label is one of ``label_values``, one region per
    value) the absolute difference of the regional means is taken, and these
    are averaged over the regions.

    Parameters
    ----------
    estimate, truth : ndarray, shape (X, Y, Z)
        Susceptibility maps in ppm.
    labels : ndarray of int, shape (X, Y, Z)
        Label image.
    label_values : sequence of int
        The labels of the regions (for example caudate, putamen, globus
        pallidus, thalamus, red nucleus, substantia nigra, dentate nucleus).
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    float
        Mean over regions of ``|mean(estimate) - mean(truth)|`` in ppm.

    Raises
    ------
    QSMInputError
        If shapes differ or no region has voxels inside the mask.

    References
    ----------
    QSM Challenge 2.0 Organization Committee. Magn Reson Med 2021;86:1241-1255.
    """
    errors = list(_region_mean_pairs(estimate, truth, labels, label_values, mask))
    return float(np.mean([abs(e - t) for e, t in errors]))


def dgm_slope_error(estimate, truth, labels, label_values, mask):
    """Deviation from linearity of the deep grey matter means: ``|1 - slope|``.

    The slope is that of the least-squares line through the points
    (true regional mean, estimated regional mean), one point per region; an
    over-regularised map that shrinks contrast has a slope below 1
    (Challenge 2.0 "slope error"). Needs at least two regions with
    different true means.

    Returns
    -------
    float

    Raises
    ------
    QSMInputError
        If fewer than two regions have voxels, or their true means are equal.

    References
    ----------
    QSM Challenge 2.0 Organization Committee. Magn Reson Med 2021;86:1241-1255.
    """
    pairs = np.array(list(_region_mean_pairs(estimate, truth, labels, label_values, mask)))
    if len(pairs) < 2 or np.ptp(pairs[:, 1]) == 0:
        raise QSMInputError("dgm_slope_error: needs at least two regions with different true means; "
                            "give more label values")
    slope = np.polyfit(pairs[:, 1], pairs[:, 0], 1)[0]
    return float(abs(1.0 - slope))


def challenge_metrics(estimate, truth, mask, labels=None, dgm_label_values=None):
    """All metrics at once: ``{"nrmse_percent", "hfen_percent", "ssim", "xsim"}``,
    plus ``"dgm_mean_abs_error_ppm"`` and ``"dgm_slope_error"`` when labels are given."""
    out = {"nrmse_percent": nrmse(estimate, truth, mask), "hfen_percent": hfen(estimate, truth, mask),
           "ssim": ssim(estimate, truth, mask), "xsim": xsim(estimate, truth, mask)}
    if labels is not None and dgm_label_values is not None:
        out["dgm_mean_abs_error_ppm"] = dgm_mean_abs_error(estimate, truth, labels, dgm_label_values, mask)
        out["dgm_slope_error"] = dgm_slope_error(estimate, truth, labels, dgm_label_values, mask)
    return out


# --- helpers ---------------------------------------------------------------------------------

def _prepared(estimate, truth, mask, demean):
    """float64 copies of both maps, referenced to their mean over the mask and 0 outside it."""
    truth = as_volume(truth, "truth", dtype=np.float64)
    estimate = as_volume(estimate, "estimate", dtype=np.float64)
    if estimate.shape != truth.shape:
        raise QSMInputError(f"estimate has shape {estimate.shape} but truth has shape {truth.shape}; "
                            "compare maps on the same voxel grid")
    mask = as_mask(mask, truth.shape)
    out = []
    for volume in (estimate, truth):
        offset = float(volume[mask].mean()) if demean else 0.0
        out.append(np.where(mask, volume - offset, 0.0))
    return out[0], out[1], mask


def _norm_ratio(error, reference, name):
    denominator = float(np.linalg.norm(reference))
    if not denominator > 0:
        raise QSMInputError(f"{name}: the truth is constant inside the mask, so the error cannot be "
                            "normalised; compare maps with contrast")
    return float(100.0 * np.linalg.norm(error) / denominator)


def _structural_similarity(x, y, mask, k, dynamic_range, radius, mode):
    """Mean over ``mask`` of the SSIM map of Wang et al. with a Gaussian window."""
    c1 = (k[0] * dynamic_range) ** 2
    c2 = (k[1] * dynamic_range) ** 2
    # gaussian_filter's half-width is int(truncate * sigma + 0.5); this truncate gives ``radius``.
    truncate = radius / SIGMA_VOXELS

    def local_mean(volume):
        return ndimage.gaussian_filter(volume, SIGMA_VOXELS, mode=mode, cval=0.0, truncate=truncate)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov = local_mean(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
             / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return float(index[mask].mean())


def _labels(labels, shape):
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise QSMInputError(f"labels: shape {labels.shape} does not match the maps' shape {tuple(shape)}; "
                            "give a label image on the same voxel grid")
    return labels


def _region_mean_pairs(estimate, truth, labels, label_values, mask):
    """(estimated mean, true mean) per label value with voxels in the mask, both maps demeaned."""
    x, y, mask = _prepared(estimate, truth, mask, True)
    labels = _labels(labels, mask.shape)
    pairs = []
    for value in np.atleast_1d(label_values):
        region = (labels == value) & mask
        if region.any():
            pairs.append((float(x[region].mean()), float(y[region].mean())))
    if not pairs:
        raise QSMInputError(f"labels {list(np.atleast_1d(label_values))}: no voxel inside the mask carries "
                            "them; check the label image and values")
    return pairs
