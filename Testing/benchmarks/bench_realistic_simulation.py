"""Benchmark of the realistic simulator, and where its data differ from the inversions' model.

    python Testing/benchmarks/bench_realistic_simulation.py [--voxel-size MM [MM MM]] [--b0 T]
        [--tilt-deg DEG] [--wm-anisotropy] [--coils N] [--differences]

Simulates the 0.64 mm head (5 echoes 4-28 ms, SNR 100) with
:func:`qsmlib.simulation.simulate_realistic_gre` and prints the time of each
stage, the peak memory of the process, and the time of one real FFT pair of
the fine head grid (256 x 320 x 320) measured in the same run.

``--differences`` also simulates the head noiseless at TE 3 and 20 ms and
compares, on the acquisition grid, with the forward model the inversions use
(the discrete kernel applied to the true susceptibility):

- the local-field truth (the exact fine field, k-space truncated) minus the
  discrete model: the linear part of the difference;
- the field the phase encodes, minus the true background, minus the discrete
  model: what an inversion meets after a perfect background removal;

as mean absolute values (ppm) at the brain's edge (outer 2 voxels), in its
interior (3 voxels in), at the deep grey matter's edges and interiors, in
veins and in white-matter interiors. This is a benchmark: it asserts nothing.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from qsmlib.constants import hz_per_ppm
from qsmlib.dipole import dipole_convolve
from qsmlib.phase import wrap_to_pi
from qsmlib.simulation import load_fine_head_model, simulate_realistic_gre

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import fft_pair_seconds  # noqa: E402  (the same FFT floor as the pipeline benchmark)

DGM_LABELS = (1, 2, 3, 4, 5, 6, 7)
BLOOD, WM = 11, 8


def tilted_direction(tilt_deg):
    """B0 direction tilted by ``tilt_deg`` from z about the x axis (voxel coordinates)."""
    angle = np.deg2rad(tilt_deg)
    return (0.0, float(np.sin(angle)), float(np.cos(angle)))


def regions(sim):
    """Named boolean masks on the acquisition grid."""
    cube = np.ones((3, 3, 3), bool)
    mask, labels = sim.brain_mask, sim.labels
    dgm = np.isin(labels, DGM_LABELS) & mask
    return {
        "brain edge (2 vox)": mask & ~ndi.binary_erosion(mask, cube, iterations=2),
        "brain interior (3 vox in)": ndi.binary_erosion(mask, cube, iterations=3),
        "DGM edge": dgm & ndi.binary_dilation(~np.isin(labels, DGM_LABELS), cube),
        "DGM interior": dgm & ~ndi.binary_dilation(~dgm, cube, iterations=2),
        "veins": (labels == BLOOD) & mask,
        "WM interior": (labels == WM) & mask & ~ndi.binary_dilation(labels != WM, cube, iterations=2),
    }


def differences(voxel_size, b0_t, b0_dir, wm_anisotropy):
    sim = simulate_realistic_gre(voxel_size_mm=voxel_size, b0_t=b0_t, te_s=(0.003, 0.020), snr=None,
                                 b0_dir=b0_dir, wm_anisotropy=wm_anisotropy, seed=11)
    model = dipole_convolve(sim.chi_ppm, sim.voxel_size_mm, sim.b0_dir)
    background = sim.total_field_hz / hz_per_ppm(sim.b0_t) - sim.local_field_ppm
    rows = [("local-field truth - discrete model", sim.local_field_ppm - model)]
    for echo, te in enumerate(sim.te_s):
        scale = 2 * np.pi * te * hz_per_ppm(sim.b0_t)
        residual = wrap_to_pi(sim.phase[..., echo] - sim.phase_offset_rad - (background + model) * scale)
        rows.append((f"phase field (TE {te * 1000:.0f} ms) - background - discrete model", residual / scale))
    masks = regions(sim)
    rms = float(np.sqrt(np.mean(sim.local_field_ppm[sim.brain_mask] ** 2)))
    print(f"\nDifferences from the inversions' forward model (mean |.| in ppm; local field RMS in the brain "
          f"{rms:.4f} ppm):")
    print(f"  {'':58s}" + "".join(f"{name:>27s}" for name in masks))
    for name, values in rows:
        values = np.abs(values - np.median(values[masks["brain interior (3 vox in)"]]))
        print(f"  {name:58s}" + "".join(f"{values[m].mean():27.5f}" for m in masks.values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, nargs="+", default=[1.0], metavar="MM")
    parser.add_argument("--b0", type=float, default=3.0, metavar="T")
    parser.add_argument("--tilt-deg", type=float, default=0.0, help="B0 tilt from z about x (degrees)")
    parser.add_argument("--wm-anisotropy", action="store_true")
    parser.add_argument("--coils", type=int, default=0)
    parser.add_argument("--differences", action="store_true",
                        help="also compare with the discrete forward model (a second, noiseless simulation)")
    args = parser.parse_args()
    voxel_size = args.voxel_size[0] if len(args.voxel_size) == 1 else tuple(args.voxel_size)
    b0_dir = tilted_direction(args.tilt_deg)

    start = time.perf_counter()
    model = load_fine_head_model()
    load_s = time.perf_counter() - start
    sim = simulate_realistic_gre(model, voxel_size_mm=voxel_size, b0_t=args.b0, b0_dir=b0_dir,
                                 wm_anisotropy=args.wm_anisotropy, n_coils=args.coils, seed=1)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    floor, grid = fft_pair_seconds(model.labels.shape, repeats=3)
    print(f"Realistic simulation: {sim.magnitude.shape[:3]} voxels of {sim.voxel_size_mm} mm, {sim.b0_t:g} T, "
          f"{sim.te_s.size} echoes, B0 tilt {args.tilt_deg:g} deg, WM anisotropy {args.wm_anisotropy}, "
          f"{args.coils} coils")
    print(f"  load the 0.64 mm model      {load_s:7.2f} s")
    for stage, seconds in sim.timings_s.items():
        print(f"  {stage:27s} {seconds:7.2f} s  {seconds / floor:6.1f} FFT pairs")
    print(f"  peak memory (max RSS)       {peak_gib:7.2f} GiB")
    print(f"  one real FFT pair on {grid}: {floor:.2f} s")
    if args.differences:
        differences(voxel_size, args.b0, b0_dir, args.wm_anisotropy)


if __name__ == "__main__":
    main()
