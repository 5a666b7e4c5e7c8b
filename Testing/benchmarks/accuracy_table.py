"""Every background removal and every inversion on the in-house simulated head.

    python Testing/benchmarks/accuracy_table.py [--full] [--seed N]

This head's brain field is made with the same discrete k-space kernel that
the inversions use (the "inverse crime"), so its figures flatter every
k-space method: the README's accuracy table and the defaults come from
``robustness_table.py`` on the realistic head instead (issue 12). This table
stays as a quick comparison of every method, and a regression check.

The head is simulated at 1 mm, 3 T, 5 echoes (4-28 ms), SNR 100, with the
background field of air and bone, texture, a phase offset and a receive bias,
using a texture/noise seed (default 2026) that was not used while tuning any
default. Two parts:

- inversion alone: every inversion method on the TRUE local field and the
  true brain mask (COSMOS on three orientations of the same head);
- end to end from the raw magnitude and phase with the automatic mask: every
  background removal with the consensus inversion, and every inversion with
  the consensus background removal (``--full``: every pair).

Metrics (:mod:`qsmlib.metrics`): NRMSE, HFEN, SSIM and XSIM over the voxels
the map covers inside the true brain, and the mean absolute deep grey matter
error in ppm after whole-brain referencing. Times are wall-clock seconds of
the stage(s) on this machine, with the time of one real FFT pair of the
padded head grid measured in the same run. This is a benchmark: it asserts nothing.
"""

import argparse
import os
import platform
import time

import numpy as np

from qsmlib import metrics
from qsmlib.constants import ppm_to_hz
from qsmlib.dipole import dipole_convolve
from qsmlib.inversion import cosmos
from qsmlib.pipeline import (BGREMOVE_METHODS, INVERSION_METHODS, PRESETS, PipelineConfig, reconstruct)
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.workflow import DGM_STRUCTURES

from bench_pipeline import fft_pair_seconds

CONSENSUS = PRESETS["consensus"]
#: Orientations for COSMOS: B0 along z and tilted by about 25 degrees about x and about y.
COSMOS_DIRECTIONS = ((0.0, 0.0, 1.0), (0.0, 0.423, 0.906), (0.423, 0.0, 0.906))


def score(chi, sim, mask, dgm_names):
    scored = mask & sim.brain_mask
    return {"nrmse": metrics.nrmse(chi, sim.chi_ppm, scored), "hfen": metrics.hfen(chi, sim.chi_ppm, scored),
            "ssim": metrics.ssim(chi, sim.chi_ppm, scored), "xsim": metrics.xsim(chi, sim.chi_ppm, scored),
            "dgm": metrics.dgm_mean_abs_error(chi, sim.chi_ppm, sim.labels, list(dgm_names), scored),
            "kept": 100.0 * scored.sum() / sim.brain_mask.sum()}


def row(label, m, seconds):
    return (f"| {label} | {m['nrmse']:.1f} % | {m['hfen']:.1f} % | {m['ssim']:.3f} | {m['xsim']:.3f} | "
            f"{m['dgm']:.4f} | {m['kept']:.1f} % | {seconds:.1f} s |")


HEADER = ("| method | NRMSE | HFEN | SSIM | XSIM | mean abs DGM error (ppm) | brain scored | time |\n"
          "|---|---|---|---|---|---|---|---|")


def inversion_alone(sim, dgm_names, lines, progress):
    field_ppm = sim.local_field_ppm
    lines += ["", "**Inversion alone, from the true local field** (true brain mask; time of the inversion)", "",
              HEADER]
    for name, func in INVERSION_METHODS.items():
        config = PipelineConfig(inversion=name, reference="brain", check_phase_sign=False)
        start = time.perf_counter()
        # the magnitude goes along: MEDI's edges and MEDI+0's CSF come from it, as end to end
        result = reconstruct(local_field_hz=ppm_to_hz(field_ppm, sim.b0_t), mask=sim.brain_mask,
                             magnitude=sim.magnitude, te_s=sim.te_s, b0_t=sim.b0_t,
                             voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=config)
        seconds = time.perf_counter() - start
        lines.append(row(f"`{name}`", score(result.chi_ppm, sim, result.mask, dgm_names), seconds))
        progress(lines[-1])
    fields = [np.where(sim.brain_mask, dipole_convolve(sim.chi_ppm, sim.voxel_size_mm, d), 0).astype(np.float32)
              for d in COSMOS_DIRECTIONS]
    start = time.perf_counter()
    chi = cosmos(fields, sim.brain_mask, sim.voxel_size_mm, b0_dirs=COSMOS_DIRECTIONS)
    seconds = time.perf_counter() - start
    chi = np.where(sim.brain_mask, chi - chi[sim.brain_mask].mean(), 0)
    lines.append(row("`cosmos` (3 orientations, 25 deg apart)", score(chi, sim, sim.brain_mask, dgm_names),
                     seconds))
    progress(lines[-1])


def end_to_end(sim, dgm_names, lines, progress, full):
    lines += ["", "**End to end, from the raw magnitude and phase** (automatic mask; time of the whole "
              "pipeline)", "", HEADER]
    pairs = [(b, CONSENSUS["inversion"]) for b in BGREMOVE_METHODS]
    pairs += [(CONSENSUS["bgremove"], i) for i in INVERSION_METHODS if i != CONSENSUS["inversion"]]
    if full:
        pairs = [(b, i) for b in BGREMOVE_METHODS for i in INVERSION_METHODS]
    for bgremove, inversion in pairs:
        config = PipelineConfig.from_preset("consensus", bgremove=bgremove, inversion=inversion,
                                            check_phase_sign=False)
        start = time.perf_counter()
        result = reconstruct(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                             voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=config)
        seconds = time.perf_counter() - start
        label = f"`{bgremove}` + `{inversion}`"
        if (bgremove, inversion) == (CONSENSUS["bgremove"], CONSENSUS["inversion"]):
            label = f"**{label} (consensus preset)**"
        lines.append(row(label, score(result.chi_ppm, sim, result.mask, dgm_names), seconds))
        progress(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="end to end: every background x inversion pair")
    parser.add_argument("--seed", type=int, default=2026, help="texture and noise seed (default 2026)")
    parser.add_argument("--only", choices=("alone", "end-to-end"), help="run one part only")
    args = parser.parse_args()

    phantom = load_head_phantom(1.0)
    sim = simulate_gre(phantom, seed=args.seed)
    dgm_names = {k: t.name for k, t in phantom.tissues.items() if t.name in DGM_STRUCTURES}
    floor, grid = fft_pair_seconds(sim.magnitude.shape[:3])
    lines = [f"Simulated head, 1 mm, {sim.magnitude.shape[:3]}, 3 T, 5 echoes 4-28 ms, SNR 100, seed "
             f"{args.seed}; {platform.machine()} with {len(os.sched_getaffinity(0))} cores, "
             f"one real FFT pair on the padded grid {grid}: {floor * 1000:.0f} ms."]
    print(lines[0], flush=True)
    if args.only != "end-to-end":
        inversion_alone(sim, dgm_names, lines, lambda line: print(line, flush=True))
    if args.only != "alone":
        end_to_end(sim, dgm_names, lines, lambda line: print(line, flush=True), args.full)


if __name__ == "__main__":
    main()
