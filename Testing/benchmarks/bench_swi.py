"""Benchmark of SWI (and R2*) on a 256 x 256 x 176 volume with 4 echoes.

Prints the time of each step and its ratio to one real FFT pair of the same
grid, measured in the same run, so the ratios compare across machines:

    python Testing/benchmarks/bench_swi.py [--shape X Y Z] [--echoes E]

The data are synthetic (a decaying ellipsoid with a smooth, wrapping field,
small paramagnetic "veins" and complex noise); the target is SWI in under
10 s. This is a benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from qsmlib.fourier import fft_workers
from qsmlib.relaxometry import r2star_map
from qsmlib.swi import swi, swi_from_field

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import fft_pair_seconds  # noqa: E402  (the same FFT floor as the pipeline benchmark)


def synthetic_scan(shape, n_echoes, seed=0):
    """Magnitude, phase (radians), field (Hz), mask and echo times of a synthetic head-sized scan."""
    rng = np.random.default_rng(seed)
    te = 0.004 + 0.006 * np.arange(n_echoes)
    axes = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            for i, n in enumerate(shape)]
    radius = axes[0] ** 2 / 0.8 ** 2 + axes[1] ** 2 / 0.85 ** 2 + axes[2] ** 2 / 0.8 ** 2
    mask = radius < 1
    field = (40 * axes[0] * axes[1] + 30 * axes[2] ** 2).astype(np.float32)
    veins = rng.random(shape, dtype=np.float32) > 0.995
    field += np.where(veins, np.float32(10), np.float32(0))
    magnitude = np.empty(shape + (n_echoes,), np.float32)
    phase = np.empty(shape + (n_echoes,), np.float32)
    for echo, t in enumerate(te):
        signal = np.where(mask, np.float32(np.exp(-25 * t)), np.float32(0))
        angle = np.float32(2 * np.pi * t) * field
        real = signal * np.cos(angle) + rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        imag = signal * np.sin(angle) + rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        magnitude[..., echo] = np.hypot(real, imag)
        phase[..., echo] = np.arctan2(imag, real)
    return magnitude, phase, np.where(mask, field, 0), mask, te


def timed(label, floor, func, *args, **kwargs):
    start = time.perf_counter()
    result = func(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"  {label:<44} {seconds:7.2f} s {seconds / floor:8.1f} FFT pairs")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(256, 256, 176), metavar=("X", "Y", "Z"))
    parser.add_argument("--echoes", type=int, default=4)
    args = parser.parse_args()
    shape = tuple(args.shape)
    floor, grid = fft_pair_seconds(shape)
    print(f"grid {shape} x {args.echoes} echoes, {fft_workers()} FFT workers; "
          f"one real FFT pair on {grid}: {floor:.3f} s")
    magnitude, phase, field, mask, te = synthetic_scan(shape, args.echoes)
    voxel_size = (0.9, 0.9, 1.0)
    timed("swi, homodyne (default, no mask)", floor, swi, magnitude, phase, None, voxel_size, te_s=te)
    timed("swi, homodyne, brain mask", floor, swi, magnitude, phase, mask, voxel_size, te_s=te)
    timed("swi, homodyne + sensitivity correction 7 mm", floor, swi, magnitude, phase, mask, voxel_size,
          te_s=te, sensitivity_sigma_mm=7.0)
    timed("swi_from_field (Gaussian high-pass 4 mm)", floor, swi_from_field, magnitude, field, mask, voxel_size,
          te_s=te)
    for method in ("arlo", "loglinear", "nlls"):
        timed(f"r2star_map {method} (brain mask)", floor, r2star_map, magnitude, te, mask, method=method)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak memory of the process (input arrays included): {peak:.2f} GiB")


if __name__ == "__main__":
    main()
