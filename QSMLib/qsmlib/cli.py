"""The ``qsm`` command line: run, separate, invert, swi, r2star, simulate, demo.

Built as ``_get_parser()`` plus ``main(argv=None)`` so that it can be tested
in-process. Bad input ends with a one-line message and exit status 2; Ctrl-C
ends with exit status 130, SIGTERM and SIGHUP with 143 and 129; none leaves
partial outputs.
"""

import argparse
import ast
import contextlib
import logging
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback

from . import __version__
from .errors import Cancelled, QSMInputError
from .io.output import checked_before_commit
from .parallel import ENV_VAR as THREADS_ENV_VAR
from .parallel import check_thread_count, threads
from .pipeline import (BGREMOVE_METHODS, INVERSION_METHODS, PRESETS, REFERENCE_METHODS, UNWRAP_METHODS,
                       PipelineConfig)

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130
#: Subcommands that compute (FFTs, BLAS): each takes --threads N.
THREADED_COMMANDS = ("run", "separate", "invert", "cosmos", "simulate", "swi", "r2star", "unwrap", "demo", "web")


class ProgressPrinter:
    """Prints stage progress to stderr: one line per stage, with percentages for solvers."""

    def __init__(self, stream=None, quiet=False, stop=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.stop = stop
        self._stage = None
        self._started = 0.0
        self._shown = -1

    def __call__(self, stage, fraction):
        if self.stop is not None:
            self.stop.check()
        if self.quiet:
            return
        if stage != self._stage:
            self._stage, self._started, self._shown = stage, time.perf_counter(), -1
            self.stream.write(f"qsm: {stage} ...\n")
        step = int(fraction * 10)
        if fraction >= 1.0:
            self.stream.write(f"qsm: {stage} done in {time.perf_counter() - self._started:.1f} s\n")
            self._stage = None
        elif step > self._shown and 0 < step:
            self.stream.write(f"qsm: {stage} {step * 10} %\n")
        self._shown = max(self._shown, step)
        self.stream.flush()


def _option(text):
    """Parse ``METHOD.KEY=VALUE`` into ``(method, key, value)``."""
    try:
        target, raw = text.split("=", 1)
        method, key = target.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not METHOD.KEY=VALUE (for example tv-admm.lam=2e-4)")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return method, key, value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``qsm: error: run: ... (see qsm run --help)``."""

    def error(self, message):
        command = self.prog[len("qsm"):].strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_INPUT_ERROR, f"qsm: error: {where}{message} (see {self.prog} --help)\n")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a positive number")
    return value


def _thread_count(flag, default=f"${THREADS_ENV_VAR}, else all CPUs"):
    """An argparse type for a thread count given with ``flag``: a whole number of 1 or more."""
    def parse(text):
        try:
            return check_thread_count(text, name="", example=f"{flag} 4", default=default)
        except QSMInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "thread count"
    return parse


def _add_threads_option(p):
    """``--threads N``: the threads of this command's FFTs and BLAS/OpenMP pools (:mod:`qsmlib.parallel`)."""
    p.add_argument("--threads", type=_thread_count("--threads"), metavar="N",
                   help=f"threads for the FFTs and linear algebra (default: ${THREADS_ENV_VAR}, else all CPUs); "
                        "recorded in provenance.json")


def _add_pipeline_options(p):
    p.add_argument("--mask", metavar="F", help="brain mask NIfTI (inside: values above 0.5); default: computed from "
                                                "magnitude and phase quality, and checked for plausibility")
    p.add_argument("--accept-implausible-mask", action="store_true",
                   help="write the maps even when the automatic brain mask fails its plausibility check "
                        "(volume beyond 2000 mL, many background-dark or fast-decaying voxels, ragged shape), "
                        "or a given --mask fills the image; by default the run stops and names the problem. "
                        "The warnings stay in provenance.json")
    p.add_argument("--preset", choices=sorted(PRESETS), default="consensus",
                   help="methods per stage: consensus (default; 2024 QSM consensus: romeo, pdf, "
                        "nltv) or fast (previews in seconds: romeo, vsharp, tkd); --unwrap, "
                        "--bgremove and --inversion override single stages")
    p.add_argument("--unwrap", choices=sorted(UNWRAP_METHODS),
                   help="spatial phase unwrapping: romeo = exact quality-guided region growing (magnitude "
                        "and phase coherence weights), reliability = exact path following sorted by phase "
                        "reliability, laplacian = FFT estimate (default: from --preset)")
    p.add_argument("--phase-unwrapped", action="store_true",
                   help="the phase is already unwrapped (radians): skip unwrapping")
    p.add_argument("--echo-fit", choices=("linear", "nonlinear"),
                   help="echo combination: linear = magnitude-weighted least squares of the unwrapped phase "
                        "(default), nonlinear = Gauss-Newton fit of the complex signal (MEDI-style)")
    p.add_argument("--phase-offset", choices=("intercept", "mcpc3ds"),
                   help="echo-independent phase offset: fitted as an intercept (default) or estimated "
                        "by MCPC-3D-S and removed first (fieldmap.offset_sigma_mm sets its smoothing in mm)")
    p.add_argument("--shrink-mask-by-residual", action="store_true",
                   help="remove high-residual clusters at the mask edge (phase not linear in TE) from the mask")
    p.add_argument("--bgremove", choices=sorted(BGREMOVE_METHODS),
                   help="background field removal (default: from --preset)")
    p.add_argument("--inversion", choices=sorted(INVERSION_METHODS),
                   help="dipole inversion (default: from --preset)")
    p.add_argument("--reference", choices=REFERENCE_METHODS, default="brain",
                   help="susceptibility reference: whole-brain mean (default), csf = lateral ventricles "
                        "found from R2* and magnitude (needs 2+ echoes), region = the mean over "
                        "--reference-mask, or none")
    p.add_argument("--reference-mask", metavar="F",
                   help="reference region NIfTI, with --reference region; with --reference-labels a label image")
    p.add_argument("--reference-labels", nargs="+", type=int, metavar="N",
                   help="with --reference region: the labels of --reference-mask that make the region, "
                        "e.g. 4 43 for both lateral ventricles of a FreeSurfer aseg")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, repeatable, e.g. vsharp.radii_mm=[10,6,2] or tv-admm.lam=2e-4 "
                        "(radii in mm, fields in ppm for inversion options)")
    p.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="B0 direction in voxel coordinates; default: from the image affine")
    p.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                   help="1 (default): phase = +2 pi * field(Hz) * TE(s); -1 flips the phase")
    p.add_argument("--accept-implausible-map", action="store_true",
                   help="write the maps even when the physics checks call them impossible (1st-99th percentile "
                        "beyond +-5 ppm, or a given --b0-dir that the image geometry and the field both "
                        "contradict); by default the run stops and names the likely cause")


def _get_parser():
    parser = _Parser(prog="qsm", description="Quantitative susceptibility mapping (QSMLib).")
    parser.add_argument("--version", action="version", version=f"qsm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="reconstruct a susceptibility map from multi-echo GRE data",
                         description="Writes DIR/chi.nii.gz (ppm), mask.nii.gz, total_field.nii.gz (Hz), "
                                     "local_field.nii.gz (Hz) and provenance.json.")
    src = run.add_argument_group("input (one of: --mag/--phase, --bids, --dicom, --total-field, --local-field)")
    _add_acquisition_inputs(src)
    src.add_argument("--total-field", metavar="F", help="start from a total field map in Hz (needs --mask, --b0)")
    src.add_argument("--local-field", metavar="F", help="start from a local field map in Hz (needs --mask, --b0)")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder")
    run.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_pipeline_options(run)
    _add_atlas_option(run)
    run.add_argument("--also", nargs="+", choices=("swi", "r2star", "separation"), default=[], metavar="MAP",
                     help="also write swi: swi.nii.gz and mip.nii.gz (SWI from the local field, magnitude "
                          "units); r2star: r2star.nii.gz (1/s), t2star.nii.gz (s), s0.nii.gz; separation: "
                          "chi_pos.nii.gz, chi_neg.nii.gz, chi_total.nii.gz (ppm) and r2prime.nii.gz (1/s) by the "
                          "R2*-only chi-separation (use qsm separate --r2/--t2 with a measured R2); options with "
                          "--option swi.KEY=VALUE, r2star.KEY=VALUE or separation.KEY=VALUE")
    _add_separate_parser(sub)

    inv = sub.add_parser("invert", help="dipole inversion of a local field map")
    inv.add_argument("--local-field", required=True, metavar="F", help="local field NIfTI")
    inv.add_argument("--unit", required=True, choices=("ppm", "hz"), help="unit of the local field")
    inv.add_argument("--b0", type=_positive_float, metavar="T", help="field strength in tesla (needed for hz)")
    inv.add_argument("--mask", required=True, metavar="F", help="brain mask NIfTI")
    inv.add_argument("--method", choices=sorted(INVERSION_METHODS), default=PRESETS["consensus"]["inversion"],
                     help=f"default {PRESETS['consensus']['inversion']}, the consensus preset's")
    inv.add_argument("--option", action="append", type=_option, default=[], metavar="METHOD.KEY=VALUE",
                     help="a method option, e.g. tv-admm.lam=2e-4")
    inv.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                     help="B0 direction in voxel coordinates; default: from the affine")
    inv.add_argument("--out", required=True, metavar="F",
                     help="output susceptibility NIfTI (ppm); the provenance (with the TV weight chosen from the "
                          "field's noise) goes beside it as F with .json for .nii.gz")
    inv.add_argument("--force", action="store_true", help="overwrite an existing output")
    inv.add_argument("--accept-implausible-map", action="store_true",
                     help="write the map even when the physics checks call it impossible (1st-99th percentile "
                          "beyond +-5 ppm, or a --b0-dir that the geometry and the field both contradict)")

    cos = sub.add_parser("cosmos", help="COSMOS: susceptibility from the local fields of 2+ head orientations")
    cos.add_argument("--local-field", required=True, nargs="+", metavar="F",
                     help="local field NIfTI of each orientation, all registered onto one grid")
    cos.add_argument("--b0-dir", required=True, nargs=3, type=float, action="append", metavar=("X", "Y", "Z"),
                     help="B0 direction of each orientation in the registered grid's voxel frame; repeat "
                          "once per --local-field file, in the same order")
    cos.add_argument("--unit", required=True, choices=("ppm", "hz"), help="unit of the local fields")
    cos.add_argument("--b0", type=_positive_float, metavar="T", help="field strength in tesla (needed for hz)")
    cos.add_argument("--mask", required=True, metavar="F",
                     help="brain mask NIfTI on the registered grid (the intersection of the orientations)")
    cos.add_argument("--option", action="append", type=_option, default=[], metavar="cosmos.KEY=VALUE",
                     help="a COSMOS option, e.g. cosmos.max_iter=1 (closed form, field zero outside the mask)")
    cos.add_argument("--out", required=True, metavar="F", help="output susceptibility NIfTI (ppm)")
    cos.add_argument("--force", action="store_true", help="overwrite an existing output")

    sim = sub.add_parser("simulate", help="write a simulated multi-echo head as a BIDS dataset with ground truth")
    sim.add_argument("--out", required=True, metavar="DIR", help="output BIDS folder")
    sim.add_argument("--voxel-size", type=_positive_float, nargs="+", default=[1.0], metavar="MM",
                     help="voxel size in mm: one value (isotropic) or three (e.g. 0.5 0.5 2 with --realistic); "
                          "default 1")
    sim.add_argument("--b0", type=_positive_float, default=3.0, metavar="T", help="field strength in tesla (default 3)")
    sim.add_argument("--te", nargs="+", type=_positive_float, metavar="S",
                     help="echo times in seconds (default 0.004 0.010 0.016 0.022 0.028)")
    sim.add_argument("--snr", type=_positive_float, default=100.0, metavar="X",
                     help="first-echo brain SNR (default 100)")
    sim.add_argument("--subject", default="01", metavar="S", help="subject label (default 01)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                     help="simulate an oblique acquisition: B0 direction in voxel coordinates")
    sim.add_argument("--realistic", action="store_true",
                     help="realistic simulation: the 0.64 mm head with relaxation texture, exact field of "
                          "cuboid voxels (not the inversions' kernel), k-space truncation to the voxel size, "
                          "imperfect shim; slower (about a minute and 4 GB for 1 mm)")
    sim.add_argument("--wm-anisotropy", action="store_true",
                     help="with --realistic: white-matter susceptibility anisotropy (synthetic fibre directions)")
    sim.add_argument("--coils", type=int, default=0, metavar="N",
                     help="with --realistic: N receive coils (SoS magnitude, combined phase); default 0: one channel")
    sim.add_argument("--separation", action="store_true",
                     help="paramagnetic and diamagnetic parts with R2* = R2 + R2' (chi-separation model); also "
                          "writes their truth (ppm) and the R2 map (1/s) under derivatives/truth")
    sim.add_argument("--force", action="store_true", help="overwrite existing outputs")

    _add_swi_parser(sub)
    _add_r2star_parser(sub)
    unw = sub.add_parser("unwrap", help="unwrap every echo of the phase (ROMEO-style in space, then in time)",
                         description="Writes DIR/phase_unwrapped.nii.gz (radians, one volume per echo, 0 outside "
                                     "the mask) and DIR/provenance.json.")
    _add_multi_echo_source(unw, phase=True)
    unw.add_argument("--reference-echo", type=int, default=1, metavar="N",
                     help="echo unwrapped in space, counted from 1 (default 1); the others follow in time")
    _add_batch_parser(sub)
    _add_dicom_parsers(sub)
    _add_atlas_parsers(sub)
    _add_web_parser(sub)

    demo = sub.add_parser("demo", help="simulate the head phantom, reconstruct it, and write a report")
    demo.add_argument("--out", default="qsm-demo", metavar="DIR", help="output folder (default qsm-demo)")
    demo.add_argument("--force", action="store_true", help="overwrite existing outputs")
    for name in THREADED_COMMANDS:
        _add_threads_option(sub.choices[name])
    return parser


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; give a whole number from 1 to 65535")
    return value


def _add_web_parser(sub):
    web = sub.add_parser("web", help="QSM in the browser: a trame-slicer app on Slicer's MRML engine",
                         description="Serves the QSM Reconstruction workflow (load, reconstruct, view, download) "
                                     "to a web browser. Needs the web extra: pip install \"qsmlib[web]\".")
    web.add_argument("--data", required=True, metavar="DIR",
                     help="the only folder whose files the browser can open (NIfTI magnitude and phase with "
                          "their JSON sidecars)")
    web.add_argument("--port", type=_port, default=8080, metavar="N", help="TCP port (default 8080)")
    web.add_argument("--host", default="127.0.0.1", metavar="H",
                     help="address to listen on (default 127.0.0.1: this machine only); another address lets "
                          "other machines connect, with a warning, as the app has no log-in")


def _run_web(args):
    from . import web

    if not web.is_loopback(args.host):
        print(f"qsm: warning: --host {args.host}: the app is reachable from other machines and has no log-in; "
              f"anyone who can connect can read the files of {args.data} and run reconstructions; use the "
              "default 127.0.0.1 with an SSH tunnel unless the network is trusted", file=sys.stderr)
    web.serve(data_dir=args.data, port=args.port, host=args.host, threads=args.threads)


def _add_dicom_parsers(sub):
    d2b = sub.add_parser("dicom2bids", help="convert a multi-echo GRE DICOM acquisition to a BIDS MEGRE dataset",
                         description="Writes BIDS_DIR/sub-S/anat/sub-S_echo-N_part-mag|phase_MEGRE.nii.gz with "
                                     "JSON sidecars (EchoTime in s, MagneticFieldStrength in T); phase in radians.")
    d2b.add_argument("dicom", nargs="+", metavar="DIR", help="DICOM folder(s) or files of one acquisition")
    d2b.add_argument("--out", required=True, metavar="BIDS_DIR", help="output BIDS folder")
    d2b.add_argument("--subject", default="01", metavar="S", help="subject label, letters and digits (default 01)")
    d2b.add_argument("--session", metavar="S", help="session label (default: none)")
    d2b.add_argument("--te", nargs="+", type=_positive_float, metavar="S",
                     help="echo times in seconds; default: EchoTime of the headers")
    d2b.add_argument("--b0", type=_positive_float, metavar="T",
                     help="field strength in tesla; default: MagneticFieldStrength")
    d2b.add_argument("--force", action="store_true", help="overwrite existing outputs")

    exp = sub.add_parser("export-dicom", help="write a susceptibility map (ppm) as a derived DICOM series",
                         description="Writes DIR/QSM_0001.dcm ...: a DERIVED\\SECONDARY MR series of the "
                                     "reference study, values in ppm through RescaleSlope/RescaleIntercept "
                                     "(0.001 ppm or better), window centre 0 ppm, width 0.3 ppm.")
    exp.add_argument("chi", metavar="CHI", help="susceptibility NIfTI in ppm on the reference grid (qsm run --dicom)")
    exp.add_argument("--reference", required=True, nargs="+", metavar="DIR",
                     help="the source DICOM folder(s) or files the map was computed from")
    exp.add_argument("--out", required=True, metavar="DIR", help="output folder for the DICOM files")
    exp.add_argument("--description", default="QSM susceptibility (ppm)", metavar="TEXT",
                     help="SeriesDescription; keep QSM and the unit ppm in it (default 'QSM susceptibility (ppm)')")
    exp.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _add_multi_echo_source(p, *, phase):
    src = p.add_argument_group("input (one of: --mag" + ("/--phase" if phase else "") + ", --bids)")
    src.add_argument("--mag", nargs="+", metavar="F", help="magnitude: one 4D NIfTI or one 3D NIfTI per echo")
    if phase:
        src.add_argument("--phase", nargs="+", metavar="F",
                         help="phase: one 4D NIfTI or one 3D NIfTI per echo; radians or scanner units "
                              "(rescaled automatically)")
    src.add_argument("--te", nargs="+", type=_positive_float, metavar="S",
                     help="echo times in seconds (e.g. 0.004 0.008); overrides BIDS sidecars")
    if phase:
        src.add_argument("--b0", type=_positive_float, metavar="T",
                         help="field strength in tesla (recorded only; not needed here)")
    src.add_argument("--bids", metavar="DIR", help="BIDS dataset root with *_MEGRE files and JSON sidecars")
    src.add_argument("--subject", metavar="S", help="BIDS subject label (without sub-)")
    src.add_argument("--session", metavar="S", help="BIDS session label (without ses-)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--mask", metavar="F",
                   help="brain mask NIfTI (inside: values above 0.5); default: computed from magnitude")


def _add_separate_parser(sub):
    sep = sub.add_parser("separate", help="chi-separation: paramagnetic and diamagnetic susceptibility maps",
                         description="Runs the QSM pipeline, then separates the susceptibility into a paramagnetic "
                                     "(chi_pos >= 0) and a diamagnetic part (chi_neg <= 0) from the local field and "
                                     "R2' = R2* - R2 (Shin et al. 2021). Writes DIR/chi_pos.nii.gz, chi_neg.nii.gz, "
                                     "chi_total.nii.gz (their sum; ppm), r2prime.nii.gz (1/s), the run's maps "
                                     "(chi.nii.gz, mask, fields) and provenance.json. With --r2 or --t2 R2 is "
                                     "measured; with neither, the R2*-only method takes R2 from a tissue model.")
    src = sep.add_argument_group("input (one of: --mag/--phase, --bids, --dicom)")
    _add_acquisition_inputs(src)
    r2 = sep.add_mutually_exclusive_group()
    r2.add_argument("--r2", metavar="F", help="R2 map NIfTI in 1/s on the GRE grid (e.g. from a multi-echo "
                                              "spin echo)")
    r2.add_argument("--t2", metavar="F", help="T2 map NIfTI in seconds on the GRE grid")
    sep.add_argument("--out", required=True, metavar="DIR", help="output folder")
    sep.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_pipeline_options(sep)


def _add_acquisition_inputs(group):
    """The multi-echo GRE inputs that qsm run and qsm separate share (NIfTI, BIDS, DICOM; TE and B0)."""
    group.add_argument("--mag", nargs="+", metavar="F", help="magnitude: one 4D NIfTI or one 3D NIfTI per echo")
    group.add_argument("--phase", nargs="+", metavar="F",
                       help="phase: one 4D NIfTI or one 3D NIfTI per echo; radians or scanner units "
                            "(rescaled automatically)")
    group.add_argument("--te", nargs="+", type=_positive_float, metavar="S",
                       help="echo times in seconds (e.g. 0.004 0.008); overrides BIDS sidecars")
    group.add_argument("--b0", type=_positive_float, metavar="T",
                       help="field strength in tesla; overrides BIDS sidecars")
    group.add_argument("--bids", metavar="DIR", help="BIDS dataset root with *_MEGRE files and JSON sidecars")
    group.add_argument("--subject", metavar="S", help="BIDS subject label (without sub-)")
    group.add_argument("--session", metavar="S", help="BIDS session label (without ses-)")
    group.add_argument("--dicom", nargs="+", metavar="DIR",
                       help="DICOM folder(s) or files of one multi-echo GRE acquisition (magnitude and phase, or "
                            "real and imaginary); echo times (s) and field strength (T) from the headers unless "
                            "--te/--b0 are given; vendor phase scaling converted to radians")


def _filter_size(text):
    value = _positive_float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"'{text}' must be a whole number of k-space samples")
    return int(value)


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if not math.isfinite(value) or not value >= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a number, 0 or more")
    return value


def _noise_sd(text):
    if text.lower() in ("auto", "none"):
        return text.lower()
    return _non_negative_float(text)


def _add_swi_parser(sub):
    from .swi import DEFAULT_FILTER_SIZE, DEFAULT_HIGHPASS_SIGMA_MM, DEFAULT_SLAB_MM

    p = sub.add_parser("swi", help="susceptibility-weighted image and minimum intensity projection",
                       description="Writes DIR/swi.nii.gz and DIR/mip.nii.gz (magnitude units) and "
                                   "DIR/provenance.json.")
    _add_multi_echo_source(p, phase=True)
    p.add_argument("--highpass", choices=("homodyne", "field"), default="homodyne",
                   help="phase high-pass: homodyne = Hanning k-space filter of the complex data (classic SWI, "
                        "default); field = Gaussian high-pass (SD in mm) of the fitted, unwrapped field in Hz "
                        "(CLEAR-SWI style)")
    p.add_argument("--filter-size", nargs="+", type=_filter_size, default=None, metavar="N",
                   help=f"homodyne Hanning window width in k-space samples (voxels of the matrix), one or "
                        f"three values (default {DEFAULT_FILTER_SIZE})")
    p.add_argument("--sigma-mm", type=_non_negative_float, default=None, metavar="MM",
                   help=f"field high-pass Gaussian SD in mm (default {DEFAULT_HIGHPASS_SIGMA_MM:g}; 0: none)")
    p.add_argument("--phase-mask", choices=("negative", "positive", "symmetric"), default="negative",
                   help="negative (default) darkens paramagnetic sources (veins, iron); positive darkens "
                        "diamagnetic ones (calcification); symmetric both")
    p.add_argument("--power", type=_non_negative_float, default=4.0, metavar="N",
                   help="number of multiplications by the phase mask (default 4, dimensionless)")
    p.add_argument("--combine", choices=("cnr", "snr", "rss"), default="cnr",
                   help="magnitude echo combination: cnr = weights |S| * TE (T2* contrast, default), "
                        "snr = weights |S|, rss = root sum of squares")
    p.add_argument("--phase-convention", choices=("left-handed", "right-handed"), default="left-handed",
                   help="left-handed (default): phase = +2 pi * field(Hz) * TE(s), paramagnetic positive; "
                        "right-handed: phase = -2 pi * field(Hz) * TE(s) (flipped on loading)")
    p.add_argument("--te-ref", type=_positive_float, default=None, metavar="S",
                   help="echo time in seconds of the phase used for the mask (default: the last echo)")
    p.add_argument("--slab", type=_non_negative_float, default=DEFAULT_SLAB_MM, metavar="MM",
                   help=f"minimum intensity projection slab thickness in mm (default {DEFAULT_SLAB_MM:g})")
    p.add_argument("--mip-axis", type=int, choices=(0, 1, 2), default=2,
                   help="voxel axis of the minimum intensity projection (default 2, the third axis)")
    p.add_argument("--sensitivity-mm", type=_non_negative_float, default=None, metavar="MM",
                   help="divide the magnitude by a smooth receive sensitivity (Gaussian SD in mm, e.g. 7); "
                        "default: no correction")


def _add_r2star_parser(sub):
    from .relaxometry import DEFAULT_FLOOR_SNR

    p = sub.add_parser("r2star", help="R2*, T2* and S0 maps from multi-echo magnitude",
                       description="Writes DIR/r2star.nii.gz (1/s), DIR/t2star.nii.gz (s), DIR/s0.nii.gz "
                                   "(magnitude units) and DIR/provenance.json.")
    _add_multi_echo_source(p, phase=False)
    p.add_argument("--method", choices=("arlo", "loglinear", "nlls"), default="arlo",
                   help="fit: arlo = auto-regression on linear operations (default), loglinear = |S|^2-weighted "
                        "fit of log|S|, nlls = nonlinear least squares")
    p.add_argument("--noise-sd", type=_noise_sd, default="auto", metavar="X",
                   help="noise SD per channel in magnitude units for the noise floor; auto (default): from "
                        "the background; none: use every echo")
    p.add_argument("--floor-snr", type=_non_negative_float, default=DEFAULT_FLOOR_SNR, metavar="X",
                   help=f"drop echoes under X times the noise SD, and the later ones (default {DEFAULT_FLOOR_SNR:g}, "
                        "dimensionless)")


def _swi_options(args):
    options = {"kind": args.phase_mask, "power": args.power, "combine": args.combine, "slab_mm": args.slab,
               "mip_axis": args.mip_axis}
    if args.te_ref is not None:
        options["te_ref_s"] = args.te_ref
    if args.sensitivity_mm is not None:
        options["sensitivity_sigma_mm"] = args.sensitivity_mm
    if args.highpass == "homodyne":
        if args.sigma_mm is not None:
            raise QSMInputError("--sigma-mm applies to --highpass field; use --filter-size with homodyne")
        if args.filter_size is not None:
            if len(args.filter_size) not in (1, 3):
                raise QSMInputError(f"--filter-size: give one or three widths, got {len(args.filter_size)}")
            options["filter_size"] = args.filter_size[0] if len(args.filter_size) == 1 else tuple(args.filter_size)
    else:
        if args.filter_size is not None:
            raise QSMInputError("--filter-size applies to --highpass homodyne; use --sigma-mm with field")
        if args.sigma_mm is not None:
            options["highpass_sigma_mm"] = args.sigma_mm
    return options


def _source_count(args):
    return sum([bool(args.mag or getattr(args, "phase", None)), bool(args.bids)])


def _split_also_options(args):
    """Take the swi.* and r2star.* entries out of --option (they are not pipeline methods)."""
    also_options, rest = {}, []
    for method, key, value in args.option:
        if method in ("swi", "r2star", "separation"):
            also_options.setdefault(method, {})[key] = value
        else:
            rest.append((method, key, value))
    args.option = rest
    return also_options


def _options(pairs):
    options = {}
    for method, key, value in pairs:
        options.setdefault(method, {})[key] = value
    return options


def _config(args):
    options = _options(args.option)
    for key, value in (("model", args.echo_fit), ("phase_offset", args.phase_offset)):
        if value:
            options.setdefault("fieldmap", {})[key] = value
    return PipelineConfig.from_preset(args.preset, unwrap=args.unwrap, bgremove=args.bgremove,
                                      inversion=args.inversion, reference=args.reference, options=options,
                                      accept_implausible_map=args.accept_implausible_map,
                                      shrink_mask_by_residual=args.shrink_mask_by_residual,
                                      accept_implausible_mask=args.accept_implausible_mask)


def _dispatch(args, progress):
    from . import workflow

    if args.command == "run":
        sources = [bool(args.mag or args.phase), bool(args.bids), bool(args.total_field), bool(args.local_field),
                   bool(args.dicom)]
        if sum(sources) != 1:
            raise QSMInputError("give exactly one input: --mag/--phase, --bids, --dicom, --total-field or "
                                "--local-field")
        also_options = _split_also_options(args)
        workflow.run_qsm(args.out, magnitude_files=args.mag, phase_files=args.phase, te_s=args.te, b0_t=args.b0,
                         bids_dir=args.bids, subject=args.subject, session=args.session,
                         total_field_file=args.total_field, local_field_file=args.local_field,
                         mask_file=args.mask, reference_mask_file=args.reference_mask,
                         reference_labels=args.reference_labels, config=_config(args),
                         b0_dir=args.b0_dir, phase_sign=args.phase_sign, phase_unwrapped=args.phase_unwrapped,
                         force=args.force, progress=progress, also=args.also, also_options=also_options,
                         dicom_dir=args.dicom, atlas_dir=args.atlas, atlas_options=_atlas_options(args))
        extra = "".join(f", {name}" for name in args.also)
        print(f"qsm: wrote {args.out}/chi.nii.gz (ppm){extra} and provenance.json", file=sys.stderr)
    elif args.command == "separate":
        if sum([bool(args.mag or args.phase), bool(args.bids), bool(args.dicom)]) != 1:
            raise QSMInputError("give exactly one input: --mag/--phase, --bids or --dicom")
        options = _split_also_options(args).get("separation")
        workflow.run_separation(args.out, r2_file=args.r2, t2_file=args.t2, magnitude_files=args.mag,
                                phase_files=args.phase, te_s=args.te, b0_t=args.b0, bids_dir=args.bids,
                                subject=args.subject, session=args.session, mask_file=args.mask,
                                reference_mask_file=args.reference_mask, reference_labels=args.reference_labels,
                                config=_config(args), b0_dir=args.b0_dir, phase_sign=args.phase_sign,
                                phase_unwrapped=args.phase_unwrapped, dicom_dir=args.dicom, options=options,
                                force=args.force, progress=progress)
        method = "measured R2" if (args.r2 or args.t2) else "R2*-only method"
        print(f"qsm: wrote {args.out}/chi_pos.nii.gz, chi_neg.nii.gz, chi_total.nii.gz (ppm), r2prime.nii.gz "
              f"(1/s; {method}) and provenance.json", file=sys.stderr)
    elif args.command == "swi":
        if _source_count(args) != 1:
            raise QSMInputError("give exactly one input: --mag/--phase (with --te) or --bids")
        workflow.run_swi(args.out, magnitude_files=args.mag, phase_files=args.phase, te_s=args.te, b0_t=args.b0,
                         bids_dir=args.bids, subject=args.subject, session=args.session, mask_file=args.mask,
                         highpass=args.highpass, phase_convention=args.phase_convention,
                         options=_swi_options(args), force=args.force, progress=progress)
        print(f"qsm: wrote {args.out}/swi.nii.gz, mip.nii.gz and provenance.json", file=sys.stderr)
    elif args.command == "unwrap":
        if _source_count(args) != 1:
            raise QSMInputError("give exactly one input: --mag/--phase (with --te) or --bids")
        if args.reference_echo < 1:
            raise QSMInputError(f"--reference-echo {args.reference_echo}: echoes are counted from 1")
        workflow.run_unwrap(args.out, magnitude_files=args.mag, phase_files=args.phase, te_s=args.te, b0_t=args.b0,
                            bids_dir=args.bids, subject=args.subject, session=args.session, mask_file=args.mask,
                            reference_echo=args.reference_echo - 1, force=args.force, progress=progress)
        print(f"qsm: wrote {args.out}/phase_unwrapped.nii.gz (rad) and provenance.json", file=sys.stderr)
    elif args.command == "r2star":
        if _source_count(args) != 1:
            raise QSMInputError("give exactly one input: --mag (with --te) or --bids")
        workflow.run_r2star(args.out, magnitude_files=args.mag, te_s=args.te, bids_dir=args.bids,
                            subject=args.subject, session=args.session, mask_file=args.mask, method=args.method,
                            noise_sd=None if args.noise_sd == "none" else args.noise_sd,
                            floor_snr=args.floor_snr, force=args.force, progress=progress)
        print(f"qsm: wrote {args.out}/r2star.nii.gz (1/s), t2star.nii.gz (s), s0.nii.gz and provenance.json",
              file=sys.stderr)
    elif args.command == "invert":
        options = _options(args.option)
        unknown = set(options) - {args.method}
        if unknown:
            raise QSMInputError(f"--option {', '.join(sorted(unknown))}: only options of --method {args.method} apply")
        workflow.invert_field(args.local_field, args.out, unit=args.unit, mask_file=args.mask, b0_t=args.b0,
                              method=args.method, options=options.get(args.method), b0_dir=args.b0_dir,
                              force=args.force, progress=progress, accept_implausible_map=args.accept_implausible_map)
        print(f"qsm: wrote {args.out} (ppm)", file=sys.stderr)
    elif args.command == "cosmos":
        options = _options(args.option)
        if set(options) - {"cosmos"}:
            raise QSMInputError(f"--option {', '.join(sorted(set(options) - {'cosmos'}))}: only cosmos.KEY=VALUE applies")
        workflow.run_cosmos(args.local_field, args.out, unit=args.unit, mask_file=args.mask, b0_dirs=args.b0_dir,
                            b0_t=args.b0, options=options.get("cosmos"), force=args.force, progress=progress)
        print(f"qsm: wrote {args.out} (ppm)", file=sys.stderr)
    elif args.command == "simulate":
        if len(args.voxel_size) not in (1, 3):
            raise QSMInputError(f"--voxel-size: give one value or three, not {len(args.voxel_size)}")
        if (args.wm_anisotropy or args.coils) and not args.realistic:
            raise QSMInputError("--wm-anisotropy and --coils apply with --realistic only")
        if args.coils < 0:
            raise QSMInputError(f"--coils {args.coils}: give 0 (one channel) or a number of coils")
        voxel_size = args.voxel_size[0] if len(args.voxel_size) == 1 else tuple(args.voxel_size)
        workflow.simulate_dataset(args.out, voxel_size_mm=voxel_size, b0_t=args.b0, te_s=args.te, snr=args.snr,
                                  subject=args.subject, b0_dir=args.b0_dir, seed=args.seed, force=args.force,
                                  realistic=args.realistic, wm_anisotropy=args.wm_anisotropy, n_coils=args.coils,
                                  separation=args.separation)
        print(f"qsm: wrote the simulated BIDS dataset to {args.out}", file=sys.stderr)
    elif args.command == "dicom2bids":
        workflow.dicom_to_bids(args.dicom, args.out, subject=args.subject, session=args.session, te_s=args.te,
                               b0_t=args.b0, force=args.force)
        print(f"qsm: wrote the BIDS dataset to {args.out}", file=sys.stderr)
    elif args.command == "export-dicom":
        written = workflow.export_dicom(args.chi, args.reference, args.out, series_description=args.description,
                                        force=args.force)
        print(f"qsm: wrote {len(written['names'])} DICOM files to {args.out} "
              f"({written['rescale_slope']:g} ppm per stored unit)", file=sys.stderr)
    elif args.command in ("segment", "atlas"):
        return _run_atlas_command(args)
    elif args.command == "batch":
        return _run_batch(args)
    elif args.command == "web":
        return _run_web(args)
    elif args.command == "demo":
        _result, metrics = workflow.run_demo(args.out, force=args.force, progress=progress)
        print(f"qsm: demo written to {args.out}: NRMSE {metrics['nrmse_percent']:.1f} %, worst deep grey "
              f"matter error {metrics['dgm_max_abs_error_ppm']:.4f} ppm; open {args.out}/report.html",
              file=sys.stderr)


def _add_batch_parser(sub):
    p = sub.add_parser("batch", help="reconstruct every subject of a BIDS dataset on Dask (resumable, with QC)",
                       description="Writes a BIDS derivatives dataset: sub-X[/ses-Y]/anat/sub-X[_ses-Y]_Chimap.nii.gz "
                                   "(ppm) with mask, fields (Hz) and a provenance sidecar per subject, QC montages, "
                                   "index.html, batch_report.json and batch_summary.txt. Finished, unchanged "
                                   "subjects are skipped. Exit status 1 when some subject failed.")
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="BIDS dataset root with *_MEGRE files and JSON sidecars")
    p.add_argument("--out", required=True, metavar="DIR", help="derivatives folder (e.g. BIDS_DIR/../qsm-derivatives)")
    p.add_argument("--participant-label", nargs="+", metavar="S", help="only these subjects (without sub-)")
    p.add_argument("--scheduler", default="local", metavar="local|ADDRESS|FILE|slurm|pbs|...",
                   help="local (default): a Dask cluster on this machine; tcp://HOST:PORT or a scheduler file: "
                        "an existing Dask scheduler; slurm, pbs, sge, lsf, htcondor, moab, oar: jobs through "
                        "dask-jobqueue (configured in ~/.config/dask/jobqueue.yaml)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes (local: default one per core, fewer if memory is short) or jobs")
    p.add_argument("--threads-per-worker", metavar="N",
                   type=_thread_count("--threads-per-worker", default="1 on workers qsm batch starts"),
                   help="threads of each worker for its FFTs and linear algebra (default 1 on workers this "
                        "command starts; on an existing scheduler, the workers' own setting)")
    p.add_argument("--labels-pattern", metavar="PATTERN",
                   help="label image per subject relative to BIDS_DIR, with {subject} and {session}, e.g. "
                        "derivatives/truth/sub-{subject}/anat/sub-{subject}_dseg.nii.gz (names from the .tsv "
                        "beside it); writes regions.csv")
    p.add_argument("--force", action="store_true", help="recompute finished subjects too")
    p.add_argument("--separation", action="store_true",
                   help="also the R2*-only chi-separation per subject: desc-paramagnetic_Chimap, "
                        "desc-diamagnetic_Chimap, desc-separationsum_Chimap (ppm), desc-R2prime_R2starmap (1/s), "
                        "and both parts' means in regions.csv (options with --option separation.KEY=VALUE)")
    _add_pipeline_options(p)
    _add_atlas_option(p)


def _run_batch(args):
    from .batch import main_exit_status, run_batch

    if args.mask or args.reference_mask or args.reference_labels:
        raise QSMInputError("qsm batch computes each subject's own mask; --mask and --reference-mask "
                            "apply to qsm run only")
    if any(method in ("swi", "r2star") for method, _key, _value in args.option):
        raise QSMInputError("qsm batch writes susceptibility maps only; --option swi.* / r2star.* apply to qsm run")
    separation_options = _split_also_options(args).get("separation")
    report = run_batch(args.bids_dir, args.out, participant_labels=args.participant_label,
                       scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
                       labels_pattern=args.labels_pattern, force=args.force, config=_config(args),
                       b0_dir=args.b0_dir, phase_sign=args.phase_sign, phase_unwrapped=args.phase_unwrapped,
                       atlas_dir=args.atlas, atlas_options=_atlas_options(args), separation=args.separation,
                       separation_options=separation_options)
    counts = report["counts"]
    print(f"qsm: batch: {counts['done']} processed, {counts['skipped']} unchanged, {counts['failed']} failed; "
          f"see {args.out}/index.html and {args.out}/batch_summary.txt", file=sys.stderr)
    return main_exit_status(report)


def _add_atlas_option(p):
    p.add_argument("--atlas", metavar="DIR",
                   help="template folder (template image, labels.nii.gz, labels.tsv; see qsm atlas check): "
                        "registered to the susceptibility map (rigid, affine, deformable) to label the deep grey "
                        "matter; writes the labels, a QC picture, the transform and regions.csv (ppm per region)")
    p.add_argument("--atlas-deformable", choices=("auto", "demons", "bspline", "none"), default="auto",
                   help="deformable stage of the atlas registration: auto (default; diffeomorphic demons for a "
                        "susceptibility template, B-spline with mutual information otherwise), demons, bspline, none")
    p.add_argument("--atlas-labels", choices=("gaussian", "nearest"), default="gaussian",
                   help="how labels are carried onto the subject's voxels: gaussian (default; label-Gaussian "
                        "interpolation, smooth borders) or nearest (nearest neighbour)")


def _atlas_options(args):
    if args.atlas is None:
        if args.atlas_deformable != "auto" or args.atlas_labels != "gaussian":
            raise QSMInputError("--atlas-deformable and --atlas-labels apply with --atlas DIR only")
        return None
    from .atlas.segment import options_from

    return options_from(args.atlas_deformable, args.atlas_labels)


def _add_atlas_parsers(sub):
    seg = sub.add_parser("segment", help="label the deep grey matter of a susceptibility map with a template",
                         description="Registers the template to the subject (rigid, affine, then deformable; "
                                     "mutual information for magnitude, correlation for susceptibility) and writes "
                                     "DIR/labels.nii.gz with labels.tsv (names, colours), atlas_qc.png (label "
                                     "outlines), atlas_transform.h5 (ITK), atlas_registration.json (stages, checks) "
                                     "and, with --chi, regions.csv (mean, median, SD in ppm per region). An "
                                     "implausible registration (affine determinant, vanished labels, low final "
                                     "similarity) is refused with exit status 2.")
    seg.add_argument("--chi", metavar="F", help="susceptibility map NIfTI (ppm), e.g. chi.nii.gz of qsm run")
    seg.add_argument("--mag", metavar="F", help="magnitude NIfTI on the same grid (3D, or 4D: first echo used)")
    seg.add_argument("--mask", metavar="F", help="brain mask NIfTI (voxels with values above 0.5 are inside; "
                                                  "default: where the map is non-zero)")
    seg.add_argument("--out", required=True, metavar="DIR", help="output folder")
    seg.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_atlas_option(seg)

    atlas = sub.add_parser("atlas", help="atlas templates: check a template folder, or write the head model as one")
    tasks = atlas.add_subparsers(dest="atlas_command", metavar="TASK")
    tasks.required = True
    check = tasks.add_parser("check", help="validate a template folder and list its labels")
    check.add_argument("folder", metavar="DIR", help="template folder")
    model = tasks.add_parser("head-model", help="write QSMLib's head model as a template folder (demo and tests)")
    model.add_argument("--out", required=True, metavar="DIR", help="output folder")
    model.add_argument("--voxel-size", type=_positive_float, default=1.0, metavar="MM",
                       help="voxel size of the template in mm (default 1)")
    model.add_argument("--force", action="store_true", help="overwrite an existing template there")


def _run_atlas_command(args):
    from .atlas import check_template, write_head_model_template
    from .atlas.segment import run_segment

    if args.command == "segment":
        if args.atlas is None:
            raise QSMInputError("qsm segment needs --atlas DIR, the template folder")
        if args.chi is None and args.mag is None:
            raise QSMInputError("give the subject's susceptibility map (--chi) or a magnitude image (--mag), or both")
        result = run_segment(args.out, atlas_dir=args.atlas, chi_file=args.chi, magnitude_file=args.mag,
                             mask_file=args.mask, options=_atlas_options(args), force=args.force)
        quality = result.quality
        print(f"qsm: wrote {args.out}/labels.nii.gz ({len(quality['labels'])} labels), labels.tsv, atlas_qc.png"
              + (", regions.csv" if args.chi else "") + f"; affine determinant {quality['determinant']:.2f}, "
              f"{quality['similarity']['metric']} {quality['similarity']['value']:.2f}", file=sys.stderr)
    elif args.atlas_command == "check":
        report = check_template(args.folder)
        print(f"{report['name']}: {', '.join(report['images'])} image(s), {len(report['labels'])} labels, grid "
              f"{'x'.join(map(str, report['shape']))} at {'x'.join(f'{v:g}' for v in report['voxel_size_mm'])} mm, "
              f"brain mask {'yes' if report['mask'] else 'no'}; licence: {report['license']}")
        for value, label in report["labels"].items():
            print(f"  {value:4d}  {label['name']:<32s} {label['volume_mm3']:10.0f} mm3  {label['color']}")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
    else:
        folder = write_head_model_template(args.out, voxel_size_mm=args.voxel_size, force=args.force)
        print(f"qsm: wrote the head model template to {folder}", file=sys.stderr)
    return 0


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (what Slurm and a closed terminal send): handled like Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name


class _StopRequest:
    """The stop signal that arrived, kept after its handler raised.

    Python runs a signal handler between two bytecodes of whatever code is
    running; when that is a weakref callback or a ``__del__``, the exception
    the handler raises is printed as "Exception ignored" and lost, and the run
    would go on to write its outputs. :meth:`check` raises it again: the
    progress printer calls it at every report, and every output folder just
    before it moves its outputs into place.
    """

    def __init__(self):
        self.signum = None

    def check(self):
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is not None:
            raise Stopped(self.signum)


@contextlib.contextmanager
def _signals_stop_like_ctrl_c():
    """While inside, SIGTERM and SIGHUP raise :class:`Stopped`, so staged outputs are removed as on Ctrl-C.

    Ctrl-C (SIGINT, where Python's own handler is in place) raises
    KeyboardInterrupt as usual; both are kept in the yielded
    :class:`_StopRequest` (None where nothing was installed) and raised again
    if Python drops them. A second signal during the clean-up is ignored.
    Only the main thread can install handlers; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    request = _StopRequest()
    previous = {}

    def stop(signum, _frame):
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        request.signum = signum
        request.check()

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[getattr(signal, name)] = signal.signal(getattr(signal, name), stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, stop)
    try:
        with checked_before_commit(request.check):
            yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def write_error_log(exc, argv=None):
    """Write the traceback of an unexpected exception to a new log file; return its path.

    The file goes to the temporary folder (``qsm-error-<time>-<random>.log``,
    readable by its owner only) with the QSMLib, Python and platform versions
    and the command line. Returns None when no file can be written.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    command = " ".join(["qsm"] + [str(a) for a in argv]) if argv is not None else " ".join(sys.argv)
    header = (f"qsm {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
              f"command: {command}\n\n")
    try:
        fd, path = tempfile.mkstemp(prefix=f"qsm-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + text)
    except OSError:
        return None
    return path


def main(argv=None):
    """Entry point of the ``qsm`` command; returns the exit status.

    Every failure ends in one line on stderr: bad input, file-system errors
    (a full disk, a read-only folder) and a lack of memory with exit status 2;
    Ctrl-C with 130, SIGTERM and SIGHUP with 128 + the signal number; and an
    unexpected exception (a bug) with 2 and the path of a log file holding its
    traceback (:func:`write_error_log`).
    """
    args = _get_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qsm: %(message)s"))
    logger = logging.getLogger("qsmlib")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False
    try:
        with _signals_stop_like_ctrl_c() as stop, threads(getattr(args, "threads", None)):
            status = _dispatch(args, ProgressPrinter(quiet=args.quiet, stop=stop))
    except QSMInputError as exc:
        print(f"qsm: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except Stopped as exc:
        print(f"qsm: stopped by {exc.name}; no outputs were written", file=sys.stderr)
        return 128 + exc.signum
    except (KeyboardInterrupt, Cancelled):
        print("qsm: cancelled; no outputs were written", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError as exc:
        print(f"qsm: error: out of memory ({_first_line(exc)}); nothing was written: free memory, or use a smaller "
              "input or options that need less (padding, radii, slab)", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"qsm: error: {where}{exc.strerror or _first_line(exc)}; check the path, the permissions and the "
              "free space", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except Exception as exc:  # a bug: one line here, the traceback in a log file
        log_path = write_error_log(exc, argv)
        where = f"the traceback is in {log_path}" if log_path else "no log file could be written"
        print(f"qsm: internal error: {type(exc).__name__}: {_first_line(exc)}; this is a bug in QSMLib "
              f"{__version__}: {where}; please report it", file=sys.stderr)
        return EXIT_INPUT_ERROR
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
