"""Cohort-scale processing: every subject of a BIDS dataset, on Dask distributed.

``qsm batch BIDS_DIR --out DERIV_DIR`` runs :func:`qsmlib.workflow.run_qsm` once
per subject (and session) with multi-echo GRE data, as Dask tasks on a local
cluster, on an existing scheduler, or on a job queue through dask-jobqueue.
It writes a BIDS derivatives dataset::

    DERIV_DIR/dataset_description.json
    DERIV_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_Chimap.nii.gz            (ppm)
                                 ..._desc-brain_mask.nii.gz
                                 ..._desc-total_fieldmap.nii.gz         (Hz)
                                 ..._desc-local_fieldmap.nii.gz         (Hz)
                                 ..._Chimap.json                        (provenance sidecar)
    DERIV_DIR/sub-X[/ses-Y]/figures/sub-X[_ses-Y]_desc-qc_montage.png

With ``separation`` each subject also gets ``..._desc-paramagnetic_Chimap``,
``..._desc-diamagnetic_Chimap``, ``..._desc-separationsum_Chimap`` (ppm) and
``..._desc-R2prime_R2starmap`` (1/s) from the R2*-only chi-separation, and
``regions.csv`` the mean of both parts per region.
    DERIV_DIR/index.html, batch_report.json, batch_summary.txt [, regions.csv]

Each subject is reconstructed into a private work folder; its files are then
renamed into place one by one, the provenance sidecar last, after the old
sidecar has been removed. The sidecar holds a content hash of the inputs and
the parameters, so a subject counts as done only when its sidecar exists,
says complete, carries the current hash, and every file it lists exists. A
run killed at any point therefore never leaves a map that a rerun takes as
done, and a rerun skips exactly the subjects that are finished and unchanged.
"""

import csv
import dataclasses
import hashlib
import html
import json
import logging
import os
import re
import shutil
import socket
import string
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, parallel
from .errors import QSMInputError
from .io.lock import FolderLock, describe_holder
from .memory import (BYTES_PER_VOXEL, BYTES_PER_VOXEL_ECHO, MEMORY_FRACTION, available_memory_bytes,  # noqa: F401
                     nifti_header, run_bytes)
from .io.output import (bids_label, check_name, check_outside_raw_bids, is_within, remove_dead_partials,
                        resolve_output_folder)

log = logging.getLogger("qsmlib")

#: run_qsm output name -> BIDS derivatives suffix.
MAP_SUFFIXES = (("chi.nii.gz", "Chimap.nii.gz"), ("mask.nii.gz", "desc-brain_mask.nii.gz"),
                ("total_field.nii.gz", "desc-total_fieldmap.nii.gz"),
                ("local_field.nii.gz", "desc-local_fieldmap.nii.gz"))
#: With ``separation`` (qsm batch --separation): the chi-separation maps of ``run_qsm --also separation``.
SEPARATION_SUFFIXES = (("chi_pos.nii.gz", "desc-paramagnetic_Chimap.nii.gz"),
                       ("chi_neg.nii.gz", "desc-diamagnetic_Chimap.nii.gz"),
                       ("chi_total.nii.gz", "desc-separationsum_Chimap.nii.gz"),
                       ("r2prime.nii.gz", "desc-R2prime_R2starmap.nii.gz"))
SIDECAR_SUFFIX = "Chimap.json"
QC_SUFFIX = "desc-qc_montage.png"
WORK_FOLDER = ".qsm-batch-work"
#: Exit status of ``qsm batch`` when at least one subject failed.
EXIT_SOME_FAILED = 1
#: Robust z-score (median / MAD) above which a subject is flagged as an outlier.
OUTLIER_Z = 3.0
#: Memory of an idle Dask worker process with QSMLib imported (bytes).
WORKER_OVERHEAD_BYTES = 300 * 2 ** 20
#: Temporary files of :func:`_atomic_write_text` (``.NAME.PID.tmp``).
_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")
JOBQUEUE_SCHEDULERS = ("slurm", "pbs", "sge", "lsf", "htcondor", "moab", "oar")


@dataclasses.dataclass
class SubjectJob:
    """One subject (and session) to process."""

    subject: str
    session: str = None

    @property
    def key(self):
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self):
        return f"sub-{self.subject}" + (f"/ses-{self.session}" if self.session else "")

    def anat(self, suffix):
        """Relative path of a derivative file ``<key>_<suffix>`` under anat/."""
        return f"{self.folder}/anat/{self.key}_{suffix}"

    def qc(self):
        return f"{self.folder}/figures/{self.key}_{QC_SUFFIX}"


def _has_megre(folder):
    anat = folder / "anat"
    return anat.is_dir() and any(anat.glob("*_MEGRE.nii*"))


def discover_subjects(bids_dir, participant_labels=None):
    """Subjects and sessions of a BIDS dataset that hold multi-echo GRE (``*_MEGRE``) files.

    Parameters
    ----------
    bids_dir : path
        BIDS dataset root.
    participant_labels : list of str, optional
        Keep only these subjects (with or without ``sub-``).

    Returns
    -------
    list of SubjectJob
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise QSMInputError(f"{bids_dir}: not a folder; give the root of a BIDS dataset")
    subjects = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
    if participant_labels:
        wanted = [bids_label(s, "--participant-label", "sub-") for s in participant_labels]
        missing = [s for s in wanted if s not in subjects]
        if missing:
            raise QSMInputError(f"--participant-label {' '.join(missing)}: no such subject in {bids_dir} "
                                f"(it holds {', '.join(subjects[:10]) or 'none'})")
        subjects = [s for s in subjects if s in wanted]
    jobs = []
    for subject in subjects:
        folder = root / f"sub-{subject}"
        sessions = sorted(p.name[4:] for p in folder.glob("ses-*") if p.is_dir() and _has_megre(p))
        if sessions:
            jobs += [SubjectJob(subject, session) for session in sessions]
        elif _has_megre(folder):
            jobs.append(SubjectJob(subject))
    if not jobs:
        raise QSMInputError(f"{bids_dir}: no sub-*/[ses-*/]anat/*_MEGRE.nii[.gz] files"
                            + (" for the chosen participants" if participant_labels else "")
                            + "; give a BIDS dataset with multi-echo GRE data")
    return jobs


# --- memory ----------------------------------------------------------------------------------

def estimate_task_bytes(bids_dir, job):
    """Peak memory (bytes) of one reconstruction, from the image header shape and echo count.

    The header is checked against its file (:func:`qsmlib.memory.nifti_header`); no data is read.
    """
    from .io import find_megre

    found = find_megre(bids_dir, subject=job.subject, session=job.session)
    shape, _nbytes = nifti_header(found["magnitude"][0])
    return run_bytes(int(np.prod(shape[:3], dtype=object)), len(found["te_s"]))


def describe_failure(exc):
    """One line for a subject's failure: the message of an input error, else the exception's type and text."""
    if isinstance(exc, QSMInputError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MemoryError):
        return f"out of memory{f' ({text})' if text else ''}: the subject needs more memory than its worker had"
    return f"{type(exc).__name__}: {text or 'no message'}"


def choose_workers(task_bytes, *, requested=None, n_tasks=None, available_bytes=None, cpus=None,
                   threads_per_worker=1):
    """Local worker count such that the workers' peak memory fits in the available memory.

    Returns ``(n_workers, memory_limit_bytes_per_worker, note)``; ``note`` explains a reduction.
    """
    available = available_memory_bytes() if available_bytes is None else available_bytes
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    budget = available * MEMORY_FRACTION
    per_worker = task_bytes + WORKER_OVERHEAD_BYTES
    fits = max(1, int(budget // per_worker))
    wanted = requested if requested else max(1, cpus // max(1, threads_per_worker))
    n = min(wanted, fits)
    if n_tasks:
        n = min(n, n_tasks)
    note = None
    if n < min(wanted, n_tasks or wanted) and n == fits:
        note = (f"{n} worker(s) instead of {wanted}: each task needs about {task_bytes / 2 ** 30:.2f} GiB "
                f"and {available / 2 ** 30:.1f} GiB is available")
    if per_worker > budget:
        note = (f"one task needs about {task_bytes / 2 ** 30:.2f} GiB but only {available / 2 ** 30:.1f} GiB "
                "is available; the machine may swap")
    memory_limit = max(int(budget // n), per_worker)
    return n, memory_limit, note


# --- hashing and completeness -----------------------------------------------------------------

def _sha256_file(path, block=2 ** 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_files(bids_dir, job):
    """Every input file of one subject: echo NIfTIs and their JSON sidecars, sorted."""
    from .io import find_megre

    found = find_megre(bids_dir, subject=job.subject, session=job.session)
    files = []
    for path in found["magnitude"] + found["phase"]:
        files.append(path)
        sidecar = re.sub(r"\.nii(\.gz)?$", "", path) + ".json"
        if os.path.exists(sidecar):
            files.append(sidecar)
    return sorted(files)


def content_hash(files, parameters, root):
    """SHA-256 over the bytes of ``files`` (named relative to ``root``) and the JSON of ``parameters``."""
    digest = hashlib.sha256()
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(os.path.relpath(path, root).encode() + b"\0" + _sha256_file(path).encode())
    return digest.hexdigest()


def map_suffixes(separation=False):
    """(run_qsm output name, derivatives suffix) of every map a subject has."""
    return MAP_SUFFIXES + (SEPARATION_SUFFIXES if separation else ())


def _separation(run_kwargs):
    return "separation" in (run_kwargs.get("also") or ())


def subject_outputs(job, separation=False):
    """Relative paths of every file a finished subject has, the sidecar last."""
    return ([job.anat(suffix) for _name, suffix in map_suffixes(separation)]
            + [job.qc(), job.anat(SIDECAR_SUFFIX)])


def completed_hash(out_dir, job, separation=False):
    """The content hash of a finished subject's outputs, or None when they are missing or incomplete."""
    sidecar = Path(out_dir) / job.anat(SIDECAR_SUFFIX)
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    batch = data.get("batch", {}) if isinstance(data, dict) else {}
    if not batch.get("complete") or not all((Path(out_dir) / f).is_file()
                                            for f in subject_outputs(job, separation)):
        return None
    return batch.get("content_hash")


# --- one subject (runs on a Dask worker) --------------------------------------------------------

def process_subject(bids_dir, out_dir, job, run_kwargs, parameters, *, labels_file=None, force=False, atlas=None,
                    threads=None):
    """Reconstruct one subject into ``out_dir`` unless it is finished with the same content hash.

    Never raises for a subject's own problem: returns a dict with ``status``
    ("done", "skipped" or "failed"), ``error`` and ``traceback`` when it failed,
    ``time_s``, the QC ``metrics`` and, with ``labels_file``, per-region ``regions``.
    With ``atlas`` (from :func:`prepare_atlas`) the template is registered to
    the subject's map and its labels give the regions (:func:`segment_subject`);
    a failed registration fails this subject, its map stays. ``threads`` (``qsm batch
    --threads-per-worker``) is set with :func:`qsmlib.parallel.threads` for the subject's
    FFTs and BLAS/OpenMP pools; None leaves this process's setting.
    """
    start = time.perf_counter()
    record = {"subject": job.subject, "session": job.session, "key": job.key, "status": None,
              "host": socket.gethostname(), "pid": os.getpid()}
    try:
        with parallel.threads(threads):
            _process_subject(bids_dir, out_dir, job, run_kwargs, parameters, record, labels_file=labels_file,
                             force=force, atlas=atlas)
    except Exception as exc:  # one subject's failure must not stop the cohort
        record["status"] = "failed"
        record["error"] = describe_failure(exc)
        record["traceback"] = traceback.format_exc()
    record["time_s"] = round(time.perf_counter() - start, 3)
    return record


def _process_subject(bids_dir, out_dir, job, run_kwargs, parameters, record, *, labels_file, force, atlas):
    """:func:`process_subject`'s work; fills ``record``."""
    files = input_files(bids_dir, job)
    digest = content_hash(files, parameters, bids_dir)
    separation = _separation(run_kwargs)
    if not force and completed_hash(out_dir, job, separation) == digest:
        record["status"] = "skipped"
    else:
        _reconstruct_subject(bids_dir, out_dir, job, run_kwargs, parameters, files, digest)
        record["status"] = "done"
    record["content_hash"] = digest
    record["outputs"] = subject_outputs(job, separation)
    if atlas is not None:
        record["outputs"] += atlas_outputs(job)[:-1]
        labels_file = segment_subject(bids_dir, out_dir, job, atlas, digest, force=force)
        record["outputs"].append(atlas_outputs(job)[-1])
    record["metrics"], record["regions"] = subject_statistics(out_dir, job, labels_file, separation)


def _reconstruct_subject(bids_dir, out_dir, job, run_kwargs, parameters, files, digest):
    from .workflow import run_qsm

    work = Path(out_dir) / WORK_FOLDER / job.key
    shutil.rmtree(work, ignore_errors=True)  # left over by a killed run
    try:
        result = run_qsm(work / "maps", bids_dir=str(bids_dir), subject=job.subject, session=job.session,
                         **run_kwargs)
        qc_path = work / "qc.png"
        _write_qc_montage(qc_path, bids_dir, job, result)
        provenance = json.loads((work / "maps" / "provenance.json").read_text())
        provenance["batch"] = {"complete": True, "content_hash": digest, "parameters": parameters,
                               "inputs": [os.path.relpath(f, bids_dir) for f in files],
                               "outputs": subject_outputs(job, _separation(run_kwargs)),
                               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        sidecar = work / "sidecar.json"
        sidecar.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        moves = [(work / "maps" / name, job.anat(suffix)) for name, suffix in map_suffixes(_separation(run_kwargs))]
        moves += [(qc_path, job.qc()), (sidecar, job.anat(SIDECAR_SUFFIX))]
        _commit(out_dir, job, moves)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _commit(out_dir, job, moves):
    """Rename files into place; the old sidecar goes first and the new one last."""
    root = os.path.realpath(out_dir)
    targets = []
    for src, relative in moves:
        target = os.path.join(root, check_name(relative))
        if not is_within(os.path.realpath(os.path.dirname(target)), root) or os.path.islink(target):
            raise QSMInputError(f"{out_dir}: {relative} would be written outside it (a symbolic link?); "
                                "remove the link")
        targets.append((src, Path(target)))
    old_sidecar = Path(out_dir) / job.anat(SIDECAR_SUFFIX)
    if old_sidecar.exists():
        old_sidecar.unlink()
    for src, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)


# --- atlas labels (qsm batch --atlas) ----------------------------------------------------------------

#: Segmentation output name -> BIDS derivatives suffix; the last (the registration report) is the
#: sidecar that marks the segmentation complete.
ATLAS_SUFFIXES = (("labels.nii.gz", "desc-atlas_dseg.nii.gz"), ("labels.tsv", "desc-atlas_dseg.tsv"),
                  ("atlas_transform.h5", "desc-atlas_xfm.h5"), ("atlas_registration.json", "desc-atlas_dseg.json"))
ATLAS_QC_SUFFIX = "desc-atlas_montage.png"


def atlas_outputs(job):
    """Relative paths of a subject's atlas segmentation, its sidecar last."""
    files = [job.anat(suffix) for _name, suffix in ATLAS_SUFFIXES]
    return files[:-1] + [f"{job.folder}/figures/{job.key}_{ATLAS_QC_SUFFIX}", files[-1]]


def prepare_atlas(atlas_dir, options=None, labels_pattern=None):
    """Check a template folder once, before any subject runs: what :func:`process_subject` needs of it.

    Returns None without ``atlas_dir``; otherwise a dict with the folder,
    the template's content digest, the registration options and the label names.
    """
    if atlas_dir is None:
        return None
    if labels_pattern:
        raise QSMInputError("give either --atlas or --labels-pattern: both would name the regions")
    from .atlas import RegistrationOptions, load_template

    template = load_template(atlas_dir)
    options = (options or RegistrationOptions()).validate()
    return {"dir": template.folder, "digest": template.digest(), "options": dataclasses.asdict(options),
            "names": [info.name for _value, info in sorted(template.table.items())]}


def _atlas_hash(atlas, map_digest):
    text = json.dumps({"map": map_digest, "template": atlas["digest"], "options": atlas["options"]}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _atlas_done(out_dir, job, digest):
    try:
        data = json.loads((Path(out_dir) / atlas_outputs(job)[-1]).read_text())
    except (OSError, ValueError):
        return False
    batch = data.get("batch", {}) if isinstance(data, dict) else {}
    return bool(batch.get("complete")) and batch.get("content_hash") == digest and all(
        (Path(out_dir) / f).is_file() for f in atlas_outputs(job))


def segment_subject(bids_dir, out_dir, job, atlas, map_digest, *, force=False):
    """Register the template to a finished subject's map; write its labels; return the label file.

    Skipped when the subject's segmentation is complete for the same map,
    template and options. Files are written into a work folder and renamed
    into place, the sidecar last, so a killed run never leaves a segmentation
    that a rerun takes as done.

    Raises
    ------
    qsmlib.atlas.RegistrationFailed
        When the registration is implausible (nothing is written then).
    """
    from .atlas import RegistrationOptions, load_template
    from .atlas.segment import segment_arrays, write_segmentation
    from .io import load_nifti

    digest = _atlas_hash(atlas, map_digest)
    targets = atlas_outputs(job)
    if force or not _atlas_done(out_dir, job, digest):
        template = load_template(atlas["dir"])
        chi, affine = load_nifti(Path(out_dir) / job.anat("Chimap.nii.gz"))
        mask = load_nifti(Path(out_dir) / job.anat("desc-brain_mask.nii.gz"))[0] > 0
        magnitude = _first_echo_magnitude(bids_dir, job)
        work = Path(out_dir) / WORK_FOLDER / f"{job.key}-atlas"
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir(parents=True)
            result = segment_arrays(template, chi_ppm=chi, magnitude=magnitude, affine=affine, mask=mask,
                                    options=RegistrationOptions(**atlas["options"]))
            write_segmentation(lambda name: str(work / name), result, template, affine, chi_ppm=chi,
                               magnitude=magnitude)
            report = json.loads((work / "atlas_registration.json").read_text())
            report["batch"] = {"complete": True, "content_hash": digest, "map_content_hash": map_digest,
                               "outputs": targets,
                               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            (work / "atlas_registration.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
            sources = [name for name, _suffix in ATLAS_SUFFIXES]
            moves = list(zip(sources[:-1] + ["atlas_qc.png", sources[-1]], targets))
            old_sidecar = Path(out_dir) / targets[-1]
            if old_sidecar.exists():
                old_sidecar.unlink()
            for name, relative in moves:
                target = Path(out_dir) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work / name, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return str(Path(out_dir) / targets[0])


# --- QC ----------------------------------------------------------------------------------------

def _first_echo_magnitude(bids_dir, job):
    from .io import find_megre, load_nifti

    found = find_megre(bids_dir, subject=job.subject, session=job.session)
    magnitude, _affine = load_nifti(found["magnitude"][0])
    return magnitude[..., 0] if magnitude.ndim == 4 else magnitude


def qc_montage(chi_ppm, mask, magnitude, voxel_size):
    """QC picture: susceptibility (fixed window) and the mask outline on magnitude; axial, coronal, sagittal.

    Returns an RGB uint8 array. The susceptibility window is
    :data:`qsmlib.report.CHI_WINDOW_PPM`; the outline is drawn in yellow.
    """
    from scipy import ndimage

    from .report import CHI_WINDOW_PPM, OUTSIDE_RGB, diverging_rgb, grey_rgb, montage, orthogonal_slices

    mask = np.asarray(mask, bool)
    coords = np.argwhere(mask)
    centre = coords.mean(axis=0) if coords.size else np.array(mask.shape) / 2
    outline = mask & ~ndimage.binary_erosion(mask)
    chi_row = []
    for tile, inside in zip(orthogonal_slices(chi_ppm, centre, voxel_size),
                            orthogonal_slices(mask, centre, voxel_size)):
        picture = diverging_rgb(tile, CHI_WINDOW_PPM)
        picture[~inside] = OUTSIDE_RGB
        chi_row.append(picture)
    values = magnitude[mask] if mask.any() else magnitude.ravel()
    low, high = np.percentile(values, [1, 99.5])
    mag_row = []
    for tile, edge in zip(orthogonal_slices(magnitude, centre, voxel_size),
                          orthogonal_slices(outline, centre, voxel_size)):
        picture = grey_rgb(tile, low, high)
        picture[edge] = (255, 220, 0)
        mag_row.append(picture)
    return montage([chi_row, mag_row])


def _write_qc_montage(path, bids_dir, job, result):
    from .report import write_png

    voxel_size = result.provenance["detected"]["voxel_size_mm"]
    magnitude = _first_echo_magnitude(bids_dir, job)
    picture = qc_montage(result.chi_ppm, result.mask, magnitude, voxel_size)
    # Upscale small grids so that thumbnails stay legible.
    factor = max(1, int(np.ceil(160 / picture.shape[0])))
    if factor > 1:
        picture = picture.repeat(factor, axis=0).repeat(factor, axis=1)
    write_png(path, picture)


def read_label_names(labels_file):
    """Region names of a label image from a BIDS ``dseg.tsv`` beside it (``index``, ``name``).

    Without the TSV, regions are named ``label-<N>`` for every non-zero value.
    """
    tsv = re.sub(r"\.nii(\.gz)?$", "", os.fspath(labels_file)) + ".tsv"
    names = {}
    if os.path.exists(tsv):
        with open(tsv, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row.get("index") not in (None, "") and row.get("name"):
                    names[int(float(row["index"]))] = row["name"]
    return names


def subject_statistics(out_dir, job, labels_file=None, separation=False):
    """QC metrics of a finished subject, and its per-region statistics with a label image.

    With ``separation`` each region also gets ``chi_pos_mean_ppm`` and
    ``chi_neg_mean_ppm``, the means of the chi-separation maps.

    Returns
    -------
    metrics : dict
        ``mask_volume_ml``, ``chi_mean_ppm`` and ``chi_sd_ppm`` over the mask.
    regions : list of dict
        One per label with voxels in the mask: ``region``, ``label``, ``mean_ppm``,
        ``median_ppm``, ``sd_ppm``, ``voxels``.
    """
    from .dipole import voxel_size_from_affine
    from .io import load_nifti

    chi, affine = load_nifti(Path(out_dir) / job.anat("Chimap.nii.gz"))
    mask, _ = load_nifti(Path(out_dir) / job.anat("desc-brain_mask.nii.gz"))
    mask = mask > 0
    values = chi[mask].astype(np.float64)
    voxel_ml = float(np.prod(voxel_size_from_affine(affine))) / 1000.0
    metrics = {"mask_volume_ml": round(float(mask.sum()) * voxel_ml, 3),
               "chi_mean_ppm": float(values.mean()) if values.size else float("nan"),
               "chi_sd_ppm": float(values.std()) if values.size else float("nan")}
    regions = []
    if labels_file is not None:
        labels, label_affine = load_nifti(labels_file)
        if labels.shape[:3] != chi.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise QSMInputError(f"{labels_file}: label image grid {labels.shape[:3]} does not match the "
                                f"susceptibility map {chi.shape} (shape and affine); give labels on the "
                                "grid of the input data")
        labels = np.rint(labels.reshape(chi.shape)).astype(np.int64)
        regions = label_statistics(chi, labels, mask, read_label_names(labels_file))
        if separation:
            for key, suffix in (("chi_pos_mean_ppm", "desc-paramagnetic_Chimap.nii.gz"),
                                ("chi_neg_mean_ppm", "desc-diamagnetic_Chimap.nii.gz")):
                part, _ = load_nifti(Path(out_dir) / job.anat(suffix))
                for region in regions:
                    region[key] = float(part[mask & (labels == region["label"])].astype(np.float64).mean())
    return metrics, regions


def label_statistics(chi, labels, mask, names):
    """Susceptibility statistics per label inside ``mask``, one dict per label with voxels there.

    Each: ``region`` (the name from ``names``, else ``label-<N>``), ``label``,
    ``mean_ppm``, ``median_ppm``, ``sd_ppm`` (sample SD) and ``voxels``.
    """
    regions = []
    for value in sorted(set(np.unique(labels[mask]).tolist()) - {0}):
        region_values = chi[mask & (labels == value)].astype(np.float64)
        regions.append({"region": names.get(value, f"label-{value}"), "label": int(value),
                        "mean_ppm": float(region_values.mean()),
                        "median_ppm": float(np.median(region_values)),
                        "sd_ppm": float(region_values.std(ddof=1)) if region_values.size > 1 else 0.0,
                        "voxels": int(region_values.size)})
    return regions


def robust_z(values, *, min_scale=0.0):
    """Robust z-scores ``(x - median) / (1.4826 MAD)``, the scale floored at ``min_scale``.

    When the MAD is 0 (more than half the values equal) the mean absolute
    deviation is used instead, ``1.2533 MeanAD``; with a zero scale every score is
    0. Iglewicz & Hoaglin, How to Detect and Handle Outliers (ASQC, 1993).
    """
    x = np.asarray(values, np.float64)
    median = np.median(x)
    mad = np.median(np.abs(x - median))
    scale = 1.4826 * mad if mad > 0 else 1.2533 * np.mean(np.abs(x - median))
    scale = max(scale, min_scale)
    if scale == 0:
        return np.zeros_like(x)
    return (x - median) / scale


#: QC metrics checked for outliers: (key, label, relative scale floor, absolute scale floor).
#: The floors keep tiny cohort spreads (identical protocols, a whole-brain reference that
#: makes every mean 0) from turning negligible differences into large scores.
OUTLIER_METRICS = (("mask_volume_ml", "mask volume", 0.02, 0.0),
                   ("chi_mean_ppm", "mean susceptibility", 0.0, 0.01),
                   ("chi_sd_ppm", "susceptibility SD", 0.05, 0.0))


def flag_outliers(records, *, threshold=OUTLIER_Z, min_subjects=3):
    """Mark subjects whose mask volume, mean or SD of susceptibility is far from the cohort median.

    Adds ``outlier`` (list of reasons, empty if none) to every record with
    metrics: a robust z-score (:func:`robust_z`, scale floors in
    :data:`OUTLIER_METRICS`) over ``threshold``. With fewer than
    ``min_subjects`` such records nothing is flagged.
    """
    rows = [r for r in records if r.get("metrics")]
    for r in rows:
        r["outlier"] = []
    if len(rows) < min_subjects:
        return records
    for key, label, relative, absolute in OUTLIER_METRICS:
        values = [r["metrics"][key] for r in rows]
        floor = max(relative * abs(float(np.median(values))), absolute)
        for r, score in zip(rows, robust_z(values, min_scale=floor)):
            if abs(score) > threshold:
                r["outlier"].append(f"{label} robust z {score:+.1f}")
    return records


def spreadsheet_safe(text):
    """A text cell that a spreadsheet shows as text: a leading = + - @ tab or return gets a ' before it.

    Region names come from the user's label tables; "=HYPERLINK(...)" there must not become a formula
    (OWASP, CSV injection). Numbers are written as numbers and are not passed through here.
    """
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_regions_csv(path, records):
    """One CSV row per subject and region: subject, session, region, label, mean, median, SD, voxels.

    Text cells go through :func:`spreadsheet_safe`.
    """
    columns = ["subject", "session", "region", "label", "mean_ppm", "median_ppm", "sd_ppm", "voxels"]
    if any("chi_pos_mean_ppm" in region for r in records for region in r.get("regions") or ()):
        columns += ["chi_pos_mean_ppm", "chi_neg_mean_ppm"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            for region in r.get("regions") or ():
                writer.writerow([spreadsheet_safe(r["subject"]), spreadsheet_safe(r["session"] or ""),
                                 spreadsheet_safe(region["region"])] + [region.get(c, "") for c in columns[3:]])


def _ppm(value):
    """Four decimals, without a minus sign on a value that rounds to zero."""
    return f"{round(float(value), 4) + 0.0:.4f}"


def qc_index_html(records, *, title="QSMLib batch QC", dgm_names=None):
    """The cohort QC page: one table row per subject with thumbnail, metrics, DGM means and flags."""
    from .report import CHI_WINDOW_PPM

    from .workflow import DGM_STRUCTURES

    esc = html.escape
    dgm_names = list(DGM_STRUCTURES if dgm_names is None else dgm_names)
    present = []
    for r in records:
        for region in r.get("regions") or ():
            if region["region"] in dgm_names and region["region"] not in present:
                present.append(region["region"])
    present.sort(key=dgm_names.index)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right;vertical-align:middle}"
             "th{background:#eee}td.name{text-align:left}tr.failed{background:#fdd}"
             "tr.outlier{background:#ffe9b0}img{height:160px}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>{len(records)} subject(s): {counts['done']} processed, {counts['skipped']} unchanged "
             f"(skipped), {counts['failed']} failed. Pictures: susceptibility (top, -{CHI_WINDOW_PPM} blue to "
             f"+{CHI_WINDOW_PPM} ppm red, grey outside the mask) and the mask outline on the first-echo "
             "magnitude (bottom); columns axial, coronal, sagittal. Outliers: robust z-score over "
             f"{OUTLIER_Z:g} of the mask volume, mean or SD of susceptibility against the cohort.</p>",
             "<table id='subjects'><tr><th>subject</th><th>status</th><th>QC</th><th>mask (mL)</th>"
             "<th>mean (ppm)</th><th>SD (ppm)</th>"
             + "".join(f"<th>{esc(name)} (ppm)</th>" for name in present) + "<th>flag</th></tr>"]
    for r in records:
        css = "failed" if r["status"] == "failed" else ("outlier" if r.get("outlier") else "ok")
        cells = [f"<td class='name'>{esc(r['key'])}</td>", f"<td>{esc(r['status'])}</td>"]
        if r["status"] == "failed":
            cells.append(f"<td class='name' colspan='{4 + len(present)}'>{esc(r.get('error', ''))}</td>")
            cells.append("<td>failed</td>")
        else:
            job = SubjectJob(r["subject"], r["session"])
            cells.append(f"<td><a href='{esc(job.qc())}'><img src='{esc(job.qc())}' alt='{esc(r['key'])} QC'>"
                         "</a></td>")
            m = r.get("metrics") or {}
            cells += [f"<td>{m.get('mask_volume_ml', float('nan')):.1f}</td>",
                      f"<td>{_ppm(m.get('chi_mean_ppm', float('nan')))}</td>",
                      f"<td>{_ppm(m.get('chi_sd_ppm', float('nan')))}</td>"]
            means = {g["region"]: g["mean_ppm"] for g in r.get("regions") or ()}
            cells += [f"<td>{_ppm(means[n])}</td>" if n in means else "<td></td>" for n in present]
            cells.append(f"<td>{esc('; '.join(r.get('outlier') or [])) or 'ok'}</td>")
        parts.append(f"<tr class='{css}' data-subject='{esc(r['key'])}'>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


# --- the batch (client side) -----------------------------------------------------------------

def _atomic_write_text(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _dataset_description():
    return {"Name": "QSMLib susceptibility maps", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "QSMLib", "Version": __version__,
                             "Description": "quantitative susceptibility mapping, qsm batch",
                             }],
            "Units": {"Chimap": "ppm", "fieldmap": "Hz"}}


def pipeline_parameters(run_kwargs):
    """The parameters that enter the content hash: every run option and the QSMLib version."""
    params = {}
    for key, value in sorted(run_kwargs.items()):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        params[key] = value
    params["qsmlib_version"] = __version__
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _labels_for(bids_dir, job, pattern):
    if not pattern:
        return None
    relative = pattern.format(subject=job.subject, session=job.session or "", key=job.key)
    path = Path(bids_dir) / relative
    return str(path) if path.exists() else None


#: Placeholders of --labels-pattern.
LABELS_PATTERN_FIELDS = ("subject", "session", "key")
#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT_S = 10


def check_labels_pattern(pattern):
    """Refuse a ``--labels-pattern`` with a placeholder other than {subject}, {session} and {key}.

    Returns
    -------
    str or None
        ``pattern``.
    """
    if pattern is None:
        return None
    fix = "use {subject}, {session} or {key}, e.g. derivatives/labels/sub-{subject}/anat/sub-{subject}_dseg.nii.gz"
    try:
        fields = [field for _text, field, _spec, _conversion in string.Formatter().parse(pattern)
                  if field is not None]
        unknown = [field for field in fields if field not in LABELS_PATTERN_FIELDS]
        if unknown:
            raise QSMInputError(f"--labels-pattern {pattern!r}: unknown placeholder {{{unknown[0]}}}; {fix}")
        pattern.format(subject="01", session="01", key="sub-01_ses-01")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise QSMInputError(f"--labels-pattern {pattern!r}: not a valid pattern ({exc}); {fix}") from None
    return pattern


def scheduler_address(scheduler):
    """The address of an existing scheduler (given, or read from a scheduler file), checked to answer.

    Returns
    -------
    str or None
        None for "local" and the job queues.

    Raises
    ------
    QSMInputError
        When the scheduler file is missing or not one, the address is malformed,
        or nothing answers there within :data:`CONNECT_TIMEOUT_S`.
    """
    if scheduler == "local" or scheduler in JOBQUEUE_SCHEDULERS:
        return None
    address = scheduler
    if scheduler.endswith(".json"):
        try:
            with open(scheduler, encoding="utf-8") as f:
                address = json.load(f).get("address")
        except (OSError, ValueError, AttributeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a Dask scheduler file"
            raise QSMInputError(f"--scheduler {scheduler}: {reason}; start the scheduler first with dask scheduler "
                                f"--scheduler-file {scheduler}, or give tcp://HOST:PORT") from None
        if not isinstance(address, str):
            raise QSMInputError(f"--scheduler {scheduler}: holds no scheduler address; give the file that "
                                "dask scheduler --scheduler-file wrote")
    scheme, separator, rest = address.partition("://")
    if not separator:
        scheme, rest = "tcp", address
    host, _colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme not in ("tcp", "tls") or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise QSMInputError(f"--scheduler {scheduler}: not a scheduler address; give local, tcp://HOST:PORT, "
                            f"a scheduler file (.json) or one of {', '.join(JOBQUEUE_SCHEDULERS)}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise QSMInputError(f"--scheduler {scheduler}: no Dask scheduler answers at {address} "
                            f"({exc.strerror or exc}); start it first (dask scheduler) or check "
                            "the address") from None
    return address


def _check_scheduler(scheduler):
    """Refuse early when Dask distributed (or dask-jobqueue) is missing or the scheduler does not answer."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise QSMInputError("qsm batch runs on Dask distributed, which is not installed; install it with "
                            "pip install 'qsmlib[batch]' (or pip install distributed)") from None
    if scheduler == "local":
        try:
            import cryptography  # noqa: F401  (Dask's temporary TLS certificate)
        except ImportError:
            raise QSMInputError("qsm batch secures its local Dask cluster with TLS, which needs the cryptography "
                                "package; install it with pip install 'qsmlib[batch]' (or pip install "
                                "cryptography)") from None
    if scheduler in JOBQUEUE_SCHEDULERS:
        try:
            import dask_jobqueue  # noqa: F401
        except ImportError:
            raise QSMInputError(f"--scheduler {scheduler} needs dask-jobqueue; install it with "
                                "pip install dask-jobqueue, or start a scheduler and workers yourself and give "
                                "--scheduler tcp://HOST:8786") from None
    return scheduler_address(scheduler)


class _Cluster:
    """A Dask client on a local cluster, an existing scheduler, or a dask-jobqueue cluster."""

    def __init__(self, scheduler, *, workers, threads_per_worker, memory_limit, task_bytes):
        from distributed import Client

        self.cluster = None
        self.description = scheduler
        #: Worker resources that let one reconstruction at a time run on a worker we start
        #: (its threads go to the FFTs); None on an existing scheduler, whose workers we do not know.
        self.task_resources = None
        if scheduler == "local":
            from distributed import LocalCluster
            from distributed.security import Security

            # TLS with a certificate made for this batch alone: another process on this machine can
            # neither connect to the scheduler nor submit tasks to the workers (they run as this user).
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                        processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                        memory_limit=memory_limit, resources={"qsm": 1},
                                        security=Security.temporary(),
                                        env={"QSMLIB_FFT_WORKERS": str(threads_per_worker),
                                             "OMP_NUM_THREADS": str(threads_per_worker)})
            self.client = Client(self.cluster)
            self.task_resources = {"qsm": 1}
            self.description = (f"local: {workers} worker process(es) x {threads_per_worker} thread(s), "
                                "TLS with a temporary certificate")
        elif scheduler in JOBQUEUE_SCHEDULERS:
            _check_scheduler(scheduler)
            import dask_jobqueue
            cls = getattr(dask_jobqueue, {"htcondor": "HTCondorCluster"}.get(scheduler, f"{scheduler.upper()}Cluster"))
            memory_gib = max(1, int(np.ceil((task_bytes + WORKER_OVERHEAD_BYTES) / 2 ** 30)))
            self.cluster = cls(cores=threads_per_worker, processes=1, memory=f"{memory_gib}GiB",
                               job_script_prologue=[f"export QSMLIB_FFT_WORKERS={threads_per_worker}"],
                               worker_extra_args=["--resources", "qsm=1"])
            self.cluster.scale(jobs=workers)
            self.client = Client(self.cluster)
            self.task_resources = {"qsm": 1}
            self.description = f"{scheduler} via dask-jobqueue: {workers} job(s), {memory_gib} GiB each"
        else:
            try:
                self.client = Client(scheduler_address(scheduler), timeout=CONNECT_TIMEOUT_S)
            except (OSError, ValueError, TypeError) as exc:
                raise QSMInputError(f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc}); check "
                                    "that it is a Dask scheduler of a compatible version (and its TLS settings "
                                    "for tls://)") from None

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def run_batch(bids_dir, out_dir, *, participant_labels=None, scheduler="local", workers=None,
              threads_per_worker=None, labels_pattern=None, force=False, mask_file=None, config=None,
              b0_dir=None, phase_sign=1, phase_unwrapped=False, reference_mask_file=None, progress=None,
              atlas_dir=None, atlas_options=None, separation=False, separation_options=None):
    """Reconstruct every subject of a BIDS dataset on Dask; write a derivatives dataset and QC.

    Parameters
    ----------
    bids_dir, out_dir : path
        BIDS dataset root, and the derivatives folder to write (may already hold earlier results).
    participant_labels : list of str, optional
        Only these subjects.
    scheduler : str
        "local" (a LocalCluster on this machine), a scheduler address (``tcp://host:8786``) or
        scheduler file (``.json``), or a job queue name ("slurm", "pbs", ... through dask-jobqueue).
    workers, threads_per_worker : int
        Worker processes (local: at most what the memory allows; job queues: jobs) and threads each.
        Every subject is reconstructed inside :func:`qsmlib.parallel.threads` of
        ``threads_per_worker`` (its FFTs and BLAS/OpenMP pools; recorded in its sidecar).
        Default 1 on the workers this function starts; on an existing scheduler,
        the workers' own setting (``QSMLIB_FFT_WORKERS``, else their CPUs).
    labels_pattern : str, optional
        Label image per subject relative to ``bids_dir``, with ``{subject}``, ``{session}``
        placeholders, e.g. ``derivatives/truth/sub-{subject}/anat/sub-{subject}_dseg.nii.gz``;
        region names come from the ``.tsv`` beside it. Writes ``regions.csv``.
    force : bool
        Recompute finished subjects too.
    atlas_dir : path, optional
        A template folder (:mod:`qsmlib.atlas`) registered to every subject's map:
        its labels (``desc-atlas_dseg``), QC picture and transform are written per
        subject, and ``regions.csv`` from them. A failed registration fails that
        subject alone. Not with ``labels_pattern``.
    atlas_options : qsmlib.atlas.RegistrationOptions, optional
    separation : bool, optional
        Also the R2*-only chi-separation per subject (:data:`SEPARATION_SUFFIXES`),
        and both parts' means per region in ``regions.csv``; ``separation_options``
        are its options (as ``--option separation.KEY=VALUE``).
    mask_file, config, b0_dir, phase_sign, phase_unwrapped, reference_mask_file
        As for :func:`qsmlib.workflow.run_qsm`, the same for every subject.
    progress : callable, optional
        ``progress(record, n_finished, n_total)`` after each subject.

    Returns
    -------
    dict
        The batch report (also written to ``out_dir/batch_report.json``).

    Notes
    -----
    The batch holds ``out_dir``'s lock (:class:`~qsmlib.io.lock.FolderLock`) from start
    to end: a second batch, or a ``qsm run``, into the same folder is refused,
    naming this one. On taking the lock, the work and staging folders of killed
    runs are removed.
    """
    out_real = resolve_output_folder(out_dir)
    check_outside_raw_bids(out_real, bids_dir, allow_parent=False)
    check_labels_pattern(labels_pattern)
    _check_scheduler(scheduler)
    created = not os.path.isdir(out_real)
    try:
        os.makedirs(out_real, exist_ok=True)
        lock = FolderLock(out_real).acquire()
    except OSError as exc:
        raise QSMInputError(f"--out {out_dir}: cannot write there ({exc.strerror or exc}); choose a folder "
                            "you can write to") from None
    except QSMInputError:
        if created:
            os.rmdir(out_real)
        raise
    try:
        if lock.stale:
            log.warning("%s: took over the lock of a batch that no longer runs (%s)", out_dir,
                        describe_holder(lock.stale))
        remove_dead_work(out_real)
        return _run_batch_locked(bids_dir, out_real, participant_labels=participant_labels, scheduler=scheduler,
                                 workers=workers, threads_per_worker=threads_per_worker,
                                 labels_pattern=labels_pattern, force=force, mask_file=mask_file, config=config,
                                 b0_dir=b0_dir, phase_sign=phase_sign, phase_unwrapped=phase_unwrapped,
                                 reference_mask_file=reference_mask_file, progress=progress,
                                 atlas_dir=atlas_dir, atlas_options=atlas_options, separation=separation,
                                 separation_options=separation_options)
    except BaseException:
        lock.release()
        if created:  # refused before writing anything: leave no empty folder behind
            try:
                os.rmdir(out_real)
            except OSError:
                pass
        raise
    finally:
        lock.release()


def remove_dead_work(out_dir):
    """Remove what killed batches left in ``out_dir``: work folders, staging folders, temporary files.

    Call only while holding ``out_dir``'s lock, when no other batch can be using them.
    """
    shutil.rmtree(Path(out_dir) / WORK_FOLDER, ignore_errors=True)
    remove_dead_partials(out_dir)
    for entry in os.scandir(out_dir):
        if _TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
            os.remove(entry.path)


def _run_batch_locked(bids_dir, out_dir, *, participant_labels=None, scheduler="local", workers=None,
                      threads_per_worker=None, labels_pattern=None, force=False, mask_file=None, config=None,
                      b0_dir=None, phase_sign=1, phase_unwrapped=False, reference_mask_file=None, progress=None,
                      atlas_dir=None, atlas_options=None, separation=False, separation_options=None):
    """:func:`run_batch` once it holds the output folder's lock."""
    from distributed import as_completed

    from .pipeline import PipelineConfig

    started = datetime.now(timezone.utc)
    bids_dir = os.path.abspath(os.fspath(bids_dir))
    if workers is not None and workers < 1:
        raise QSMInputError("--workers must be 1 or more")
    if threads_per_worker is not None:
        threads_per_worker = parallel.check_thread_count(threads_per_worker, "--threads-per-worker",
                                                         "--threads-per-worker 2", "1 on workers qsm batch starts")
    elif scheduler == "local" or scheduler in JOBQUEUE_SCHEDULERS:  # workers we start: one thread each
        threads_per_worker = 1
    config = (config or PipelineConfig()).validate()
    atlas = prepare_atlas(atlas_dir, atlas_options, labels_pattern)
    jobs = discover_subjects(bids_dir, participant_labels)
    run_kwargs = {"config": config, "b0_dir": None if b0_dir is None else [float(v) for v in b0_dir],
                  "phase_sign": phase_sign, "phase_unwrapped": phase_unwrapped,
                  "mask_file": None if mask_file is None else os.path.abspath(mask_file),
                  "reference_mask_file": None if reference_mask_file is None else os.path.abspath(reference_mask_file)}
    if separation:  # only then: the hash of a batch without it stays what it was
        run_kwargs["also"] = ["separation"]
        if separation_options:
            run_kwargs["also_options"] = {"separation": dict(separation_options)}
    elif separation_options:
        raise QSMInputError("--option separation.*: add --separation to compute it")
    parameters = pipeline_parameters(run_kwargs)
    for key in ("mask_file", "reference_mask_file"):
        if run_kwargs[key] is not None:
            parameters[key + "_sha256"] = _sha256_file(run_kwargs[key])

    estimates, records = {}, []
    for job in jobs:
        try:
            estimates[job.key] = estimate_task_bytes(bids_dir, job)
        except Exception as exc:  # recorded as this subject's failure; the batch goes on
            records.append({"subject": job.subject, "session": job.session, "key": job.key, "status": "failed",
                            "error": describe_failure(exc), "time_s": 0.0})
    if scheduler == "local":  # a subject too large for this machine fails alone, before the cluster is sized
        budget = MEMORY_FRACTION * available_memory_bytes() - WORKER_OVERHEAD_BYTES
        for job in jobs:
            if job.key in estimates and estimates[job.key] > budget:
                records.append({"subject": job.subject, "session": job.session, "key": job.key,
                                "status": "failed", "time_s": 0.0,
                                "error": f"needs about {estimates.pop(job.key) / 2 ** 30:.1f} GiB of memory but "
                                         f"{max(budget, 0) / 2 ** 30:.1f} GiB is available for one worker; crop its "
                                         "images or run it on a machine with more memory"})
    runnable = [job for job in jobs if job.key in estimates]
    task_bytes = max(estimates.values()) if estimates else 0
    os.makedirs(out_dir, exist_ok=True)
    description = Path(out_dir) / "dataset_description.json"
    if not description.exists():
        _atomic_write_text(description, json.dumps(_dataset_description(), indent=2) + "\n")

    cluster_info = {"scheduler": scheduler, "memory_per_task_gib": round(task_bytes / 2 ** 30, 3),
                    "threads_per_worker": threads_per_worker}
    if runnable:
        n_workers, memory_limit, note = choose_workers(task_bytes, requested=workers, n_tasks=len(runnable),
                                                       threads_per_worker=threads_per_worker or 1)
        if scheduler != "local":
            n_workers = workers or 1
        if note and scheduler == "local":
            log.warning("%s", note)
            cluster_info["note"] = note
        cluster = _Cluster(scheduler, workers=n_workers, threads_per_worker=threads_per_worker,
                           memory_limit=memory_limit, task_bytes=task_bytes)
        cluster_info["description"] = cluster.description
        log.info("batch: %d subject(s) on %s; about %.2f GiB per task", len(runnable), cluster.description,
                 task_bytes / 2 ** 30)
        try:
            futures = {}
            for job in runnable:
                future = cluster.client.submit(process_subject, bids_dir, out_dir, job, run_kwargs, parameters,
                                               labels_file=_labels_for(bids_dir, job, labels_pattern),
                                               atlas=atlas, force=force, threads=threads_per_worker,
                                               key=f"qsm-{job.key}-{parameters_digest(parameters)}",
                                               pure=False, resources=cluster.task_resources)
                futures[future] = job
            for future in as_completed(list(futures)):
                job = futures[future]
                if future.status == "finished":
                    record = future.result()
                else:  # the task itself died (worker killed too often, lost, out of memory)
                    exc = future.exception()
                    record = {"subject": job.subject, "session": job.session, "key": job.key, "status": "failed",
                              "error": describe_failure(exc), "time_s": None}
                records.append(record)
                level = logging.WARNING if record["status"] == "failed" else logging.INFO
                log.log(level, "batch: %s %s%s", job.key, record["status"],
                        f": {record['error']}" if record["status"] == "failed" else "")
                if progress is not None:
                    progress(record, len(records), len(jobs))
        finally:
            cluster.close()
            try:
                os.rmdir(Path(out_dir) / WORK_FOLDER)  # empty by now: every subject removes its own
            except OSError:
                pass
    order = {job.key: n for n, job in enumerate(jobs)}
    records.sort(key=lambda r: order[r["key"]])
    if labels_pattern:
        for r in records:
            if r["status"] != "failed" and _labels_for(bids_dir, SubjectJob(r["subject"], r["session"]),
                                                       labels_pattern) is None:
                r.setdefault("notes", []).append("no label image at --labels-pattern")
    flag_outliers(records)
    report = {"GeneratedBy": _dataset_description()["GeneratedBy"], "bids_dir": bids_dir, "out_dir": out_dir,
              "started": started.isoformat(timespec="seconds"),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cluster": cluster_info, "parameters": parameters,
              "counts": {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")},
              "subjects": records}
    _atomic_write_text(Path(out_dir) / "batch_report.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write_text(Path(out_dir) / "batch_summary.txt", summary_text(report))
    _atomic_write_text(Path(out_dir) / "index.html",
                       qc_index_html(records, dgm_names=None if atlas is None else atlas["names"]))
    if labels_pattern or atlas is not None:
        tmp = Path(out_dir) / f".regions.csv.{os.getpid()}.tmp"
        write_regions_csv(tmp, records)
        os.replace(tmp, Path(out_dir) / "regions.csv")
    return report


def parameters_digest(parameters):
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]


def summary_text(report):
    """A readable summary of a batch report: counts, then one line per failed or flagged subject."""
    counts = report["counts"]
    lines = [f"qsm batch {report['bids_dir']} -> {report['out_dir']}",
             f"{len(report['subjects'])} subject(s): {counts['done']} processed, {counts['skipped']} unchanged "
             f"(skipped), {counts['failed']} failed"]
    for r in report["subjects"]:
        if r["status"] == "failed":
            lines.append(f"FAILED  {r['key']}: {r.get('error', '')}")
    for r in report["subjects"]:
        if r.get("outlier"):
            lines.append(f"OUTLIER {r['key']}: {'; '.join(r['outlier'])}")
    return "\n".join(lines) + "\n"


def main_exit_status(report):
    """0 when every subject is done or skipped, :data:`EXIT_SOME_FAILED` otherwise."""
    return EXIT_SOME_FAILED if report["counts"]["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: qsm batch BIDS_DIR --out DERIV_DIR")
