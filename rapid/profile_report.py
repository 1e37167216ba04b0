"""Reports from a ``profile.json`` (schema ``rapid.profile/1``, written by ``rapid.profiling.Profiler``).

- ``summary_table(profile)``: a fixed-width text table, one row per phase (time, share of wall, tokens/s, MFU,
  mean utilisation and peak memory of the samples taken in that phase).
- ``plot_timeline(profile, path)``: a PNG: phases as coloured bands over time, utilisation as a line (left axis),
  memory as a second line (right axis).
- ``main(argv)``: ``rapid profile RUN_DIR`` regenerates both from RUN_DIR/profile.json.

profile.json keys: schema, device{type,name,peak_flops,peak_flops_measured,cpu_count}, num_params, wall_s,
peak_memory_gb, phases{name: {time_s, frac_of_wall, count, tokens, tokens_per_s, flops, mfu, mfu_vs_measured_peak,
util_mean, mem_peak_gb, samples}}, rollouts[metrics], events[[phase, start_s, end_s]],
samples{t, phase, util, mem_gb}, sampler{source, interval_s, n, busy_s, overhead_frac, util_unit}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PROFILE_FILE = "profile.json"
TIMELINE_FILE = "profile_timeline.png"
SUMMARY_FILE = "profile_summary.txt"
REQUIRED_KEYS = ("schema", "device", "wall_s", "phases", "events", "samples", "sampler")

_COLOURS = {"gen": "tab:blue", "reward": "tab:olive", "old_log_prob": "tab:cyan", "update_actor": "tab:orange",
            "update_weights": "tab:purple", "sleep": "tab:gray", "wake": "tab:pink", "eval": "tab:green",
            "save": "tab:brown"}
_EXTRA_COLOURS = ("gold", "teal", "salmon", "navy", "lime", "maroon")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(profile: dict) -> str:
    dev, sampler = profile["device"], profile["sampler"]
    header = (f"{'phase':<16}{'time_s':>10}{'% wall':>8}{'count':>7}{'tokens':>10}{'tok/s':>11}{'MFU %':>8}"
              f"{'util %':>8}{'mem GB':>8}")
    lines = [f"rapid profile — {dev['name']} ({dev['type']}), wall {profile['wall_s']:.2f} s, "
             f"peak memory {profile['peak_memory_gb']:.2f} GB", header, "-" * len(header)]
    for name, p in profile["phases"].items():
        mfu = None if p.get("mfu") is None else 100 * p["mfu"]
        lines.append(f"{name:<16}{p['time_s']:>10.3f}{100 * p['frac_of_wall']:>8.1f}{p['count']:>7}"
                     f"{p['tokens']:>10}{_fmt(p['tokens_per_s'], '.1f'):>11}{_fmt(mfu, '.2f'):>8}"
                     f"{_fmt(p['util_mean'], '.1f'):>8}{_fmt(p['mem_peak_gb'], '.2f'):>8}")
    lines.append("-" * len(header))
    peak = dev.get("peak_flops")
    lines.append(f"MFU against {'%.4g TFLOP/s' % (peak / 1e12) if peak else 'no known peak (MFU omitted)'}; "
                 f"util = {sampler.get('util_unit', '?')} ({sampler['source']}, {sampler['n']} samples); "
                 f"sampler overhead {100 * sampler['overhead_frac']:.3f} % of wall")
    return "\n".join(lines)


def plot_timeline(profile: dict, path: str) -> str:
    import matplotlib  # noqa: PLC0415 (heavy, only when reporting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(12, 4.5))
    spans: dict[str, list[tuple[float, float]]] = {}
    for name, start, end in profile["events"]:
        spans.setdefault(name, []).append((start, max(end - start, 1e-6)))
    handles = []
    extra = iter(_EXTRA_COLOURS * 4)
    for name, bars in spans.items():   # one collection per phase: cheap even with thousands of events
        colour = _COLOURS.get(name) or next(extra, "black")
        ax.broken_barh(bars, (0, 100), facecolors=colour, alpha=0.25, edgecolor="none")
        handles.append(Patch(facecolor=colour, alpha=0.4, label=name))
    samples = profile["samples"]
    unit = profile["sampler"].get("util_unit", "utilisation")
    if samples["t"]:
        (line,) = ax.plot(samples["t"], samples["util"], color="black", lw=1.0, label=f"util ({unit})")
        handles.append(line)
        ax2 = ax.twinx()
        (mem,) = ax2.plot(samples["t"], samples["mem_gb"], color="tab:red", lw=1.0, label="memory (GB)")
        ax2.set_ylabel("memory (GB)")
        ax2.set_ylim(0, max(max(samples["mem_gb"]), 1e-3) * 1.15)
        handles.append(mem)
    ax.set_ylim(0, 105)
    ax.set_xlim(0, max(profile["wall_s"], 1e-3))
    ax.set_xlabel("time since profiler start (s)")
    ax.set_ylabel(f"utilisation ({unit})")
    ax.set_title(f"rapid timeline — {profile['device']['name']} ({profile['sampler']['source']})")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8,
              ncol=min(len(handles), 7), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_profile(run_dir: str) -> dict:
    path = run_dir if run_dir.endswith(".json") else os.path.join(run_dir, PROFILE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {PROFILE_FILE} at {path}: was the run started with an output_dir?")
    with open(path, encoding="utf-8") as f:
        profile = json.load(f)
    missing = [k for k in REQUIRED_KEYS if k not in profile]
    if missing:
        raise ValueError(f"{path} is not a rapid profile (missing {', '.join(missing)})")
    return profile


def write_report(profile: dict, output_dir: str, write_json: bool = True) -> str:
    """Write profile.json (optionally), the timeline PNG and the summary text; return the summary table."""
    os.makedirs(output_dir, exist_ok=True)
    if write_json:
        tmp = os.path.join(output_dir, PROFILE_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(profile, f)
        os.replace(tmp, os.path.join(output_dir, PROFILE_FILE))
    table = summary_table(profile)
    with open(os.path.join(output_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    plot_timeline(profile, os.path.join(output_dir, TIMELINE_FILE))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rapid profile",
                                     description="Regenerate the timeline PNG and summary table of a run.")
    parser.add_argument("run_dir", help="a run's output_dir (containing profile.json) or the profile.json itself")
    parser.add_argument("--out", default=None, help="where to write the PNG/summary (default: the run dir)")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.run_dir)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
        sys.stderr.write(f"rapid profile: {err}\n")
        return 2
    out = args.out or (os.path.dirname(args.run_dir) if args.run_dir.endswith(".json") else args.run_dir)
    table = write_report(profile, out, write_json=False)
    sys.stdout.write(f"{table}\ntimeline: {os.path.join(out, TIMELINE_FILE)}\n")   # CLI output, not logging
    return 0
