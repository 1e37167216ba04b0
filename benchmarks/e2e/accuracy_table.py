"""Accuracy side of an e2e sweep, per run and seed, from the result files run_e2e.py left in OUT.

    python benchmarks/e2e/accuracy_table.py OUT [--targets 0.5,0.6]

Prints a Markdown table: final accuracy (last eval) and the mean of the last 3 evals (one eval of 200 problems has
a ~3-point standard error), and for each target the billed training time (``wall_s``) at which the running mean of
3 consecutive evals first reaches it — the demo's criterion, so one lucky eval decides nothing. One JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def reach(curve: list[dict], target: float, window: int = 3) -> float | None:
    for i in range(window, len(curve) + 1):
        if statistics.fmean(p["accuracy"] for p in curve[i - window:i]) >= target - 1e-9:
            return curve[i - 1].get("wall_s", curve[i - 1]["train_s"])
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--targets", default="0.5,0.6")
    args = p.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    results = [json.loads(f.read_text()) for f in sorted(Path(args.out).glob("seed*/*/result.json"))]
    runs = list(dict.fromkeys(r["run"] for r in results))
    summary: dict = {"out": args.out, "targets": targets, "runs": {}}
    head = ["run", "final (seeds)", "mean", "last-3 mean (seeds)", "mean"] + [f"reach {t} s (seeds)" for t in targets]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in runs:
        mine = sorted((r for r in results if r["run"] == run and r.get("curve")), key=lambda r: r["seed"])
        if not mine:
            continue
        finals = [r["curve"][-1]["accuracy"] for r in mine]
        last3 = [statistics.fmean(p["accuracy"] for p in r["curve"][-3:]) for r in mine]
        reached = {t: [reach(r["curve"], t) for r in mine] for t in targets}
        cells = [run, ", ".join(f"{x:.3f}" for x in finals), f"{statistics.fmean(finals):.3f}",
                 ", ".join(f"{x:.3f}" for x in last3), f"{statistics.fmean(last3):.3f}"]
        for t in targets:
            got = [x for x in reached[t] if x is not None]
            med = f"; median {statistics.median(got):.1f}" if len(got) == len(mine) else f"; {len(got)}/{len(mine)}"
            cells.append(", ".join("–" if x is None else f"{x:.1f}" for x in reached[t]) + med)
        print("| " + " | ".join(cells) + " |")
        summary["runs"][run] = {"seeds": [r["seed"] for r in mine], "final": finals, "last3": last3,
                                "reach_s": {str(t): reached[t] for t in targets}}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
