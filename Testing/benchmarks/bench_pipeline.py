"""Benchmark of the QSM pipeline: time, FFT pairs and peak memory per stage, and how they scale.

    python Testing/benchmarks/bench_pipeline.py [--sizes 2 1 0.7 0.5] [--preset consensus]
                                                [--markdown FILE] [--write-readme]
    python Testing/benchmarks/bench_pipeline.py --methods     # every bgremove and inversion at 1 mm

Each case simulates the shipped head (:func:`qsmlib.simulation.simulate_gre`)
at one voxel size: 3 T with 5 echoes of 4-28 ms at 2, 1 and 0.7 mm, and 7 T
with 4 echoes of 3-15 ms at 0.5 mm (a 0.5 mm 7 T whole head, 328 x 410 x 410).
A fresh Python process then reads the magnitude and phase from disk and runs
the preset, as ``qsm run`` would, while a sampling thread reads the process's
resident memory every few milliseconds. Per stage the table gives:

- seconds (wall clock);
- FFT pairs: the real FFTs the stage ran (forward + inverse), in pairs of its
  largest grid (the pipeline's own count, ``provenance['stages'][i]['fft_pairs']``);
- ratio to the floor: seconds divided by the time of one real FFT pair on the
  fast padded grid of the image, measured in the same process just before the
  run, so that ratios compare across machines and loads;
- peak memory: the largest resident set of the process during the stage
  (inputs included, as for a user's run).

The exponent of time against voxel count is fitted over the cases (log-log
least squares). Accuracy against the simulation's truth is printed per case
(NRMSE, worst deep grey matter error), to check that a faster code gives the
same maps. This is a benchmark, not a test: it asserts nothing. ``make bench``
runs it and writes the README's table (between the markers
``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from qsmlib.fourier import fft_workers, padded_shape
from readme_block import publish_table

#: (voxel size mm, field T, echo times s) of each case.
CASES = {
    2.0: (3.0, (0.004, 0.010, 0.016, 0.022, 0.028)),
    1.0: (3.0, (0.004, 0.010, 0.016, 0.022, 0.028)),
    0.7: (3.0, (0.004, 0.010, 0.016, 0.022, 0.028)),
    0.5: (7.0, (0.003, 0.007, 0.011, 0.015)),
}
PAGE_BYTES = 4096


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


class MemorySampler:
    """Largest resident set (bytes) of this process per stage, sampled every ``interval_s`` by a thread."""

    def __init__(self, interval_s=0.005):
        self.interval_s = interval_s
        self.stage = "start"
        self.peaks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def resident():
        """Resident set size of this process now (bytes)."""
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_BYTES

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def sample(self):
        rss = self.resident()
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)

    def enter(self, stage):
        self.sample()
        self.stage = stage

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def child(folder, preset):
    """In a fresh process: read the acquisition from ``folder``, run ``preset``, write the records as JSON."""
    from qsmlib.pipeline import PipelineConfig, reconstruct

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    with MemorySampler() as memory:
        magnitude = np.load(folder / "magnitude.npy")
        phase = np.load(folder / "phase.npy")
        inputs_bytes = memory.resident()
        memory.enter("floor")
        floor, grid = fft_pair_seconds(magnitude.shape[:3])
        memory.enter("before the run")

        def progress(stage, fraction):
            if fraction == 0.0:
                memory.enter(stage)

        start = time.perf_counter()
        result = reconstruct(magnitude=magnitude, phase=phase, te_s=meta["te_s"], b0_t=meta["b0_t"],
                             voxel_size=meta["voxel_size"], b0_dir=meta["b0_dir"],
                             config=PipelineConfig.from_preset(preset), progress=progress)
        total = time.perf_counter() - start
    np.save(folder / "chi.npy", result.chi_ppm)
    np.save(folder / "mask.npy", result.mask)
    stages = [{"stage": s["stage"], "method": s["method"], "time_s": s["time_s"],
               "fft_pairs": s.get("fft_pairs", 0.0), "fft_grid": s.get("fft_grid"),
               "iterations": s.get("iterations"), "peak_bytes": memory.peaks.get(s["stage"], 0)}
              for s in result.provenance["stages"]]
    record = {"floor_s": floor, "floor_grid": list(grid), "total_s": total, "stages": stages,
              "inputs_bytes": inputs_bytes,
              "peak_bytes": max(v for k, v in memory.peaks.items() if k != "floor"), "threads": fft_workers()}
    (folder / "record.json").write_text(json.dumps(record))


def run_case(voxel_size, preset, workdir):
    """Simulate one case, run it in a fresh process, and return its record with accuracy."""
    from qsmlib.simulation import load_head_phantom, simulate_gre
    from qsmlib.workflow import accuracy_metrics

    b0_t, te_s = CASES[voxel_size]
    phantom = load_head_phantom(voxel_size)
    sim = simulate_gre(phantom, b0_t=b0_t, te_s=te_s, snr=100.0, seed=0)
    folder = Path(workdir) / f"{voxel_size:g}mm"
    folder.mkdir()
    np.save(folder / "magnitude.npy", sim.magnitude)
    np.save(folder / "phase.npy", sim.phase)
    (folder / "meta.json").write_text(json.dumps({"te_s": list(sim.te_s), "b0_t": b0_t,
                                                  "voxel_size": list(sim.voxel_size_mm), "b0_dir": list(sim.b0_dir)}))
    shape = sim.magnitude.shape
    del sim.magnitude, sim.phase
    subprocess.run([sys.executable, __file__, "--child", str(folder), "--preset", preset], check=True)
    record = json.loads((folder / "record.json").read_text())
    chi, mask = np.load(folder / "chi.npy"), np.load(folder / "mask.npy")
    m = accuracy_metrics(chi, sim.chi_ppm, mask & sim.brain_mask, sim.labels, phantom.tissues)
    record.update(voxel_size=voxel_size, shape=list(shape), b0_t=b0_t, voxels=int(np.prod(shape[:3])),
                  nrmse=m["nrmse_percent"], dgm_worst=m["dgm_max_abs_error_ppm"])
    return record


def table(records, preset):
    gib = 2.0 ** 30
    lines = [f"Preset `{preset}`, simulated head, {records[0]['threads']} FFT threads. Per stage: seconds, real FFT "
             "pairs run (in pairs of the stage's largest grid), seconds as a ratio to one FFT pair of the image's "
             "padded grid measured in the same run (the floor), peak resident memory of the process (GiB, inputs "
             "included).", "",
             "| case | stage | method | seconds | FFT pairs | ratio to floor | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        case = (f"{r['voxel_size']:g} mm, {r['b0_t']:g} T, {r['shape'][3]} echoes, "
                f"{'x'.join(str(n) for n in r['shape'][:3])}")
        for s in r["stages"]:
            if s["method"] == "given":
                continue
            lines.append(f"| {case} | {s['stage']} | {s['method']} | {s['time_s']:.2f} | {s['fft_pairs']:.0f} | "
                         f"{s['time_s'] / r['floor_s']:.0f} | {s['peak_bytes'] / gib:.2f} |")
        lines.append(f"| {case} | **total** | floor {r['floor_s'] * 1000:.0f} ms | **{r['total_s']:.2f}** | "
                     f"{sum(s['fft_pairs'] for s in r['stages']):.0f} | {r['total_s'] / r['floor_s']:.0f} | "
                     f"**{r['peak_bytes'] / gib:.2f}** |")
    lines.append("")
    for r in records:
        lines.append(f"- {r['voxel_size']:g} mm: NRMSE {r['nrmse']:.1f} %, worst deep grey matter error "
                     f"{r['dgm_worst']:.4f} ppm (against the simulation's truth; inputs "
                     f"{r['inputs_bytes'] / gib:.2f} GiB of the peak).")
    if len(records) >= 2:
        voxels = np.log([r["voxels"] for r in records])
        seconds = np.log([r["total_s"] for r in records])
        exponent = np.polyfit(voxels, seconds, 1)[0]
        lines.append(f"- Time grows as (voxel count)^{exponent:.2f} over these cases (log-log least squares).")
    return "\n".join(lines)


def methods():
    """Every background removal and inversion once at 1 mm, in this process (time only)."""
    from qsmlib.pipeline import BGREMOVE_METHODS, INVERSION_METHODS, PipelineConfig, reconstruct
    from qsmlib.simulation import load_head_phantom, simulate_gre

    sim = simulate_gre(load_head_phantom(1.0), seed=0)
    floor, _ = fft_pair_seconds(sim.magnitude.shape[:3])
    front = reconstruct(magnitude=sim.magnitude, phase=sim.phase, te_s=sim.te_s, b0_t=sim.b0_t,
                        voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir, config=PipelineConfig(inversion="tkd"))
    common = dict(mask=front.mask, b0_t=sim.b0_t, voxel_size=sim.voxel_size_mm, b0_dir=sim.b0_dir,
                  magnitude=sim.magnitude, te_s=sim.te_s)
    for kind, names in (("bgremove", BGREMOVE_METHODS), ("inversion", INVERSION_METHODS)):
        for name in names:
            start = time.perf_counter()
            if kind == "bgremove":
                reconstruct(total_field_hz=front.total_field_hz, config=PipelineConfig(
                    bgremove=name, inversion="tkd", check_phase_sign=False), **common)
            else:
                reconstruct(local_field_hz=front.local_field_hz, config=PipelineConfig(
                    inversion=name, check_phase_sign=False), **common)
            seconds = time.perf_counter() - start
            print(f"{kind:10s} {name:12s} {seconds:7.2f} s {seconds / floor:7.0f} FFT-pair floors", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=sorted(CASES, reverse=True),
                        choices=sorted(CASES), help="voxel sizes (mm) to run (default: all)")
    parser.add_argument("--preset", default="consensus", help="preset to run (default consensus)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--methods", action="store_true", help="time every bgremove and inversion at 1 mm instead")
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.preset)
        return
    if args.methods:
        methods()
        return
    records = []
    with tempfile.TemporaryDirectory(prefix="qsm-bench-") as workdir:
        for size in args.sizes:
            print(f"running {size:g} mm ...", flush=True)
            records.append(run_case(size, args.preset, workdir))
            r = records[-1]
            print(f"  {r['total_s']:.2f} s, peak {r['peak_bytes'] / 2 ** 30:.2f} GiB, NRMSE {r['nrmse']:.1f} %, "
                  f"DGM worst {r['dgm_worst']:.4f} ppm", flush=True)
    text = table(records, args.preset)
    publish_table("bench-table", text, markdown=args.markdown, readme=args.write_readme)


if __name__ == "__main__":
    main()
