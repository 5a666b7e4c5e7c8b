"""Brain mask from the gradient-echo magnitude and phase, and morphology with physical radii.

In a gradient-echo head image the brain (with its CSF) is bright, the skull
is dark (cortical bone has almost no signal at usual echo times), and the
scalp is bright again. :func:`brain_mask` therefore thresholds the magnitude,
cuts the thin bright bridges that remain across the skull by a morphological
opening, keeps the largest piece, restores its edge within the threshold
mask, and fills the holes that dark structures (veins, iron-rich nuclei at
late echoes, air-filled cavities seen through the brain) leave.

At coarse voxels (3-4 mm) partial volume fills in the dark skull, and the
magnitude alone no longer separates the brain from the scalp and the neck
muscles. The phase does: outside the shimmed brain, and at the bone and air
around it, the field changes by a large part of a turn per voxel, and where
there is no signal the phase is noise. A ROMEO phase quality map
(:func:`qsmlib.unwrap.voxel_quality`) passed as ``quality`` makes the brain's
core from the voxels that are both bright and of good phase quality.

Spheres are defined in millimetres: a voxel belongs to the sphere of radius
``r`` when its centre lies within ``r`` mm of the centre voxel, so
anisotropic voxels give an ellipsoid of voxel indices. Erosion and dilation
by large spheres are done by FFT convolution (one real FFT pair each).
"""

from functools import lru_cache

import numpy as np
from scipy import ndimage

from . import fourier
from .errors import QSMInputError
from .validation import as_volume, as_voxel_size, check_number

#: Default radius (mm) of the opening that separates the brain from the scalp.
#: 6 mm rather than 4 mm: on the realistic simulation (exact cuboid-voxel field,
#: k-space sampling, coils) at 2 mm, 4 mm left face muscle joined to the brain
#: (mask 1.22 times the brain, against 1.15); at 1 mm both give 1.10.
DEFAULT_OPENING_MM = 6.0
#: The opening's radius is at least this many of the largest voxel dimension:
#: a sphere of one voxel radius (a 6-neighbour cross) keeps every bridge more
#: than two voxels thick. On the simulated head at 3 mm, the 4 mm (one voxel)
#: opening left the scalp and neck joined to the brain (mask 1.8 times the brain).
MIN_OPENING_VOXELS = 2.0
#: Extra radius (mm) beyond the opening radius within which the opened brain
#: is grown back inside the threshold mask (restores the partial-volume edge).
RESTORE_MARGIN_MM = 1.0
#: The automatic threshold is this fraction of the median tissue intensity ...
TISSUE_FRACTION = 0.25
#: ... and, when the dark class is background (median below this fraction of
#: the tissue level), at least NOISE_FACTOR times the background median.
BACKGROUND_FRACTION = 0.1
NOISE_FACTOR = 3.0
#: A voxel joins the brain's core only when its phase quality is at least this
#: fraction of the median quality of the voxels above the magnitude threshold.
#: Chosen by the worst case over both simulators (the phantom and the realistic
#: one) at 1, 2 and 3 mm, 3 T and 7 T, SNR 30 and 100, one or eight coils: mask
#: volume within 16 % of the true brain's and Dice >= 0.91, against 16-20 % and
#: Dice 0.88-0.91 for 0.7, 0.75 and 0.85 x the median, Otsu's threshold, or a
#: fraction of the 75th or 90th percentile (which lost brain at 7 T).
QUALITY_FRACTION = 0.8
#: Enclosed dark pieces smaller than this fraction of the core mask (veins, iron-rich
#: nuclei) are filled before the opening; larger ones (the skull, when the scalp
#: encloses it) are not.
SMALL_HOLE_FRACTION = 0.01
#: Final erosion (mm). The mask's outer shell touches bone and air, where the
#: field changes fastest and background removal fails; QSM tools erode it away.
#: On the simulated head 2 mm brought NRMSE from 54-58 % to 51-53 % (1 mm voxels,
#: axial and 21 degree B0) and kept 98.9 % of the brain.
DEFAULT_ERODE_MM = 2.0
#: The final erosion removes at least this many of the largest voxel dimension
#: (the shell of partial-volume voxels). At 3 mm a 2 mm sphere is one voxel and
#: erodes nothing; one voxel brought NRMSE from 190 % to 77 % on the simulated head.
MIN_ERODE_VOXELS = 1.0
#: Upper percentile of the intensities kept for the threshold histogram
#: (bright vessels and fat would otherwise stretch it).
HISTOGRAM_PERCENTILE = 99.5
#: Number of histogram bins for Otsu's method.
HISTOGRAM_BINS = 256
#: Grid spacing (mm) of the distance map used to separate the neck.
BODY_GRID_MM = 2.0
#: A distance-map maximum starts its own body when it rises this many mm above
#: its join with a deeper one (the h of the h-maxima).
BODY_DEPTH_MM = 4.0
#: Relative slack when deciding whether a grid point lies on a sphere's surface.
_SURFACE_TOLERANCE = 1e-6


def brain_mask(magnitude, voxel_size, *, quality=None, quality_fraction=QUALITY_FRACTION, threshold=None,
               opening_mm=DEFAULT_OPENING_MM, erode_mm=DEFAULT_ERODE_MM, fill_holes=True, separate_neck=True):
    """Extract the brain from a gradient-echo magnitude image, helped by the phase quality.

    Steps:

    1. Echo combination: root sum of squares over echoes (4D input).
    2. Threshold: by default 25 % of the tissue level, the median of the
       voxels above Otsu's threshold, and at least 3 times the median
       background level (see :func:`auto_threshold`). Dark tissue (a
       receive-bias shadow, a deep nucleus at late echoes) stays in, and an
       image without background (a crop inside the brain) keeps nearly
       every voxel. This is the *threshold mask*.
    3. Phase quality (with ``quality``): the voxels of the threshold mask
       whose phase quality is below ``quality_fraction`` times its median
       are left out, unless enclosed in 3D by the others (filling slice by
       slice would close the rings of tissue around the skull base and join
       the neck to the brain). Then the small enclosed dark pieces (veins,
       nuclei; below 1 % of the volume) are filled. This is the *core
       mask*, which the next two steps use.
    4. Neck separation (``separate_neck``): the brainstem joins the brain to
       the neck and face tissue through a bridge too thick for an opening.
       A watershed of the distance map (distance to the nearest voxel outside
       the core mask, on a 2 mm grid) splits the mask into bodies at their
       narrowest joins; the body holding the deepest point (the brain: no
       other part of the head holds as large an inscribed sphere) is kept,
       with every body whose deepest point lies inside the brain body's
       equivalent ellipsoid (so that a lobe split off by a dark fold stays).
    5. Opening: erosion of the core mask by a sphere of ``opening_mm``, but
       at least 2 voxels (:data:`MIN_OPENING_VOXELS` times the largest voxel
       dimension), cuts the thin bright bridges across the dark skull; the
       largest connected piece is kept.
    6. Restoration: that piece is dilated by the opening radius + 1 mm
       within the threshold mask (less the bodies dropped in step 4), and the
       connected part is kept: the brain's edge comes back even where its
       phase quality is low.
    7. Hole filling: in 3D, then slice by slice along each axis.
    8. Erosion by ``erode_mm``, but at least one voxel
       (:data:`MIN_ERODE_VOXELS` times the largest voxel dimension).

    The result is the intracranial volume as the magnitude shows it: brain
    and the CSF around it (bright at any echo time), without skull, scalp
    and neck.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z) or (X, Y, Z, E)
        Magnitude image, or one magnitude per echo.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    quality : ndarray, shape (X, Y, Z), optional
        Phase quality map in [0, 1], higher where the phase is trustworthy:
        :func:`qsmlib.unwrap.voxel_quality` of the phase (the pipeline passes
        it). Default: magnitude only, which is reliable at voxels of 2 mm and
        below but at 3-4 mm lets the scalp and neck in.
    quality_fraction : float, optional
        Quality threshold of step 3 as a fraction of the median quality in the
        threshold mask, in [0, 1); 0 ignores ``quality``.
    threshold : float, optional
        Intensity threshold on the (combined) magnitude, in its units.
        Default: automatic (step 2).
    opening_mm : float, optional
        Radius of the opening sphere in mm (0 disables the opening). It must
        be larger than half the thickness of the bridges to cut and smaller
        than half the brain's width. Raised to 2 voxels where it is smaller.
    erode_mm : float, optional
        Final erosion radius in mm (0: none). Raised to one voxel where it
        is smaller.
    fill_holes : bool, optional
        Fill enclosed holes (3D and per slice).
    separate_neck : bool, optional
        Split off neck and face tissue joined to the brain by thick bridges
        (step 4). Needs scikit-image.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    QSMInputError
        If the magnitude is not a finite, non-negative 3D or 4D volume with
        some signal, ``quality`` does not match it, the voxel size is
        invalid, a radius is negative, ``quality_fraction`` is outside
        [0, 1), or nothing is above the threshold.

    Notes
    -----
    Measured (volume of the mask / volume of the true brain, which leaves
    out most CSF over the convexity; Dice against it), SNR 30 and 100, 3 T
    unless said, on the phantom simulation (:func:`qsmlib.simulation.simulate_gre`)
    and the realistic one (:func:`qsmlib.simulation.simulate_realistic_gre`):

    ============  ===========================  ============================
    voxel         magnitude alone (before)     with the phase quality
    ============  ===========================  ============================
    3 mm          1.86 / 0.70, real. 2.37      1.02 / 0.94, real. 1.14 / 0.91
    3 mm, 7 T     1.86 / 0.70, real. 2.12      1.07 / 0.91, real. 1.03 / 0.93
    2 mm          1.13 / 0.94, real. 1.35      1.09 / 0.94, real. 1.12 / 0.92
    2 mm, 8 coils real. 2.01 / 0.67            real. 1.15 / 0.92
    1 mm          1.11 / 0.94, real. 1.17-1.33 1.09 / 0.95, real. 1.10 / 0.94
    ============  ===========================  ============================

    Cost on a 164 x 205 x 205 head: a distance transform, an h-maxima
    reconstruction and a watershed on a 2 mm grid, three FFT pairs on the
    mask's bounding box and a few connected-component labellings: about 2 s
    on two cores shared with other work (3.8-5.2 s before issue 16, same
    runs), plus the quality map of five echoes (see
    :func:`qsmlib.unwrap.voxel_quality`).

    References
    ----------
    Otsu N. A threshold selection method from gray-level histograms. IEEE
    Trans Syst Man Cybern 1979;9:62-66.

    Smith SM. Fast robust automated brain extraction. Hum Brain Mapp
    2002;17:143-155 (the robust intensity range and the brain/background
    threshold that this simpler method shares).

    Beucher S, Meyer F. The morphological approach to segmentation: the
    watershed transformation. In: Dougherty ER, ed. Mathematical Morphology
    in Image Processing. Marcel Dekker; 1993:433-481.

    Dymerska B, Eckstein K, Bachrata B, Siow B, Trattnig S, Shmueli K,
    Robinson SD. Phase unwrapping with a rapid opensource minimum spanning
    tree algorithm (ROMEO). Magn Reson Med 2021;85:2294-2308 (the phase
    quality weights).

    Stewart AW, Robinson SD, O'Brien K, et al. QSMxT: Robust masking and
    artifact reduction for quantitative susceptibility mapping. Magn Reson
    Med 2022;87:1289-1300 (masks from a thresholded phase quality map, with
    hole filling).
    """
    image = combined_magnitude(magnitude)
    voxel_size = as_voxel_size(voxel_size)
    opening_mm = check_number(opening_mm, "opening_mm", unit=" mm")
    erode_mm = check_number(erode_mm, "erode_mm", unit=" mm")
    quality_fraction = check_number(quality_fraction, "quality_fraction")
    if quality_fraction >= 1:
        raise QSMInputError(f"quality_fraction: {quality_fraction} must be below 1 (a fraction of the median "
                            "phase quality); give for example 0.8, or 0 to use the magnitude alone")
    if quality is not None:
        quality = as_volume(quality, "quality")
        if quality.shape != image.shape:
            raise QSMInputError(f"quality: shape {quality.shape} does not match the magnitude's "
                                f"{image.shape}; give the phase quality map on the same voxel grid")
    if threshold is None:
        threshold = auto_threshold(image)
    else:
        threshold = float(threshold)
        if not np.isfinite(threshold):
            raise QSMInputError(f"threshold: {threshold} is not a number; give an intensity "
                                "in the magnitude's units, or None for automatic")
    candidate = image > threshold
    if not candidate.any():
        raise QSMInputError(f"threshold: no voxel is above {threshold:g} (magnitude maximum "
                            f"{float(image.max()):g}); lower the threshold or use the "
                            "automatic one")
    del image

    core_mask = candidate
    if quality is not None and quality_fraction > 0:
        core_mask = phase_quality_core(candidate, quality, quality_fraction)
        if not core_mask.any():  # no voxel of good phase: the magnitude alone
            core_mask = candidate
    # Dark structures enclosed in the brain (veins, iron-rich nuclei) must not open
    # gaps in the eroded core, or the brain between them and its surface is lost.
    core_mask = fill_small_holes(core_mask, SMALL_HOLE_FRACTION)
    if separate_neck:
        keep = _brain_body(core_mask, voxel_size)
        core_mask = core_mask & keep
        candidate = candidate & keep
    if opening_mm > 0:
        radius = opening_radius_mm(opening_mm, voxel_size)
        core = largest_component(erode_mask(core_mask, voxel_size, radius))
        if core.any():
            grown = dilate_mask(core, voxel_size, radius + RESTORE_MARGIN_MM)
            mask = _component_touching(candidate & grown, core)
        else:
            # Everything is thinner than the opening sphere: keep the largest piece.
            mask = largest_component(core_mask)
    else:
        mask = largest_component(core_mask)
    if fill_holes:
        mask = fill_holes_3d_and_slices(mask)
    if erode_mm > 0:
        mask = erode_mask(mask, voxel_size, erosion_radius_mm(erode_mm, voxel_size))
    return mask


def phase_quality_core(candidate, quality, quality_fraction=QUALITY_FRACTION):
    """The voxels of ``candidate`` with good phase quality (step 3 of :func:`brain_mask`).

    A voxel is kept when its quality is at least ``quality_fraction`` times
    the median quality over ``candidate``, or when it lies in ``candidate``
    and is enclosed (in 3D) by kept voxels.
    """
    level = float(np.median(quality[candidate]))
    good = candidate & (quality >= quality_fraction * level)
    return fill_holes(good) & candidate


def fill_small_holes(mask, max_fraction):
    """Fill the holes of ``mask`` (3D background pieces not reaching the volume's faces) that are
    smaller than ``max_fraction`` of its volume: veins and nuclei, not the skull between brain and scalp."""
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(background.ravel(), minlength=count + 1)
    small = sizes <= max_fraction * np.count_nonzero(mask)
    small[0] = False
    for axis in range(3):
        for index in (0, -1):
            small[np.unique(np.take(background, index, axis=axis))] = False
    return mask | small[background]


def opening_radius_mm(opening_mm, voxel_size):
    """Radius (mm) of :func:`brain_mask`'s opening: ``opening_mm``, at least 2 voxels."""
    return max(float(opening_mm), MIN_OPENING_VOXELS * max(as_voxel_size(voxel_size)))


def erosion_radius_mm(erode_mm, voxel_size):
    """Radius (mm) of :func:`brain_mask`'s final erosion: ``erode_mm``, at least one voxel (0 stays 0)."""
    if erode_mm <= 0:
        return 0.0
    return max(float(erode_mm), MIN_ERODE_VOXELS * max(as_voxel_size(voxel_size)))


def combined_magnitude(magnitude, name="magnitude"):
    """Root sum of squares over echoes of a 4D magnitude (a 3D one is returned as float32)."""
    array = np.asarray(magnitude)
    if array.ndim == 4:
        array = as_volume(array, name, ndim=4)
    else:
        array = as_volume(array, name)
    if array.min() < 0:
        raise QSMInputError(f"{name}: negative values found; give the magnitude image")
    combined = np.sqrt(np.einsum("xyze,xyze->xyz", array, array)) if array.ndim == 4 else array
    if not combined.max() > 0:
        raise QSMInputError(f"{name}: every voxel is 0; give a magnitude image with signal")
    return combined.astype(np.float32, copy=False)


def auto_threshold(image):
    """Automatic brain/background threshold of a magnitude image (see :func:`brain_mask`).

    Otsu's threshold (on intensities clipped at their 99.5th percentile)
    splits the voxels into a dark and a bright class. The threshold is 25 %
    of the bright class's median (the tissue level). When the dark class is
    background (its median below 10 % of the tissue level), the threshold is
    also kept at least 3 times the dark class's median, about 3.5 noise SDs
    for Rayleigh noise, so that noise does not enter the mask at low SNR.
    """
    values = np.asarray(image, dtype=np.float32).ravel()
    top = float(np.percentile(values, HISTOGRAM_PERCENTILE))
    if not top > 0:
        top = float(values.max())
    otsu = otsu_threshold(np.minimum(values, top), top)
    bright = values > otsu
    if not bright.any():
        return 0.5 * otsu
    tissue = float(np.median(values[bright]))
    dark = float(np.median(values[~bright])) if not bright.all() else tissue
    threshold = TISSUE_FRACTION * tissue
    if dark < BACKGROUND_FRACTION * tissue:
        threshold = max(threshold, NOISE_FACTOR * dark)
    return threshold


def otsu_threshold(values, top):
    """Otsu's threshold of ``values`` in [0, top]: maximal between-class variance."""
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, top))
    centres = 0.5 * (edges[:-1] + edges[1:])
    counts = counts.astype(np.float64)
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # A threshold at the upper edge of bin i separates bins <= i from the rest.
    return float(edges[int(np.argmax(between[:-1])) + 1])


def sphere_structure(voxel_size, radius_mm):
    """Boolean sphere of ``radius_mm`` sampled on the voxel grid (odd size per axis).

    A voxel belongs to it when its centre lies within ``radius_mm`` of the
    centre voxel; anisotropic voxels give an ellipsoid of voxel indices. This
    one sampled sphere serves mask morphology and the SMV kernel of the
    background-removal methods, so erosion and filtering agree voxel for voxel.
    """
    return _sphere_structure(as_voxel_size(voxel_size), check_number(radius_mm, "radius_mm", unit=" mm"))


def sphere_padded_shape(shape, voxel_size, radius_mm):
    """Fast FFT grid for convolving a volume of ``shape`` with the sphere, without wrap-around.

    The volume sits at the start of the grid followed by at least the sphere's
    half-width plus one zeros per axis, and the grid holds the whole sphere.
    """
    half = [(n - 1) // 2 for n in sphere_structure(voxel_size, radius_mm).shape]
    pads = [max(h + 1, 2 * h + 1 - int(n)) for h, n in zip(half, shape)]
    return fourier.padded_shape(shape, pads)


def sphere_spectrum(shape, voxel_size, radius_mm, *, normalized=False, closed=True):
    """Real FFT (rfft layout, float32, read-only, cached) of the sphere centred on voxel 0.

    ``shape`` is the real-space (padded) grid. With ``normalized`` the sphere
    sums to one: that is the spherical mean value (SMV) kernel. ``closed=False``
    takes the open ball (offsets strictly nearer than ``radius_mm``).

    Raises
    ------
    QSMInputError
        If the sphere does not fit in ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    voxel_size = as_voxel_size(voxel_size)
    radius_mm = check_number(radius_mm, "radius_mm", unit=" mm")
    ball_shape = _sphere_structure(voxel_size, radius_mm).shape
    if len(shape) != 3 or any(b > n for b, n in zip(ball_shape, shape)):
        raise QSMInputError(f"radius_mm: a sphere of {radius_mm} mm ({ball_shape[0]} x {ball_shape[1]} x "
                            f"{ball_shape[2]} voxels) does not fit in a grid of shape {shape}; "
                            "use a smaller radius")
    return _sphere_spectrum(shape, voxel_size, radius_mm, bool(normalized), bool(closed))


def erode_mask(mask, voxel_size, radius_mm, *, padded_shape=None, mask_ft=None):
    """Erode a boolean mask by a sphere of ``radius_mm`` (outside the volume counts as background).

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float
        Sphere radius in mm; 0 returns a copy.
    padded_shape : tuple of 3 int, optional
        FFT grid; default :func:`sphere_padded_shape`.
    mask_ft : ndarray, optional
        ``fourier.rfft(mask, padded_shape)`` when already computed (V-SHARP
        erodes one mask by several radii).

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        Voxels whose whole sphere lies inside ``mask``.
    """
    mask, voxel_size, radius_mm = _morphology_args(mask, voxel_size, radius_mm)
    ball = _sphere_structure(voxel_size, radius_mm)
    if ball.size == 1:
        return mask.copy()
    count = int(ball.sum())
    if padded_shape is None and mask_ft is None:
        # Only voxels of the mask can stay, and their spheres count only mask
        # voxels: the FFTs run on the mask's bounding box (zero-padded as before).
        eroded = np.zeros(mask.shape, dtype=bool)
        if mask.any():
            box = bounding_box(mask)
            part = mask[box]
            eroded[box] = (_sphere_sum(part, voxel_size, radius_mm) > count - 0.5) & part
        return eroded
    total = _sphere_sum(mask, voxel_size, radius_mm, padded_shape, mask_ft)
    return (total > count - 0.5) & mask


def dilate_mask(mask, voxel_size, radius_mm):
    """Dilate a boolean mask by a sphere of ``radius_mm`` (within the volume).

    Returns the voxels whose sphere holds at least one voxel of ``mask``.
    """
    mask, voxel_size, radius_mm = _morphology_args(mask, voxel_size, radius_mm)
    ball = _sphere_structure(voxel_size, radius_mm)
    if ball.size == 1 or not mask.any():
        return mask.copy()
    # Only voxels within the sphere's half-width of the mask's bounding box can
    # join: the FFTs run on that box (zero-padded as before).
    box = bounding_box(mask, [(b - 1) // 2 for b in ball.shape])
    dilated = np.zeros(mask.shape, dtype=bool)
    part = mask[box]
    dilated[box] = (_sphere_sum(part, voxel_size, radius_mm) > 0.5) | part
    return dilated


def largest_component(mask):
    """The largest face-connected component of a boolean mask (empty stays empty)."""
    labels, n_components = ndimage.label(mask)
    if n_components <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes_3d_and_slices(mask):
    """Fill enclosed holes in 3D, then in every 2D slice along each of the three axes."""
    filled = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return filled
    # Everything beyond the bounding box is background, so filling inside it is exact.
    box = bounding_box(mask)
    part = fill_holes(mask[box])
    for axis in range(3):
        part = fill_holes(part, plane_normal=axis)
    filled[box] = part
    return filled


def fill_holes(mask, plane_normal=None):
    """Fill the holes of a boolean mask: background not face-connected to the array's border.

    The same as :func:`scipy.ndimage.binary_fill_holes` with its default
    (face) connectivity, done by one labelling of the background instead of
    a dilation repeated until it stops. With ``plane_normal`` (an axis), every
    2D slice across that axis is filled on its own (holes in the plane,
    bounded by the slice's edges), all slices at once.
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    border_axes = list(range(mask.ndim))
    if plane_normal is not None:
        centre = [1] * mask.ndim
        for offset in (0, 2):
            centre[plane_normal] = offset
            structure[tuple(centre)] = False
        border_axes.remove(plane_normal)
    background, count = ndimage.label(~mask, structure)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for axis in border_axes:
        for index in (0, -1):
            outside[np.take(background, index, axis=axis)] = True
    outside[0] = False                                  # label 0: the mask itself
    return ~outside[background]


def bounding_box(mask, margin=0):
    """Slices of the smallest box that holds every voxel of a non-empty ``mask``.

    Stages that only need the brain work on this box (padded) rather than the
    whole field of view, which saves FFT time and memory. ``margin`` (voxels,
    one number or one per axis) grows the box, within the volume.
    """
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    box = []
    for axis, grow in enumerate(margins):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(0, int(hits[0]) - grow), min(mask.shape[axis], int(hits[-1]) + 1 + grow)))
    return tuple(box)


def uncrop(array, box, shape):
    """Place ``array`` at ``box`` in a zero array of ``shape`` (the inverse of ``array[box]``)."""
    out = np.zeros(shape, dtype=array.dtype)
    out[box] = array
    return out


def _brain_body(candidate, voxel_size):
    """False where ``candidate`` lies in a watershed body other than the brain's (step 3)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    factors = [max(1, int(round(BODY_GRID_MM / d))) for d in voxel_size]
    # Enclosed dark structures (deep veins) would split the brain's distance map.
    coarse = fill_holes(_block_majority(candidate, factors))
    if not coarse.any():
        return np.ones(candidate.shape, dtype=bool)
    spacing = [f * d for f, d in zip(factors, voxel_size)]
    # Outside the field of view counts as background.
    depth = ndimage.distance_transform_edt(np.pad(coarse, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    # The h-maxima lie in the coarse mask, where the depth is above 0. The
    # reconstruction runs on its bounding box grown by one voxel: the zeros
    # beyond connect the same parts of that one-voxel layer as the layer does
    # itself (clamping coordinates maps any path out there onto the layer), so
    # every reconstructed value in the box, and the maxima, are the same.
    box = bounding_box(coarse, 1)
    maxima = np.zeros(depth.shape, dtype=np.uint8)
    maxima[box] = h_maxima(depth[box], BODY_DEPTH_MM)
    markers, n_bodies = ndimage.label(maxima)
    if n_bodies <= 1:
        return np.ones(candidate.shape, dtype=bool)
    bodies = watershed(-depth, markers, mask=coarse)

    # Each body's greatest depth and its first voxel (raster order) at that depth.
    flat_depth, flat_bodies = depth.ravel(), bodies.ravel()
    peak = np.full(n_bodies + 1, -np.inf)
    np.maximum.at(peak, flat_bodies, flat_depth)
    at_peak = np.flatnonzero((flat_depth == peak[flat_bodies]) & (flat_bodies > 0))
    found, first = np.unique(flat_bodies[at_peak], return_index=True)
    deepest = np.zeros((n_bodies, 3))
    deepest[found - 1] = np.column_stack(np.unravel_index(at_peak[first], depth.shape))
    deepest *= spacing
    brain = int(np.argmax(peak[1:])) + 1
    points = np.argwhere(bodies == brain) * np.asarray(spacing)
    centre = points.mean(axis=0)
    # A uniform solid ellipsoid with semi-axes a_i has variances a_i^2 / 5.
    inverse = np.linalg.pinv(np.cov(points.T) * 5.0)
    offsets = deepest - centre
    inside = np.einsum("bi,ij,bj->b", offsets, inverse, offsets) <= 1.0
    # Drop the other bodies; voxels outside every coarse body (thin edges) stay
    # candidates, so the brain's partial-volume edge is not lost.
    drop = np.concatenate(([False], ~inside))
    drop[brain] = False
    return ~_block_expand(drop[bodies], factors, candidate.shape)


def _block_majority(mask, factors):
    """Downsample a boolean mask by block majority (trailing partial blocks dropped)."""
    shape = [n // f for n, f in zip(mask.shape, factors)]
    if min(shape) == 0:
        return np.zeros([max(1, n) for n in shape], dtype=bool)
    trimmed = mask[tuple(slice(0, n * f) for n, f in zip(shape, factors))]
    blocks = trimmed.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32) > 0.5


def _block_expand(coarse, factors, shape):
    """Inverse of :func:`_block_majority`: repeat blocks, extend the edges to ``shape``."""
    fine = coarse
    for axis, f in enumerate(factors):
        fine = np.repeat(fine, f, axis=axis)
    fine = fine[tuple(slice(0, n) for n in shape)]
    missing = [(0, n - m) for n, m in zip(shape, fine.shape)]
    return np.pad(fine, missing, mode="edge") if any(p for _, p in missing) else fine


def _component_touching(mask, seed):
    """Voxels of ``mask`` in the face-connected components that hold a voxel of ``seed``."""
    labels, _ = ndimage.label(mask)
    keep = np.unique(labels[seed & mask])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def _morphology_args(mask, voxel_size, radius_mm):
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise QSMInputError(f"mask: got shape {mask.shape}; give a 3D mask")
    return (mask.astype(bool, copy=False), as_voxel_size(voxel_size),
            check_number(radius_mm, "radius_mm", unit=" mm"))


@lru_cache(maxsize=16)
def _sphere_structure(voxel_size, radius_mm, closed=True):
    """The closed ball (surface included, with a tolerance) or the open ball.

    The open ball keeps the offsets strictly nearer than ``radius_mm``, with the
    distance computed as :func:`scipy.ndimage.distance_transform_edt` does
    (``sqrt`` of the summed squared offsets in mm), so it matches it at ties.
    """
    slack = 1 + _SURFACE_TOLERANCE if closed else 1.0
    half = [int(np.floor(radius_mm / d * slack)) for d in voxel_size]
    axes = [np.arange(-h, h + 1) * d for h, d in zip(half, voxel_size)]
    dx, dy, dz = np.meshgrid(*axes, indexing="ij", sparse=True)
    squared = dx ** 2 + dy ** 2 + dz ** 2
    ball = squared <= (radius_mm * slack) ** 2 if closed else np.sqrt(squared) < radius_mm
    ball.setflags(write=False)
    return ball


def _sphere_sum(mask, voxel_size, radius_mm, padded_shape=None, mask_ft=None, closed=True):
    """Number of ``mask`` voxels in the (closed or open) ball around each voxel (float32, FFT convolution)."""
    if padded_shape is None:
        padded_shape = sphere_padded_shape(mask.shape, voxel_size, radius_mm)
    if mask_ft is None:
        mask_ft = fourier.rfft(mask.astype(np.float32), padded_shape)
    kernel = sphere_spectrum(padded_shape, voxel_size, radius_mm, closed=closed)
    total = fourier.irfft(mask_ft * kernel, padded_shape)
    return fourier.crop(total, mask.shape)


@lru_cache(maxsize=8)
def _sphere_spectrum(shape, voxel_size, radius_mm, normalized, closed):
    ball = _sphere_structure(voxel_size, radius_mm, closed)
    offsets = [idx - (n - 1) // 2 for idx, n in zip(np.nonzero(ball), ball.shape)]
    sphere = np.zeros(shape, dtype=np.float32)
    sphere[tuple(o % n for o, n in zip(offsets, shape))] = 1.0 / offsets[0].size if normalized else 1.0
    spectrum = fourier.rfft(sphere).real.astype(np.float32)
    spectrum.setflags(write=False)
    return spectrum
