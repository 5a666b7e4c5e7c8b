"""Sweep of a TV-weighted inversion's weight over the robustness table's acquisitions.

    python Testing/benchmarks/tv_weight_sweep.py [--method nltv] [--seed 101] [--rows NAME ...]
        [--gains 0.1 0.15 0.2 0.3 0.45 0.6] [--json FILE]
    python Testing/benchmarks/tv_weight_sweep.py --fit TUNING.json [--check REPORTED.json]

Per row of :data:`robustness_table.ROWS`, the realistic head is simulated with
the given seed and the consensus preset runs on it, with ``--method`` as its
inversion. At the inversion the pipeline's call is intercepted: the same
local field, mask, noise weights and options are inverted again with the
weight ``lam = g * h * sigma_echo`` for every gain ``g`` of ``--gains`` (``h``
the mean voxel edge, ``sigma_echo`` the median field noise SD of the echo fit:
the form of TV-ADMM's rule in :mod:`qsmlib.inversion.tv_weight`, the sweep's
unit whatever the method's own rule), each map referenced
to the brain mean and scored against the truth (NRMSE, worst deep grey matter
error). The row also records the field's own high-pass MAD noise
(:func:`qsmlib.inversion.tv_weight.field_noise_sd`), so that rules on either
noise estimate, and on the voxel size, can be fitted to the per-row best
weights afterwards (``--json``). This is how the rules of
``tv_weight.TV_WEIGHT_RULES`` are calibrated: on the TUNING seed, then checked
on the reported one.

The second form fits rules ``lam = c * h**a * sigma`` (``sigma`` the echo
fit's or the MAD's; ``a`` 1, or fitted) to a sweep: per rule, the constants
that make the worst row's regret smallest, the regret being the NRMSE at the
rule's weight minus the row's best NRMSE over the sweep. NRMSE between swept
weights is interpolated by a parabola in ``log lam`` through the three nearest
weights; a rule whose weight leaves a row's swept range is not considered.
``--check`` scores the fitted constants, unchanged, on another seed's sweep.
The table also scores the method's rule in the library (and, for nonlinear TV,
the one before it).
A benchmark: it asserts nothing.
"""

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

import qsmlib
from qsmlib import pipeline
from qsmlib.inversion import tv_weight
from qsmlib.reference import reference_to_region
from qsmlib.simulation import load_fine_head_model, simulate_realistic_gre
from robustness_table import BASE, ROWS, describe, run_pipeline, score

GAINS = (0.1, 0.15, 0.2, 0.3, 0.45, 0.6)


def sweep_row(model, name, method, seed, gains):
    """Scores of ``method`` at every gain on one row's simulation, with the row's noise estimates."""
    acquisition = {**BASE, **ROWS[name]}
    sim = simulate_realistic_gre(model, seed=seed, **acquisition)
    solver = pipeline.INVERSION_METHODS[method]
    found = {}
    # for the run, the rule lam = h * sigma_echo, so that the intercept reads sigma_echo from lam
    unit_rule = tv_weight.TVWeightRule(gain=1.0, noise="echo fit", voxel_exponent=1.0)

    @functools.wraps(solver)  # the pipeline reads the signature to pass b0_dir, weights, ...
    def intercept(field_ppm, mask, voxel_size, **kwargs):
        h = float(np.mean(voxel_size))
        sigma_echo = kwargs["lam"] / h
        found.update(h=h, sigma_echo_ppm=sigma_echo, sigma_mad_ppm=tv_weight.field_noise_sd(field_ppm, mask),
                     runs={})
        for gain in gains:
            start = time.perf_counter()
            chi = solver(field_ppm, mask, voxel_size, **dict(kwargs, lam=gain * h * sigma_echo))
            chi, _ = reference_to_region(chi, mask, mask)
            scores = score(chi, sim, mask)
            found["runs"][gain] = {"nrmse": scores["nrmse"], "dgm_worst": scores["dgm_worst"],
                                   "seconds": time.perf_counter() - start}
            print(f"  {name} gain {gain:g}: NRMSE {scores['nrmse']:.2f} %, worst DGM {scores['dgm_worst']:.4f} ppm",
                  flush=True)
        return solver(field_ppm, mask, voxel_size, **kwargs)

    calibrated = tv_weight.TV_WEIGHT_RULES.get(method)
    pipeline.INVERSION_METHODS[method] = intercept
    tv_weight.TV_WEIGHT_RULES[method] = unit_rule
    try:
        run_pipeline(sim, "consensus", inversion=method)
    finally:
        pipeline.INVERSION_METHODS[method] = solver
        if calibrated is None:
            del tv_weight.TV_WEIGHT_RULES[method]
        else:
            tv_weight.TV_WEIGHT_RULES[method] = calibrated
    return {"acquisition": describe(acquisition), **found}


NOISE_ESTIMATES = {"echo": "sigma_echo_ppm", "mad": "sigma_mad_ppm"}
#: nonlinear TV's gain on the echo fit's noise (times the voxel edge) before this sweep's rule (issue 12, 2026-12-07)
PREVIOUS_NLTV_ECHO_GAIN = 0.2
EXPONENTS = np.round(np.arange(-0.5, 2.51, 0.1), 2)


def nrmse_at(row, lam):
    """The row's NRMSE at weight ``lam``, interpolated (None outside the swept weights)."""
    gains = np.array(sorted(row["runs"], key=float), dtype=float)
    lams = np.log(gains * row["h"] * row["sigma_echo_ppm"])
    nrmse = np.array([row["runs"][g]["nrmse"] for g in sorted(row["runs"], key=float)])
    x = np.log(lam)
    if not lams[0] - 1e-9 <= x <= lams[-1] + 1e-9:
        return None
    i = int(np.clip(np.searchsorted(lams, x) - 1, 0, len(lams) - 3))
    return float(np.polyval(np.polyfit(lams[i:i + 3], nrmse[i:i + 3], 2), x))


def regrets(rows, noise, exponent, constant):
    """``{row: NRMSE at the rule's weight minus the row's best}``, or None if a weight leaves a sweep."""
    out = {}
    for name, row in rows.items():
        value = nrmse_at(row, constant * row["h"] ** exponent * row[NOISE_ESTIMATES[noise]])
        if value is None:
            return None
        out[name] = value - min(r["nrmse"] for r in row["runs"].values())
    return out


def fit_rule(rows, noise, exponents):
    """(worst regret, exponent, constant) of the rule on ``noise`` that minimises the worst row's regret."""
    best = (np.inf, None, None)
    for exponent in exponents:
        # the constant in the rule's own units, over a fine log grid spanning every row's sweep
        scale = [row["h"] ** exponent * row[NOISE_ESTIMATES[noise]] for row in rows.values()]
        lows = [min(float(g) for g in row["runs"]) * row["h"] * row["sigma_echo_ppm"] / s
                for row, s in zip(rows.values(), scale)]
        highs = [max(float(g) for g in row["runs"]) * row["h"] * row["sigma_echo_ppm"] / s
                 for row, s in zip(rows.values(), scale)]
        if max(lows) > min(highs):
            continue
        for constant in np.geomspace(max(lows), min(highs), 200):
            found = regrets(rows, noise, exponent, constant)
            if found is not None and max(found.values()) < best[0]:
                best = (max(found.values()), float(exponent), float(constant))
    return best


def fit(tuning_path, check_path=None):
    """Print the rules fitted on one sweep and, with ``check_path``, their regrets on another."""
    sweep = json.loads(Path(tuning_path).read_text(encoding="utf-8"))
    method, tuning = sweep["method"], sweep["rows"]
    check = json.loads(Path(check_path).read_text(encoding="utf-8"))["rows"] if check_path else None
    print(f"Rules lam = c * h^a * sigma fitted on {tuning_path} ({len(tuning)} rows) by the worst row's regret "
          "(NRMSE points above the row's best swept weight)" + (f"; checked on {check_path}" if check else ""))
    names = list((check or tuning))
    print("| sigma | a | c | worst regret (tuning) | worst regret (check) | " + " | ".join(names) + " |")
    print("|---|---|---|---|---|" + "---|" * len(names))
    library = tv_weight.tv_weight_rule(method)
    rules = [("echo" if library.noise == "echo fit" else "mad", library.voxel_exponent, library.gain, f"{method} now")]
    if method == "nltv":
        rules.insert(0, ("echo", 1.0, PREVIOUS_NLTV_ECHO_GAIN, "nltv before"))
    for noise in NOISE_ESTIMATES:
        for exponents in ((1.0,), EXPONENTS):
            _, exponent, constant = fit_rule(tuning, noise, exponents)
            if exponent is not None:
                rules.append((noise, exponent, constant, "fitted"))
    for noise, exponent, constant, kind in rules:
        tuned = regrets(tuning, noise, exponent, constant)
        found = regrets(check, noise, exponent, constant) if check else None
        cells = [f"{max(tuned.values()):.2f}" if tuned else "off the sweep",
                 f"{max(found.values()):.2f}" if found else "-"]
        cells += [f"{found[n]:.2f}" if found else "-" for n in names]
        print(f"| {noise} ({kind}) | {exponent:g} | {constant:.4g} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="nltv", choices=sorted(pipeline.TV_WEIGHTED_INVERSIONS))
    parser.add_argument("--seed", type=int, default=101, help="simulation seed (101: the table's tuning seed)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--gains", nargs="+", type=float, default=list(GAINS))
    parser.add_argument("--json", help="write every row's noise estimates and scores here")
    parser.add_argument("--fit", metavar="TUNING_JSON", help="fit weight rules to a sweep written by --json")
    parser.add_argument("--check", metavar="REPORTED_JSON", help="with --fit: score the fitted rules on this sweep")
    parser.add_argument("--threads", type=int, default=None, help="FFT and BLAS threads (default: all cores)")
    args = parser.parse_args()
    if args.fit:
        fit(args.fit, args.check)
        return
    if args.threads:
        qsmlib.set_threads(args.threads)
    model = load_fine_head_model()
    results = {}
    for name in args.rows:
        results[name] = sweep_row(model, name, args.method, args.seed, args.gains)
        r = results[name]
        best = min(r["runs"], key=lambda g: r["runs"][g]["nrmse"])
        print(f"{name}: h {r['h']:.3g} mm, sigma echo {r['sigma_echo_ppm']:.4g} ppm, sigma MAD "
              f"{r['sigma_mad_ppm']:.4g} ppm, best gain {best:g}", flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as out:
                json.dump({"method": args.method, "seed": args.seed, "rows": results}, out, indent=1)


if __name__ == "__main__":
    main()
