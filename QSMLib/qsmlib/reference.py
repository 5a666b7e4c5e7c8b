"""Referencing: susceptibility is only known up to a constant, so fix that constant.

Three references:

- the whole brain (the mean over the mask), which the 2024 QSM consensus
  recommends by default (QSM Consensus Organization Committee, Magn Reson
  Med 2024): :func:`reference_whole_brain`;
- cerebrospinal fluid of the lateral ventricles, found automatically from R2*
  and the magnitude (:func:`csf_reference_mask`, :func:`reference_to_csf`),
  the reference of MEDI+0 (Liu et al. 2018) and one of the references Straub
  et al. (2017) found suitable;
- any region: a boolean mask (:func:`reference_to_region`) or the voxels of a
  label image with given values (:func:`reference_to_labels`,
  :func:`label_region`).

Each function returns the referenced map (0 outside the mask) and the offset
that was subtracted, in ppm.
"""

import numpy as np
from scipy import ndimage

from .errors import QSMInputError
from .masking import erode_mask
from .validation import as_mask, as_volume, as_voxel_size, check_number

#: CSF detection: voxels with R2* below this (1/s) are CSF candidates. CSF has
#: R2* of a few 1/s, brain tissue about 15-40 1/s at 3 T (and still above 10 1/s
#: at 1.5 T), so 5 1/s separates them with margin; a voxel that mixes CSF with
#: more than about 10 % of white matter already exceeds it (MEDI+0 used 5 1/s).
CSF_R2STAR_MAX_HZ = 5.0
#: ... whose last-echo magnitude is at least this fraction of the brain's median
#: last-echo magnitude: CSF keeps its signal at late echoes (T2* of CSF is long),
#: while voxels at the noise floor (air, bone, veins at late echoes) get a falsely
#: low R2* from a flat, noise-dominated decay.
CSF_MIN_SIGNAL_FRACTION = 0.5
#: ... at least this far (mm) from the edge of the mask: sulcal and cisternal
#: CSF at the brain surface is left out (the lateral ventricles lie 25-40 mm deep
#: in adults) ...
CSF_MARGIN_MM = 10.0
#: ... and within this fraction of the brain's equivalent ellipsoid (the solid
#: ellipsoid with the mask's centroid and second moments): the lateral
#: ventricles sit near the centre of the brain.
CSF_CENTRAL_FRACTION = 0.6
#: The candidate is eroded by a sphere of this radius (mm) before components
#: are taken: it drops thin CSF sheets (fissures) and voxels next to tissue or
#: the choroid plexus. At 1 mm voxels this is one voxel layer; coarser voxels
#: (radius below one voxel) are not eroded, as the R2* threshold already
#: rejects partial-volume voxels.
CSF_ERODE_MM = 1.0
#: Face-connected components of at least this fraction of the largest one are
#: kept, so that both lateral ventricles count when they are not connected.
CSF_COMPONENT_FRACTION = 0.25
#: Smallest accepted reference volume (mL).
CSF_MIN_VOLUME_ML = 0.5


def reference_to_region(chi, mask, region, *, name="reference region"):
    """Subtract the mean of ``chi`` over ``region`` (within ``mask``).

    Parameters
    ----------
    chi : ndarray (X, Y, Z)
        Susceptibility in ppm.
    mask : ndarray of bool
        Where ``chi`` is defined; the output is 0 outside it.
    region : ndarray of bool
        The reference region, for example the whole brain or a ventricle.
    name : str, optional
        What the region is called in error messages.

    Returns
    -------
    chi_ref : ndarray, float32
    offset_ppm : float
        The mean that was subtracted.

    Raises
    ------
    QSMInputError
        If shapes differ or the region does not overlap the mask.
    """
    chi = as_volume(chi, "susceptibility")
    mask = as_mask(mask, chi.shape)
    region = as_mask(region, chi.shape, name=name) & mask
    if not region.any():
        raise QSMInputError(f"{name}: it does not overlap the brain mask; "
                            "choose a region inside the mask")
    offset = float(np.mean(chi[region], dtype=np.float64))
    chi_ref = np.where(mask, chi - offset, 0).astype(np.float32)
    return chi_ref, offset


def reference_whole_brain(chi, mask):
    """Reference to the mean over the whole mask (the consensus default)."""
    return reference_to_region(chi, mask, mask, name="brain mask")


def label_region(labels, label_values, shape=None):
    """The voxels of a label image whose label is one of ``label_values``.

    Parameters
    ----------
    labels : ndarray of int, shape (X, Y, Z)
        Label image (a segmentation, an atlas in subject space).
    label_values : int or sequence of int
        The labels that make up the region.
    shape : tuple of 3 int, optional
        The data shape the label image must match.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    QSMInputError
        If the label image is not 3D, does not match ``shape``, holds
        non-integer values, no values are given, or no voxel carries them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise QSMInputError(f"reference labels: got an array of shape {labels.shape}; "
                            "give a 3D label image")
    if shape is not None and labels.shape != tuple(shape):
        raise QSMInputError(f"reference labels: shape {labels.shape} does not match the data shape "
                            f"{tuple(shape)}; give a label image on the same voxel grid")
    if np.iscomplexobj(labels) or not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
        raise QSMInputError("reference labels: the image holds non-integer values; give a label "
                            "image (integers per voxel), not a probability map")
    values = np.atleast_1d(np.asarray(label_values)).ravel()
    if values.size == 0:
        raise QSMInputError("reference label values: none given; give the labels of the region (for example 1 2)")
    region = np.isin(labels, values)
    if not region.any():
        present = np.unique(labels)
        shown = ", ".join(str(v) for v in present[:20]) + (" ..." if present.size > 20 else "")
        raise QSMInputError(f"reference labels {values.tolist()}: no voxel carries them; "
                            f"the label image holds {shown}")
    return region


def reference_to_labels(chi, mask, labels, label_values):
    """Reference to the mean over the voxels whose label is in ``label_values``.

    See :func:`label_region` for the checks; returns ``(chi_ref, offset_ppm)``.
    """
    region = label_region(labels, label_values, np.shape(chi))
    return reference_to_region(chi, mask, region,
                               name=f"reference labels {np.atleast_1d(label_values).tolist()}")


def reference_to_csf(chi, mask, csf):
    """Reference to the mean over a CSF mask (for example from :func:`csf_reference_mask`).

    Returns ``(chi_ref, offset_ppm)``; the mean of ``chi_ref`` over ``csf`` is 0.
    """
    return reference_to_region(chi, mask, csf, name="CSF reference mask")


def csf_reference_mask(magnitude, r2star_hz, mask, voxel_size, *, r2star_max_hz=CSF_R2STAR_MAX_HZ,
                       min_signal_fraction=CSF_MIN_SIGNAL_FRACTION, margin_mm=CSF_MARGIN_MM,
                       central_fraction=CSF_CENTRAL_FRACTION, erode_mm=CSF_ERODE_MM,
                       min_volume_ml=CSF_MIN_VOLUME_ML):
    """Find CSF of the lateral ventricles automatically, as a susceptibility reference.

    Steps:

    1. Candidates: voxels of ``mask`` with ``0 <= R2* < r2star_max_hz``
       whose last-echo magnitude is at least ``min_signal_fraction`` times
       the median last-echo magnitude in the mask.
    2. Location: at least ``margin_mm`` from the edge of the mask, and inside
       ``central_fraction`` times the brain's equivalent ellipsoid (centroid
       and second moments of the mask).
    3. Erosion by a sphere of ``erode_mm``.
    4. Face-connected components: the largest, and every one of at least a
       quarter of its volume (the two lateral ventricles, when separate).

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E) or (X, Y, Z)
        Magnitude per echo (the last echo is used), or one late-echo magnitude.
    r2star_hz : ndarray, shape (X, Y, Z)
        R2* in 1/s, for example from :func:`qsmlib.relaxometry.r2star_loglinear`.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    r2star_max_hz : float, optional
        Upper R2* of CSF in 1/s.
    min_signal_fraction : float, optional
        Lowest last-echo magnitude, relative to the brain median.
    margin_mm : float, optional
        Smallest distance from the mask edge in mm.
    central_fraction : float, optional
        Size of the central ellipsoid relative to the brain's equivalent
        ellipsoid (1: the whole brain).
    erode_mm : float, optional
        Erosion radius in mm (0: none).
    min_volume_ml : float, optional
        Smallest accepted volume of the result in mL.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        The CSF reference region.

    Raises
    ------
    QSMInputError
        If the inputs are not matching volumes, an option is out of range, or
        less than ``min_volume_ml`` of CSF is found (then reference to the
        whole brain, or give a region).

    References
    ----------
    Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: morphology enabled
    dipole inversion with automatic uniform cerebrospinal fluid zero reference
    for quantitative susceptibility mapping. Magn Reson Med 2018;79:2795-2803.

    Straub S, Schneider TM, Emmerich J, et al. Suitable reference tissues for
    quantitative susceptibility mapping of the brain. Magn Reson Med
    2017;78:204-214.
    """
    r2star = as_volume(r2star_hz, "R2*")
    shape = r2star.shape
    magnitude = np.asarray(magnitude)
    late = as_volume(magnitude[..., -1] if magnitude.ndim == 4 else magnitude, "magnitude")
    if late.shape != shape:
        raise QSMInputError(f"magnitude: spatial shape {late.shape} does not match the R2* map's {shape}; "
                            "give both on the same voxel grid")
    if late.min() < 0:
        raise QSMInputError("magnitude: negative values found; give the magnitude image")
    mask = as_mask(mask, shape)
    voxel_size = as_voxel_size(voxel_size)
    r2star_max_hz = check_number(r2star_max_hz, "r2star_max_hz", strict=True, unit=" 1/s")
    min_signal_fraction = check_number(min_signal_fraction, "min_signal_fraction")
    margin_mm = check_number(margin_mm, "margin_mm", unit=" mm")
    central_fraction = check_number(central_fraction, "central_fraction", strict=True)
    erode_mm = check_number(erode_mm, "erode_mm", unit=" mm")
    min_volume_ml = check_number(min_volume_ml, "min_volume_ml", unit=" mL")

    level = float(np.median(late[mask]))
    candidate = mask & (r2star >= 0) & (r2star < r2star_max_hz) & (late >= min_signal_fraction * level)
    # Distance to the nearest voxel outside the mask (outside the volume counts as outside).
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=voxel_size)[1:-1, 1:-1, 1:-1]
    candidate &= depth >= margin_mm
    candidate &= _ellipsoid_radius(mask, voxel_size) <= central_fraction
    if erode_mm > 0 and candidate.any():
        candidate = erode_mask(candidate, voxel_size, erode_mm)

    components, count = ndimage.label(candidate)
    voxel_ml = float(np.prod(voxel_size)) / 1000.0
    sizes = np.bincount(components.ravel())[1:] if count else np.zeros(0)
    found_ml = float(sizes.max()) * voxel_ml if count else 0.0
    if found_ml < min_volume_ml:
        raise QSMInputError(
            f"CSF reference: found {found_ml:.2f} mL of ventricular CSF (R2* < {r2star_max_hz:g} 1/s, "
            f"{margin_mm:g} mm inside the mask), less than {min_volume_ml:g} mL; check the R2* map and mask, "
            "or reference to the whole brain (--reference brain) or to a region")
    keep = np.flatnonzero(sizes >= CSF_COMPONENT_FRACTION * sizes.max()) + 1
    return np.isin(components, keep)


def _ellipsoid_radius(mask, voxel_size):
    """Per voxel, its radius in units of the mask's equivalent ellipsoid (1 on its surface)."""
    spacing = np.asarray(voxel_size)
    points = np.argwhere(mask) * spacing
    centre = points.mean(axis=0)
    # A uniform solid ellipsoid with semi-axes a_i has variances a_i^2 / 5.
    inverse = np.linalg.pinv(np.cov(points.T) * 5.0)
    grids = np.meshgrid(*[np.arange(n) * d - c for n, d, c in zip(mask.shape, spacing, centre)],
                        indexing="ij", sparse=True)
    squared = sum(inverse[i, j] * grids[i] * grids[j] for i in range(3) for j in range(3))
    return np.sqrt(np.maximum(squared, 0.0))
