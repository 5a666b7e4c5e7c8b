"""The ``qsm`` command line: run, invert, simulate, demo.

Built as ``_get_parser()`` plus ``main(argv=None)`` so that it can be tested
in-process. Bad input ends with a one-line message and exit status 2; Ctrl-C
ends with exit status 130; neither leaves partial outputs.
"""

import argparse
import ast
import logging
import sys
import time

from . import __version__
from .errors import Cancelled, QSMInputError
from .pipeline import BGREMOVE_METHODS, INVERSION_METHODS, UNWRAP_METHODS, PipelineConfig

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


class ProgressPrinter:
    """Prints stage progress to stderr: one line per stage, with percentages for solvers."""

    def __init__(self, stream=None, quiet=False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._stage = None
        self._started = 0.0
        self._shown = -1

    def __call__(self, stage, fraction):
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


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be positive")
    return value


def _add_pipeline_options(p):
    p.add_argument("--mask", metavar="F", help="brain mask NIfTI (non-zero inside); default: computed from magnitude")
    p.add_argument("--unwrap", choices=sorted(UNWRAP_METHODS), default="reliability",
                   help="spatial phase unwrapping: reliability = exact quality-guided path following "
                        "(default), laplacian = fast FFT estimate")
    p.add_argument("--phase-unwrapped", action="store_true",
                   help="the phase is already unwrapped (radians): skip unwrapping")
    p.add_argument("--bgremove", choices=sorted(BGREMOVE_METHODS), default="vsharp",
                   help="background field removal (default vsharp)")
    p.add_argument("--inversion", choices=sorted(INVERSION_METHODS), default="tv-admm",
                   help="dipole inversion (default tv-admm)")
    p.add_argument("--reference", choices=("brain", "region", "none"), default="brain",
                   help="susceptibility reference: whole-brain mean (default), the mean over "
                        "--reference-mask, or none")
    p.add_argument("--reference-mask", metavar="F", help="reference region NIfTI, with --reference region")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, repeatable, e.g. vsharp.radii_mm=[10,6,2] or tv-admm.lam=2e-4 "
                        "(radii in mm, fields in ppm for inversion options)")
    p.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="B0 direction in voxel coordinates; default: from the image affine")
    p.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                   help="1 (default): phase = +2 pi * field(Hz) * TE(s); -1 flips the phase")


def _get_parser():
    parser = argparse.ArgumentParser(prog="qsm", description="Quantitative susceptibility mapping (QSMLib).")
    parser.add_argument("--version", action="version", version=f"qsm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="reconstruct a susceptibility map from multi-echo GRE data",
                         description="Writes DIR/chi.nii.gz (ppm), mask.nii.gz, total_field.nii.gz (Hz), "
                                     "local_field.nii.gz (Hz) and provenance.json.")
    src = run.add_argument_group("input (one of: --mag/--phase, --bids, --total-field, --local-field)")
    src.add_argument("--mag", nargs="+", metavar="F", help="magnitude: one 4D NIfTI or one 3D NIfTI per echo")
    src.add_argument("--phase", nargs="+", metavar="F",
                     help="phase: one 4D NIfTI or one 3D NIfTI per echo; radians or scanner units "
                          "(rescaled automatically)")
    src.add_argument("--te", nargs="+", type=_positive_float, metavar="S",
                     help="echo times in seconds (e.g. 0.004 0.008); overrides BIDS sidecars")
    src.add_argument("--b0", type=_positive_float, metavar="T",
                     help="field strength in tesla; overrides BIDS sidecars")
    src.add_argument("--bids", metavar="DIR", help="BIDS dataset root with *_MEGRE files and JSON sidecars")
    src.add_argument("--subject", metavar="S", help="BIDS subject label (without sub-)")
    src.add_argument("--session", metavar="S", help="BIDS session label (without ses-)")
    src.add_argument("--total-field", metavar="F", help="start from a total field map in Hz (needs --mask, --b0)")
    src.add_argument("--local-field", metavar="F", help="start from a local field map in Hz (needs --mask, --b0)")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder")
    run.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_pipeline_options(run)

    inv = sub.add_parser("invert", help="dipole inversion of a local field map")
    inv.add_argument("--local-field", required=True, metavar="F", help="local field NIfTI")
    inv.add_argument("--unit", required=True, choices=("ppm", "hz"), help="unit of the local field")
    inv.add_argument("--b0", type=_positive_float, metavar="T", help="field strength in tesla (needed for hz)")
    inv.add_argument("--mask", required=True, metavar="F", help="brain mask NIfTI")
    inv.add_argument("--method", choices=sorted(INVERSION_METHODS), default="tv-admm", help="default tv-admm")
    inv.add_argument("--option", action="append", type=_option, default=[], metavar="METHOD.KEY=VALUE",
                     help="a method option, e.g. tv-admm.lam=2e-4")
    inv.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                     help="B0 direction in voxel coordinates; default: from the affine")
    inv.add_argument("--out", required=True, metavar="F", help="output susceptibility NIfTI (ppm)")
    inv.add_argument("--force", action="store_true", help="overwrite an existing output")

    sim = sub.add_parser("simulate", help="write a simulated multi-echo head as a BIDS dataset with ground truth")
    sim.add_argument("--out", required=True, metavar="DIR", help="output BIDS folder")
    sim.add_argument("--voxel-size", type=_positive_float, default=1.0, metavar="MM", help="isotropic voxel size in mm (default 1)")
    sim.add_argument("--b0", type=_positive_float, default=3.0, metavar="T", help="field strength in tesla (default 3)")
    sim.add_argument("--te", nargs="+", type=_positive_float, metavar="S",
                     help="echo times in seconds (default 0.004 0.010 0.016 0.022 0.028)")
    sim.add_argument("--snr", type=_positive_float, default=100.0, metavar="X",
                     help="first-echo brain SNR (default 100)")
    sim.add_argument("--subject", default="01", metavar="S", help="subject label (default 01)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                     help="simulate an oblique acquisition: B0 direction in voxel coordinates")
    sim.add_argument("--force", action="store_true", help="overwrite existing outputs")

    demo = sub.add_parser("demo", help="simulate the head phantom, reconstruct it, and write a report")
    demo.add_argument("--out", default="qsm-demo", metavar="DIR", help="output folder (default qsm-demo)")
    demo.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return parser


def _options(pairs):
    options = {}
    for method, key, value in pairs:
        options.setdefault(method, {})[key] = value
    return options


def _config(args):
    return PipelineConfig(unwrap=args.unwrap, bgremove=args.bgremove, inversion=args.inversion,
                          reference=args.reference, options=_options(args.option))


def _dispatch(args, progress):
    from . import workflow

    if args.command == "run":
        sources = [bool(args.mag or args.phase), bool(args.bids), bool(args.total_field), bool(args.local_field)]
        if sum(sources) != 1:
            raise QSMInputError("give exactly one input: --mag/--phase, --bids, --total-field or --local-field")
        workflow.run_qsm(args.out, magnitude_files=args.mag, phase_files=args.phase, te_s=args.te, b0_t=args.b0,
                         bids_dir=args.bids, subject=args.subject, session=args.session,
                         total_field_file=args.total_field, local_field_file=args.local_field,
                         mask_file=args.mask, reference_mask_file=args.reference_mask, config=_config(args),
                         b0_dir=args.b0_dir, phase_sign=args.phase_sign, phase_unwrapped=args.phase_unwrapped,
                         force=args.force, progress=progress)
        print(f"qsm: wrote {args.out}/chi.nii.gz (ppm) and provenance.json", file=sys.stderr)
    elif args.command == "invert":
        options = _options(args.option)
        unknown = set(options) - {args.method}
        if unknown:
            raise QSMInputError(f"--option {', '.join(sorted(unknown))}: only options of --method {args.method} apply")
        workflow.invert_field(args.local_field, args.out, unit=args.unit, mask_file=args.mask, b0_t=args.b0,
                              method=args.method, options=options.get(args.method), b0_dir=args.b0_dir,
                              force=args.force, progress=progress)
        print(f"qsm: wrote {args.out} (ppm)", file=sys.stderr)
    elif args.command == "simulate":
        workflow.simulate_dataset(args.out, voxel_size_mm=args.voxel_size, b0_t=args.b0, te_s=args.te, snr=args.snr,
                                  subject=args.subject, b0_dir=args.b0_dir, seed=args.seed, force=args.force)
        print(f"qsm: wrote the simulated BIDS dataset to {args.out}", file=sys.stderr)
    elif args.command == "demo":
        _result, metrics = workflow.run_demo(args.out, force=args.force, progress=progress)
        print(f"qsm: demo written to {args.out}: NRMSE {metrics['nrmse_percent']:.1f} %, worst deep grey "
              f"matter error {metrics['dgm_max_abs_error_ppm']:.4f} ppm; open {args.out}/report.html",
              file=sys.stderr)


def main(argv=None):
    """Entry point of the ``qsm`` command; returns the exit status."""
    args = _get_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qsm: %(message)s"))
    logger = logging.getLogger("qsmlib")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False
    try:
        _dispatch(args, ProgressPrinter(quiet=args.quiet))
    except QSMInputError as exc:
        print(f"qsm: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except (KeyboardInterrupt, Cancelled):
        print("qsm: cancelled; no outputs were written", file=sys.stderr)
        return EXIT_CANCELLED
    return 0


if __name__ == "__main__":
    sys.exit(main())
