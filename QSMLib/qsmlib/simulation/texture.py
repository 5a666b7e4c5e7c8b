"""Tissue texture for the realistic simulator: relaxation maps, susceptibility that follows them,
white-matter anisotropy with synthetic fibre directions.

Inside every tissue, R2* and R1 vary around the tissue mean as smooth random
fields (two scales: fine, about 1 mm, and coarse, about 5 mm, as iron and
myelin vary both voxel to voxel and across a nucleus). The susceptibility of
each tissue then follows the published linear model of the head phantom
(Marques et al. 2021; NeuroPoly susceptibility-separation phantom)::

    chi(r) = mean chi + a (R2*(r) - mean R2*) + b (R1(r) - mean R1)

with ``a`` and ``b`` the sums of the weights of the paramagnetic and the
diamagnetic part (so chi_pos + chi_neg = chi). The weights are applied to the
deviations at 3 T, the field of the R2* table, so that the susceptibility
does not depend on the simulated field strength.

White-matter anisotropy (optional) replaces the susceptibility of each tract
by ``delta chi cos^2(theta) + chi0`` (published per tract), theta the angle
between the fibre and B0 (Lee et al. 2010; Wharton & Bowtell 2012). The head
model has no fibre directions; the ones used here are SYNTHETIC: a nominal
direction per tract from textbook anatomy (corpus callosum left-right,
corona radiata and internal capsule mostly inferior-superior, longitudinal
fascicles and thalamic radiations anterior-posterior), towards the cortex
for the remaining white matter, each perturbed by a smooth random field of
about 15 degrees. They are plausible, not measured.

References
----------
Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
A realistic in silico head phantom for MRI data simulation and evaluation of
susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.

Lee J, Shmueli K, Fukunaga M, et al. Sensitivity of MRI resonance frequency to
the orientation of brain tissue microstructure. PNAS 2010;107:5130-5135.

Wharton S, Bowtell R. Fiber orientation-dependent white matter contrast in
gradient echo MRI. PNAS 2012;109:18559-18564.
"""

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

#: Coefficient of variation of R2* inside a tissue.
R2STAR_CV = 0.12
#: Coefficient of variation of R1 inside a tissue.
R1_CV = 0.05
#: Coefficient of variation of the proton density inside a tissue.
PD_CV = 0.03
#: Correlation between the R2* and R1 textures (iron raises both).
R2STAR_R1_CORRELATION = 0.3
#: Gaussian filter SD (mm) of the fine and of the coarse texture scale.
TEXTURE_SCALES_MM = (1.0, 5.0)
#: Blur (Gaussian SD, mm) of the tissue means of proton density and R1 used for the magnitude only.
MAGNITUDE_BLUR_MM = 0.7
#: Angular spread of the synthetic fibre directions around their nominal direction.
FIBRE_PERTURBATION = 0.27
#: Gaussian filter SD (mm) of the fibre-direction perturbation.
FIBRE_PERTURBATION_SCALE_MM = 3.0

#: Nominal fibre direction (voxel axes: left->right, posterior->anterior, inferior->superior)
#: per tract name of the white-matter table. Synthetic: textbook anatomy, not measured.
NOMINAL_FIBRE_DIRECTIONS = {
    "body of the corpus callosum": (1.0, 0.0, 0.0),
    "splenium of the corpus callosum": (1.0, -0.3, 0.0),
    "genu of the corpus callosum": (1.0, 0.3, 0.0),
    "anterior limb of the internal capsule": (0.0, 0.8, 0.6),
    "posterior thalamic radiations": (0.0, 1.0, 0.0),
    "superior corona radiata": (0.0, 0.0, 1.0),
    "posterior corona radiata": (0.0, -0.4, 0.9),
    "anterior corona radiata": (0.0, 0.4, 0.9),
    "posterior limb of the internal capsule": (0.0, -0.2, 1.0),
    "superior longitudinal fascicle": (0.0, 1.0, 0.0),
}


@dataclass
class TissueMaps:
    """Fine-grid tissue maps (float32, shape of the model's labels).

    Attributes
    ----------
    chi_ppm : susceptibility relative to water (ppm)
    r2star_hz : R2* at the simulated field (1/s)
    r1_hz : R1 at the simulated field (1/s)
    pd : proton density (relative to water)
    r2star_dev_3t_hz, r1_dev_3t_hz : deviations from the tissue means at 3 T, which drive chi
    magnitude_pd, magnitude_r1 : proton density and R1 of the magnitude model (tissue means blurred
        across boundaries, plus the textures)
    wm_cos2 : cos^2 of the fibre-to-B0 angle in the white-matter tracts (None without anisotropy)
    fibre_index : tuple of index arrays of the tract voxels (None without anisotropy)
    fibre_dir : ndarray (n, 3), SYNTHETIC unit fibre directions at ``fibre_index``
    """

    chi_ppm: np.ndarray
    r2star_hz: np.ndarray
    r1_hz: np.ndarray
    pd: np.ndarray
    r2star_dev_3t_hz: np.ndarray
    r1_dev_3t_hz: np.ndarray
    magnitude_pd: np.ndarray
    magnitude_r1: np.ndarray
    wm_cos2: np.ndarray = None
    fibre_index: tuple = None
    fibre_dir: np.ndarray = None


def smooth_random_field(shape, voxel_size_mm, sigma_mm, rng):
    """Gaussian-filtered white noise with unit SD (float32).

    For filter SDs of 4 voxels or more the noise is drawn on a grid coarser by
    an integer step (keeping the SD at 2 coarse voxels or more), filtered there
    and interpolated linearly: cheap, and at that smoothness the interpolation
    leaves the variance uniform to within 2 %.
    """
    shape = tuple(int(n) for n in shape)
    sigma_vox = [sigma_mm / v for v in voxel_size_mm]
    step = max(1, int(min(sigma_vox) / 2))
    if step == 1:
        noise = rng.standard_normal(shape, dtype=np.float32)
        field = ndi.gaussian_filter(noise, sigma_vox, mode="wrap", truncate=2.0)
    else:
        coarse_shape = [int(np.ceil((n - 1) / step)) + 2 for n in shape]
        noise = rng.standard_normal(coarse_shape, dtype=np.float32)
        field = ndi.gaussian_filter(noise, [s / step for s in sigma_vox], mode="wrap", truncate=2.0)
        for axis, n in enumerate(shape):
            position = np.arange(n, dtype=np.float64) / step
            lower = np.floor(position).astype(int)
            view = [1] * 3
            view[axis] = n
            frac = (position - lower).astype(np.float32).reshape(view)
            field = (np.take(field, lower, axis=axis) * (1 - frac)
                     + np.take(field, lower + 1, axis=axis) * frac)
    field = np.ascontiguousarray(field, dtype=np.float32)
    sample = field[::3, ::3, ::3]
    field -= np.float32(sample.mean(dtype=np.float64))
    field /= np.float32(sample.std(dtype=np.float64) or 1.0)
    return field


#: Labels whose bounding box holds fewer voxels than this get exact statistics.
EXACT_STATISTICS_VOXELS = 4_000_000


def _per_tissue_standardise(values, labels, skip_label, boxes, *, stride=5):
    """Remove the per-label mean and scale to unit SD per label (in place); ``skip_label`` voxels become 0.

    ``boxes`` are the labels' bounding boxes (``scipy.ndimage.find_objects``).
    Labels with a small box (the deep grey matter nuclei, vessels) take exact
    statistics from their box; the large ones (white and grey matter, CSF,
    bone...) from every ``stride``-th slab along the first axis, a stride
    prime to the texture's interpolation step: their mean and SD are then
    those of the whole tissue to a few percent of the SD, at a fraction of the cost.
    """
    sub_labels = labels[::stride].ravel()
    sub_values = values[::stride].ravel()
    counts = np.bincount(sub_labels, minlength=256)
    means = np.bincount(sub_labels, weights=sub_values, minlength=256) / np.maximum(counts, 1)
    centred = sub_values - means.astype(np.float32)[sub_labels]
    sd = np.sqrt(np.bincount(sub_labels, weights=centred * centred, minlength=256) / np.maximum(counts, 1))
    for index, box in enumerate(boxes):
        label = index + 1
        if box is None or label == skip_label:
            continue
        if np.prod([s.stop - s.start for s in box]) < EXACT_STATISTICS_VOXELS or counts[label] < 100:
            voxels = values[box][labels[box] == label].astype(np.float64)
            means[label], sd[label] = voxels.mean(), voxels.std()
    inverse = np.divide(1.0, sd, out=np.zeros(256), where=sd > 0)
    inverse[skip_label] = 0.0
    values -= means.astype(np.float32)[labels]
    values *= inverse.astype(np.float32)[labels]
    return values


def relaxation_textures(model, rng, *, r2star_cv=R2STAR_CV, r1_cv=R1_CV,
                        correlation=R2STAR_R1_CORRELATION, scales_mm=TEXTURE_SCALES_MM):
    """Deviations of R2* and R1 from their tissue means at 3 T (1/s), and a unit proton-density texture.

    R2* and R1 are sums of smooth random fields of the given scales, the proton
    density the coarsest scale alone; each is standardised per
    tissue (zero mean, unit SD over every label), then scaled by the tissue's
    mean and coefficient of variation. Air has none.

    Returns
    -------
    r2star_dev, r1_dev, pd_unit : ndarray of float32
    """
    labels = np.asarray(model.labels)
    shape = labels.shape
    boxes = ndi.find_objects(labels)
    unit = []
    for scales in (scales_mm, scales_mm, scales_mm[-1:]):
        total = smooth_random_field(shape, model.voxel_size_mm, scales[0], rng)
        for sigma in scales[1:]:
            total += smooth_random_field(shape, model.voxel_size_mm, sigma, rng)
        unit.append(_per_tissue_standardise(total, labels, model.air_label, boxes))
    g_r2star, g_other, pd_unit = unit
    # R1 texture correlated with the R2* one; re-standardised per tissue.
    g_r1 = np.float32(correlation) * g_r2star + np.float32(np.sqrt(1.0 - correlation ** 2)) * g_other
    del g_other
    g_r1 = _per_tissue_standardise(g_r1, labels, model.air_label, boxes)
    r2star_mean = model.lookup("r2star_3t_hz").astype(np.float32)
    r1_mean = model.lookup("r1_hz", 3.0).astype(np.float32)
    g_r2star *= (np.float32(r2star_cv) * r2star_mean)[labels]
    g_r1 *= (np.float32(r1_cv) * r1_mean)[labels]
    return g_r2star, g_r1, pd_unit


def synthetic_fibre_directions(model, rng, *, perturbation=FIBRE_PERTURBATION,
                               scale_mm=FIBRE_PERTURBATION_SCALE_MM):
    """SYNTHETIC unit fibre directions in the white-matter tracts of ``model``.

    Tracts named in :data:`NOMINAL_FIBRE_DIRECTIONS` take that direction;
    other tract voxels point along the gradient of the smoothed white-matter
    mask (towards the cortex). A smooth random vector field of amplitude
    ``perturbation`` is added before normalising.

    Returns
    -------
    index : tuple of 3 int arrays
        The tract voxels (``model.wm_regions > 0``).
    directions : ndarray (n, 3) of float32
    """
    regions = np.asarray(model.wm_regions)
    inside = regions > 0
    index = np.nonzero(inside)
    box = tuple(slice(max(int(i.min()) - 8, 0), int(i.max()) + 9) for i in index)
    local = tuple(i - b.start for i, b in zip(index, box))
    region_of = regions[index]
    directions = np.zeros((region_of.size, 3), dtype=np.float32)
    named = np.zeros(region_of.size, dtype=bool)
    for region, entry in model.wm_table.items():
        nominal = NOMINAL_FIBRE_DIRECTIONS.get(entry.name.lower())
        if nominal is None:
            continue
        this = region_of == region
        directions[this] = np.asarray(nominal, dtype=np.float32) / np.float32(np.linalg.norm(nominal))
        named |= this
    if not named.all():
        smooth = ndi.gaussian_filter(inside[box].astype(np.float32),
                                     [2.0 / v for v in model.voxel_size_mm], truncate=3.0)
        gradient = np.stack([np.gradient(smooth, axis=a)[local] / np.float32(v)
                             for a, v in enumerate(model.voxel_size_mm)], axis=1)
        # Towards the cortex: down the gradient of the white-matter fraction.
        norm = np.linalg.norm(gradient, axis=1, keepdims=True)
        fallback = np.tile(np.array([[0.0, 0.0, 1.0]], dtype=np.float32), (gradient.shape[0], 1))
        unit = np.where(norm > 1e-3, -gradient / np.maximum(norm, 1e-12), fallback)
        directions[~named] = unit[~named]
    box_shape = tuple(b.stop - b.start if b.stop <= n else n - b.start
                      for b, n in zip(box, regions.shape))
    for axis in range(3):
        noise = smooth_random_field(box_shape, model.voxel_size_mm, scale_mm, rng)
        directions[:, axis] += np.float32(perturbation) * noise[local]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return index, directions


def tissue_maps(model, *, b0_t, b0_dir, rng, wm_anisotropy=False, texture=True,
                r2star_cv=R2STAR_CV, r1_cv=R1_CV, pd_cv=PD_CV, magnitude_blur_mm=MAGNITUDE_BLUR_MM):
    """All fine-grid tissue maps of the realistic simulator (see the module docstring).

    Parameters
    ----------
    model : FineHeadModel
    b0_t : float
        Field strength (T) for R2* and R1.
    b0_dir : sequence of 3 float
        Unit B0 direction in voxel coordinates (for the anisotropy).
    rng : numpy Generator
    wm_anisotropy : bool
        Apply delta chi cos^2 theta + chi0 in the white-matter tracts (synthetic fibres).
    texture : bool
        Draw the R2*/R1/PD textures; False gives piecewise-constant maps.

    Returns
    -------
    TissueMaps
    """
    labels = np.asarray(model.labels)
    air = model.air_label
    if texture:
        r2star_dev, r1_dev, pd_unit = relaxation_textures(model, rng, r2star_cv=r2star_cv, r1_cv=r1_cv)
    else:
        r2star_dev = np.zeros(labels.shape, dtype=np.float32)
        r1_dev = np.zeros(labels.shape, dtype=np.float32)
        pd_unit = np.zeros(labels.shape, dtype=np.float32)
    # Tables indexed by label; the air rows carry no texture.
    r2star_weight = model.lookup("r2star_weight")
    r1_weight = model.lookup("r1_weight")
    r2star_weight[air] = r1_weight[air] = 0.0
    chi = model.lookup("chi_ppm").astype(np.float32)[labels]
    chi += r2star_weight.astype(np.float32)[labels] * r2star_dev
    chi += r1_weight.astype(np.float32)[labels] * r1_dev

    wm_cos2 = fibre_index = fibre_dir = None
    if wm_anisotropy:
        if model.wm_regions is None or not model.wm_table:
            raise ValueError("wm_anisotropy: the model has no white-matter regions")
        fibre_index, fibre_dir = synthetic_fibre_directions(model, rng)
        b = np.asarray(b0_dir, dtype=np.float32)
        cos2 = (fibre_dir @ b) ** 2
        region_of = np.asarray(model.wm_regions)[fibre_index]
        delta = np.zeros(256, dtype=np.float32)
        chi0 = np.zeros(256, dtype=np.float32)
        for region, entry in model.wm_table.items():
            delta[region], chi0[region] = entry.delta_chi_ppm, entry.chi0_ppm
        tissue_mean = model.lookup("chi_ppm").astype(np.float32)[labels[fibre_index]]
        chi[fibre_index] += chi0[region_of] + delta[region_of] * cos2 - tissue_mean
        wm_cos2 = np.zeros(labels.shape, dtype=np.float32)
        wm_cos2[fibre_index] = cos2

    r2star = model.lookup("r2star_3t_hz").astype(np.float32)[labels]
    r2star += r2star_dev
    np.maximum(r2star, 0, out=r2star)
    r2star *= np.float32(b0_t / 3.0)
    r1_mean_b0 = model.lookup("r1_hz", b0_t)
    r1_mean_3t = model.lookup("r1_hz", 3.0)
    ratio = np.divide(r1_mean_b0, r1_mean_3t, out=np.ones(256), where=r1_mean_3t > 0)
    r1_dev_b0 = r1_dev * ratio.astype(np.float32)[labels]
    r1 = r1_mean_b0.astype(np.float32)[labels]
    r1 += r1_dev_b0
    pd_mean = model.lookup("m0")
    pd_mean[air] = 0.0
    pd_texture = 1 + np.float32(pd_cv) * pd_unit
    pd = pd_mean.astype(np.float32)[labels] * pd_texture

    head = labels != air
    magnitude_pd, magnitude_r1 = _blur_inside([pd_mean, r1_mean_b0], labels, head, model.voxel_size_mm,
                                              magnitude_blur_mm)
    magnitude_pd *= pd_texture
    magnitude_r1 += r1_dev_b0
    return TissueMaps(chi_ppm=chi, r2star_hz=r2star, r1_hz=r1, pd=pd, r2star_dev_3t_hz=r2star_dev,
                      r1_dev_3t_hz=r1_dev, magnitude_pd=magnitude_pd, magnitude_r1=magnitude_r1,
                      wm_cos2=wm_cos2, fibre_index=fibre_index, fibre_dir=fibre_dir)


def _blur_inside(tables, labels, region, voxel_size_mm, sigma_mm):
    """Per-label values (one table each) blurred by a Gaussian normalised inside ``region`` (0 outside).

    The values spread across the boundaries between tissues but not into the
    outside medium.
    """
    maps = [np.asarray(t, dtype=np.float32)[labels] for t in tables]
    if sigma_mm <= 0:
        return [np.where(region, m, np.float32(0)) for m in maps]
    sigma = [sigma_mm / v for v in voxel_size_mm]
    norm = ndi.gaussian_filter(region.astype(np.float32), sigma, truncate=2.0)
    inverse = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 1e-3)
    inverse *= region
    out = []
    for values in maps:
        values *= region
        blurred = ndi.gaussian_filter(values, sigma, truncate=2.0)
        blurred *= inverse
        out.append(blurred)
    return out
