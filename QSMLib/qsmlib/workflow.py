"""File-level workflows behind the ``qsm`` command: run, invert, simulate, demo.

This is the only layer that combines reading, computing and writing. Every
workflow checks its output folder first (nothing is overwritten without
``force``), stages what it writes, and moves it into place only on success.
"""

import json
import logging
import os
import sys
import time

import numpy as np

from . import __version__, parallel
from .constants import hz_per_ppm
from .dipole import b0_direction_from_affine, voxel_size_from_affine
from .errors import ImplausibleMaskError, QSMInputError
from .inversion import cosmos
from .inversion.tv_weight import ECHO_FIT_NOISE_SOURCE
from .io import (OutputDirectory, bids_label, find_megre, load_field, load_labels, load_magnitude, load_mask, load_multi_echo,
                 megre_names, save_nifti, write_megre)
from .memory import check_run_inputs
from .metrics import hfen, nrmse, region_errors, ssim, xsim
from .pipeline import (INVERSION_METHODS, PipelineConfig, StageRecorder, method_parameters, reconstruct,
                       software_info)
from .reference import label_region, reference_whole_brain
from .report import html_report, overview_image, write_png, write_text
from .validation import as_b0_dir, check_b0

log = logging.getLogger("qsmlib")

RUN_OUTPUTS = ("chi.nii.gz", "mask.nii.gz", "total_field.nii.gz", "local_field.nii.gz", "provenance.json")
#: Deep grey matter structures of the head phantom used for accuracy reports.
DGM_STRUCTURES = ("caudate", "Putamen", "GP", "Thalamus", "SNandSTN", "RN", "DN")


def resolve_b0_dir(affine, override=None):
    """B0 direction in voxel coordinates and where it came from."""
    if override is not None:
        return as_b0_dir(override, name="--b0-dir"), "given (--b0-dir)"
    return b0_direction_from_affine(affine), "image affine"


def _flatten(groups):
    """Every path of ``groups`` (lists, single paths or None), for the output guard's ``inputs``."""
    paths = []
    for group in groups:
        if group is None:
            continue
        if isinstance(group, (str, bytes, os.PathLike)):
            group = [group]
        paths += [p for p in group if p is not None]
    return paths


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def load_run_inputs(*, magnitude_files=None, phase_files=None, te_s=None, b0_t=None, bids_dir=None,
                    subject=None, session=None, phase_sign=1, phase_unwrapped=False, dicom_dir=None,
                    what="the reconstruction"):
    """Load multi-echo inputs from files, a BIDS dataset or a DICOM folder (see :func:`run_qsm`).

    Before reading any data, the headers are checked against the files and the
    estimated peak memory of ``what`` against the available memory
    (:func:`qsmlib.memory.check_run_inputs`).
    """
    bids = None
    if dicom_dir is not None:
        from .io.dicom import load_dicom

        if phase_unwrapped:
            raise QSMInputError("--phase-unwrapped does not apply to --dicom: DICOM phase is wrapped scanner phase")
        data = load_dicom(dicom_dir, te_s=te_s, b0_t=b0_t, phase_sign=phase_sign)
        log.info("DICOM: %s", "; ".join(data.sources["dicom_series"]))
        log.info("phase: %s", data.phase_scaling["detected"])
        return data, None
    te_name, b0_name = "echo times (--te)", "B0 (--b0)"
    if bids_dir is not None:
        bids = find_megre(bids_dir, subject=subject, session=session, te_s=te_s, b0_t=b0_t)
        magnitude_files, phase_files = bids["magnitude"], bids["phase"]
        te_name = bids["te_source"]
        b0_name = "B0 (--b0)" if b0_t is not None else f"MagneticFieldStrength of the sidecars of {bids['stem']}"
        te_s, b0_t = bids["te_s"], bids["b0_t"]
    if not magnitude_files or not phase_files:
        raise QSMInputError("give --mag and --phase files (with --te and --b0), or --bids DIR")
    if te_s is None:
        raise QSMInputError("echo times are missing; give --te in seconds, one per echo")
    if b0_t is None:
        raise QSMInputError("the field strength is missing; give --b0 in tesla")
    check_run_inputs([str(f) for f in magnitude_files], what=what)
    data = load_multi_echo(magnitude_files, phase_files, te_s, b0_t, phase_sign=phase_sign,
                           phase_unwrapped=phase_unwrapped, te_name=te_name, b0_name=b0_name)
    log.info("phase: %s", data.phase_scaling["detected"])
    return data, bids


def run_qsm(out_dir, *, magnitude_files=None, phase_files=None, te_s=None, b0_t=None, bids_dir=None,
            subject=None, session=None, total_field_file=None, local_field_file=None, mask_file=None,
            reference_mask_file=None, reference_labels=None, config=None, b0_dir=None, phase_sign=1,
            phase_unwrapped=False, force=False, progress=None, also=(), also_options=None, dicom_dir=None,
            atlas_dir=None, atlas_options=None):
    """Reconstruct susceptibility from files and write maps and provenance to ``out_dir``.

    Start from multi-echo magnitude and phase (files, ``bids_dir``, or a DICOM
    folder or file list ``dicom_dir``), from a
    total field map in Hz (``total_field_file``), or from a local field map in
    Hz (``local_field_file``). Writes :data:`RUN_OUTPUTS`, and with ``also``
    ("swi", "r2star") the maps of :data:`ALSO_OUTPUTS` beside them
    (options for them in ``also_options``, e.g. ``{"swi": {"kind": "positive"}}``).
    With ``reference_labels`` (label values), ``reference_mask_file`` is a
    label image and the reference region is the voxels carrying those labels.
    With ``atlas_dir`` (a template folder, see :mod:`qsmlib.atlas`) the
    template is registered to the result and its labels, the QC picture, the
    transform and ``regions.csv`` are written too (:data:`qsmlib.atlas.segment.ATLAS_RUN_OUTPUTS`;
    ``atlas_options`` a :class:`qsmlib.atlas.RegistrationOptions`); an
    implausible registration fails the run.

    Returns
    -------
    QSMResult
    """
    config = (config or PipelineConfig()).validate()
    also = _check_also(also, also_options, total_field_file, local_field_file)
    names = list(RUN_OUTPUTS) + [name for extra in also for name in ALSO_OUTPUTS[extra]]
    template = None
    if atlas_dir is not None:
        from .atlas import load_template
        from .atlas.segment import ATLAS_RUN_OUTPUTS

        template = load_template(atlas_dir)  # a bad template stops the run before any work
        names += list(ATLAS_RUN_OUTPUTS)
    inputs = [magnitude_files, phase_files, [mask_file, reference_mask_file, total_field_file, local_field_file],
              dicom_dir]
    with OutputDirectory(out_dir, names, force=force, inputs=_flatten(inputs), bids_dir=bids_dir) as stage:
        loaded = {}
        result = _run_into(stage, "", magnitude_files=magnitude_files, phase_files=phase_files,
                           te_s=te_s, b0_t=b0_t, bids_dir=bids_dir, subject=subject, session=session,
                           total_field_file=total_field_file, local_field_file=local_field_file,
                           mask_file=mask_file, reference_mask_file=reference_mask_file, config=config,
                           b0_dir=b0_dir, phase_sign=phase_sign, phase_unwrapped=phase_unwrapped,
                           progress=progress, loaded=loaded, dicom_dir=dicom_dir,
                           reference_labels=reference_labels)
        if also:
            _write_also(stage, "", loaded["data"], result, also, also_options or {}, progress)
        if template is not None:
            from .atlas.segment import segment_run

            data = loaded.get("data")
            segment_run(stage.path, template, chi_file=stage.path("chi.nii.gz"), mask=result.mask,
                        magnitude=None if data is None else data.magnitude[..., 0],
                        subject=result.provenance["inputs"].get("subject", ""),
                        session=result.provenance["inputs"].get("session", session),
                        options=atlas_options, progress=progress)
    return result


def _run_into(stage, prefix, *, magnitude_files, phase_files, te_s, b0_t, bids_dir, subject, session,
              total_field_file, local_field_file, mask_file, reference_mask_file, config, b0_dir,
              phase_sign, phase_unwrapped, progress, loaded=None, dicom_dir=None, reference_labels=None):
    inputs = {}
    data = None
    if total_field_file is None and local_field_file is None:
        data, bids = load_run_inputs(magnitude_files=magnitude_files, phase_files=phase_files, te_s=te_s,
                                     b0_t=b0_t, bids_dir=bids_dir, subject=subject, session=session,
                                     phase_sign=phase_sign, phase_unwrapped=phase_unwrapped,
                                     dicom_dir=dicom_dir)
        affine, shape, b0_t = data.affine, data.shape, data.b0_t
        if loaded is not None:
            loaded["data"] = data
        inputs.update(data.sources, echo_times_s=data.te_s.tolist(), b0_t=b0_t)
        if bids:
            inputs.update(bids_dir=str(bids_dir), subject=bids["subject"], session=bids["session"])
        fields = {}
    else:
        if b0_t is None:
            raise QSMInputError("the field strength is missing; give --b0 in tesla")
        b0_t = check_b0(b0_t, name="B0 (--b0)")
        path = local_field_file if local_field_file is not None else total_field_file
        check_run_inputs([str(path)], what="the reconstruction")
        field_hz, affine = load_field(path)
        shape = field_hz.shape
        key = "local_field_hz" if local_field_file is not None else "total_field_hz"
        fields = {key: field_hz}
        inputs.update({key.replace("_hz", "_file"): str(path), "b0_t": b0_t})
    mask = None
    if mask_file is not None:
        mask = load_mask(mask_file, shape, affine)
        inputs["mask"] = str(mask_file)
    region = None
    if reference_labels is not None and reference_mask_file is None:
        raise QSMInputError("reference label values were given without a label image; "
                            "give the label image with --reference-mask")
    if reference_mask_file is not None and reference_labels is not None:
        labels = load_labels(reference_mask_file, shape, affine)
        region = label_region(labels, reference_labels, shape)
        inputs.update(reference_labels_file=str(reference_mask_file), reference_labels=list(reference_labels))
    elif reference_mask_file is not None:
        region = load_mask(reference_mask_file, shape, affine)
        inputs["reference_mask"] = str(reference_mask_file)
    direction, direction_source = resolve_b0_dir(affine, b0_dir)
    log.info("B0 direction in voxel coordinates: (%.3f, %.3f, %.3f), from the %s", *direction, direction_source)
    image_dir = None if b0_dir is None else b0_direction_from_affine(affine)
    try:
        result = reconstruct(magnitude=None if data is None else data.magnitude,
                             phase=None if data is None else data.phase,
                             te_s=None if data is None else data.te_s, mask=mask, b0_t=b0_t,
                             voxel_size=voxel_size_from_affine(affine), b0_dir=direction, config=config,
                             reference_region=region, phase_unwrapped=phase_unwrapped, progress=progress,
                             image_b0_dir=image_dir, **fields)
    except ImplausibleMaskError as error:
        if mask_file is None:
            raise
        raise ImplausibleMaskError(f"{mask_file}: {error}", error.check) from None
    for warning in result.provenance["warnings"]:
        log.warning("%s", warning)
    provenance = dict(result.provenance)
    provenance["inputs"] = inputs
    provenance["detected"] = {"b0_dir": list(direction), "b0_dir_source": direction_source,
                              "voxel_size_mm": list(voxel_size_from_affine(affine)),
                              "phase_scaling": None if data is None else data.phase_scaling}
    provenance["command"] = _command()
    provenance["units"] = {"chi": "ppm", "total_field": "Hz", "local_field": "Hz"}
    result.provenance = provenance
    write = stage.path
    save_nifti(write(prefix + "chi.nii.gz"), result.chi_ppm, affine, description="susceptibility (ppm)")
    save_nifti(write(prefix + "mask.nii.gz"), result.mask, affine, dtype=np.uint8)
    if result.total_field_hz is not None:
        save_nifti(write(prefix + "total_field.nii.gz"), np.where(result.brain_mask, result.total_field_hz, 0),
                   affine, description="total field (Hz)")
    save_nifti(write(prefix + "local_field.nii.gz"), result.local_field_hz, affine, description="local field (Hz)")
    _write_json(write(prefix + "provenance.json"), provenance)
    return result


def invert_field(local_field_file, out_file, *, unit, mask_file, b0_t=None, method="nltv", options=None,
                 b0_dir=None, force=False, progress=None, accept_implausible_map=False):
    """Dipole inversion of a local field map file; writes a susceptibility map (ppm) and its provenance.

    The map goes through the physics checks of :func:`qsmlib.plausibility.assess`;
    ``accept_implausible_map`` writes it even when they call it impossible.
    """
    if unit not in ("ppm", "hz"):
        raise QSMInputError(f"--unit {unit}: choose ppm or hz")
    if unit == "hz" and b0_t is None:
        raise QSMInputError("--unit hz needs --b0 in tesla to convert the field to ppm")
    out_dir, name = os.path.split(os.path.abspath(out_file))
    check_run_inputs([str(local_field_file)], what="the inversion")
    field, affine = load_field(local_field_file)
    mask = load_mask(mask_file, field.shape, affine)
    b0 = check_b0(b0_t, name="B0 (--b0)") if b0_t is not None else 3.0
    field_hz = field if unit == "hz" else field * hz_per_ppm(b0)
    config = PipelineConfig(inversion=method, reference="none", accept_implausible_map=accept_implausible_map,
                            options={method: dict(options or {})} if method in INVERSION_METHODS else {})
    direction, source = resolve_b0_dir(affine, b0_dir)
    # the provenance (parameters, the automatically chosen weight and its inputs) as a sidecar
    sidecar = (name[:-7] if name.endswith(".nii.gz") else os.path.splitext(name)[0]) + ".json"
    with OutputDirectory(out_dir, [name, sidecar], force=force, inputs=[local_field_file, mask_file]) as stage:
        result = reconstruct(local_field_hz=field_hz, mask=mask, b0_t=b0, voxel_size=voxel_size_from_affine(affine),
                             b0_dir=direction, config=config, progress=progress,
                             image_b0_dir=None if b0_dir is None else b0_direction_from_affine(affine))
        save_nifti(stage.path(name), result.chi_ppm, affine, description="susceptibility (ppm)")
        provenance = dict(result.provenance, command=_command(), units={"chi": "ppm"},
                          inputs={"local_field": os.path.abspath(str(local_field_file)), "unit": unit,
                                  "mask": os.path.abspath(str(mask_file)), "b0_t": b0},
                          detected={"b0_dir": list(direction), "b0_dir_source": source})
        _write_json(stage.path(sidecar), provenance)
        result.provenance = provenance
    log.info("B0 direction (%.3f, %.3f, %.3f) from the %s", *direction, source)
    for warning in result.provenance["warnings"]:
        log.warning("%s", warning)
    return result


def run_cosmos(field_files, out_file, *, unit, mask_file, b0_dirs, b0_t=None, options=None, force=False,
               progress=None):
    """COSMOS from local field maps of two or more head orientations; writes susceptibility (ppm).

    The fields must be registered to one voxel grid (same shape and affine);
    ``b0_dirs`` gives each one's B0 direction in that grid's voxel frame, in
    the order of ``field_files`` (the rotation found by the registration
    applied to the scanner's B0 axis).
    """
    if unit not in ("ppm", "hz"):
        raise QSMInputError(f"--unit {unit}: choose ppm or hz")
    if unit == "hz" and b0_t is None:
        raise QSMInputError("--unit hz needs --b0 in tesla to convert the fields to ppm")
    if b0_dirs is None or len(b0_dirs) != len(field_files):
        given = 0 if b0_dirs is None else len(b0_dirs)
        raise QSMInputError(f"COSMOS: {len(field_files)} field files but {given} B0 directions; give one "
                            "--b0-dir X Y Z per field, in the registered grid's voxel frame, in the same order")
    check_run_inputs([str(f) for f in field_files], what="COSMOS")
    fields, affine = [], None
    for path in field_files:
        field, field_affine = load_field(path, None if affine is None else fields[0].shape)
        if affine is not None and not np.allclose(field_affine, affine, atol=1e-3):
            raise QSMInputError(f"{path}: its affine differs from {field_files[0]}'s; register every "
                                "orientation's field onto one grid first")
        affine = field_affine if affine is None else affine
        fields.append(field if unit == "ppm" else field / hz_per_ppm(check_b0(b0_t, name="B0 (--b0)")))
    mask = load_mask(mask_file, fields[0].shape, affine)
    options = dict(options or {})
    if "b0_dirs" in options:
        raise QSMInputError("give the B0 directions with --b0-dir, not as an option")
    options = method_parameters(cosmos, options, "cosmos")
    del options["b0_dirs"]
    max_iter = options["max_iter"]

    def callback(iteration, change):
        if progress is not None:
            progress("cosmos", min(iteration / max_iter, 0.99))

    out_dir, name = os.path.split(os.path.abspath(out_file))
    with OutputDirectory(out_dir, [name], force=force, inputs=list(field_files) + [mask_file]) as stage:
        chi = cosmos(fields, mask, voxel_size_from_affine(affine), b0_dirs=[as_b0_dir(d) for d in b0_dirs],
                     callback=callback, **options)
        chi, _offset = reference_whole_brain(chi, mask)
        save_nifti(stage.path(name), chi, affine, description="susceptibility (ppm), COSMOS")
    if progress is not None:
        progress("cosmos", 1.0)
    return chi


def truth_names(subject):
    """Relative paths of the ground-truth files that :func:`simulate_dataset` writes."""
    folder = f"derivatives/truth/sub-{subject}/anat/sub-{subject}"
    return [f"{folder}_Chimap.nii.gz", f"{folder}_desc-local_fieldmap.nii.gz",
            f"{folder}_desc-total_fieldmap.nii.gz", f"{folder}_desc-brain_mask.nii.gz",
            f"{folder}_dseg.nii.gz", f"{folder}_dseg.tsv", f"{folder}_R2starmap.nii.gz",
            "derivatives/truth/dataset_description.json"]


def _write_simulation(path_for, sim, subject, tissues):
    write_megre(path_for, subject, sim.magnitude, sim.phase, sim.te_s, sim.b0_t, sim.affine,
                dataset_name="QSMLib simulated head")
    chi, local, total, mask, dseg, dseg_tsv, r2star, description = truth_names(subject)
    save_nifti(path_for(chi), sim.chi_ppm, sim.affine, description="true susceptibility (ppm)")
    save_nifti(path_for(local), sim.local_field_ppm * hz_per_ppm(sim.b0_t), sim.affine,
               description="true local field (Hz)")
    save_nifti(path_for(total), sim.total_field_hz, sim.affine, description="total field (Hz)")
    save_nifti(path_for(mask), sim.brain_mask, sim.affine, dtype=np.uint8)
    save_nifti(path_for(dseg), sim.labels, sim.affine, dtype=np.uint8)
    save_nifti(path_for(r2star), sim.r2star_hz, sim.affine, description="R2* (1/s)")
    rows = ["index\tname\tsusceptibility_ppm\tr2star_3t_hz"]
    rows += [f"{k}\t{t.name}\t{t.chi_ppm}\t{t.r2star_3t_hz}" for k, t in sorted(tissues.items())]
    with open(path_for(dseg_tsv), "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    _write_json(path_for(description), {
        "Name": "QSMLib simulation ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "QSMLib", "Version": __version__}],
        "Units": {"Chimap": "ppm", "fieldmap": "Hz", "R2starmap": "1/s"}})


def separation_truth_names(subject):
    """Relative paths of the chi-separation truth that ``simulate_dataset(separation=True)`` adds."""
    folder = f"derivatives/truth/sub-{subject}/anat/sub-{subject}"
    return [f"{folder}_desc-paramagnetic_Chimap.nii.gz", f"{folder}_desc-diamagnetic_Chimap.nii.gz",
            f"{folder}_R2map.nii.gz", f"{folder}_desc-R2prime_R2starmap.nii.gz"]


def simulate_dataset(out_dir, *, voxel_size_mm=1.0, b0_t=3.0, te_s=None, snr=100.0, subject="01",
                     b0_dir=None, seed=0, force=False, realistic=False, wm_anisotropy=False, n_coils=0,
                     separation=False):
    """Simulate the head phantom and write it as a BIDS MEGRE dataset with its ground truth.

    ``realistic`` uses :func:`qsmlib.simulation.simulate_realistic_gre` (0.64 mm
    model, exact field of cuboid voxels, k-space truncation to ``voxel_size_mm``,
    texture; ``wm_anisotropy`` and ``n_coils`` apply to it only) and also
    writes the volume-averaged susceptibility as ``desc-average_Chimap``; the
    default is the fast :func:`qsmlib.simulation.simulate_gre`. ``separation``
    simulates paramagnetic and diamagnetic parts and R2* = R2 + R2'
    (:func:`qsmlib.simulation.separation.simulate_separation_gre`, fast
    simulation only) and also writes their truth and the R2 map
    (:func:`separation_truth_names`; the R2 map is what ``qsm separate --r2`` takes).
    """
    from .simulation import load_fine_head_model, load_head_phantom, simulate_gre, simulate_realistic_gre

    subject = bids_label(subject, "--subject", "sub-")
    kwargs = {} if te_s is None else {"te_s": te_s}
    names = megre_names(subject, len(te_s) if te_s is not None else 5) + truth_names(subject)
    if realistic:
        names.append(_average_chi_name(subject))
        if separation:
            raise QSMInputError("--separation applies to the fast simulation only; leave out --realistic")
    elif wm_anisotropy or n_coils:
        raise QSMInputError("wm_anisotropy and n_coils apply to the realistic simulation only")
    if separation:
        names += separation_truth_names(subject)
    with OutputDirectory(out_dir, names, force=force) as stage:
        if separation:
            from .simulation.separation import simulate_separation_gre

            phantom = load_head_phantom(voxel_size_mm)
            sim = simulate_separation_gre(phantom, b0_t=b0_t, snr=snr, b0_dir=b0_dir, seed=seed, **kwargs)
            _write_simulation(stage.path, sim, subject, phantom.tissues)
            pos, neg, r2, r2prime = separation_truth_names(subject)
            save_nifti(stage.path(pos), sim.chi_pos_ppm, sim.affine, description="true paramagnetic chi (ppm)")
            save_nifti(stage.path(neg), sim.chi_neg_ppm, sim.affine, description="true diamagnetic chi (ppm)")
            save_nifti(stage.path(r2), sim.r2_hz, sim.affine, description="R2 (1/s)")
            save_nifti(stage.path(r2prime), sim.r2prime_hz, sim.affine, description="R2' = R2* - R2 (1/s)")
        elif realistic:
            model = load_fine_head_model()
            sim = simulate_realistic_gre(model, voxel_size_mm=voxel_size_mm, b0_t=b0_t, snr=snr, b0_dir=b0_dir,
                                         seed=seed, wm_anisotropy=wm_anisotropy, n_coils=n_coils, **kwargs)
            _write_simulation(stage.path, sim, subject, model.tissues)
            save_nifti(stage.path(names[-1]), sim.chi_average_ppm, sim.affine,
                       description="true susceptibility, volume average (ppm)")
        else:
            phantom = load_head_phantom(voxel_size_mm)
            sim = simulate_gre(phantom, b0_t=b0_t, snr=snr, b0_dir=b0_dir, seed=seed, **kwargs)
            _write_simulation(stage.path, sim, subject, phantom.tissues)
    return sim


def _average_chi_name(subject):
    return f"derivatives/truth/sub-{subject}/anat/sub-{subject}_desc-average_Chimap.nii.gz"


def demo_names():
    """Relative paths that :func:`run_demo` writes."""
    return (megre_names("01", 5, None) + truth_names("01")
            + [f"qsm/{n}" for n in RUN_OUTPUTS] + ["report.html", "overview.png", "metrics.json"])


def run_demo(out_dir, *, force=False, progress=None, config=None):
    """Simulate the head, reconstruct it from the BIDS files, and report accuracy against the truth.

    Writes the simulated BIDS dataset and its truth (``derivatives/truth``), the
    maps under ``qsm/`` and ``report.html``, ``overview.png`` and
    ``metrics.json`` at the top.
    """
    from .simulation import load_head_phantom, simulate_gre

    config = (config or PipelineConfig()).validate()
    with OutputDirectory(out_dir, demo_names(), force=force) as stage:
        start = time.perf_counter()
        phantom = load_head_phantom(1.0)
        sim = simulate_gre(phantom)
        _write_simulation(stage.path, sim, "01", phantom.tissues)
        log.info("simulated the 1 mm head phantom (%d echoes, %.0f T) in %.1f s",
                 len(sim.te_s), sim.b0_t, time.perf_counter() - start)
        bids_root = os.path.dirname(stage.path("dataset_description.json"))
        result = _run_into(stage, "qsm/", magnitude_files=None, phase_files=None, te_s=None, b0_t=None,
                           bids_dir=bids_root, subject="01", session=None, total_field_file=None,
                           local_field_file=None, mask_file=None, reference_mask_file=None, config=config,
                           b0_dir=None, phase_sign=1, phase_unwrapped=False, progress=progress)
        # Score only where both the map and the truth are defined: the automatic mask
        # may also hold CSF and dura outside the phantom's brain mask.
        scored = result.mask & sim.brain_mask
        metrics = accuracy_metrics(result.chi_ppm, sim.chi_ppm, scored, sim.labels, phantom.tissues)
        metrics["reconstruction_time_s"] = result.provenance["total_time_s"]
        metrics["mask_voxels"] = result.provenance["mask_voxels"]
        metrics["true_brain_voxels"] = int(sim.brain_mask.sum())
        metrics["scored_voxels"] = int(scored.sum())
        _write_json(stage.path("metrics.json"), metrics)
        _write_report(stage, result, sim, metrics)
    return result, metrics


def accuracy_metrics(chi, chi_true, mask, labels, tissues):
    """NRMSE, HFEN, SSIM, XSIM and deep grey matter errors against the truth, inside ``mask``."""
    names = {k: t.name for k, t in tissues.items() if t.name in DGM_STRUCTURES}
    errors = region_errors(chi, chi_true, labels, names, mask)
    truth_ref, _ = reference_whole_brain(chi_true, mask)
    means = {names[k]: float(truth_ref[(labels == k) & mask].mean()) for k in names if ((labels == k) & mask).any()}
    return {"nrmse_percent": nrmse(chi, chi_true, mask), "hfen_percent": hfen(chi, chi_true, mask),
            "ssim": ssim(chi, chi_true, mask), "xsim": xsim(chi, chi_true, mask),
            "dgm_error_ppm": errors, "dgm_true_ppm": means,
            "dgm_max_abs_error_ppm": max(abs(e) for e in errors.values()),
            "dgm_mean_abs_error_ppm": float(np.mean([abs(e) for e in errors.values()]))}


def _write_report(stage, result, sim, metrics):
    truth_ref, _ = reference_whole_brain(sim.chi_ppm, result.mask & sim.brain_mask)
    first_echo = sim.magnitude[..., 0]
    maps = [("first-echo magnitude", first_echo, "grey"), ("true susceptibility", truth_ref, "chi"),
            ("reconstructed susceptibility", result.chi_ppm, "chi"),
            ("error (reconstructed - true)", np.where(result.mask, result.chi_ppm - truth_ref, 0), "chi")]
    write_png(stage.path("overview.png"), overview_image(maps, result.mask, sim.voxel_size_mm))
    stages = [(s["stage"], s["method"], s.get("iterations", ""), s["time_s"]) for s in result.provenance["stages"]]
    dgm = [(name, metrics["dgm_true_ppm"][name], metrics["dgm_true_ppm"][name] + err, err)
           for name, err in metrics["dgm_error_ppm"].items()]
    summary = [("NRMSE (%)", metrics["nrmse_percent"]), ("HFEN (%)", metrics["hfen_percent"]),
               ("SSIM (2016 challenge)", metrics["ssim"]), ("XSIM", metrics["xsim"]),
               ("worst deep grey matter error (ppm)", metrics["dgm_max_abs_error_ppm"]),
               ("reconstruction time (s)", metrics["reconstruction_time_s"]),
               ("voxels in the final mask / true brain voxels / scored (both)",
                f"{metrics['mask_voxels']['final']} / {metrics['true_brain_voxels']} / {metrics['scored_voxels']}")]
    page = html_report("QSMLib demo: simulated head, 1 mm, 3 T, 5 echoes", "overview.png",
                       [m[0] for m in maps],
                       [("Accuracy against the ground truth", ("metric", "value"), summary),
                        ("Deep grey matter, whole-brain referenced (ppm)", ("structure", "true", "reconstructed", "error"), dgm),
                        ("Pipeline stages", ("stage", "method", "iterations", "time (s)"), stages)],
                       notes=result.provenance["warnings"])
    write_text(stage.path("report.html"), page)


# --- SWI and R2* -----------------------------------------------------------------------------

SWI_OUTPUTS = ("swi.nii.gz", "mip.nii.gz", "provenance.json")
R2STAR_OUTPUTS = ("r2star.nii.gz", "t2star.nii.gz", "s0.nii.gz", "provenance.json")
#: Extra maps that ``qsm run --also`` writes beside the susceptibility map.
ALSO_OUTPUTS = {"swi": ("swi.nii.gz", "mip.nii.gz"), "r2star": ("r2star.nii.gz", "t2star.nii.gz", "s0.nii.gz"),
                "separation": ("chi_pos.nii.gz", "chi_neg.nii.gz", "chi_total.nii.gz", "r2prime.nii.gz")}
#: What ``qsm separate`` writes: the run's maps and the separation's.
SEPARATION_OUTPUTS = RUN_OUTPUTS + ALSO_OUTPUTS["separation"]
#: Field strength passed to the loaders when SWI or R2* runs without one (neither uses it).
NOMINAL_B0_T = 3.0
SWI_HIGHPASS = ("homodyne", "field")


def _command():
    return " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("qsm") else None


def load_magnitude_inputs(*, magnitude_files=None, te_s=None, bids_dir=None, subject=None, session=None):
    """Load multi-echo magnitude only (for R2*): from files or a BIDS dataset.

    Returns
    -------
    magnitude : ndarray (X, Y, Z, E), te_s : ndarray, affine : ndarray, sources : dict
    """
    sources = {}
    te_name = "echo times (--te)"
    if bids_dir is not None:
        bids = find_megre(bids_dir, subject=subject, session=session, te_s=te_s, b0_t=NOMINAL_B0_T)
        magnitude_files = bids["magnitude"]
        te_s, te_name = bids["te_s"], bids["te_source"]
        sources.update(bids_dir=str(bids_dir), subject=bids["subject"], session=bids["session"])
    if not magnitude_files:
        raise QSMInputError("give --mag files (with --te), or --bids DIR")
    if te_s is None:
        raise QSMInputError("echo times are missing; give --te in seconds, one per echo")
    magnitude_files = [str(f) for f in magnitude_files]
    check_run_inputs(magnitude_files, what="R2*")
    magnitude, te, affine = load_magnitude(magnitude_files, te_s, te_name=te_name)
    if magnitude.shape[3] < 2:
        raise QSMInputError(f"{magnitude_files[0]}: holds a single echo; R2* needs at least two echoes "
                            "(give every echo of the multi-echo scan)")
    sources["magnitude"] = magnitude_files
    return magnitude, te, affine, sources


def _brain_mask_for(magnitude, voxel_size, mask_file, affine, progress):
    """The given mask, or the automatic brain mask; with its source."""
    from .masking import brain_mask

    with StageRecorder(progress).stage("mask"):
        if mask_file is not None:
            return load_mask(mask_file, magnitude.shape[:3], affine), str(mask_file)
        mask = brain_mask(magnitude, voxel_size)
        if not mask.any():
            raise QSMInputError("automatic brain mask: it came out empty; give a mask with --mask")
        return mask, "automatic (magnitude threshold + morphology)"


def run_swi(out_dir, *, magnitude_files=None, phase_files=None, te_s=None, b0_t=None, bids_dir=None,
            subject=None, session=None, mask_file=None, highpass="homodyne", phase_convention="left-handed",
            options=None, force=False, progress=None):
    """SWI and its minimum intensity projection from multi-echo files; writes :data:`SWI_OUTPUTS`.

    ``highpass`` is "homodyne" (classic SWI: :func:`qsmlib.swi.swi`) or
    "field" (CLEAR-SWI style: the total field is fitted from the unwrapped
    echoes and high-passed, :func:`qsmlib.swi.swi_from_field`). ``options``
    holds keyword options of that function (``kind``, ``power``,
    ``combine``, ``filter_size`` or ``highpass_sigma_mm``, ``te_ref_s``,
    ``slab_mm``, ``mip_axis``, ``sensitivity_sigma_mm``).
    ``phase_convention`` "right-handed" flips the phase on loading.

    Returns
    -------
    SWIResult
    """
    from .fieldmap import fit_multi_echo_field
    from .swi import PHASE_CONVENTIONS, mip_slices, swi, swi_from_field

    if highpass not in SWI_HIGHPASS:
        raise QSMInputError(f"--highpass {highpass}: choose one of {', '.join(SWI_HIGHPASS)}")
    if phase_convention not in PHASE_CONVENTIONS:
        raise QSMInputError(f"--phase-convention {phase_convention}: choose one of {', '.join(PHASE_CONVENTIONS)}")
    func = swi if highpass == "homodyne" else swi_from_field
    options = _check_function_options(func, options, f"SWI ({highpass})")
    with OutputDirectory(out_dir, SWI_OUTPUTS, force=force, inputs=_flatten([magnitude_files, phase_files, [mask_file]]),
                         bids_dir=bids_dir) as stage:
        start = time.perf_counter()
        data, bids = load_run_inputs(magnitude_files=magnitude_files, phase_files=phase_files, te_s=te_s,
                                     b0_t=NOMINAL_B0_T if b0_t is None and bids_dir is None else b0_t,
                                     bids_dir=bids_dir, subject=subject, session=session,
                                     phase_sign=-1 if phase_convention == "right-handed" else 1, what="SWI")
        voxel_size = voxel_size_from_affine(data.affine)
        mask, mask_source = _brain_mask_for(data.magnitude, voxel_size, mask_file, data.affine, progress)
        if highpass == "homodyne":
            with StageRecorder(progress).stage("SWI (homodyne)"):
                result = swi(data.magnitude, data.phase, mask, voxel_size, te_s=data.te_s, **options)
        else:
            with StageRecorder(progress).stage("total field"):
                field = fit_multi_echo_field(data.magnitude, data.phase, data.te_s, mask, voxel_size).field_hz
            with StageRecorder(progress).stage("SWI (field high-pass)"):
                result = swi_from_field(data.magnitude, field, mask, voxel_size, te_s=data.te_s, **options)
        _save_swi(stage.path, "", result, data.affine)
        parameters = _swi_parameters(func, options, result, voxel_size, highpass, mip_slices)
        parameters["phase_convention"] = phase_convention
        inputs = dict(data.sources, echo_times_s=data.te_s.tolist(),
                      b0_t=b0_t if b0_t is not None or bids is None else bids["b0_t"])
        if bids:
            inputs.update(bids_dir=str(bids_dir), subject=bids["subject"], session=bids["session"])
        if mask_file is not None:
            inputs["mask"] = str(mask_file)
        _write_json(stage.path("provenance.json"), {
            "software": software_info(), "threads": parallel.thread_info(), "command": _command(), "inputs": inputs,
            "detected": {"voxel_size_mm": list(voxel_size), "phase_scaling": data.phase_scaling},
            "mask": {"source": mask_source, "voxels": int(mask.sum())},
            "swi": parameters,
            "units": {"swi": "magnitude units", "mip": "magnitude units"},
            "total_time_s": round(time.perf_counter() - start, 3)})
    log.info("SWI: %s high-pass, %s phase mask, power %g; mIP over %d slices along axis %d",
             highpass, parameters["kind"], parameters["power"], parameters["mip_slices"], parameters["mip_axis"])
    return result


UNWRAP_OUTPUTS = ("phase_unwrapped.nii.gz", "provenance.json")


def run_unwrap(out_dir, *, magnitude_files=None, phase_files=None, te_s=None, b0_t=None, bids_dir=None,
               subject=None, session=None, mask_file=None, reference_echo=0, force=False, progress=None):
    """Unwrap every echo (ROMEO-style in space, then in time); writes :data:`UNWRAP_OUTPUTS`.

    The reference echo is unwrapped in space with :func:`qsmlib.unwrap.unwrap_romeo`
    (magnitude-weighted), the others in time (:func:`qsmlib.unwrap.unwrap_echoes_temporal`).
    The result is in radians, 0 outside the mask, and differs from the
    input by whole turns at every voxel.
    """
    from .unwrap import unwrap_echoes_temporal

    with OutputDirectory(out_dir, UNWRAP_OUTPUTS, force=force,
                         inputs=_flatten([magnitude_files, phase_files, [mask_file]]), bids_dir=bids_dir) as stage:
        start = time.perf_counter()
        data, bids = load_run_inputs(magnitude_files=magnitude_files, phase_files=phase_files, te_s=te_s,
                                     b0_t=NOMINAL_B0_T if b0_t is None and bids_dir is None else b0_t,
                                     bids_dir=bids_dir, subject=subject, session=session, what="unwrapping")
        voxel_size = voxel_size_from_affine(data.affine)
        mask, mask_source = _brain_mask_for(data.magnitude, voxel_size, mask_file, data.affine, progress)
        with StageRecorder(progress).stage("unwrapping"):
            unwrapped = unwrap_echoes_temporal(data.phase, data.te_s, mask, voxel_size, magnitude=data.magnitude,
                                               reference_echo=reference_echo)
        save_nifti(stage.path("phase_unwrapped.nii.gz"), unwrapped, data.affine,
                   description="unwrapped phase (rad)")
        inputs = dict(data.sources, echo_times_s=data.te_s.tolist())
        if bids:
            inputs.update(bids_dir=str(bids_dir), subject=bids["subject"], session=bids["session"])
        _write_json(stage.path("provenance.json"), {
            "software": software_info(), "threads": parallel.thread_info(), "command": _command(), "inputs": inputs,
            "detected": {"voxel_size_mm": list(voxel_size), "phase_scaling": data.phase_scaling},
            "mask": {"source": mask_source, "voxels": int(mask.sum())},
            "unwrap": {"spatial": "romeo", "temporal": "line through the echoes already unwrapped",
                       "reference_echo": int(reference_echo)},
            "units": {"phase_unwrapped": "rad"}, "total_time_s": round(time.perf_counter() - start, 3)})
    return unwrapped


def run_r2star(out_dir, *, magnitude_files=None, te_s=None, bids_dir=None, subject=None, session=None,
               mask_file=None, method="arlo", noise_sd="auto", floor_snr=None, force=False, progress=None):
    """R2* (1/s), T2* (s) and S0 maps from multi-echo magnitude files; writes :data:`R2STAR_OUTPUTS`.

    Returns
    -------
    R2StarMaps
    """
    from .relaxometry import DEFAULT_FLOOR_SNR, R2STAR_METHODS, r2star_map

    if method not in R2STAR_METHODS:
        raise QSMInputError(f"--method {method}: choose one of {', '.join(R2STAR_METHODS)}")
    floor_snr = DEFAULT_FLOOR_SNR if floor_snr is None else floor_snr
    with OutputDirectory(out_dir, R2STAR_OUTPUTS, force=force, inputs=_flatten([magnitude_files, [mask_file]]),
                         bids_dir=bids_dir) as stage:
        start = time.perf_counter()
        magnitude, te, affine, sources = load_magnitude_inputs(
            magnitude_files=magnitude_files, te_s=te_s, bids_dir=bids_dir, subject=subject, session=session)
        voxel_size = voxel_size_from_affine(affine)
        mask, mask_source = _brain_mask_for(magnitude, voxel_size, mask_file, affine, progress)
        name = f"R2* ({method})"
        with StageRecorder(progress).stage(name):
            def report_unconverged(iteration, unconverged_fraction):
                progress(name, min(0.99, 1.0 - unconverged_fraction))

            callback = report_unconverged if method == "nlls" and progress is not None else None
            maps = r2star_map(magnitude, te, mask, method=method, noise_sd=noise_sd, floor_snr=floor_snr,
                              callback=callback)
        _save_r2star(stage.path, "", maps, affine)
        inputs = dict(sources, echo_times_s=te.tolist())
        if mask_file is not None:
            inputs["mask"] = str(mask_file)
        _write_json(stage.path("provenance.json"), {
            "software": software_info(), "threads": parallel.thread_info(), "command": _command(), "inputs": inputs,
            "detected": {"voxel_size_mm": list(voxel_size)},
            "mask": {"source": mask_source, "voxels": int(mask.sum())},
            "r2star": _r2star_parameters(maps, mask, floor_snr, noise_sd),
            "units": {"r2star": "1/s", "t2star": "s", "s0": "magnitude units"},
            "total_time_s": round(time.perf_counter() - start, 3)})
    log.info("R2*: %s fit, noise SD %.4g, median %.1f /s in the mask", method, maps.noise_sd,
             float(np.median(maps.r2star_hz[mask])))
    return maps


def _check_also(also, also_options, total_field_file, local_field_file):
    also = tuple(dict.fromkeys(also or ()))
    for extra in also:
        if extra not in ALSO_OUTPUTS:
            raise QSMInputError(f"--also {extra}: choose among {', '.join(ALSO_OUTPUTS)}")
    for name in (also_options or {}):
        if name not in also:
            raise QSMInputError(f"--option {name}.*: add --also {name} to compute it")
    if also and (total_field_file is not None or local_field_file is not None):
        raise QSMInputError(f"--also {' '.join(also)} needs the multi-echo magnitude and phase; "
                            "give --mag/--phase or --bids instead of a field map")
    return also


def _check_function_options(func, options, name):
    """Options of ``func`` (keyword-only), refusing unknown names with the valid ones."""
    import inspect

    options = dict(options or {})
    keyword = [p.name for p in inspect.signature(func).parameters.values() if p.kind == p.KEYWORD_ONLY]
    allowed = [k for k in keyword if k not in ("te_s", "phase_convention", "callback")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise QSMInputError(f"{name} has no option {', '.join(unknown)}; it takes {', '.join(allowed)}")
    return options


def _swi_parameters(func, options, result, voxel_size, highpass, mip_slices):
    import inspect

    parameters = {p.name: p.default for p in inspect.signature(func).parameters.values()
                  if p.kind == p.KEYWORD_ONLY and p.name not in ("te_s", "phase_convention")}
    parameters.update(options)
    parameters = {k: (list(v) if isinstance(v, tuple) else v) for k, v in parameters.items()}
    parameters["highpass"] = highpass
    parameters["te_ref_s"] = result.te_ref_s
    axis = parameters["mip_axis"]
    parameters["mip_slices"] = min(mip_slices(parameters["slab_mm"], voxel_size[axis]), 2 * result.mip.shape[axis] - 1)
    return parameters


def _r2star_parameters(maps, mask, floor_snr, noise_sd):
    used = maps.echoes_used[mask]
    full = int(used.max()) if used.size else 0
    return {"method": maps.method, "noise_sd": maps.noise_sd,
            "noise_sd_source": "estimated from the background" if noise_sd == "auto" else
                               ("none (every echo used)" if noise_sd is None else "given"),
            "floor_snr": floor_snr,
            "fraction_voxels_with_dropped_echoes": float(np.mean(used < full)) if used.size else 0.0}


def _save_swi(path, prefix, result, affine):
    save_nifti(path(prefix + "swi.nii.gz"), result.swi, affine, description="SWI (magnitude units)")
    save_nifti(path(prefix + "mip.nii.gz"), result.mip, affine, description="SWI minimum intensity projection")


def _save_r2star(path, prefix, maps, affine):
    save_nifti(path(prefix + "r2star.nii.gz"), maps.r2star_hz, affine, description="R2* (1/s)")
    save_nifti(path(prefix + "t2star.nii.gz"), maps.t2star_s, affine, description="T2* (s)")
    save_nifti(path(prefix + "s0.nii.gz"), maps.s0, affine, description="S0 (magnitude units)")


def _write_also(stage, prefix, data, result, also, also_options, progress):
    """SWI (from the pipeline's local field) and R2* beside the susceptibility map; updates provenance."""
    from .relaxometry import DEFAULT_FLOOR_SNR, r2star_map
    from .swi import mip_slices, swi_from_field

    voxel_size = voxel_size_from_affine(data.affine)
    extra = {}
    if "swi" in also:
        options = _check_function_options(swi_from_field, also_options.get("swi"), "swi")
        with StageRecorder(progress).stage("SWI (local field)"):
            swi_result = swi_from_field(data.magnitude, result.local_field_hz, result.mask, voxel_size,
                                        te_s=data.te_s, **options)
        _save_swi(stage.path, prefix, swi_result, data.affine)
        extra["swi"] = _swi_parameters(swi_from_field, options, swi_result, voxel_size,
                                       "field (the pipeline's local field)", mip_slices)
    if "r2star" in also:
        options = dict(also_options.get("r2star") or {})
        allowed = {"method", "noise_sd", "floor_snr"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise QSMInputError(f"r2star has no option {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
        options.setdefault("noise_sd", "auto")
        options.setdefault("floor_snr", DEFAULT_FLOOR_SNR)
        with StageRecorder(progress).stage("R2*"):
            maps = r2star_map(data.magnitude, data.te_s, result.brain_mask, **options)
        _save_r2star(stage.path, prefix, maps, data.affine)
        extra["r2star"] = _r2star_parameters(maps, result.brain_mask, options["floor_snr"], options["noise_sd"])
    if "separation" in also:
        extra["separation"] = _write_separation(stage.path, prefix, data, result, None, None,
                                                also_options.get("separation"), progress)
    provenance = dict(result.provenance)
    provenance["also"] = extra
    units = dict(provenance.get("units", {}))
    if "separation" in also:
        units.update(SEPARATION_UNITS)
    if "swi" in also:
        units.update(swi="magnitude units", mip="magnitude units")
    if "r2star" in also:
        units.update(r2star="1/s", t2star="s", s0="magnitude units")
    provenance["units"] = units
    result.provenance = provenance
    _write_json(stage.path(prefix + "provenance.json"), provenance)


# --- Susceptibility source separation -------------------------------------------------------------

SEPARATION_UNITS = {"chi_pos": "ppm", "chi_neg": "ppm", "chi_total": "ppm", "r2prime": "1/s"}
#: Plausible median R2 (1/s) and T2 (s) of brain tissue: far outside these, the unit is wrong.
R2_PLAUSIBLE_HZ = (2.0, 100.0)


def load_r2_map(r2_file=None, t2_file=None, *, shape=None, affine=None, mask=None):
    """R2 (1/s) on the data grid from an R2 map (1/s) or a T2 map (s); with a description of the source.

    Without ``shape`` and ``affine`` the file is only read and checked (a quick
    check before a long run); without ``mask`` the plausibility of the unit is
    judged on the map's positive voxels. Raises QSMInputError naming the file
    when both files are given, the grid differs, or the values are not plausible
    in the expected unit (T2 in ms, say).
    """
    from .io.multiecho import _load_on_grid

    if r2_file is not None and t2_file is not None:
        raise QSMInputError("give --r2 or --t2, not both")
    path = r2_file if r2_file is not None else t2_file
    what = "R2 map" if r2_file is not None else "T2 map"
    if shape is None:
        values = load_field(path)[0].astype(np.float32)
    else:
        values = _load_on_grid(path, shape, affine, what).astype(np.float32)
    if mask is None:
        mask = values > 0
        if not mask.any():
            raise QSMInputError(f"{path}: the {what} has no positive value; give R2 in 1/s or T2 in s")
    r2 = r2_from_map(values, is_t2=t2_file is not None, mask=mask, name=str(path))
    return r2, f"{'R2' if r2_file is not None else 'T2'} map {path}"


def r2_from_map(values, *, is_t2, mask, name):
    """R2 (1/s) from an R2 map (1/s) or a T2 map (s) already on the data grid, checked for its unit.

    Raises QSMInputError naming ``name`` when the map holds NaN or infinite
    values in ``mask`` or its median R2 in ``mask`` is not plausible for brain
    tissue (:data:`R2_PLAUSIBLE_HZ`: a T2 in ms, say).
    """
    values = np.asarray(values, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    what = "T2 map" if is_t2 else "R2 map"
    if not mask.any():
        raise QSMInputError(f"{name}: the mask is empty; the {what} cannot be checked")
    inside = values[mask]
    if not np.all(np.isfinite(inside)):
        raise QSMInputError(f"{name}: the {what} holds NaN or infinite values in the brain mask; "
                            "replace them (0 where unknown)")
    if is_t2:
        r2 = np.divide(1.0, values, out=np.zeros_like(values), where=values > 0)
    else:
        r2 = values
    typical = float(np.median(r2[mask]))
    low, high = R2_PLAUSIBLE_HZ
    if not low <= typical <= high:
        if is_t2:
            hint = ("the T2 map looks like milliseconds; give T2 in seconds (divide by 1000)" if typical < low
                    else "give T2 in seconds (brain T2 is about 0.05-0.1 s)")
        else:
            hint = ("it looks like a T2 map; give it as T2 (--t2, in seconds)" if typical < low
                    else "give R2 in 1/s (brain R2 is about 10-20 1/s)")
        raise QSMInputError(f"{name}: the median of the {what} in the brain gives R2 = {typical:.3g} 1/s, "
                            f"outside {low:g}-{high:g} 1/s; {hint}")
    return r2


def field_noise_from_provenance(result):
    """The field's noise SD (ppm) the pipeline measured, and its source; None: measure it from the field.

    The echo fit's (median field SD in the mask) where there was one; else what a TV-weighted inversion
    recorded.
    """
    stages = result.provenance.get("stages", [])
    for stage in stages:
        noise = stage.get("field_noise_sd_ppm") if stage.get("stage") == "total field" else None
        if isinstance(noise, (int, float)) and noise > 0:
            return float(noise), ECHO_FIT_NOISE_SOURCE
    for stage in stages:
        if stage.get("stage") == "dipole inversion":
            auto = stage.get("auto_regularisation", {})  # every TV-weighted inversion records its noise here
            noise = auto.get("noise_sd_ppm", stage.get("parameters", {}).get("noise_sd_ppm"))
            if isinstance(noise, (int, float)) and noise > 0:
                return float(noise), auto.get("noise_source", "the pipeline's inversion record")
    return None, None


def separate_result(result, magnitude, te_s, b0_t, voxel_size, *, b0_dir=None, r2_hz=None, r2_source=None,
                    options=None, progress=None):
    """Chi-separation from a pipeline result's local field and the magnitude's R2*, in memory.

    Parameters
    ----------
    result : QSMResult
        A :func:`qsmlib.pipeline.reconstruct` result (its local field, mask,
        detected B0 direction and the inversion's field noise are used).
    magnitude : ndarray, shape (X, Y, Z, echoes)
        The echoes' magnitude, two or more, for R2*.
    te_s : sequence of float
        Echo times in seconds.
    b0_t : float
        Field strength in tesla.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates; default: the one the workflow
        recorded in ``result.provenance["detected"]``.
    r2_hz : ndarray or float, optional
        Measured R2 (1/s) on the data grid; None: the R2*-only method.
    r2_source : str, optional
        Where ``r2_hz`` came from, for the record.
    options : dict, optional
        Keyword options of :func:`qsmlib.separation.chi_separation`.
    progress : callable(stage, fraction), optional
        Called with the stage "chi-separation"; may raise Cancelled.

    Returns
    -------
    maps : dict of ndarray
        ``chi_pos``, ``chi_neg``, ``chi_total`` (ppm) and ``r2prime`` (1/s).
    record : dict
        What was chosen (weights, noise, constants, R2 source, iterations).
    """
    from .constants import hz_to_ppm
    from .relaxometry import r2star_loglinear
    from .separation import DEFAULT_MAX_ITER, chi_separation, chi_separation_r2star, r2prime_map

    import inspect

    options = dict(options or {})
    allowed = [p.name for p in inspect.signature(chi_separation).parameters.values()
               if p.kind == p.KEYWORD_ONLY and p.name not in ("b0_t", "b0_dir", "callback", "record")]
    if r2_hz is None:
        allowed.append("r2_hz")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise QSMInputError(f"separation has no option {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
    if magnitude.ndim != 4 or magnitude.shape[3] < 2:
        raise QSMInputError("chi-separation needs R2*, which needs two echoes or more; one echo was given")
    if b0_dir is None:
        b0_dir = result.provenance["detected"]["b0_dir"]
    mask = result.mask
    field_ppm = hz_to_ppm(result.local_field_hz, b0_t).astype(np.float32)
    record = {}
    stage_parameters = {"max_iter": options.get("max_iter", DEFAULT_MAX_ITER)}
    with StageRecorder(progress).stage("chi-separation", parameters=stage_parameters) as (callback, stage_record):
        r2star, _s0 = r2star_loglinear(magnitude, te_s, mask)
        noise, noise_source = field_noise_from_provenance(result)
        if noise is None or "field_noise_sd_ppm" in options:
            noise = None
        else:
            options["field_noise_sd_ppm"] = noise
        common = dict(b0_t=b0_t, b0_dir=b0_dir, callback=callback, record=record, **options)
        if r2_hz is None:
            chi_pos, chi_neg = chi_separation_r2star(field_ppm, r2star, mask, voxel_size, **common)
            r2_used = record["r2"]
            r2_source = "tissue model (R2*-only method)"
        else:
            chi_pos, chi_neg = chi_separation(field_ppm, r2star, r2_hz, mask, voxel_size, **common)
            r2_used = r2_hz
    if noise is not None and record.get("field_noise_source") == "given":
        record["field_noise_source"] = noise_source
    record.update(r2_source=r2_source, r2star_fit="magnitude-weighted log-linear fit of the echoes",
                  time_s=stage_record.get("time_s"))
    maps = {"chi_pos": chi_pos, "chi_neg": chi_neg, "chi_total": (chi_pos + chi_neg).astype(np.float32),
            "r2prime": r2prime_map(r2star, r2_used, mask)}
    log.info("chi-separation: %s; %d iterations", r2_source, record.get("iterations", 0))
    return maps, record


def _write_separation(path, prefix, data, result, r2_hz, r2_source, options, progress):
    """Chi-separation from the pipeline's local field and the magnitude's R2*; writes the maps, returns a record."""
    maps, record = separate_result(result, data.magnitude, data.te_s, data.b0_t, voxel_size_from_affine(data.affine),
                                   r2_hz=r2_hz, r2_source=r2_source, options=options, progress=progress)
    affine = data.affine
    save_nifti(path(prefix + "chi_pos.nii.gz"), maps["chi_pos"], affine,
               description="paramagnetic susceptibility (ppm)")
    save_nifti(path(prefix + "chi_neg.nii.gz"), maps["chi_neg"], affine,
               description="diamagnetic susceptibility (ppm)")
    save_nifti(path(prefix + "chi_total.nii.gz"), maps["chi_total"], affine, description="chi_pos + chi_neg (ppm)")
    save_nifti(path(prefix + "r2prime.nii.gz"), maps["r2prime"], affine, description="R2' = R2* - R2 (1/s)")
    return record


def run_separation(out_dir, *, r2_file=None, t2_file=None, magnitude_files=None, phase_files=None, te_s=None,
                   b0_t=None, bids_dir=None, subject=None, session=None, mask_file=None, reference_mask_file=None,
                   reference_labels=None, config=None, b0_dir=None, phase_sign=1, phase_unwrapped=False,
                   dicom_dir=None, options=None, force=False, progress=None):
    """Susceptibility source separation from files: the QSM run, then chi-separation.

    Writes :data:`SEPARATION_OUTPUTS`: the run's maps (``chi.nii.gz`` is the
    referenced QSM), ``chi_pos.nii.gz`` and ``chi_neg.nii.gz`` (ppm),
    ``chi_total.nii.gz`` (their sum, ppm) and ``r2prime.nii.gz`` (1/s), with
    the separation's record in ``provenance.json``. With ``r2_file`` (R2,
    1/s) or ``t2_file`` (T2, s) on the data grid, R2' = R2* - R2 is measured;
    with neither, the R2*-only method takes R2 from a tissue model.

    Returns
    -------
    result : QSMResult
    record : dict
        The separation's provenance record.
    """
    config = (config or PipelineConfig()).validate()
    if r2_file is not None and t2_file is not None:
        raise QSMInputError("give --r2 or --t2, not both")
    inputs = [magnitude_files, phase_files, [mask_file, reference_mask_file, r2_file, t2_file], dicom_dir]
    with OutputDirectory(out_dir, SEPARATION_OUTPUTS, force=force, inputs=_flatten(inputs), bids_dir=bids_dir) as stage:
        if r2_file is not None or t2_file is not None:
            load_r2_map(r2_file, t2_file)  # the file and its unit, before the long part
        loaded = {}
        result = _run_into(stage, "", magnitude_files=magnitude_files, phase_files=phase_files, te_s=te_s, b0_t=b0_t,
                           bids_dir=bids_dir, subject=subject, session=session, total_field_file=None,
                           local_field_file=None, mask_file=mask_file, reference_mask_file=reference_mask_file,
                           config=config, b0_dir=b0_dir, phase_sign=phase_sign, phase_unwrapped=phase_unwrapped,
                           progress=progress, loaded=loaded, dicom_dir=dicom_dir, reference_labels=reference_labels)
        data = loaded["data"]
        r2_hz = r2_source = None
        if r2_file is not None or t2_file is not None:
            r2_hz, r2_source = load_r2_map(r2_file, t2_file, shape=data.shape, affine=data.affine, mask=result.mask)
        record = _write_separation(stage.path, "", data, result, r2_hz, r2_source, options, progress)
        provenance = dict(result.provenance)
        provenance["separation"] = record
        if r2_file is not None or t2_file is not None:
            provenance["inputs"] = dict(provenance.get("inputs", {}),
                                        **({"r2": str(r2_file)} if r2_file is not None else {"t2": str(t2_file)}))
        provenance["units"] = dict(provenance.get("units", {}), **SEPARATION_UNITS)
        result.provenance = provenance
        _write_json(stage.path("provenance.json"), provenance)
    return result, record


# --- DICOM --------------------------------------------------------------------------------------

def dicom_to_bids(dicom_dir, out_dir, *, subject="01", session=None, te_s=None, b0_t=None, force=False):
    """Convert a multi-echo GRE DICOM acquisition to a BIDS MEGRE dataset (phase in radians).

    Returns
    -------
    MultiEchoData
        What was read; the dataset is what ``qsm run --bids`` reads.
    """
    from .io.dicom import load_dicom

    subject = bids_label(subject, "--subject", "sub-")
    session = None if session is None else bids_label(session, "--session", "ses-")
    OutputDirectory(out_dir, megre_names(subject, 1, session), force=force, inputs=_flatten([dicom_dir]))
    data = load_dicom(dicom_dir, te_s=te_s, b0_t=b0_t)
    log.info("DICOM: %s", "; ".join(data.sources["dicom_series"]))
    log.info("phase: %s", data.phase_scaling["detected"])
    names = megre_names(subject, data.magnitude.shape[3], session)
    with OutputDirectory(out_dir, names, force=force, inputs=_flatten([dicom_dir])) as stage:
        write_megre(stage.path, subject, data.magnitude, data.phase, data.te_s, data.b0_t, data.affine,
                    session=session, dataset_name="QSMLib conversion of DICOM")
    return data


def export_dicom(chi_file, reference_dir, out_dir, *, series_description="QSM susceptibility (ppm)", force=False):
    """Write a susceptibility map (NIfTI, ppm) as a derived DICOM series of the reference series.

    Returns
    -------
    dict
        ``names``, ``series_instance_uid`` and ``rescale_slope`` (ppm per stored unit).
    """
    from .io.dicom import collect_series
    from .io.dicom_export import check_series_description, series_file_names, write_qsm_series

    check_series_description(series_description)
    inputs = _flatten([[chi_file], reference_dir])
    OutputDirectory(out_dir, [], force=force, inputs=inputs)
    chi, affine = load_field(chi_file)
    reference = collect_series(reference_dir, require_parts=False)
    shape = reference.shape
    if chi.shape != shape:
        raise QSMInputError(f"{chi_file}: shape {chi.shape} differs from the reference series grid {shape}; "
                            "export only maps computed from that series")
    with OutputDirectory(out_dir, series_file_names(shape[2]), force=force, inputs=inputs) as stage:
        written = write_qsm_series(stage.path, chi, affine, reference, series_description=series_description)
    log.info("DICOM series %s: %d slices, %g ppm per stored unit", written["series_instance_uid"],
             len(written["names"]), written["rescale_slope"])
    return written
