"""Benchmark: one reconstruction through ``qsm web`` against the same through ``qsm run``.

    python Testing/benchmarks/bench_web.py [--voxel-size 1] [--preset consensus] [--repeats 3] [--write-readme]

The simulated head (3 T, 5 echoes of 4-28 ms, SNR 100) is written as a 4D
magnitude and phase NIfTI with a JSON sidecar into a data folder. Then, one
after the other on the same machine:

- ``qsm run --mag --phase --preset P`` in a fresh process: wall clock of the
  command (reading, the pipeline, writing the maps), the reconstruction's own
  time (``total_time_s`` in provenance.json), and the process's peak resident
  memory (``os.wait4``'s ``ru_maxrss``); a second fresh process loads the same
  files as ``qsm run`` does (``qsmlib.workflow.load_run_inputs``) and gives its
  resident memory then: the command's memory with its inputs loaded;
- ``qsm web --data`` in a fresh process, driven by headless Chromium: the files
  are loaded through the panel, the preset chosen, Run clicked; the time from
  the click until the map is offered for download, the reconstruction's own
  time (the same ``total_time_s``, which the status line shows), and the
  server's peak resident memory
  (``VmHWM`` in /proc) with its resident memory before Run (the app, its views
  and the loaded echoes).

The issue's yardstick: time and memory through the app within 20 % of
``qsm run``. Memory is given twice: the whole peak (the app's includes its
own footprint: VTK, MRML, trame, the views, the loaded echoes), and what the
reconstruction adds to the process once the inputs are loaded (peak minus the
resident memory with the inputs loaded, for each). The two are run in turn
``--repeats`` times and the table gives each measure's median. This is a
benchmark, not a test: it asserts nothing; the machine is shared, so it prints
the numbers of each run. ``--write-readme``
puts the table in the README between ``<!-- web-bench:start -->`` and
``<!-- web-bench:end -->``.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # Testing/, for web_support

import web_support  # noqa: E402
from readme_block import write_readme_block  # noqa: E402

TE_S = (0.004, 0.010, 0.016, 0.022, 0.028)
B0_T = 3.0
RUN_TIMEOUT_MS = 15 * 60 * 1000


def write_inputs(data, voxel_size):
    """The simulated head as data/mag.nii.gz, data/phase.nii.gz and data/mag.json; returns its shape."""
    from qsmlib.io import save_nifti
    from qsmlib.simulation import load_head_phantom, simulate_gre

    sim = simulate_gre(load_head_phantom(voxel_size), b0_t=B0_T, te_s=TE_S, snr=100.0, seed=0)
    affine = sim.affine
    save_nifti(data / "mag.nii.gz", sim.magnitude, affine)
    save_nifti(data / "phase.nii.gz", sim.phase, affine)
    (data / "mag.json").write_text(json.dumps({"EchoTime": list(TE_S), "MagneticFieldStrength": B0_T}))
    return sim.magnitude.shape


def through_cli(data, out, preset):
    """``qsm run`` in a fresh process: wall seconds, pipeline seconds, peak resident MiB."""
    command = [sys.executable, "-m", "qsmlib", "run", "--mag", str(data / "mag.nii.gz"),
               "--phase", str(data / "phase.nii.gz"), "--te", *map(str, TE_S), "--b0", str(B0_T),
               "--preset", preset, "--out", str(out)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"qsm run failed:\n{process.stderr.read().decode()[-2000:]}")
    provenance = json.loads((out / "provenance.json").read_text())
    return {"wall_s": wall, "run_s": provenance["total_time_s"], "peak_mib": usage.ru_maxrss / 1024, "before_run_mib": cli_loaded_mib(data)}


def cli_loaded_mib(data):
    """Resident MiB of a fresh process that has loaded the files as ``qsm run`` does."""
    code = ("import sys; from pathlib import Path; from qsmlib.workflow import load_run_inputs; "
            "data = load_run_inputs(magnitude_files=[sys.argv[1]], phase_files=[sys.argv[2]], "
            f"te_s={list(TE_S)!r}, b0_t={B0_T!r}); "
            "print(next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmRSS')))")
    line = subprocess.run([sys.executable, "-c", code, str(data / "mag.nii.gz"), str(data / "phase.nii.gz")],
                          check=True, capture_output=True, text=True).stdout
    return int(line.split()[1]) / 1024


def _memory_mib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def through_web(data, log_path, preset):
    """The same files through ``qsm web`` in Chromium: click-to-map seconds, run seconds, memory (MiB)."""
    from playwright import sync_api as playwright_api

    with web_support.running_server(data, log_path) as (url, process), playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=web_support.CHROMIUM, args=web_support.CHROMIUM_ARGS)
        page = browser.new_page(viewport=web_support.VIEWPORT)
        page.goto(url)
        page.wait_for_selector("#qsm-load-files", timeout=60_000)
        web_support.load_files(page, "mag.nii.gz", "phase.nii.gz")
        page.click(f"#qsm-preset-{preset}")
        page.wait_for_function(f"() => window.trame.state.get('preset') === '{preset}'", timeout=10_000)
        before_run = _memory_mib(process.pid, "VmRSS")
        started = time.monotonic()
        page.click("#qsm-run")
        page.wait_for_function("() => document.querySelector('#qsm-download-chi') !== null || "
                               "window.trame.state.get('status_type') === 'error'", timeout=RUN_TIMEOUT_MS)
        click_to_map = time.monotonic() - started
        status = web_support.status(page)
        peak = _memory_mib(process.pid, "VmHWM")
        browser.close()
    match = re.search(r"; ([0-9.]+) s\)", status)
    if "ready" not in status or match is None:
        raise SystemExit(f"the web run did not end with a map: {status}")
    return {"wall_s": click_to_map, "run_s": float(match.group(1)), "peak_mib": peak, "before_run_mib": before_run}


def median_record(records):
    """Each measure's median over the runs, with the memory the reconstruction adds (peak minus loaded)."""
    for record in records:
        record["added_mib"] = record["peak_mib"] - record["before_run_mib"]
    return {key: statistics.median(record[key] for record in records) for key in records[0]}


def table(cli, web, shape, voxel_size, preset, repeats):
    ratio = {key: web[key] / cli[key] for key in ("wall_s", "run_s", "peak_mib", "before_run_mib", "added_mib")}
    return "\n".join([
        f"Preset `{preset}`, simulated head at {voxel_size:g} mm ({shape[0]} x {shape[1]} x {shape[2]}, "
        f"{shape[3]} echoes), medians of {repeats} runs of each, in turn on the same machine "
        "(`python Testing/benchmarks/bench_web.py`).",
        "",
        "| | `qsm run` | `qsm web` | web / run |",
        "|---|---|---|---|",
        f"| whole run, s (command; click to map) | {cli['wall_s']:.1f} | {web['wall_s']:.1f} | {ratio['wall_s']:.2f} |",
        f"| reconstruction, s (`total_time_s` of the provenance) | {cli['run_s']:.1f} | {web['run_s']:.1f} | {ratio['run_s']:.2f} |",
        f"| peak resident memory, MiB | {cli['peak_mib']:.0f} | {web['peak_mib']:.0f} | {ratio['peak_mib']:.2f} |",
        f"| resident memory with the inputs loaded, MiB | {cli['before_run_mib']:.0f} | {web['before_run_mib']:.0f} "
        f"| {ratio['before_run_mib']:.2f} |",
        f"| memory the reconstruction adds, MiB | {cli['added_mib']:.0f} | {web['added_mib']:.0f} "
        f"| {ratio['added_mib']:.2f} |",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--preset", default="consensus", choices=("consensus", "fast"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qsm-bench-web-") as folder:
        data = Path(folder) / "data"
        data.mkdir()
        shape = write_inputs(data, args.voxel_size)
        cli_runs, web_runs = [], []
        for repeat in range(args.repeats):
            cli_runs.append(through_cli(data, Path(folder) / f"run-{repeat}", args.preset))
            print(f"qsm run: {cli_runs[-1]}", flush=True)
            web_runs.append(through_web(data, Path(folder) / f"server-{repeat}.log", args.preset))
            print(f"qsm web: {web_runs[-1]}", flush=True)
    text = table(median_record(cli_runs), median_record(web_runs), shape, args.voxel_size, args.preset, args.repeats)
    print(text)
    if args.write_readme:
        write_readme_block("web-bench", text)


if __name__ == "__main__":
    main()
