"""Robustness table: the presets and plain TKD over a table of acquisitions of the realistic head.

    python Testing/benchmarks/robustness_table.py [--rows NAME ...] [--list]
        [--tuning-seed N] [--report-seed N] [--markdown FILE]

Each row is one acquisition simulated with
:func:`qsmlib.simulation.simulate_realistic_gre` (0.64 mm head, exact field of
cuboid voxels, k-space truncation, texture, imperfect shim; a model the
inversions do not share). The rows vary one factor at a time around a base
acquisition (1 mm, 3 T, 5 echoes 4-28 ms, SNR 100, B0 along z, isotropic
white matter): voxel size 0.64 / 2 / 0.5 x 0.5 x 2 mm, 7 T (echoes 3-19 ms),
SNR 30 / 300, B0 tilted 20 degrees, white-matter anisotropy, and one row
combining the hard cases.

Per row, three reconstructions from the raw magnitude and phase:

- the ``consensus`` preset (ROMEO, PDF, TV-ADMM);
- the ``fast`` preset (ROMEO, V-SHARP, TKD at its default threshold);
- plain TKD on the consensus run's local field and mask, with the threshold
  chosen by a sweep on a TUNING simulation (``--tuning-seed``: other texture,
  noise, shim errors and phase offset) of the same acquisition, then applied
  unchanged to the REPORTED simulation (``--report-seed``).

Metrics against the k-space-truncated true susceptibility over the voxels the
map covers inside the true brain (:mod:`qsmlib.metrics`, whole-brain
referencing): NRMSE (%), XSIM, and the worst deep grey matter error (ppm,
largest |mean error| over the seven nuclei). The last lines give each
method's worst case over the rows run. Times are wall-clock seconds on this
machine. This is a benchmark: it asserts nothing.
"""

import argparse
import dataclasses
import time

import numpy as np

from qsmlib import metrics
from qsmlib.constants import hz_to_ppm
from qsmlib.inversion.tkd import tkd
from qsmlib.pipeline import PipelineConfig, reconstruct
from qsmlib.simulation import load_fine_head_model, simulate_realistic_gre

TE_3T_S = (0.004, 0.010, 0.016, 0.022, 0.028)
TE_7T_S = (0.003, 0.007, 0.011, 0.015, 0.019)
TILT_20_DEG = (0.0, float(np.sin(np.deg2rad(20.0))), float(np.cos(np.deg2rad(20.0))))
DGM_LABELS = {1: "caudate", 2: "GP", 3: "Putamen", 4: "RN", 5: "DN", 6: "SNandSTN", 7: "Thalamus"}
TKD_THRESHOLDS = (0.06, 0.08, 0.10, 0.12, 0.15, 0.19, 0.24, 0.30, 0.36, 0.45)

BASE = {"voxel_size_mm": 1.0, "b0_t": 3.0, "te_s": TE_3T_S, "snr": 100.0, "b0_dir": (0.0, 0.0, 1.0),
        "wm_anisotropy": False}
ROWS = {
    "base-1mm": {},
    "0.64mm": {"voxel_size_mm": 0.64},
    "2mm": {"voxel_size_mm": 2.0},
    "0.5x0.5x2mm": {"voxel_size_mm": (0.5, 0.5, 2.0)},
    "7T": {"b0_t": 7.0, "te_s": TE_7T_S},
    "snr30": {"snr": 30.0},
    "snr300": {"snr": 300.0},
    "tilt20": {"b0_dir": TILT_20_DEG},
    "wm-anisotropy": {"wm_anisotropy": True},
    "hard-2mm-7T-snr30-tilt-aniso": {"voxel_size_mm": 2.0, "b0_t": 7.0, "te_s": TE_7T_S, "snr": 30.0,
                                     "b0_dir": TILT_20_DEG, "wm_anisotropy": True},
}


def pipeline_config(preset, **overrides):
    """The preset's configuration; a mask plausibility gate, where the library has one, is recorded, not fatal."""
    settings = {}
    if "accept_implausible_mask" in {f.name for f in dataclasses.fields(PipelineConfig)}:
        settings["accept_implausible_mask"] = True
    return PipelineConfig.from_preset(preset, **overrides, **settings)


def score(chi, sim, mask):
    scored = mask & sim.brain_mask
    errors = metrics.region_errors(chi, sim.chi_ppm, sim.labels, DGM_LABELS, scored)
    return {"nrmse": metrics.nrmse(chi, sim.chi_ppm, scored), "xsim": metrics.xsim(chi, sim.chi_ppm, scored),
            "dgm_worst": max(abs(e) for e in errors.values()),
            "kept": 100.0 * scored.sum() / sim.brain_mask.sum()}


def run_pipeline(sim, preset, **overrides):
    start = time.perf_counter()
    result = reconstruct(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                         voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=pipeline_config(preset, **overrides))
    return result, time.perf_counter() - start


def tkd_from(result, sim, threshold):
    field_ppm = hz_to_ppm(result.local_field_hz, sim.b0_t)
    return tkd(field_ppm, result.mask, sim.voxel_size_mm, b0_dir=sim.b0_dir, threshold=threshold)


def tune_tkd(model, acquisition, seed):
    """TKD threshold with the lowest NRMSE on the tuning simulation (consensus local field)."""
    sim = simulate_realistic_gre(model, seed=seed, **acquisition)
    # Same unwrapping and background removal as the consensus preset; the inversion is not used.
    result, _ = run_pipeline(sim, "consensus", inversion="tkd")
    sweep = {t: score(tkd_from(result, sim, t), sim, result.mask)["nrmse"] for t in TKD_THRESHOLDS}
    best = min(sweep, key=sweep.get)
    return best, sweep


def describe(acquisition):
    size = acquisition["voxel_size_mm"]
    size = "x".join(f"{v:g}" for v in size) if isinstance(size, tuple) else f"{size:g}"
    tilt = np.degrees(np.arccos(acquisition["b0_dir"][2]))
    return (f"{size} mm, {acquisition['b0_t']:g} T, SNR {acquisition['snr']:g}, tilt {tilt:.0f} deg, "
            f"WM anisotropy {'on' if acquisition['wm_anisotropy'] else 'off'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help="rows to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the rows and stop")
    parser.add_argument("--tuning-seed", type=int, default=101, help="seed of the simulations that tune TKD")
    parser.add_argument("--report-seed", type=int, default=202, help="seed of the simulations reported")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    args = parser.parse_args()
    if args.tuning_seed == args.report_seed:
        parser.error("the tuning and the reported seeds must differ")
    names = args.rows or list(ROWS)
    if args.list:
        for name in ROWS:
            print(f"{name:32s} {describe({**BASE, **ROWS[name]})}")
        return

    model = load_fine_head_model()
    header = ("| row | acquisition | method | NRMSE | XSIM | worst DGM error (ppm) | brain scored | time |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = [header]
    print(header, flush=True)
    worst = {}
    for name in names:
        acquisition = {**BASE, **ROWS[name]}
        start = time.perf_counter()
        threshold, sweep = tune_tkd(model, acquisition, args.tuning_seed)
        tuning_s = time.perf_counter() - start
        sim = simulate_realistic_gre(model, seed=args.report_seed, **acquisition)
        consensus, consensus_s = run_pipeline(sim, "consensus")
        fast, fast_s = run_pipeline(sim, "fast")
        start = time.perf_counter()
        chi_tkd = tkd_from(consensus, sim, threshold)
        tkd_s = time.perf_counter() - start
        for method, chi, mask, seconds in (("consensus", consensus.chi_ppm, consensus.mask, consensus_s),
                                           ("fast", fast.chi_ppm, fast.mask, fast_s),
                                           (f"TKD {threshold:g} (tuned)", chi_tkd, consensus.mask, tkd_s)):
            m = score(chi, sim, mask)
            key = method.split()[0]
            previous = worst.get(key, {"nrmse": 0.0, "xsim": 1.0, "dgm_worst": 0.0})
            worst[key] = {"nrmse": max(previous["nrmse"], m["nrmse"]), "xsim": min(previous["xsim"], m["xsim"]),
                          "dgm_worst": max(previous["dgm_worst"], m["dgm_worst"])}
            line = (f"| {name} | {describe(acquisition)} | {method} | {m['nrmse']:.1f} % | {m['xsim']:.3f} | "
                    f"{m['dgm_worst']:.4f} | {m['kept']:.1f} % | {seconds:.1f} s |")
            lines.append(line)
            print(line, flush=True)
        sweep_text = ", ".join(f"{t:g}: {v:.1f}" for t, v in sweep.items())
        print(f"    (tuning seed {args.tuning_seed}, {tuning_s:.0f} s: TKD NRMSE % by threshold {sweep_text}; "
              f"simulation of the reported seed {sim.timings_s['total']:.0f} s)", flush=True)
    lines.append("")
    for key, m in worst.items():
        line = (f"worst over {len(names)} rows, {key}: NRMSE {m['nrmse']:.1f} %, XSIM {m['xsim']:.3f}, "
                f"worst DGM error {m['dgm_worst']:.4f} ppm")
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(f"Tuning seed {args.tuning_seed}, reported seed {args.report_seed}.\n\n" + "\n".join(lines)
                         + "\n")


if __name__ == "__main__":
    main()
