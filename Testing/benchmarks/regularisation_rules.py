"""How well each rule chooses Tikhonov's weight, on the robustness table's acquisitions of the realistic head.

    python Testing/benchmarks/regularisation_rules.py [--rows NAME ...] [--seed N] [--markdown FILE]
        [--write-readme]

Per row of :mod:`robustness_table` (same acquisitions, same simulator), the
consensus preset runs with ``--inversion tikhonov`` at its default, so the
weight is chosen by the pipeline's own rule (generalised cross-validation)
and read back from the provenance. On that run's local field and mask the
benchmark then solves Tikhonov at every candidate weight of the rule's grid
and reports, against the true susceptibility:

- the oracle: the candidate with the lowest NRMSE (it needs the truth);
- GCV, the pipeline's default (``lam="auto"``);
- the L-curve corner (``lam="lcurve"``);
- the bare function's fixed weight (``DEFAULT_TIKHONOV_LAMBDA``).

Each cell: the weight (mm^2), NRMSE (%) / worst deep grey matter error (ppm),
and in brackets the NRMSE above the oracle's. ``--write-readme`` puts the
summary between the README's ``regularisation-rules`` markers. This is a
benchmark: it asserts nothing.
"""

import argparse

from qsmlib.constants import hz_to_ppm
from qsmlib.inversion.lcurve import choose_regularisation
from qsmlib.inversion.tikhonov import DEFAULT_TIKHONOV_LAMBDA, tikhonov
from qsmlib.simulation import load_fine_head_model, simulate_realistic_gre
from readme_block import publish_table
from robustness_table import BASE, ROWS, describe, run_pipeline, score


def row_result(model, name, seed):
    """``{label: (weight, nrmse, dgm_worst)}`` for the oracle, GCV, L-curve and the fixed weight on one row."""
    sim = simulate_realistic_gre(model, seed=seed, **{**BASE, **ROWS[name]})
    result, _ = run_pipeline(sim, "consensus", inversion="tikhonov")
    stage = next(s for s in result.provenance["stages"] if s["stage"] == "dipole inversion")
    chosen = stage["auto_regularisation"]
    field_ppm = hz_to_ppm(result.local_field_hz, sim.b0_t)

    def solve(lam):
        chi = tikhonov(field_ppm, result.mask, sim.voxel_size_mm, b0_dir=sim.b0_dir, lam=lam)
        m = score(chi, sim, result.mask)
        return lam, m["nrmse"], m["dgm_worst"]

    sweep = [solve(v) for v in chosen["values"]]
    lcurve = choose_regularisation("tikhonov", field_ppm, result.mask, sim.voxel_size_mm, b0_dir=sim.b0_dir,
                                   rule="lcurve").value
    gcv = score(result.chi_ppm, sim, result.mask)
    return {"oracle (truth-tuned)": min(sweep, key=lambda s: s[1]),
            "GCV (default)": (chosen["value"], gcv["nrmse"], gcv["dgm_worst"]),
            "L-curve": next(s for s in sweep if s[0] == lcurve),
            f"fixed {DEFAULT_TIKHONOV_LAMBDA:g}": solve(DEFAULT_TIKHONOV_LAMBDA)}


def table(results, seed):
    labels = list(next(iter(results.values()))[1])
    lines = [f"Tikhonov's weight on the realistic head, seed {seed}, from the consensus preset's local field. "
             "Each cell: weight (mm^2), NRMSE (%) / worst deep grey matter error (ppm) [NRMSE above the oracle's].",
             "", "| acquisition | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    worst = {label: 0.0 for label in labels}
    for name, (acquisition, cells) in results.items():
        oracle = cells[labels[0]][1]
        row = []
        for label in labels:
            lam, nrmse, dgm = cells[label]
            worst[label] = max(worst[label], nrmse - oracle)
            row.append(f"{lam:.3g}, {nrmse:.1f} / {dgm:.3f} [{nrmse - oracle:+.1f}]")
        lines.append(f"| {acquisition} | " + " | ".join(row) + " |")
    lines.append(f"| **most above the oracle, {len(results)} rows** | "
                 + " | ".join(f"**{worst[label]:+.1f}**" for label in labels) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help="rows to run (default: all)")
    parser.add_argument("--seed", type=int, default=202, help="seed of the simulations (the table's reported seed)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    model = load_fine_head_model()
    results = {}
    for name in args.rows or list(ROWS):
        results[name] = (describe({**BASE, **ROWS[name]}), row_result(model, name, args.seed))
        print(name, {k: tuple(round(float(x), 4) for x in v) for k, v in results[name][1].items()}, flush=True)
    text = table(results, args.seed)
    publish_table("regularisation-rules", text, markdown=args.markdown, readme=args.write_readme)


if __name__ == "__main__":
    main()
