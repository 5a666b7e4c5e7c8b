"""The QSM pipeline: a configuration object and a stage runner.

Data move one way::

    mask -> total field (echo fit + unwrap) -> local field -> inversion -> referencing

:func:`reconstruct` chains the stage functions on arrays and records what it
did (method, every parameter including defaults, time, iterations) for the
provenance. It can start at any stage: from multi-echo magnitude and phase,
from a total field map, or from a local field map. It never reads or writes
files (see :mod:`qsmlib.workflow`).
"""

import functools
import inspect
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import numpy as np

from . import __version__, fourier, parallel
from .bgremove import ismv, lbv, pdf, resharp, sharp, vsharp
from .constants import hz_per_ppm, hz_to_ppm
from .errors import ImplausibleMapError, ImplausibleMaskError, QSMInputError
from .fieldmap import fit_multi_echo_field, residual_exclusion_mask, trusted_field_mask
from .inversion import (AUTO_PARAMETERS, PARAMETER_RULES, choose_regularisation, ilsqr, medi, nltv, rts, star, tikhonov,
                        tkd, tsvd, tv_admm)
from .inversion.tv_weight import ECHO_FIT_NOISE_SOURCE, choose_tv_weight, tv_weight_rule
from .mask_check import check_brain_mask
from .masking import brain_mask, erosion_radius_mm, opening_radius_mm
from .reference import csf_reference_mask, reference_to_csf, reference_to_region
from .plausibility import assess, phase_sign_check
from .relaxometry import r2star_loglinear
from .unwrap import unwrap_laplacian, unwrap_reliability, unwrap_romeo, voxel_quality
from .validation import as_b0_dir, as_mask, as_volume, as_voxel_size, check_b0, check_echo_times

UNWRAP_METHODS = {"reliability": unwrap_reliability, "romeo": unwrap_romeo, "laplacian": unwrap_laplacian}
BGREMOVE_METHODS = {"vsharp": vsharp, "sharp": sharp, "pdf": pdf, "lbv": lbv, "resharp": resharp, "ismv": ismv}
INVERSION_METHODS = {"tv-admm": tv_admm, "tikhonov": tikhonov, "tkd": tkd, "tsvd": tsvd, "ilsqr": ilsqr,
                     "rts": rts, "medi": medi, "medi+0": medi, "nltv": nltv, "star": star}
#: Arguments that the pipeline fills from the acquisition (the inversions' magnitude, weights
#: and CSF mask; the brain mask's phase quality), not options.
ACQUISITION_ARGUMENTS = ("magnitude", "weights", "csf_mask", "quality")
REFERENCE_METHODS = ("brain", "csf", "region", "none")

#: Method per stage of each preset, for the command line and the Slicer module.
PRESETS = {
    # The 2024 QSM consensus (QSM Consensus Organization Committee, Magn Reson Med 2024;91:1834-1862):
    # exact unwrapping, echoes combined before background removal, SHARP-based or PDF
    # background removal, a sparsity-regularised inversion, whole-brain reference.
    # ROMEO-style unwrapping (Dymerska et al. 2021), PDF (Liu et al. 2011), nonlinear TV
    # (Milovic et al. 2018) with its weight from the measured noise: chosen by its worst case over
    # the robustness table of the realistic head (Testing/benchmarks/robustness_table.py, issue 12).
    "consensus": {"unwrap": "romeo", "bgremove": "pdf", "inversion": "nltv"},
    # Previews in seconds: the same exact unwrapping (Laplacian unwrapping leaves
    # errors that the temporal unwrapping turns into 2 pi jumps), V-SHARP (Wu et al. 2012)
    # and closed-form TKD (Shmueli et al., Magn Reson Med 2009). 1 mm head: about 4 s.
    "fast": {"unwrap": "romeo", "bgremove": "vsharp", "inversion": "tkd"},
}



@dataclass
class PipelineConfig:
    """Which method runs at each stage, and its options.

    ``options`` maps a method name (``"vsharp"``, ``"tv-admm"``, ``"mask"``, ...)
    to keyword arguments for that method's function; unknown keywords are
    refused with the list of valid ones.
    """

    unwrap: str = "romeo"
    bgremove: str = "pdf"
    inversion: str = "nltv"
    reference: str = "brain"
    options: Dict[str, dict] = field(default_factory=dict)
    check_phase_sign: bool = True
    #: Leave voxels whose fitted field is noise out of the data terms (see
    #: :func:`qsmlib.fieldmap.trusted_field_mask`); they keep a susceptibility value.
    exclude_untrusted_field: bool = True
    #: Write a map that fails the physics checks (:func:`qsmlib.plausibility.assess`: a range no brain
    #: has, a given B0 direction that both the image geometry and the field contradict); by default
    #: the run stops with :class:`~qsmlib.errors.ImplausibleMapError`. The warning is recorded either way.
    accept_implausible_map: bool = False
    #: Remove from the mask the high-residual clusters at its edge (see
    #: :func:`qsmlib.fieldmap.residual_exclusion_mask`), before background removal.
    shrink_mask_by_residual: bool = False
    #: Go on with an automatic brain mask that fails the plausibility check
    #: (:func:`qsmlib.mask_check.check_brain_mask`); by default the run stops with
    #: :class:`~qsmlib.errors.ImplausibleMaskError`. The warnings are recorded either way.
    accept_implausible_mask: bool = False

    @classmethod
    def from_preset(cls, preset="consensus", *, unwrap=None, bgremove=None, inversion=None, **settings):
        """The configuration of :data:`PRESETS` ``preset``, with any stage's method overridden."""
        if preset not in PRESETS:
            raise QSMInputError(f"preset '{preset}' is unknown; choose one of {', '.join(PRESETS)}")
        methods = dict(PRESETS[preset])
        methods.update({stage: method for stage, method in
                        (("unwrap", unwrap), ("bgremove", bgremove), ("inversion", inversion)) if method})
        return cls(**methods, **settings)

    def validate(self):
        for stage, value, choices in (("unwrap", self.unwrap, UNWRAP_METHODS),
                                      ("bgremove", self.bgremove, BGREMOVE_METHODS),
                                      ("inversion", self.inversion, INVERSION_METHODS),
                                      ("reference", self.reference, REFERENCE_METHODS)):
            if value not in choices:
                raise QSMInputError(f"{stage} method '{value}' is unknown; choose one of {', '.join(choices)}")
        functions = {**UNWRAP_METHODS, **BGREMOVE_METHODS, **INVERSION_METHODS, "mask": brain_mask,
                     "csf": csf_reference_mask, "fieldmap": fit_multi_echo_field}
        for name, values in self.options.items():
            if name not in functions:
                raise QSMInputError(f"options for '{name}': no such method; choose among {', '.join(sorted(functions))}")
            method_parameters(functions[name], values, name)  # refuses unknown options, used or not
        in_use = {"unwrap": self.unwrap, "background removal": self.bgremove, "inversion": self.inversion}
        for stage, (choices, option) in {"unwrap": (UNWRAP_METHODS, "--unwrap"),
                                         "background removal": (BGREMOVE_METHODS, "--bgremove"),
                                         "inversion": (INVERSION_METHODS, "--inversion")}.items():
            for name in self.options:
                if name in choices and name != in_use[stage]:
                    raise QSMInputError(f"--option {name}.*: {name} is not the {stage} in use ({in_use[stage]}), "
                                        f"so the option would be ignored; choose it with {option} {name}, or drop "
                                        "the option")
        if "csf" in self.options and self.reference != "csf":
            raise QSMInputError(f"--option csf.*: the CSF reference is not in use (--reference {self.reference}), "
                                "so the option would be ignored; add --reference csf, or drop the option")
        return self


@dataclass
class QSMResult:
    """What :func:`reconstruct` returns. Maps are float32 (X, Y, Z), 0 outside ``mask``."""

    chi_ppm: np.ndarray
    local_field_hz: np.ndarray
    mask: np.ndarray
    brain_mask: np.ndarray
    total_field_hz: Optional[np.ndarray] = None
    provenance: dict = field(default_factory=dict)


#: Inversions whose ``lam`` is an L1 weight on the gradient in ppm mm, the same quantity as TV-ADMM's.
TV_WEIGHTED_INVERSIONS = ("tv-admm", "nltv", "star", "medi", "medi+0")

#: Each inversion's regularisation weights (not its solver settings), for the provenance.
REGULARISATION_WEIGHTS = {"tv-admm": ("lam",), "nltv": ("lam",), "star": ("lam", "lam_strong"), "medi": ("lam",),
                          "medi+0": ("lam", "lam_csf"), "tikhonov": ("lam",), "tkd": ("threshold",),
                          "tsvd": ("threshold",), "ilsqr": ("threshold",), "rts": ("delta", "mu")}

#: Defaults of the pipeline that differ from the bare functions': weights chosen from the data
#: (issue 12). The TV weight follows the measured noise (:mod:`qsmlib.inversion.tv_weight`);
#: Tikhonov's is chosen by generalised cross-validation (:mod:`qsmlib.inversion.lcurve`).
DATA_CHOSEN_DEFAULTS = {**{name: {"lam": "auto"} for name in TV_WEIGHTED_INVERSIONS}, "tikhonov": {"lam": "auto"}}


def method_parameters(func, options, name):
    """Full keyword parameters of ``func``: its defaults (or :data:`DATA_CHOSEN_DEFAULTS`) updated with ``options``.

    Raises QSMInputError for an option the function does not take.
    """
    signature = inspect.signature(func)
    keyword = {p.name: p.default for p in signature.parameters.values()
               if p.kind == p.KEYWORD_ONLY and p.name not in ("callback", "b0_dir") + ACQUISITION_ARGUMENTS}
    unknown = set(options) - set(keyword)
    if unknown:
        raise QSMInputError(f"'{name}' has no option {', '.join(sorted(unknown))}; "
                            f"it takes {', '.join(sorted(keyword)) or 'no options'}")
    if func is INVERSION_METHODS.get(name):
        keyword.update(DATA_CHOSEN_DEFAULTS.get(name, {}))
    keyword.update(options)
    return keyword


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 16 else f"array{value.shape}"
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return repr(value)


class StageRecorder:
    """Times stages, forwards progress, and collects solver convergence.

    ``progress(stage, fraction)`` is called at the start (0) and end (1) of
    each stage and after every solver iteration; it may raise
    :class:`~qsmlib.errors.Cancelled` to stop the run.
    """

    def __init__(self, progress=None):
        self.progress = progress
        self.stages = []

    def _report(self, stage, fraction):
        if self.progress is not None:
            self.progress(stage, float(min(max(fraction, 0.0), 1.0)))

    @contextmanager
    def stage(self, stage, method="", parameters=None):
        parameters = parameters or {}
        record = {"stage": stage, "method": method, "parameters": _jsonable(parameters)}
        max_iter = parameters.get("max_iter")
        self._report(stage, 0.0)
        start = time.perf_counter()

        def callback(iteration, residual):
            record["iterations"] = int(iteration)
            record["final_residual"] = float(residual)
            if max_iter:
                # 1.0 is reserved for the end of the stage
                self._report(stage, min(iteration / max_iter, 0.99))

        with fourier.fft_tally() as tally:
            yield callback, record
        record["time_s"] = round(time.perf_counter() - start, 3)
        if tally:
            # the stage's cost in real FFT pairs (forward + inverse) of its largest grid
            grid = max(tally, key=lambda shape: int(np.prod(shape)))
            record["fft_grid"] = list(grid)
            record["fft_pairs"] = round(float(sum(n * np.prod(shape) for shape, n in tally.items())
                                              / (2.0 * np.prod(grid))), 1)
        if max_iter and "iterations" in record:
            record["converged"] = record["iterations"] < max_iter
        self.stages.append(record)
        self._report(stage, 1.0)


def _call(func, args, parameters, b0_dir, callback):
    accepted = inspect.signature(func).parameters
    extra = {}
    if "b0_dir" in accepted:
        extra["b0_dir"] = b0_dir
    if "callback" in accepted:
        extra["callback"] = callback
    return func(*args, **parameters, **extra)


def software_info():
    """Name and versions of the software, for provenance records."""
    return {"name": "QSMLib", "version": __version__, "python": platform.python_version(),
            "numpy": np.__version__}


def mask_plausibility(mask, voxel_size, *, source, magnitude=None, r2star_hz=None, b0_t=3.0, warnings=None,
                      accept=False, removes_background=True):
    """Check a brain mask (:func:`qsmlib.mask_check.check_brain_mask`); warn, and stop on an implausible one.

    Every failed measure becomes a sentence in ``warnings``. Unless ``accept``,
    :class:`~qsmlib.errors.ImplausibleMaskError` is raised for an automatic
    (``source="automatic"``) mask judged implausible, and for a given mask
    that fills the image when the background field is to be removed
    (``removes_background``): no brain mask of any species does that. Other
    doubts about a given mask are only warned about, since a user's mask may
    be an animal's, a child's or a slab's.

    Returns
    -------
    dict
        The check's record, with ``source`` and ``accepted`` added.
    """
    check = check_brain_mask(mask, voxel_size, magnitude=magnitude, r2star_hz=r2star_hz, b0_t=b0_t)
    check["source"] = source
    check["accepted"] = bool(accept) if check["verdict"] == "implausible" else None
    problems = check["implausible"] + check["questionable"]
    if warnings is not None and problems:
        fix = ("give a brain mask (--mask, or the mask input in Slicer)" if source == "automatic"
               else "check that the mask file belongs to this scan")
        warnings.append(f"the {source} brain mask looks {check['verdict']}: {'; '.join(problems)}. "
                        f"Inspect mask.nii.gz over the magnitude and, if it is wrong, {fix}")
    if check["fills_image"] and source != "automatic" and removes_background and not accept:
        raise ImplausibleMaskError(
            f"the {source} brain mask is implausible: {check['implausible'][0]}. No map was written. Give the "
            "brain mask of this scan (or none, for the automatic one); if the field is already a local field, "
            "start from it (--local-field, qsm invert); or, to go on anyway, rerun with --accept-implausible-mask",
            check)
    if check["verdict"] == "implausible" and source == "automatic" and not accept:
        raise ImplausibleMaskError(
            f"the automatic brain mask is implausible: {'; '.join(check['implausible'])}. No map was written. "
            "Give a brain mask with --mask (in Slicer: the mask input), or, if the mask is right (a large or "
            "non-human brain, an unusual field of view), rerun with --accept-implausible-mask", check)
    return check


def reconstruct(*, magnitude=None, phase=None, te_s=None, total_field_hz=None, local_field_hz=None,
                mask=None, b0_t, voxel_size, b0_dir, config=None, reference_region=None,
                phase_unwrapped=False, progress=None, image_b0_dir=None):
    """Run the QSM pipeline from whichever stage the inputs allow.

    Parameters
    ----------
    magnitude, phase : ndarray (X, Y, Z, E), optional
        Multi-echo magnitude and phase (radians). Phase may be wrapped, or
        already unwrapped with ``phase_unwrapped=True``. With a field map, the
        magnitude (and ``te_s``) may still be given: it then serves the mask,
        MEDI's edges, the CSF reference and the phase-sign check.
    te_s : sequence of float
        Echo times in seconds (with magnitude and phase).
    total_field_hz, local_field_hz : ndarray (X, Y, Z), optional
        Start from a total field (skips echo fitting and unwrapping) or a local
        field (also skips background removal).
    mask : ndarray of bool, optional
        Brain mask. Computed from the magnitude when missing; required when
        starting from a field map.
    b0_t : float
        Field strength in tesla.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dir : sequence of 3 float
        B0 direction in voxel coordinates (see
        :func:`qsmlib.dipole.b0_direction_from_affine`).
    config : PipelineConfig, optional
    reference_region : ndarray of bool, optional
        Region for ``config.reference == "region"``.
    progress : callable(stage, fraction), optional
        Progress reporter; raise :class:`~qsmlib.errors.Cancelled` in it to stop.
    image_b0_dir : 3-vector, optional
        The B0 direction from the image geometry, when ``b0_dir`` was given instead
        of it: the B0-direction check (:func:`qsmlib.plausibility.b0_direction_check`)
        compares the two on the field.

    Returns
    -------
    QSMResult
    """
    config = (config or PipelineConfig()).validate()
    b0_t = check_b0(b0_t)
    voxel_size = as_voxel_size(voxel_size)
    b0_dir = as_b0_dir(b0_dir)
    recorder = StageRecorder(progress)
    options = config.options
    warnings = []
    start = time.perf_counter()

    if local_field_hz is None and total_field_hz is None:
        if magnitude is None or phase is None:
            raise QSMInputError("give magnitude and phase, a total field, or a local field to start from")
        magnitude = as_volume(magnitude, "magnitude", ndim=4)
        phase = as_volume(phase, "phase", ndim=4)
        if magnitude.shape != phase.shape:
            raise QSMInputError(f"magnitude has shape {magnitude.shape} but phase has shape {phase.shape}; "
                                "they must have the same voxels and echoes")
        te_s = check_echo_times(te_s, n_echoes=magnitude.shape[3])
        shape = magnitude.shape[:3]
    else:
        start_field = local_field_hz if local_field_hz is not None else total_field_hz
        start_field = as_volume(start_field, "local field" if local_field_hz is not None else "total field")
        shape = start_field.shape
        if magnitude is not None:  # optional here: the mask, MEDI's edges, R2* for CSF and the sign check
            magnitude = as_volume(magnitude, "magnitude", ndim=4)
            if magnitude.shape[:3] != shape:
                raise QSMInputError(f"magnitude has shape {magnitude.shape[:3]} but the field map has shape {shape}; "
                                    "they must have the same voxels")
            te_s = check_echo_times(te_s, n_echoes=magnitude.shape[3])
        if mask is None and magnitude is None:
            raise QSMInputError("a brain mask is required when starting from a field map; give --mask")

    r2star = None
    checks = {}
    if mask is None:
        params = method_parameters(brain_mask, options.get("mask", {}), "mask")
        quality = None
        method = "magnitude threshold + morphology"
        if phase is not None and params["quality_fraction"] > 0:
            method = "magnitude threshold + ROMEO phase quality + morphology"
        with recorder.stage("mask", method, params) as (_, record):
            if phase is not None and params["quality_fraction"] > 0:
                quality = voxel_quality(phase, te_s)
            mask = brain_mask(as_volume(magnitude, "magnitude", ndim=4), voxel_size, quality=quality, **params)
            record["opening_radius_mm"] = opening_radius_mm(params["opening_mm"], voxel_size)
            record["erosion_radius_mm"] = erosion_radius_mm(params["erode_mm"], voxel_size)
        del quality
        if not mask.any():
            raise QSMInputError("automatic brain mask: it came out empty; give a mask with --mask")
        mask_source = "automatic"
    else:
        mask = as_mask(mask, shape)
        recorder.stages.append({"stage": "mask", "method": "given", "parameters": {}, "time_s": 0.0})
        mask_source = "given"
    if magnitude is not None and magnitude.shape[3] >= 2:
        # R2* inside the brain mask: for the mask check, and later (inside the final mask,
        # a subset) for the CSF reference, MEDI+0 and the phase-sign check.
        r2star, _s0 = r2star_loglinear(magnitude, te_s, mask)
    checks["mask"] = mask_plausibility(mask, voxel_size, source=mask_source, magnitude=magnitude,
                                       r2star_hz=r2star, b0_t=b0_t, warnings=warnings,
                                       accept=config.accept_implausible_mask,
                                       removes_background=local_field_hz is None)
    brain = mask.copy()
    trusted = None  # voxels whose field is trusted, when the echo fit tells
    noise_weights = None  # inverse field noise SD, median 1, when the echo fit tells
    noise_sd_ppm = None  # the field's noise SD (ppm), typical value where untrusted, when the echo fit tells

    if local_field_hz is None and total_field_hz is None:
        if phase_unwrapped:
            unwrap, params = None, {"unwrap": "none (phase given unwrapped)"}
        else:
            func = UNWRAP_METHODS[config.unwrap]
            unwrap_params = method_parameters(func, options.get(config.unwrap, {}), config.unwrap)
            unwrap = functools.partial(func, **unwrap_params)
            params = {"unwrap": config.unwrap, **unwrap_params}
        fit_params = method_parameters(fit_multi_echo_field, options.get("fieldmap", {}), "fieldmap")
        fit_params.pop("unwrap")
        params.update(fit_params)
        fit_method = ("magnitude-weighted least-squares echo fit" if fit_params["model"] == "linear"
                      else "nonlinear complex echo fit")
        with recorder.stage("total field", fit_method, params) as (callback, record):
            fit = fit_multi_echo_field(magnitude, phase, te_s, mask, voxel_size, unwrap=unwrap, callback=callback,
                                       **fit_params)
            record["noise_sd"] = fit.noise_sd
            record["noise_sd_source"] = fit.noise_sd_source
            if config.shrink_mask_by_residual:
                shrunk = residual_exclusion_mask(fit, mask)
                record["mask_voxels_removed_by_residual"] = int((mask & ~shrunk).sum())
                mask = shrunk
            if config.exclude_untrusted_field:
                trusted = trusted_field_mask(fit, mask)
                record["untrusted_voxels"] = int((mask & ~trusted).sum())
            # noise weighting from the fit (Liu et al. 2011), untrusted voxels left out
            noise_weights = 1.0 / np.maximum(fit.field_sd_hz, 1e-6)
            usable = mask if trusted is None else trusted
            noise_weights = np.where(usable, noise_weights / np.median(noise_weights[mask]), 0).astype(np.float32)
            noise_sd_ppm = hz_to_ppm(fit.field_sd_hz, b0_t)
            noise_sd_ppm = np.where(usable, noise_sd_ppm, np.median(noise_sd_ppm[usable])).astype(np.float32)
            # the typical value, as the TV weight rules that take the echo fit's noise read it
            record["field_noise_sd_ppm"] = float(np.median(noise_sd_ppm[mask]))
        total_field_hz = fit.field_hz
    elif total_field_hz is not None:
        total_field_hz = as_volume(total_field_hz, "total field")

    if local_field_hz is None:
        func = BGREMOVE_METHODS[config.bgremove]
        params = method_parameters(func, options.get(config.bgremove, {}), config.bgremove)
        data = {"weights": noise_weights} if "weights" in inspect.signature(func).parameters else {}
        with recorder.stage("background removal", config.bgremove, params) as (callback, record):
            record["data_from_acquisition"] = sorted(k for k, v in data.items() if v is not None)
            local_field_hz, mask = _call(func, (total_field_hz, mask, voxel_size), dict(params, **data), b0_dir,
                                         callback)
        if not mask.any():
            raise QSMInputError(f"background removal ({config.bgremove}) eroded the whole mask; "
                                "use smaller radii or another method")
    else:
        local_field_hz = as_volume(local_field_hz, "local field")

    func = INVERSION_METHODS[config.inversion]
    params = method_parameters(func, options.get(config.inversion, {}), config.inversion)
    if trusted is not None and params.get("data_mask", False) is None:
        params["data_mask"] = trusted
    # What the weighted and nonlinear inversions take from the acquisition (never user options)
    accepted = inspect.signature(func).parameters
    data = {}
    if "weights" in accepted:
        data["weights"] = noise_weights
    if "magnitude" in accepted and magnitude is not None:
        data["magnitude"] = np.sqrt(np.sum(np.square(magnitude, dtype=np.float32), axis=3))
    if "rad_per_ppm" in accepted and te_s is not None and "rad_per_ppm" not in options.get(config.inversion, {}):
        # phase per ppm at the mean echo time (Hz per ppm times 2 pi TE)
        params["rad_per_ppm"] = float(2 * np.pi * hz_per_ppm(b0_t) * np.mean(te_s))
    if config.inversion == "medi+0":
        if r2star is None:
            raise QSMInputError("medi+0 finds its CSF zero reference from R2*, which needs magnitude and phase "
                                "with two echoes or more; use --inversion medi")
        data["csf_mask"] = csf_reference_mask(magnitude, r2star, mask, voxel_size,
                                              **method_parameters(csf_reference_mask, options.get("csf", {}), "csf"))
    csf = data.get("csf_mask")  # the referencing stage reuses it
    with recorder.stage("dipole inversion", config.inversion, params) as (callback, record):
        field_ppm = hz_to_ppm(local_field_hz, b0_t).astype(np.float32)
        auto_key = AUTO_PARAMETERS.get(config.inversion)
        if auto_key and isinstance(params.get(auto_key), str) and params[auto_key] in PARAMETER_RULES:
            choice = choose_regularisation(config.inversion, field_ppm, mask, voxel_size, b0_dir=b0_dir,
                                           pad_voxels=params["pad_voxels"], rule=params[auto_key],
                                           noise_sd_ppm=noise_sd_ppm)
            params = dict(params, **{auto_key: choice.value})
            record["parameters"][auto_key] = choice.value
            record["auto_regularisation"] = choice.as_record()
        if (config.inversion in TV_WEIGHTED_INVERSIONS and isinstance(params.get("lam"), str)
                and params["lam"] == "auto"):
            # the TV weight from the measured noise: a given SD; else the echo fit's where the method's
            # rule takes it and there is one; else the field's own
            rule = tv_weight_rule(config.inversion)
            source = None if params.get("noise_sd_ppm") is None else "given"
            noise = params.get("noise_sd_ppm")
            if noise is None and noise_sd_ppm is not None and rule.noise == "echo fit":
                noise, source = noise_sd_ppm, ECHO_FIT_NOISE_SOURCE
            lam, auto = choose_tv_weight(field_ppm, mask, voxel_size, noise_sd_ppm=noise, noise_source=source,
                                         rule=rule)
            params = dict(params, lam=lam)
            record["parameters"]["lam"] = lam
            if "noise_sd_ppm" in params:
                params["noise_sd_ppm"] = record["parameters"]["noise_sd_ppm"] = auto["noise_sd_ppm"]
            record["auto_regularisation"] = auto
        given = options.get(config.inversion, {})
        weights = [k for k in REGULARISATION_WEIGHTS.get(config.inversion, ()) if k in params]
        if weights:
            # where each regularisation weight came from, for every method (issue 12)
            record["regularisation_source"] = {
                k: ("automatic" if "auto_regularisation" in record and record["auto_regularisation"].get(
                    "parameter") == k else "given" if k in given else "fixed default") for k in weights}
        if "csf_mask" in data:
            record["csf_volume_ml"] = round(float(data["csf_mask"].sum() * np.prod(voxel_size)) / 1000.0, 2)
        record["data_from_acquisition"] = sorted(k for k, v in data.items() if v is not None)
        chi = _call(func, (field_ppm, mask, voxel_size), dict(params, **data), b0_dir, callback)

    params = method_parameters(csf_reference_mask, options.get("csf", {}), "csf") if config.reference == "csf" else {}
    with recorder.stage("referencing", config.reference, params) as (_, record):
        if config.reference == "none":
            offset = 0.0
        elif config.reference == "csf":
            if r2star is None:
                raise QSMInputError("reference 'csf' finds the ventricles from R2*, which needs magnitude and "
                                    "phase with two echoes or more; use --reference brain or region")
            if csf is None:
                csf = csf_reference_mask(magnitude, r2star, mask, voxel_size, **params)
            record["csf_volume_ml"] = round(float(csf.sum() * np.prod(voxel_size)) / 1000.0, 2)
            chi, offset = reference_to_csf(chi, mask, csf)
        else:
            if config.reference == "region" and reference_region is None:
                raise QSMInputError("reference 'region' needs a reference region (for example --reference-mask)")
            region = mask if config.reference == "brain" else reference_region
            chi, offset = reference_to_region(chi, mask, region)
        record["offset_ppm"] = offset

    sign_skipped = None
    if not config.check_phase_sign:
        sign_skipped = "turned off (check_phase_sign=False)"
    elif r2star is None:
        sign_skipped = ("it needs an R2* map, and the run started from a field map without magnitude"
                        if magnitude is None else "it needs an R2* map, which needs two or more echoes; one was given")
    found, more_warnings, refusal = assess(chi, local_field_hz, mask, voxel_size, b0_dir, b0_t, r2star_hz=r2star,
                                           image_b0_dir=image_b0_dir, mask_check=checks.get("mask"),
                                           sign_skipped=sign_skipped)
    checks.update(found)
    if found["phase_sign"]["verdict"] == "skipped":
        warnings.append(f"the phase-sign check was skipped: {found['phase_sign']['skipped']}")
    if refusal is not None and not config.accept_implausible_map:
        raise ImplausibleMapError(f"{refusal}. No map was written; if the input is right (a phantom, an unusual "
                                  "sample), rerun with --accept-implausible-map", checks)
    warnings.extend(([refusal] if refusal is not None else []) + more_warnings)

    provenance = {
        "software": software_info(),
        "threads": parallel.thread_info(),
        "config": _jsonable(asdict(config)),
        "acquisition": {"b0_t": b0_t, "te_s": None if te_s is None else [float(t) for t in te_s],
                        "voxel_size_mm": list(voxel_size), "b0_dir": list(b0_dir)},
        "stages": recorder.stages,
        "checks": checks,
        "warnings": warnings,
        "mask_voxels": {"brain": int(brain.sum()), "final": int(mask.sum())},
        "total_time_s": round(time.perf_counter() - start, 3),
    }
    return QSMResult(chi_ppm=chi, local_field_hz=np.where(mask, local_field_hz, 0).astype(np.float32),
                     mask=mask, brain_mask=brain, total_field_hz=total_field_hz, provenance=provenance)


__all__ = ["PipelineConfig", "QSMResult", "reconstruct", "phase_sign_check", "mask_plausibility", "method_parameters",
           "UNWRAP_METHODS", "BGREMOVE_METHODS", "INVERSION_METHODS", "REFERENCE_METHODS", "PRESETS"]
