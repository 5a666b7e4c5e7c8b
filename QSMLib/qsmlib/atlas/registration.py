"""Register a labelled template to a subject, and bring its labels onto the subject's grid.

The subject is the fixed image: everything happens on the subject's voxel
grid (the grid of its susceptibility map), and the template moves. Three
stages, each multi-resolution (coarse to fine, Gaussian smoothing per level):

1. rigid (rotation and translation), started from the brains' centres of mass;
2. affine (adds scaling and shear);
3. deformable: a cubic B-spline free-form deformation whose control grid is
   refined per level (Rueckert et al. 1999), or diffeomorphic demons on the
   affinely aligned images (Vercauteren et al. 2009).

The metric suits the pair of images: Mattes mutual information (Mattes et
al. 2003) between different contrasts, for example the subject's GRE
magnitude and a magnitude or T1-weighted template; normalised correlation
between the same contrast, a susceptibility map and a susceptibility
template. Labels are carried by nearest-neighbour (or label-Gaussian)
interpolation. The work is done by SimpleITK (Lowekamp et al. 2013).

A registration is never accepted blindly: :func:`check_registration`
reports an implausible affine (determinant, scale per axis), folding of the
deformation, a low final similarity, and labels that vanished, shrank or
left the brain, and :func:`register_template` raises
:class:`RegistrationFailed` naming them.
"""

import dataclasses
import time
from typing import List

import numpy as np

from ..errors import Cancelled, QSMInputError
from .sitk_image import array_from_image, image_from_array, sitk

#: Contrasts a template image may have. The subject offers "susceptibility" and "magnitude".
TEMPLATE_CONTRASTS = ("susceptibility", "magnitude", "T1w", "R2star")
SUBJECT_CONTRASTS = ("susceptibility", "magnitude")
DEFORMABLE_METHODS = ("auto", "demons", "bspline", "none")
LABEL_INTERPOLATIONS = ("gaussian", "nearest")
#: Stages in order, as passed to ``progress(stage, fraction)``.
STAGES = ("atlas rigid", "atlas affine", "atlas deformable", "atlas labels")

#: Plausible range of the determinant of the affine (volume ratio between template and subject).
DETERMINANT_RANGE = (0.5, 2.0)
#: Plausible range of the scale along each principal axis of the affine.
AXIS_SCALE_RANGE = (0.65, 1.55)
#: Lowest acceptable final similarity: normalised correlation (same contrast) ...
MIN_CORRELATION = 0.5
#: ... or normalised mutual information (Studholme), (H(A) + H(B)) / H(A, B), from 1 to 2.
MIN_NORMALISED_MI = 1.1
#: A label is reported when its warped volume is below this fraction of the volume it should
#: have (its template volume divided by the affine's determinant) ...
MIN_LABEL_VOLUME_FRACTION = 0.5
#: ... or when more than this fraction of it lies outside the subject's brain mask.
MAX_LABEL_OUTSIDE_FRACTION = 0.5
#: Largest share of the brain where the deformation may fold (Jacobian determinant <= 0).
MAX_FOLDED_FRACTION = 0.001
#: Histogram bins of the normalised mutual information check.
NMI_BINS = 32


class RegistrationFailed(QSMInputError):
    """The registration of a template to a subject failed its checks.

    ``quality`` holds the full record of :func:`check_registration` (with its
    ``problems``), so that a caller can show it or write it next to the result.
    """

    def __init__(self, message, quality=None):
        super().__init__(message)
        self.quality = quality


@dataclasses.dataclass
class RegistrationResult:
    """A template registered to a subject.

    Attributes
    ----------
    transform : SimpleITK.Transform
        Maps subject (fixed) points to template points, in ITK's LPS millimetres:
        the affine after the deformation. This is the transform that resamples
        template images onto the subject (ITK's convention).
    affine : SimpleITK.AffineTransform
        Its linear part alone.
    labels : ndarray of int32, shape of the subject
        Template labels on the subject's grid.
    quality : dict
        The record of :func:`check_registration`; ``quality["problems"]`` is empty.
    stages : list of dict
        Per stage: ``stage``, ``metric``, ``pair`` (subject and template contrast),
        ``final_metric_value``, ``iterations``, ``stop`` and ``time_s``.
    """

    transform: object
    affine: object
    labels: np.ndarray
    quality: dict
    stages: List[dict]


@dataclasses.dataclass
class RegistrationOptions:
    """Settings of :func:`register_template`; the defaults suit 1-2 mm heads.

    Attributes
    ----------
    deformable : {"auto", "demons", "bspline", "none"}
        Deformable stage. "demons" needs a susceptibility image on both sides
        (it assumes that the same tissue has the same value); "bspline" works
        with either metric; "auto" takes demons for susceptibility against
        susceptibility and the B-spline otherwise.
    levels_mm : tuple of float
        Resolution of each pyramid level in mm (coarse to fine); the finest is
        never finer than the subject's voxels.
    smoothing_mm : tuple of float
        Gaussian smoothing SD per level, in mm.
    iterations : int
        Optimiser iterations per level of the linear stages.
    bspline_mesh_mm : float
        Control-point spacing of the B-spline, in mm.
    bspline_levels_mm : tuple of float
        Resolution of each pyramid level of the B-spline stage, in mm.
    bspline_iterations : int
        L-BFGS-B iterations per level of the B-spline stage.
    demons_iterations : tuple of int
        Demons iterations per level (coarse to fine).
    demons_smoothing_mm : tuple of float
        Gaussian smoothing SD of the images per demons level, in mm.
    demons_field_sd_voxels : float
        SD of the Gaussian that regularises the demons displacement field, in
        voxels of each level.
    sampling_fraction : float
        Fraction of the mask's voxels on which the linear stages evaluate the metric.
    mask_margin_mm : float
        The subject's brain mask is dilated by this margin to form the metric's region.
    label_interpolation : {"gaussian", "nearest"}
        How labels are carried onto the subject grid: label-Gaussian (default;
        on the test head's small nuclei it halves the bias of the regional means
        that nearest neighbour leaves, at the same Dice) or nearest neighbour.
    seed : int
        Seed of the metric sampling (runs are repeatable).
    """

    deformable: str = "auto"
    levels_mm: tuple = (8.0, 4.0, 2.0)
    smoothing_mm: tuple = (4.0, 2.0, 1.0)
    iterations: int = 100
    bspline_mesh_mm: float = 20.0
    bspline_levels_mm: tuple = (8.0, 4.0)
    bspline_iterations: int = 30
    demons_iterations: tuple = (50, 50, 80)
    demons_smoothing_mm: tuple = (2.0, 1.0, 0.5)
    demons_field_sd_voxels: float = 1.0
    sampling_fraction: float = 0.25
    mask_margin_mm: float = 6.0
    label_interpolation: str = "gaussian"
    seed: int = 1

    def validate(self):
        if self.deformable not in DEFORMABLE_METHODS:
            raise QSMInputError(f"deformable stage '{self.deformable}' is unknown; choose one of "
                                f"{', '.join(DEFORMABLE_METHODS)}")
        if self.label_interpolation not in LABEL_INTERPOLATIONS:
            raise QSMInputError(f"label interpolation '{self.label_interpolation}' is unknown; choose one of "
                                f"{', '.join(LABEL_INTERPOLATIONS)}")
        if len(self.levels_mm) != len(self.smoothing_mm) or not self.levels_mm:
            raise QSMInputError("levels_mm and smoothing_mm need one value per pyramid level")
        if not 0 < self.sampling_fraction <= 1:
            raise QSMInputError(f"sampling_fraction {self.sampling_fraction}: give a fraction in (0, 1]")
        return self


def choose_pairs(subject_contrasts, template_contrasts):
    """Which subject and template images drive the linear and the deformable stages.

    The linear stages prefer the subject's magnitude against a magnitude or T1w
    template (mutual information: whole-head anatomy with any contrast); the
    deformable stage prefers susceptibility against susceptibility
    (correlation: the deep grey matter nuclei are what susceptibility shows best).

    Returns
    -------
    linear, deformable : tuple (subject_contrast, template_contrast, metric)
        ``metric`` is "correlation" for susceptibility against susceptibility (same
        contrast, same units), "mattes" (mutual information) otherwise.

    Raises
    ------
    QSMInputError
        If no pair exists.
    """
    subject_contrasts, template_contrasts = list(subject_contrasts), list(template_contrasts)
    if not subject_contrasts or not template_contrasts:
        raise QSMInputError("atlas registration needs at least one subject image (susceptibility or magnitude) "
                            "and one template image")

    def pair(subject, template):
        same = subject == template == "susceptibility"
        return (subject, template, "correlation" if same else "mattes")

    same = pair("susceptibility", "susceptibility") if {"susceptibility"} <= set(subject_contrasts) & set(
        template_contrasts) else None
    anatomical = next((pair("magnitude", t) for t in ("magnitude", "T1w", "R2star")
                       if "magnitude" in subject_contrasts and t in template_contrasts), None)
    fallback = pair(subject_contrasts[0], template_contrasts[0])
    linear = anatomical or same or fallback
    deformable = same or anatomical or fallback
    return linear, deformable


def _dilate(mask_image, margin_mm):
    SimpleITK = sitk()
    if margin_mm <= 0:
        return mask_image
    radius = [max(1, int(round(margin_mm / s))) for s in mask_image.GetSpacing()]
    return SimpleITK.BinaryDilate(mask_image, radius, SimpleITK.sitkBall)


def _shrink_factors(levels_mm, spacing):
    finest = min(spacing)
    return [max(1, int(round(level / finest))) for level in levels_mm]


def _set_metric(method, metric, sampling_fraction, seed):
    if metric == "correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if sampling_fraction < 1:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sampling_fraction, seed)
    else:
        method.SetMetricSamplingStrategy(method.NONE)


class _StageRunner:
    """Runs one ImageRegistrationMethod with progress, cancellation and a record."""

    def __init__(self, progress):
        self.progress = progress
        self.cancelled = None

    def run(self, method, stage, fixed, moving, expected_iterations, record):
        SimpleITK = sitk()
        count = [0]

        def on_iteration():
            count[0] += 1
            if self.progress is None or self.cancelled is not None:
                return
            try:
                self.progress(stage, min(0.99, count[0] / max(expected_iterations, 1)))
            except Cancelled as exc:
                self.cancelled = exc
                method.StopRegistration()

        method.AddCommand(SimpleITK.sitkIterationEvent, on_iteration)
        start = time.perf_counter()
        transform = method.Execute(fixed, moving)
        if self.cancelled is not None:
            raise self.cancelled
        record.update(iterations=count[0], final_metric_value=float(method.GetMetricValue()),
                      stop=method.GetOptimizerStopConditionDescription(),
                      time_s=round(time.perf_counter() - start, 2))
        if self.progress is not None:
            self.progress(stage, 1.0)
        return transform


def _linear_method(options, metric, fixed_mask, shrink, smoothing):
    SimpleITK = sitk()
    method = SimpleITK.ImageRegistrationMethod()
    _set_metric(method, metric, options.sampling_fraction, options.seed)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(SimpleITK.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=options.iterations,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(list(smoothing))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def register_template(subject_images, subject_affine, template_images, template_affine, template_labels, *,
                      subject_mask=None, template_mask=None, label_values=None, label_names=None, options=None,
                      progress=None, check=True):
    """Register a labelled template to a subject; return the transform and the labels on the subject grid.

    Parameters
    ----------
    subject_images : dict str -> ndarray (X, Y, Z)
        The subject's images by contrast, "susceptibility" (ppm) and/or
        "magnitude", on the grid of ``subject_affine``.
    subject_affine : ndarray (4, 4)
        NIfTI affine of the subject's grid (voxel -> RAS mm).
    template_images : dict str -> ndarray
        The template's images by contrast (:data:`TEMPLATE_CONTRASTS`), on
        the grid of ``template_affine``.
    template_affine : ndarray (4, 4)
    template_labels : ndarray of int, template grid
        Label image of the template (0 = background).
    subject_mask : ndarray of bool, optional
        The subject's brain mask. Default: the voxels where the susceptibility
        map is non-zero (QSM maps are 0 outside their mask), else an Otsu
        threshold of the magnitude.
    template_mask : ndarray of bool, optional
        The template's brain mask. Default: the non-zero voxels of its
        susceptibility image, else an Otsu threshold of its first image.
    label_values : sequence of int, optional
        Labels that must survive (default: every non-zero label of the template).
    label_names : dict int -> str, optional
        Names of the labels, for messages.
    options : RegistrationOptions, optional
    progress : callable(stage, fraction), optional
        Called during every stage (:data:`STAGES`); raising
        :class:`qsmlib.Cancelled` from it stops the registration.
    check : bool
        Raise :class:`RegistrationFailed` when :func:`check_registration`
        finds a problem (default). With False the problems are only recorded.

    Returns
    -------
    RegistrationResult

    Raises
    ------
    RegistrationFailed
        If the result is implausible (see :func:`check_registration`).
    QSMInputError
        If the inputs do not fit together.
    Cancelled
        If ``progress`` raised it.

    References
    ----------
    Mattes D, Haynor DR, Vesselle H, Lewellen TK, Eubank W. PET-CT image
    registration in the chest using free-form deformations. IEEE Trans Med
    Imaging 2003;22:120-128.

    Rueckert D, Sonoda LI, Hayes C, Hill DLG, Leach MO, Hawkes DJ. Nonrigid
    registration using free-form deformations: application to breast MR images.
    IEEE Trans Med Imaging 1999;18:712-721.

    Vercauteren T, Pennec X, Perchant A, Ayache N. Diffeomorphic demons:
    efficient non-parametric image registration. NeuroImage 2009;45:S61-S72.

    Lowekamp BC, Chen DT, Ibanez L, Blezek D. The design of SimpleITK.
    Front Neuroinform 2013;7:45.
    """
    SimpleITK = sitk()
    options = (options or RegistrationOptions()).validate()
    subject_images = {k: v for k, v in subject_images.items() if v is not None}
    template_images = {k: v for k, v in template_images.items() if v is not None}
    unknown = (set(subject_images) - set(SUBJECT_CONTRASTS)) | (set(template_images) - set(TEMPLATE_CONTRASTS))
    if unknown:
        raise QSMInputError(f"image contrast(s) {', '.join(sorted(unknown))} unknown; subject images are "
                            f"{' or '.join(SUBJECT_CONTRASTS)}, template images {', '.join(TEMPLATE_CONTRASTS)}")
    linear_pair, deformable_pair = choose_pairs(subject_images, template_images)
    if options.deformable == "auto":
        options = dataclasses.replace(options, deformable="demons" if deformable_pair[2] == "correlation"
                                      else "bspline")
    if options.deformable == "demons" and deformable_pair[2] != "correlation":
        raise QSMInputError("demons registration needs the same contrast on both sides: give the subject's "
                            "susceptibility map and a template with a susceptibility image, or use bspline")
    shape = next(iter(subject_images.values())).shape
    for name, image in subject_images.items():
        if image.shape != shape:
            raise QSMInputError(f"subject {name} image: shape {image.shape} differs from {shape}; give images "
                                "on one grid")
    template_labels = np.rint(np.asarray(template_labels)).astype(np.int32)
    for name, image in template_images.items():
        if image.shape != template_labels.shape:
            raise QSMInputError(f"template {name} image: shape {image.shape} differs from its label image "
                                f"{template_labels.shape}; give the template's images and labels on one grid")

    subject_mask = _default_mask(subject_mask, subject_images, "subject")
    template_mask = _default_mask(template_mask, template_images, "template")
    fixed = {k: image_from_array(v, subject_affine, name=f"subject {k}") for k, v in subject_images.items()}
    moving = {k: image_from_array(v, template_affine, name=f"template {k}") for k, v in template_images.items()}
    fixed_mask = image_from_array(subject_mask, subject_affine, dtype=np.uint8, name="subject mask")
    moving_mask = image_from_array(template_mask, template_affine, dtype=np.uint8, name="template mask")
    # A template finer than the subject is brought to the subject's voxel size as an acquisition
    # would average it (smoothed, then resampled): a sharp template against a partial-volumed subject
    # makes the deformable stage inflate small bright nuclei (by 5-15 % on the test head), and every
    # level is cheaper. Its labels are still carried from the full-resolution label image.
    subject_spacing = min(fixed_mask.GetSpacing())
    if min(moving_mask.GetSpacing()) < 0.75 * subject_spacing:
        moving = {k: _coarsened(v, subject_spacing) for k, v in moving.items()}
        moving_mask = _coarsened(moving_mask, subject_spacing, label=True)
    metric_mask = _dilate(fixed_mask, options.mask_margin_mm)

    spacing = fixed_mask.GetSpacing()
    shrink = _shrink_factors(options.levels_mm, spacing)
    runner = _StageRunner(progress)
    stages = []

    # Rigid, from the brains' centres of mass.
    initial = SimpleITK.CenteredTransformInitializer(SimpleITK.Cast(fixed_mask, SimpleITK.sitkFloat32),
                                                     SimpleITK.Cast(moving_mask, SimpleITK.sitkFloat32),
                                                     SimpleITK.Euler3DTransform(),
                                                     SimpleITK.CenteredTransformInitializerFilter.MOMENTS)
    f_lin, m_lin = fixed[linear_pair[0]], moving[linear_pair[1]]
    record = {"stage": "rigid", "metric": linear_pair[2], "pair": list(linear_pair[:2])}
    method = _linear_method(options, linear_pair[2], metric_mask, shrink, options.smoothing_mm)
    method.SetInitialTransform(initial, inPlace=False)
    rigid = runner.run(method, STAGES[0], f_lin, m_lin, options.iterations * len(shrink), record)
    stages.append(record)
    rigid = SimpleITK.Euler3DTransform(SimpleITK.CompositeTransform(rigid).GetNthTransform(0)) \
        if rigid.GetName() == "CompositeTransform" else SimpleITK.Euler3DTransform(rigid)

    # Affine, from the rigid result.
    affine = SimpleITK.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    record = {"stage": "affine", "metric": linear_pair[2], "pair": list(linear_pair[:2])}
    method = _linear_method(options, linear_pair[2], metric_mask, shrink, options.smoothing_mm)
    method.SetInitialTransform(affine, inPlace=True)
    runner.run(method, STAGES[1], f_lin, m_lin, options.iterations * len(shrink), record)
    stages.append(record)

    # Deformable.
    f_def, m_def = fixed[deformable_pair[0]], moving[deformable_pair[1]]
    record = {"stage": "deformable", "method": options.deformable, "metric": deformable_pair[2],
              "pair": list(deformable_pair[:2])}
    if options.deformable == "bspline":
        deformation = _bspline_stage(runner, options, f_def, m_def, affine, metric_mask, record)
        transform = SimpleITK.CompositeTransform([affine, deformation])
    elif options.deformable == "demons":
        deformation = _demons_stage(runner, options, f_def, m_def, affine, fixed_mask, record)
        transform = SimpleITK.CompositeTransform([affine, deformation])
    else:
        deformation = None
        transform = SimpleITK.CompositeTransform([affine])
        record.update(iterations=0, time_s=0.0)
        if progress is not None:
            progress(STAGES[2], 1.0)
    stages.append(record)

    labels = warp_labels(template_labels, template_affine, transform, shape, subject_affine,
                         interpolation=options.label_interpolation)
    if progress is not None:
        progress(STAGES[3], 1.0)
    warped_template = array_from_image(SimpleITK.Resample(m_def, f_def, transform, SimpleITK.sitkLinear, 0.0))
    quality = check_registration(affine, deformation, template_labels, template_affine, labels, subject_affine,
                                 subject_mask=subject_mask, subject_image=array_from_image(f_def),
                                 warped_template=warped_template, metric=deformable_pair[2],
                                 label_values=label_values, label_names=label_names, reference=f_def)
    result = RegistrationResult(transform=transform, affine=affine, labels=labels, quality=quality, stages=stages)
    if check and quality["problems"]:
        raise RegistrationFailed("atlas registration failed: " + "; ".join(quality["problems"])
                                 + "; check that the template shows the same body part and contrast as the "
                                   "subject, or give a brain mask", quality)
    return result


def _coarsened(image, spacing_mm, *, label=False):
    """``image`` on a grid of ``spacing_mm`` voxels over the same extent and orientation.

    Intensities are smoothed first by a Gaussian with the variance that a box
    of the new voxel adds to one of the old (``(new^2 - old^2) / 12`` per axis:
    what averaging over the larger voxels does), then interpolated linearly;
    labels take the nearest voxel.
    """
    SimpleITK = sitk()
    old = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = [max(2, int(np.ceil(n * s / spacing_mm))) for n, s in zip(image.GetSize(), old)]
    if not label:
        sigma = np.sqrt(np.maximum(spacing_mm ** 2 - old ** 2, 0.0) / 12.0)
        image = SimpleITK.SmoothingRecursiveGaussian(image, sigma.tolist())
    # Keep the centre of the field of view in place.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.GetOrigin()) + direction @ ((np.asarray(image.GetSize()) - 1) * old / 2)
    origin = centre - direction @ ((np.asarray(size) - 1) * spacing_mm / 2)
    reference = SimpleITK.Image(size, image.GetPixelID())
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(origin.tolist())
    interpolator = SimpleITK.sitkNearestNeighbor if label else SimpleITK.sitkLinear
    return SimpleITK.Resample(image, reference, SimpleITK.Transform(), interpolator, 0)


def _default_mask(mask, images, who):
    SimpleITK = sitk()
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
    elif "susceptibility" in images and np.any(images["susceptibility"] != 0):
        mask = images["susceptibility"] != 0
    else:
        first = next(iter(images.values()))
        image = SimpleITK.GetImageFromArray(np.asarray(first, dtype=np.float32))
        mask = SimpleITK.GetArrayFromImage(SimpleITK.OtsuThreshold(image, 0, 1)) > 0
    if not mask.any():
        raise QSMInputError(f"the {who} brain mask is empty; give a mask that covers the brain")
    return mask


def _crop_to_mask(image, mask):
    """``image`` cut down to the bounding box of ``mask`` (the deformable stage's domain)."""
    SimpleITK = sitk()
    stats = SimpleITK.LabelShapeStatisticsImageFilter()
    stats.Execute(SimpleITK.Cast(mask > 0, SimpleITK.sitkUInt8))
    box = stats.GetBoundingBox(1)
    return SimpleITK.RegionOfInterest(image, box[3:], box[:3])


def _bspline_stage(runner, options, fixed, moving, affine, metric_mask, record):
    """A cubic B-spline free-form deformation on top of the affine, over the brain's bounding box.

    One control grid (``bspline_mesh_mm``), optimised by L-BFGS-B on a
    pyramid of ``bspline_levels_mm``.
    """
    SimpleITK = sitk()
    fixed = _crop_to_mask(fixed, metric_mask)
    metric_mask = _crop_to_mask(metric_mask, metric_mask)
    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / options.bspline_mesh_mm))) for e in extent]
    deformation = SimpleITK.BSplineTransformInitializer(fixed, mesh, order=3)
    shrink = _shrink_factors(options.bspline_levels_mm, fixed.GetSpacing())
    method = SimpleITK.ImageRegistrationMethod()
    _set_metric(method, record["metric"], options.sampling_fraction, options.seed)
    method.SetMetricFixedMask(metric_mask)
    method.SetInterpolator(SimpleITK.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=options.bspline_iterations,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * options.bspline_iterations,
                                costFunctionConvergenceFactor=1e7)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(deformation, inPlace=True)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([level / 2 for level in options.bspline_levels_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    record["mesh_mm"] = options.bspline_mesh_mm
    runner.run(method, STAGES[2], fixed, moving, options.bspline_iterations * len(shrink), record)
    record["parameters"] = deformation.GetNumberOfParameters()
    return deformation


def _demons_stage(runner, options, fixed, moving, affine, fixed_mask, record):
    """Diffeomorphic demons between the fixed image and the affinely resampled moving image.

    Multi-resolution: per level both images are smoothed (``smoothing_mm``) and
    shrunk, the displacement field of the previous level is resampled as the
    start, and the field is regularised by a Gaussian of
    ``demons_field_sd_voxels`` of that level's voxels after every iteration.
    """
    SimpleITK = sitk()
    start = time.perf_counter()
    moved = SimpleITK.Resample(moving, fixed, affine, SimpleITK.sitkLinear, 0.0)
    # Demons compares values: bring the template's to the subject's scale and offset (units,
    # referencing) by a least-squares line fitted inside the brain.
    inside = array_from_image(fixed_mask) > 0
    x, y = array_from_image(moved)[inside].astype(np.float64), array_from_image(fixed)[inside].astype(np.float64)
    slope, offset = np.polyfit(x, y, 1) if x.size > 1 and x.std() > 0 else (1.0, 0.0)
    moved = SimpleITK.Cast(moved * float(slope) + float(offset), SimpleITK.sitkFloat32)
    fixed = SimpleITK.Cast(fixed, SimpleITK.sitkFloat32)
    record["intensity_fit"] = {"slope": float(slope), "offset": float(offset)}
    shrink = _shrink_factors(options.levels_mm, fixed.GetSpacing())
    iterations = list(options.demons_iterations)
    iterations += [iterations[-1]] * (len(shrink) - len(iterations))
    total, done, field = sum(iterations[:len(shrink)]), [0], None
    for level, factor in enumerate(shrink):
        sigma = options.demons_smoothing_mm[min(level, len(options.demons_smoothing_mm) - 1)]
        f, m = ((SimpleITK.SmoothingRecursiveGaussian(x, sigma) if sigma > 0 else x) for x in (fixed, moved))
        if factor > 1:
            f, m = SimpleITK.Shrink(f, [factor] * 3), SimpleITK.Shrink(m, [factor] * 3)
        if field is None:
            initial = SimpleITK.Image(f.GetSize(), SimpleITK.sitkVectorFloat64, 3)
            initial.CopyInformation(f)
        else:
            initial = SimpleITK.Resample(field, f, SimpleITK.Transform(), SimpleITK.sitkLinear, 0.0,
                                         SimpleITK.sitkVectorFloat64)
        demons = SimpleITK.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations[level])
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(options.demons_field_sd_voxels)

        def on_iteration(demons=demons):
            done[0] += 1
            if runner.progress is not None and runner.cancelled is None:
                try:
                    runner.progress(STAGES[2], min(0.99, done[0] / total))
                except Cancelled as exc:
                    runner.cancelled = exc
                    demons.StopRegistration()

        demons.AddCommand(SimpleITK.sitkIterationEvent, on_iteration)
        field = demons.Execute(f, m, initial)
        if runner.cancelled is not None:
            raise runner.cancelled
    field = SimpleITK.Resample(field, fixed, SimpleITK.Transform(), SimpleITK.sitkLinear, 0.0,
                               SimpleITK.sitkVectorFloat64)
    deformation = SimpleITK.DisplacementFieldTransform(field)
    record.update(iterations=done[0], stop="iterations done", time_s=round(time.perf_counter() - start, 2))
    if runner.progress is not None:
        runner.progress(STAGES[2], 1.0)
    return deformation


def warp_labels(template_labels, template_affine, transform, shape, subject_affine, *, interpolation="gaussian"):
    """Template labels on the subject's grid through ``transform`` (subject points -> template points).

    Parameters
    ----------
    template_labels : ndarray of int
    template_affine : ndarray (4, 4)
    transform : SimpleITK.Transform
    shape : tuple of 3 int
        The subject's grid shape.
    subject_affine : ndarray (4, 4)
    interpolation : {"gaussian", "nearest"}
        SimpleITK's label-Gaussian (each label's indicator smoothed by a
        Gaussian of about the template's voxel size, the strongest wins: smooth
        borders, no staircase of the template's voxels), or nearest neighbour.

    Returns
    -------
    ndarray of int32, ``shape``
    """
    SimpleITK = sitk()
    if interpolation not in LABEL_INTERPOLATIONS:
        raise QSMInputError(f"label interpolation '{interpolation}' is unknown; choose one of "
                            f"{', '.join(LABEL_INTERPOLATIONS)}")
    moving = image_from_array(np.asarray(template_labels, dtype=np.int32), template_affine, dtype=np.int32,
                              name="template labels")
    reference = image_from_array(np.zeros(shape, np.uint8), subject_affine, dtype=np.uint8, name="subject grid")
    method = SimpleITK.sitkNearestNeighbor if interpolation == "nearest" else SimpleITK.sitkLabelGaussian
    warped = SimpleITK.Resample(moving, reference, transform, method, 0, SimpleITK.sitkInt32)
    return array_from_image(warped, np.int32)


def affine_matrix(affine_transform):
    """The 3x3 linear part of a SimpleITK affine transform (subject -> template)."""
    return np.asarray(affine_transform.GetMatrix(), dtype=np.float64).reshape(3, 3)


def normalised_mutual_information(a, b, bins=NMI_BINS):
    """Studholme's normalised mutual information (H(A) + H(B)) / H(A, B): 1 for independent, 2 for identical."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return float("nan")
    ranges = [np.percentile(x, [0.5, 99.5]) for x in (a, b)]
    ranges = [(lo, hi if hi > lo else lo + 1.0) for lo, hi in ranges]
    joint, _, _ = np.histogram2d(np.clip(a, *ranges[0]), np.clip(b, *ranges[1]), bins=bins, range=ranges)
    p = joint / joint.sum()

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    joint_entropy = entropy(p)
    return (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / joint_entropy if joint_entropy > 0 else 2.0


def check_registration(affine, deformation, template_labels, template_affine, labels, subject_affine, *,
                       subject_mask, subject_image, warped_template, metric, label_values=None, label_names=None,
                       reference=None):
    """Measure a registration's plausibility; list what fails.

    Parameters
    ----------
    affine : SimpleITK.AffineTransform
        The linear part (subject -> template points).
    deformation : SimpleITK.Transform or None
        The deformable part, checked for folding over ``reference``'s grid.
    template_labels, template_affine : ndarray
        The template's label image and grid.
    labels, subject_affine : ndarray
        The labels on the subject's grid, and that grid.
    subject_mask : ndarray of bool
        The subject's brain.
    subject_image, warped_template : ndarray
        The images compared by the final similarity, on the subject's grid.
    metric : {"correlation", "mattes"}
        Correlation for the same contrast, normalised mutual information otherwise.
    label_values : sequence of int, optional
        Labels that must survive (default: every label of the template).
    label_names : dict int -> str, optional
        Names for the messages.
    reference : SimpleITK.Image, optional
        The subject's grid as an image (for the folding check).

    Returns
    -------
    dict
        ``determinant``, ``axis_scales``, ``folded_fraction``, ``similarity``
        (``metric`` and ``value``), ``labels`` (per label: template and subject
        volume in mm3, expected volume, fraction outside the mask) and
        ``problems`` (list of one-line descriptions; empty when it passed).

    Notes
    -----
    The checks:

    - the affine's determinant (volume ratio) in :data:`DETERMINANT_RANGE`,
      each principal scale in :data:`AXIS_SCALE_RANGE`, and no reflection;
    - the deformation folds (Jacobian determinant <= 0) in at most
      :data:`MAX_FOLDED_FRACTION` of the brain;
    - the final similarity inside the brain: correlation at least
      :data:`MIN_CORRELATION` for the same contrast, normalised mutual
      information at least :data:`MIN_NORMALISED_MI` otherwise;
    - every label in ``label_values`` is present on the subject grid with at
      least :data:`MIN_LABEL_VOLUME_FRACTION` of its expected volume, and at
      most :data:`MAX_LABEL_OUTSIDE_FRACTION` of it outside the brain mask.
    """
    SimpleITK = sitk()
    problems = []
    matrix = affine_matrix(affine)
    determinant = float(np.linalg.det(matrix))
    scales = np.linalg.svd(matrix, compute_uv=False)
    # The matrix maps subject points to template points: a template larger than the subject gives
    # scales above 1. Report the subject-to-template volume ratio as it is.
    if determinant <= 0:
        problems.append(f"the affine reflects the template (determinant {determinant:.2f})")
    elif not DETERMINANT_RANGE[0] <= determinant <= DETERMINANT_RANGE[1]:
        problems.append(f"implausible affine: determinant {determinant:.2f} (volume ratio template/subject) "
                        f"outside {DETERMINANT_RANGE[0]}-{DETERMINANT_RANGE[1]}")
    elif scales.min() < AXIS_SCALE_RANGE[0] or scales.max() > AXIS_SCALE_RANGE[1]:
        problems.append(f"implausible affine: scales {', '.join(f'{s:.2f}' for s in scales)} along its axes "
                        f"outside {AXIS_SCALE_RANGE[0]}-{AXIS_SCALE_RANGE[1]}")

    subject_mask = np.asarray(subject_mask, bool)
    folded = 0.0
    if deformation is not None and reference is not None:
        field = SimpleITK.TransformToDisplacementField(deformation, SimpleITK.sitkVectorFloat64,
                                                       reference.GetSize(), reference.GetOrigin(),
                                                       reference.GetSpacing(), reference.GetDirection())
        jacobian = array_from_image(SimpleITK.DisplacementFieldJacobianDeterminant(field))
        folded = float(np.mean(jacobian[subject_mask] <= 0)) if subject_mask.any() else 0.0
        if folded > MAX_FOLDED_FRACTION:
            problems.append(f"the deformation folds in {100 * folded:.1f} % of the brain")

    inside = subject_mask & np.isfinite(subject_image) & np.isfinite(warped_template)
    a, b = subject_image[inside], warped_template[inside]
    if metric == "correlation":
        value = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else 0.0
        low = value < MIN_CORRELATION
        similarity = {"metric": "correlation", "value": value, "minimum": MIN_CORRELATION}
    else:
        value = normalised_mutual_information(a, b)
        low = not value >= MIN_NORMALISED_MI
        similarity = {"metric": "normalised mutual information", "value": value, "minimum": MIN_NORMALISED_MI}
    if low:
        problems.append(f"low final similarity: {similarity['metric']} {value:.2f} below {similarity['minimum']}")

    template_voxel_mm3 = abs(float(np.linalg.det(np.asarray(template_affine)[:3, :3])))
    subject_voxel_mm3 = abs(float(np.linalg.det(np.asarray(subject_affine)[:3, :3])))
    template_labels = np.asarray(template_labels)
    template_counts = np.bincount(template_labels[template_labels > 0].ravel())
    subject_counts = np.bincount(labels[labels > 0].ravel(), minlength=template_counts.size)
    outside_counts = np.bincount(labels[(labels > 0) & ~subject_mask].ravel(), minlength=template_counts.size)
    if label_values is None:
        label_values = np.nonzero(template_counts)[0].tolist()
    per_label, vanished, shrunk, outside = {}, [], [], []
    for value in label_values:
        value = int(value)
        template_mm3 = float(template_counts[value]) * template_voxel_mm3 if value < template_counts.size else 0.0
        count = int(subject_counts[value]) if value < subject_counts.size else 0
        expected = template_mm3 / determinant if determinant > 0 else float("nan")
        out = float(outside_counts[value]) / count if count and value < outside_counts.size else 0.0
        per_label[value] = {"template_mm3": template_mm3, "subject_mm3": count * subject_voxel_mm3,
                            "expected_mm3": expected, "outside_mask_fraction": out}
        if count == 0:
            vanished.append(value)
        elif count * subject_voxel_mm3 < MIN_LABEL_VOLUME_FRACTION * expected:
            shrunk.append(value)
        elif out > MAX_LABEL_OUTSIDE_FRACTION:
            outside.append(value)
    names = label_names or {}

    def listed(values):
        return ", ".join(names.get(v, str(v)) for v in values)

    if vanished:
        problems.append(f"{listed(vanished)} vanished on the subject grid")
    if shrunk:
        problems.append(f"{listed(shrunk)} shrank below {MIN_LABEL_VOLUME_FRACTION:.0%} of the expected volume")
    if outside:
        problems.append(f"{listed(outside)} lie mostly outside the brain mask")
    return {"determinant": determinant, "axis_scales": [float(s) for s in scales], "folded_fraction": folded,
            "similarity": similarity, "labels": per_label, "problems": problems}


def transform_summary(result):
    """A JSON-ready summary of a registration: stages, affine matrix, quality."""
    matrix = affine_matrix(result.affine)
    return {"stages": result.stages, "affine_matrix_subject_to_template_lps": matrix.tolist(),
            "affine_translation_mm_lps": list(result.affine.GetTranslation()),
            "affine_center_mm_lps": list(result.affine.GetCenter()),
            "quality": {k: v for k, v in result.quality.items() if k != "labels"},
            "labels": {str(k): v for k, v in result.quality["labels"].items()}}


def save_transform(result, path):
    """Write the whole transform (affine after deformation) as an ITK transform file (.h5 or .tfm)."""
    SimpleITK = sitk()
    SimpleITK.WriteTransform(result.transform, str(path))


def load_transform(path):
    """Read an ITK transform file written by :func:`save_transform`."""
    SimpleITK = sitk()
    return SimpleITK.ReadTransform(str(path))


__all__ = ["AXIS_SCALE_RANGE", "DEFORMABLE_METHODS", "DETERMINANT_RANGE", "LABEL_INTERPOLATIONS",
           "MIN_CORRELATION", "MIN_NORMALISED_MI", "RegistrationFailed", "RegistrationOptions",
           "RegistrationResult", "STAGES", "check_registration", "choose_pairs", "load_transform",
           "normalised_mutual_information", "register_template", "save_transform", "transform_summary",
           "warp_labels"]
