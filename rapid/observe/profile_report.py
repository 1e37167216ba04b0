"""Reports from a ``profile.json`` (schema ``rapid.profile/1``, written by ``rapid.observe.profiling.Profiler``).

- ``summary_table(profile)``: a fixed-width text table, one row per phase (time, share of wall, tokens/s, MFU,
  mean utilisation and peak memory of the samples taken in that phase); phases of another lane are marked
  ``[lane]``, and a last line gives the two-lane overlap when there is one.
- ``plot_timeline(profile, path)``: a PNG: phases as coloured bands over time, utilisation as a line (left axis),
  memory as a second line (right axis). With other lanes (overlapped generation) the bands go to a second panel
  above, one row per lane (training, generation), sharing the time axis.
- ``busy_union`` / ``intersection_s`` / ``lane_overlap``: the interval maths behind ``perf/overlap_frac``.
- ``main(argv)``: ``rapid profile RUN_DIR`` regenerates both from RUN_DIR/profile.json.

profile.json keys: schema, device{type,name,peak_flops,peak_flops_measured,cpu_count}, num_params, wall_s,
peak_memory_gb, phases{name: {time_s, frac_of_wall, count, tokens, tokens_per_s, flops, mfu, mfu_vs_measured_peak,
util_mean, mem_peak_gb, samples, lane}}, rollouts[metrics], events[[phase, start_s, end_s]] (the trainer's lane),
samples{t, phase, util, mem_gb}, sampler{source, interval_s, n, busy_s, overhead_frac, util_unit}; optional (older
files lack them): lanes{lane: [[phase, start_s, end_s]]} (intervals reported by other processes) and
overlap{frac, both_busy_s, busy_s{lane: s}}.
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
TRAIN_LANE = "train"
IDLE_PHASES = frozenset({"gen_wait"})   # trainer phases spent waiting on another lane: not "busy"

_COLOURS = {"gen": "tab:blue", "reward": "tab:olive", "old_log_prob": "tab:cyan", "update_actor": "tab:orange",
            "update_weights": "tab:purple", "sleep": "tab:gray", "wake": "tab:pink", "eval": "tab:green",
            "save": "tab:brown", "gen_wait": "lightgray"}
_EXTRA_COLOURS = ("gold", "teal", "salmon", "navy", "lime", "maroon")


Interval = tuple[float, float]


def busy_union(intervals, lo: float = float("-inf"), hi: float = float("inf")) -> list[Interval]:
    """Sorted, disjoint (start, end) covering the given intervals clipped to [lo, hi] (nested phases merge)."""
    out: list[list[float]] = []
    for start, end in sorted((max(a, lo), min(b, hi)) for a, b in intervals):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def intersection_s(a: list[Interval], b: list[Interval]) -> float:
    """Total length of the intersection of two ``busy_union`` results (a two-pointer sweep)."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def lane_overlap(train: list[tuple[str, float, float]], others: list[tuple[str, float, float]], lo: float,
                 hi: float) -> dict:
    """Busy seconds of the trainer lane (idle phases excluded) and of the other lanes within [lo, hi], the seconds
    in which both were busy, and that as a fraction of the window (``perf/overlap_frac``)."""
    mine = busy_union([(a, b) for name, a, b in train if name not in IDLE_PHASES], lo, hi)
    theirs = busy_union([(a, b) for _, a, b in others], lo, hi)
    both = intersection_s(mine, theirs)
    return {"frac": both / (hi - lo) if hi > lo else 0.0, "both_busy_s": both,
            "busy_s": {TRAIN_LANE: sum(b - a for a, b in mine), "other": sum(b - a for a, b in theirs)}}


def lanes_section(train: list, lanes: dict[str, list], running: dict[str, tuple[str, float]], t0: float,
                  now: float) -> dict:
    """profile.json's ``lanes`` and ``overlap`` entries from the profiler's clock (times made relative to t0);
    a still-running interval ends at ``now``."""
    lanes = {lane: list(events) for lane, events in lanes.items()}
    for lane, (phase, start) in running.items():
        lanes.setdefault(lane, []).append((phase, start, now))
    overlap = lane_overlap(train, [e for events in lanes.values() for e in events], t0, now)
    overlap["busy_s"] = {TRAIN_LANE: overlap["busy_s"][TRAIN_LANE], "+".join(lanes): overlap["busy_s"]["other"]}
    return {"lanes": {lane: [[name, a - t0, b - t0] for name, a, b in events] for lane, events in lanes.items()},
            "overlap": overlap}


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
        lane = p.get("lane", TRAIN_LANE)
        name = name if lane == TRAIN_LANE else f"{name} [{lane}]"
        lines.append(f"{name:<16}{p['time_s']:>10.3f}{100 * p['frac_of_wall']:>8.1f}{p['count']:>7}"
                     f"{p['tokens']:>10}{_fmt(p['tokens_per_s'], '.1f'):>11}{_fmt(mfu, '.2f'):>8}"
                     f"{_fmt(p['util_mean'], '.1f'):>8}{_fmt(p['mem_peak_gb'], '.2f'):>8}")
    lines.append("-" * len(header))
    peak = dev.get("peak_flops")
    source = f" ({dev['peak_source']})" if peak and dev.get("peak_source") else ""
    lines.append(f"MFU against {'%.4g TFLOP/s' % (peak / 1e12) + source if peak else 'no known peak (MFU omitted)'}; "
                 f"util = {sampler.get('util_unit', '?')} ({sampler['source']}, {sampler['n']} samples); "
                 f"sampler overhead {100 * sampler['overhead_frac']:.3f} % of wall")
    overlap = profile.get("overlap")
    if overlap:
        busy = ", ".join(f"{lane} {secs:.2f} s" for lane, secs in overlap["busy_s"].items())
        lines.append(f"overlap: both lanes busy {overlap['both_busy_s']:.2f} s = {100 * overlap['frac']:.1f} % of "
                     f"wall (busy: {busy})")
    return "\n".join(lines)


def plot_timeline(profile: dict, path: str) -> str:
    """One panel (bands behind the utilisation line) for a single lane; with other lanes a Gantt panel above, one
    row per lane, so generation and training show side by side."""
    import matplotlib  # noqa: PLC0415 (heavy, only when reporting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lanes = {TRAIN_LANE: profile["events"], **profile.get("lanes", {})}
    if len(lanes) == 1:
        fig, ax = plt.subplots(figsize=(12, 4.5))
        handles = _draw_bands(ax, {TRAIN_LANE: (0, 100)}, lanes, alpha=0.25)
    else:
        fig, (gantt, ax) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, height_ratios=(1, 2))
        rows = {lane: (10 * i + 1, 8) for i, lane in enumerate(reversed(list(lanes)))}
        handles = _draw_bands(gantt, rows, lanes, alpha=0.8)
        gantt.set_yticks([lo + h / 2 for lo, h in rows.values()], list(rows))
        gantt.set_ylim(0, 10 * len(rows))
        overlap = profile.get("overlap")
        gantt.set_title(f"lanes (both busy {100 * overlap['frac']:.1f} % of wall)" if overlap else "lanes",
                        fontsize=9)
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
    fig.suptitle(f"rapid timeline — {profile['device']['name']} ({profile['sampler']['source']})")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8,
              ncol=min(len(handles), 7), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_bands(ax, rows: dict[str, tuple[float, float]], lanes: dict[str, list], alpha: float) -> list:
    """Each lane's phases as bands in its row (y start, height); one legend handle per phase name."""
    from matplotlib.patches import Patch  # noqa: PLC0415

    colours: dict[str, str] = {}
    extra = iter(_EXTRA_COLOURS * 4)
    for lane, (y, height) in rows.items():
        spans: dict[str, list[tuple[float, float]]] = {}
        for name, start, end in lanes[lane]:
            spans.setdefault(name, []).append((start, max(end - start, 1e-6)))
        for name, bars in spans.items():   # one collection per phase: cheap even with thousands of events
            colour = colours.setdefault(name, _COLOURS.get(name) or next(extra, "black"))
            ax.broken_barh(bars, (y, height), facecolors=colour, alpha=alpha, edgecolor="none")
    return [Patch(facecolor=c, alpha=0.4, label=name) for name, c in colours.items()]


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
