"""Plausibility check of a brain mask, so that a wrong mask is reported rather than silently used.

A brain mask that has taken in the scalp, the neck muscles or the skull
makes every later stage wrong: background removal treats the field of those
tissues as local, and the whole map shifts by tenths of a ppm, with nothing
in the output to show it. :func:`check_brain_mask` measures what the brain
mask of a human head must look like and says which measure fails:

- volume: within :data:`ADULT_VOLUME_ML` (an adult's intracranial volume,
  about 1,100-1,900 mL, less the eroded rim, with room on both sides). More
  is implausible whatever the field of view. Less is only questioned, and
  only when the mask lies within the field of view: a slab or a crop cuts
  the brain, and a child's or an animal's brain is smaller;
- size: the diameters of the mask's equivalent ellipsoid, questioned beyond
  :data:`MAX_LENGTH_MM` x :data:`MAX_WIDTH_MM` (an adult brain is at most
  about 185 x 150 mm);
- compactness: the sphericity ``pi^(1/3) (6 V)^(2/3) / A`` (1 for a ball),
  measured on a 2 mm grid so that it does not depend on the voxel size.
  It is judged only for masks within the field of view, since a mask cut by
  the field of view has flat faces;
- dark voxels: the share of the mask darker than the brain/background
  threshold of the magnitude (:func:`qsmlib.masking.auto_threshold`), which
  the automatic mask admits only in filled holes (veins, nuclei): a large
  share means skull, air or background inside;
- fast decay: with an R2* map, the share of voxels whose R2* is above
  :data:`HIGH_R2STAR_HZ_AT_3T` (scaled with B0), faster than any brain
  tissue, as at bone, air interfaces and fat.

Each measure has a level at which the mask is questioned (a warning) and,
except the low volume and the size, a level at which it is implausible.

Measured on the simulated head (3 T, SNR 30 and 100, 1-3 mm voxels): the
true brain and the automatic masks have volume 1,300-1,460 mL, diameters up
to 175 x 139 mm, sphericity 0.80-0.90 and no dark voxel. The 3 mm masks from
the magnitude alone, which took in the scalp and neck, have 1,840-2,430 mL,
176-189 mm width and sphericity 0.58-0.69; the whole head 3,000-3,600 mL
(17 % dark voxels once the skull is filled); the whole field of view
6,900 mL with 56 % dark voxels.
"""

import numpy as np

from .errors import QSMInputError
from .masking import _block_majority, auto_threshold, combined_magnitude
from .validation import as_mask, as_voxel_size, check_b0

#: Plausible volume (mL) of a brain mask of an adult human head: an adult's
#: intracranial volume is about 1,100-1,900 mL (brain and CSF); the automatic
#: mask leaves out some of the CSF over the convexity and erodes about 2 mm of rim.
ADULT_VOLUME_ML = (700.0, 2000.0)
#: Diameters (mm) of the equivalent ellipsoid, largest and second largest, beyond which
#: a mask is questioned: an adult brain is at most about 185 mm long and 150 mm wide.
MAX_LENGTH_MM = 200.0
MAX_WIDTH_MM = 165.0
#: Sphericity range of brain masks (for the messages), and the levels below which a mask
#: within the field of view is questioned / implausible.
BRAIN_SPHERICITY = (0.8, 0.9)
SPHERICITY_QUESTIONABLE = 0.6
SPHERICITY_IMPLAUSIBLE = 0.45
#: Share of the mask darker than the brain/background threshold: questioned / implausible.
DARK_QUESTIONABLE = 0.05
DARK_IMPLAUSIBLE = 0.15
#: R2* (1/s) at 3 T above which a voxel decays faster than any brain tissue (deep grey
#: matter is 30-50 1/s, veins up to about 50-80 1/s); scaled linearly with B0.
HIGH_R2STAR_HZ_AT_3T = 100.0
#: Share of the mask above that R2*: questioned / implausible.
HIGH_R2STAR_QUESTIONABLE = 0.10
HIGH_R2STAR_IMPLAUSIBLE = 0.25
#: Share of the image above which a mask leaves no background around the brain: no brain
#: mask of any species does that, and background field removal has no outside to model.
FILLS_IMAGE_FRACTION = 0.9
#: A mask that comes within this distance (mm) of a face of the volume is taken as cut by the
#: field of view (the final erosion keeps even a crop's mask a few mm off its faces).
BORDER_MARGIN_MM = 5.0
#: Grid (mm) on which the shape is measured (masks at finer voxels are block-averaged to it).
SHAPE_GRID_MM = 2.0
#: Mean area of a staircase (voxel-face) surface over that of the smooth surface it
#: samples, for surfaces of every orientation: E(|n_x| + |n_y| + |n_z|) = 3/2.
_STAIRCASE_FACTOR = 1.5


def check_brain_mask(mask, voxel_size, *, magnitude=None, r2star_hz=None, b0_t=3.0):
    """Measure a brain mask against what the brain mask of a human head must look like.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
        The brain mask.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    magnitude : ndarray, shape (X, Y, Z) or (X, Y, Z, E), optional
        Magnitude image (per echo): adds the share of dark voxels.
    r2star_hz : ndarray, shape (X, Y, Z), optional
        R2* in 1/s (at least inside the mask): adds the share of fast decay.
    b0_t : float, optional
        Field strength in tesla, for the R2* level.

    Returns
    -------
    dict
        ``verdict`` ("plausible", "questionable" or "implausible");
        ``implausible`` and ``questionable``, one sentence per failed measure
        (the measure, its plausible range, and what it suggests); and the
        measures ``volume_ml``, ``plausible_volume_ml``, ``image_fraction``
        with ``fills_image`` (at least :data:`FILLS_IMAGE_FRACTION`),
        ``within_field_of_view``, ``equivalent_diameters_mm``,
        ``sphericity``, ``dark_fraction`` with ``dark_threshold``, and
        ``high_r2star_fraction`` with ``high_r2star_hz`` (None when not
        measured).

    Raises
    ------
    QSMInputError
        If the mask is empty, the magnitude or R2* map does not match it,
        the voxel size is invalid, or ``b0_t`` is not a field strength.

    References
    ----------
    Wadell H. Volume, shape, and roundness of quartz particles. J Geol
    1935;43:250-280 (sphericity).

    Buckner RL, Head D, Parker J, et al. A unified approach for
    morphometric and functional data analysis in young, old, and demented
    adults using automated atlas-based head size normalization. NeuroImage
    2004;23:724-738 (adult intracranial volumes).
    """
    voxel_size = as_voxel_size(voxel_size)
    mask = np.asarray(mask)
    mask = as_mask(mask, mask.shape)
    b0_t = check_b0(b0_t)
    volume_ml = float(mask.sum()) * float(np.prod(voxel_size)) / 1000.0
    within = not _near_border(mask, voxel_size)
    coarse, spacing = _shape_grid(mask, voxel_size)
    diameters = equivalent_diameters_mm(coarse, spacing)
    sphericity = mask_sphericity(coarse, spacing)
    low, high = ADULT_VOLUME_ML
    implausible, questionable = [], []

    image_fraction = float(mask.mean())
    fills_image = image_fraction >= FILLS_IMAGE_FRACTION
    if fills_image:
        implausible.append(f"it covers {100 * image_fraction:.0f} % of the image: a brain mask leaves "
                           "background around the brain (is it a mask of ones, or another image?)")
    if volume_ml > high:
        implausible.append(f"its volume, {volume_ml:.0f} mL, is larger than any adult brain ({low:.0f}-{high:.0f} mL): "
                           "it has taken in scalp, muscle, neck or background")
    elif volume_ml < low and within:
        questionable.append(f"its volume, {volume_ml:.0f} mL, is smaller than an adult brain ({low:.0f}-{high:.0f} mL) "
                            "although it lies within the field of view: part of the brain is missing, "
                            "or this is a child's or an animal's brain")
    if diameters[0] > MAX_LENGTH_MM or diameters[1] > MAX_WIDTH_MM:
        questionable.append(f"its equivalent ellipsoid, {diameters[0]:.0f} x {diameters[1]:.0f} x {diameters[2]:.0f} mm, "
                            f"is larger than a brain (at most about {MAX_LENGTH_MM:.0f} x {MAX_WIDTH_MM:.0f} mm): "
                            "it may run into the scalp, the neck or the face")
    if within:
        brain = f"a brain's ({BRAIN_SPHERICITY[0]:.1f}-{BRAIN_SPHERICITY[1]:.1f})"
        if sphericity < SPHERICITY_IMPLAUSIBLE:
            implausible.append(f"its sphericity, {sphericity:.2f}, is far below {brain}: "
                               "it runs along the scalp or into the neck")
        elif sphericity < SPHERICITY_QUESTIONABLE:
            questionable.append(f"its sphericity, {sphericity:.2f}, is below {brain}: "
                                "it may run into the scalp, the neck or the face")

    dark_fraction = dark_threshold = None
    if magnitude is not None:
        image = combined_magnitude(magnitude)
        if image.shape != mask.shape:
            raise _shape_error("magnitude", image.shape, mask.shape)
        dark_threshold = float(auto_threshold(image))
        dark_fraction = float(np.mean(image[mask] <= dark_threshold))
        share = f"{100 * dark_fraction:.0f} % of it is as dark as the background (magnitude below {dark_threshold:.4g})"
        if dark_fraction > DARK_IMPLAUSIBLE:
            implausible.append(f"{share}: skull, air or background are inside")
        elif dark_fraction > DARK_QUESTIONABLE:
            questionable.append(f"{share}: it may hold skull, sinus air or background")

    high_fraction = high_r2star = None
    if r2star_hz is not None:
        r2star_hz = np.asarray(r2star_hz)
        if r2star_hz.shape != mask.shape:
            raise _shape_error("r2star_hz", r2star_hz.shape, mask.shape)
        high_r2star = HIGH_R2STAR_HZ_AT_3T * b0_t / 3.0
        high_fraction = float(np.mean(r2star_hz[mask] > high_r2star))
        share = (f"{100 * high_fraction:.0f} % of it decays faster than any brain tissue "
                 f"(R2* above {high_r2star:.0f} 1/s at {b0_t:g} T)")
        if high_fraction > HIGH_R2STAR_IMPLAUSIBLE:
            implausible.append(f"{share}: bone, air interfaces or fat are inside")
        elif high_fraction > HIGH_R2STAR_QUESTIONABLE:
            questionable.append(f"{share}: it may reach bone, sinuses or fat")

    verdict = "implausible" if implausible else "questionable" if questionable else "plausible"
    return {"verdict": verdict, "implausible": implausible, "questionable": questionable,
            "volume_ml": round(volume_ml, 1), "plausible_volume_ml": [low, high],
            "image_fraction": round(image_fraction, 4), "fills_image": fills_image,
            "within_field_of_view": within, "equivalent_diameters_mm": [round(d, 1) for d in diameters],
            "sphericity": round(sphericity, 3),
            "dark_fraction": None if dark_fraction is None else round(dark_fraction, 4),
            "dark_threshold": dark_threshold,
            "high_r2star_fraction": None if high_fraction is None else round(high_fraction, 4),
            "high_r2star_hz": high_r2star}


def mask_sphericity(mask, voxel_size):
    """Sphericity ``pi^(1/3) (6 V)^(2/3) / A`` of a mask (1 for a ball).

    The area is that of the exposed voxel faces divided by 1.5, the mean
    ratio of a staircase surface to the smooth surface it samples; the
    result is clipped to 1 (a box aligned with the grid has no staircase).
    :func:`check_brain_mask` measures it on a grid of about 2 mm.
    """
    spacing = as_voxel_size(voxel_size)
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    volume = float(mask.sum()) * float(np.prod(spacing))
    area = 0.0
    for axis in range(3):
        faces = np.count_nonzero(np.diff(padded, axis=axis))
        area += faces * float(np.prod([s for a, s in enumerate(spacing) if a != axis]))
    area /= _STAIRCASE_FACTOR
    if area == 0:
        return 0.0
    return float(min(1.0, np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area))


def equivalent_diameters_mm(mask, voxel_size):
    """Diameters (mm, largest first) of the ellipsoid with the mask's second moments.

    A solid ellipsoid of semi-axes ``a_i`` has coordinate variances
    ``a_i^2 / 5`` along its axes, so the diameters are ``2 sqrt(5 lambda_i)``
    for the eigenvalues ``lambda_i`` of the covariance of the voxel centres.
    """
    points = np.argwhere(mask).astype(np.float64) * np.asarray(as_voxel_size(voxel_size))
    if len(points) < 2:
        return [0.0, 0.0, 0.0]
    variances = np.clip(np.linalg.eigvalsh(np.cov(points.T)), 0, None)[::-1]
    return [float(2 * np.sqrt(5 * v)) for v in variances]


def _shape_grid(mask, voxel_size):
    """The mask block-averaged (majority) to voxels of about :data:`SHAPE_GRID_MM`, and their size."""
    factors = [max(1, int(round(SHAPE_GRID_MM / d))) for d in voxel_size]
    if max(factors) > 1:
        coarse = _block_majority(mask, factors)
        if coarse.any():
            return coarse, tuple(f * d for f, d in zip(factors, voxel_size))
    return mask, tuple(voxel_size)


def _near_border(mask, voxel_size):
    """True when the mask comes within :data:`BORDER_MARGIN_MM` of a face of the volume."""
    for axis, size in enumerate(voxel_size):
        depth = min(mask.shape[axis], max(1, int(np.ceil(BORDER_MARGIN_MM / size))))
        if np.take(mask, np.arange(depth), axis=axis).any() or np.take(mask, np.arange(-depth, 0), axis=axis).any():
            return True
    return False


def _shape_error(name, shape, expected):
    return QSMInputError(f"{name}: shape {tuple(shape)} does not match the mask's {tuple(expected)}; "
                         "give it on the same voxel grid")
