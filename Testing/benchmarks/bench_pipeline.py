"""Benchmark of the QSM pipeline on the simulated 1 mm head (5 echoes, 3 T).

Prints each stage's time and its ratio to one real FFT pair of the same grid,
measured in the same run, so the ratios are comparable across machines, and
the accuracy against the simulation's truth (NRMSE, HFEN, deep grey matter):

    python Testing/benchmarks/bench_pipeline.py [--all] [--preset fast] [--tilt-deg 21]
                                                [--b0 7 --snr 50 --te 0.003 0.006 0.009 0.012]

``--all`` also times every background-removal and inversion method. This is a
benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import resource
import time

import numpy as np
import scipy.fft as sfft

from qsmlib.fourier import fft_workers, padded_shape
from qsmlib.pipeline import BGREMOVE_METHODS, INVERSION_METHODS, PipelineConfig, reconstruct
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.workflow import accuracy_metrics


def fft_pair_seconds(shape, repeats=7):
    """Median time of one rfftn + irfftn on the fast padded grid of ``shape``."""
    grid = padded_shape(shape)
    x = np.random.default_rng(0).standard_normal(grid).astype(np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=fft_workers()), s=grid, workers=fft_workers())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), grid


def run(config, sim, floor, tissues):
    start = time.perf_counter()
    result = reconstruct(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                         voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=config)
    total = time.perf_counter() - start
    for stage in result.provenance["stages"]:
        iterations = stage.get("iterations", "")
        print(f"  {stage['stage']:<20} {stage['method'][:38]:<38} {stage['time_s']:7.2f} s "
              f"{stage['time_s'] / floor:8.1f} FFT pairs  {iterations}")
    print(f"  {'total':<20} {'':<38} {total:7.2f} s {total / floor:8.1f} FFT pairs")
    scored = result.mask & sim.brain_mask
    m = accuracy_metrics(result.chi_ppm, sim.chi_ppm, scored, sim.labels, tissues)
    print(f"  accuracy: NRMSE {m['nrmse_percent']:.1f} %, HFEN {m['hfen_percent']:.1f} %, deep grey matter "
          f"worst {m['dgm_max_abs_error_ppm']:.4f} ppm, mean {m['dgm_mean_abs_error_ppm']:.4f} ppm, "
          f"scored voxels {scored.sum()} of {sim.brain_mask.sum()} in the true brain")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also time every bgremove and inversion method")
    parser.add_argument("--preset", default="consensus", help="preset of the main run (default consensus)")
    parser.add_argument("--tilt-deg", type=float, default=0.0, help="tilt of B0 from the slice axis (degrees)")
    parser.add_argument("--b0", type=float, default=3.0, help="field strength in tesla (default 3)")
    parser.add_argument("--snr", type=float, default=100.0, help="first-echo SNR (default 100)")
    parser.add_argument("--te", type=float, nargs="+", default=[0.004, 0.010, 0.016, 0.022, 0.028],
                        help="echo times in seconds (default 4-28 ms, 5 echoes)")
    parser.add_argument("--seed", type=int, default=0, help="texture and noise seed (default 0)")
    args = parser.parse_args()
    start = time.perf_counter()
    phantom = load_head_phantom(1.0)
    tilt = np.deg2rad(args.tilt_deg)
    sim = simulate_gre(phantom, b0_t=args.b0, te_s=tuple(args.te), snr=args.snr, seed=args.seed,
                       b0_dir=(0.0, float(np.sin(tilt)), float(np.cos(tilt))))
    print(f"simulated {sim.magnitude.shape} in {time.perf_counter() - start:.1f} s")
    floor, grid = fft_pair_seconds(sim.magnitude.shape[:3])
    print(f"floor: one real FFT pair on {grid} takes {floor * 1000:.1f} ms ({fft_workers()} workers)")
    print(f"preset {args.preset}:")
    run(PipelineConfig.from_preset(args.preset), sim, floor, phantom.tissues)
    if args.all:
        for name in BGREMOVE_METHODS:
            print(f"bgremove {name}:")
            run(PipelineConfig(bgremove=name, check_phase_sign=False), sim, floor, phantom.tissues)
        for name in INVERSION_METHODS:
            print(f"inversion {name}:")
            run(PipelineConfig(inversion=name, check_phase_sign=False), sim, floor, phantom.tissues)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"peak memory of this process: {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
