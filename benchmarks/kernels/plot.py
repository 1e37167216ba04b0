"""Draw the kernel-benchmark CSV: one panel per (op, mode), median ms per provider and shape (p20–p80 whiskers),
and a second row with peak memory. Uses the newest row of each (device, op, provider, mode, shape, dtype).

    python -m benchmarks.kernels.plot --csv benchmarks/kernels/results.csv --out benchmarks/kernels/results.png
"""

from __future__ import annotations

import argparse
import csv
import logging
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("benchmarks.kernels.plot")


def load(path: str, device: str | None) -> list[dict]:
    latest: dict[tuple, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if (device and row["device"] != device) or not row.get("median_ms"):
                continue
            key = (row["device"], row["op"], row["provider"], row["mode"], row["shape"], row["dtype"])
            if key not in latest or row["timestamp"] >= latest[key]["timestamp"]:
                latest[key] = row
    return list(latest.values())


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot(rows: list[dict], out: str) -> None:
    panels = sorted({(r["op"], r["mode"]) for r in rows})
    if not panels:
        raise SystemExit("no rows with timings to plot")
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 8), squeeze=False)
    for col, (op, mode) in enumerate(panels):
        sub = [r for r in rows if r["op"] == op and r["mode"] == mode]
        shapes = sorted({r["shape"] for r in sub})
        providers = sorted({r["provider"] for r in sub})
        width = 0.8 / max(len(providers), 1)
        for i, provider in enumerate(providers):
            by_shape = {r["shape"]: r for r in sub if r["provider"] == provider}
            xs = [s + (i - (len(providers) - 1) / 2) * width for s in range(len(shapes))]
            med = [_num(by_shape.get(s, {}).get("median_ms")) for s in shapes]
            lo = [m - _num(by_shape.get(s, {}).get("p20_ms")) for s, m in zip(shapes, med)]
            hi = [_num(by_shape.get(s, {}).get("p80_ms")) - m for s, m in zip(shapes, med)]
            axes[0][col].bar(xs, med, width, yerr=[lo, hi], label=provider)
            axes[1][col].bar(xs, [_num(by_shape.get(s, {}).get("peak_mem_mb")) for s in shapes], width,
                             label=provider)
        for row, ylabel in ((0, "median ms (p20–p80)"), (1, "peak extra memory (MB)")):
            ax = axes[row][col]
            ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(ylabel)
            heights = [b.get_height() for b in ax.patches]
            if any(math.isfinite(h) and h > 0 for h in heights):
                ax.set_yscale("log")
            ax.set_title(f"{op} {mode}", fontsize=9)
        axes[0][col].legend(fontsize=7)
    device_names = sorted({r["device_name"] for r in rows})
    fig.suptitle(f"rapid kernels — {', '.join(device_names)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    log.info("wrote %s", out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot the kernel benchmark CSV")
    p.add_argument("--csv", default="benchmarks/kernels/results.csv")
    p.add_argument("--out", default="benchmarks/kernels/results.png")
    p.add_argument("--device", default=None, help="only rows of this device (cpu / cuda)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plot(load(args.csv, args.device), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
