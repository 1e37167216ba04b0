"""End-to-end benchmark: RAPID at H in {1, 2, 4, 8, 16}, GRPG, GRPO, adaptive H, RAPID with overlapped generation
and TRL's GRPOTrainer on the same model, task, seed and sample budget. Each run is a separate subprocess
(benchmarks/e2e/worker.py; TRL runs: benchmarks/peers/trl_e2e.py under --trl-python), so one crash does not end the
rest. Run names take mode suffixes (worker.parse_run): ``rapid-h4-t2`` (sequential, 2 torch threads),
``rapid-h4-overlap-e1`` (overlap=True, engine 1 core, trainer the rest), ``trl-h4-t2`` (TRL, 2 threads).

    # CPU: tiny warm-started model on the built-in arithmetic task (accuracy = greedy held-out exact match)
    python benchmarks/e2e/run_e2e.py --budget-samples 1024 --out runs/e2e-cpu
    # GPU: Qwen2.5-0.5B-shaped random model with vLLM (throughput only)
    python benchmarks/e2e/run_e2e.py --gpu --out runs/e2e-gpu
    # issue 17, mid geometry (throughput only): overlap vs sequential vs TRL, both cores on every side. On a shared
    # box set OMP_WAIT_POLICY=PASSIVE: OpenMP threads that spin-wait on busy cores made 2-thread runs 5-10x slower
    OMP_WAIT_POLICY=PASSIVE python benchmarks/e2e/run_e2e.py --model mid \
        --runs rapid-h4-overlap-e1,rapid-h4-t2,rapid-h4-t1,trl-h4-t2,trl-h4-t1 --prompts-per-step 4 \
        --budget-samples 768 --lr 1e-5 --seeds 0,1,2 --trl-python /work/trl-venv/bin/python

Writes OUT/e2e.csv (one row per run), OUT/e2e.png (accuracy vs training wall-clock; wall-clock per phase) and
prints one JSON line last. Times are training wall-clock (generation + rewards + updates + weight sync), eval
excluded, summed from the trainer's profiler (``timing_s/*``); model set-up and the SFT warm start are excluded.
``train_wall_s`` / ``steady_samples_per_s`` are billed from the profile timeline (benchmarks/e2e/timeline.py: every
wait for generation charged, evals and saves subtracted; steady excludes the first rollout), the fair clock when
overlapped and sequential runs are compared. Time-to-accuracy is the billed time at which held-out accuracy first
reaches ``--target`` (default: the initial accuracy plus half of the best final improvement among the runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_RUNS = "rapid-h1,rapid-h2,rapid-h4,rapid-h8,rapid-h16,grpg,grpo,rapid-auto"
PASS = ("model", "engine", "budget_samples", "group_size", "prompts_per_step", "max_new_tokens", "lr",
        "threads", "eval_every_steps", "n_eval", "max_h", "grpo_h", "engine_threads")
CSV_FIELDS = ("run", "seed", "algo", "h", "status", "overlap", "threads", "engine_threads", "samples",
              "optimizer_steps", "rollouts", "train_s", "samples_per_s", "train_wall_s", "steady_samples_per_s",
              "warmup_s", "gen_s", "gen_critical_s", "update_actor_s", "gen_wait_s", "update_weights_s", "other_s",
              "overlap_frac_mean",
              "accuracy_init", "accuracy_final", "time_to_target_s", "ess_mean", "clip_frac_mean", "h_trace",
              "warm_start", "loadavg_start", "loadavg_end", "omp_wait_policy", "device", "torch", "trl", "date",
              "git_rev")


def git_rev() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "rapid", "benchmarks/e2e"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def run_one(run: str, seed: int, args, out: Path) -> dict:
    if run.startswith("trl-"):            # TRL lives in its own venv layered on this one
        cmd = [args.trl_python, str(ROOT / "benchmarks" / "peers" / "trl_e2e.py")]
    else:
        cmd = [sys.executable, str(HERE / "worker.py")]
    cmd += ["--run", run, "--out", str(out), "--seed", str(seed)]
    for name in PASS:
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    (out / run).mkdir(parents=True, exist_ok=True)
    log = out / run / "log.txt"
    start = time.perf_counter()
    try:
        with open(log, "w", encoding="utf-8") as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timeout {args.timeout}s"
    result_file = out / run / "result.json"
    if status == "ok" and result_file.exists():
        result = json.loads(result_file.read_text())
    else:
        result = {"run": run}
        print(f"[e2e] {run}: {status}; see {log}", file=sys.stderr)
    result["status"] = status
    result["seed"] = seed
    result["process_s"] = time.perf_counter() - start
    return result


def time_to(curve: list[dict], target: float) -> float | None:
    """Billed time (``wall_s``, the timeline clock) of the first evaluation at or above ``target``."""
    return next((p.get("wall_s", p["train_s"]) for p in curve if p["accuracy"] >= target), None)


def to_row(r: dict, target: float | None, rev: str) -> dict:
    phases = r.get("phases_s", {})
    gen, upd = phases.get("timing_s/gen"), phases.get("timing_s/update_actor")
    step = phases.get("timing_s/step")
    # generation on the trainer's critical path: all of it when sequential, only the wait for it when overlapped
    crit = phases.get("timing_s/gen_wait") if r.get("overlap") else gen
    other = step - (crit or 0) - (upd or 0) if step is not None else r.get("train_wall_s")   # TRL: not split
    row = {k: r.get(k) for k in CSV_FIELDS}
    row.update(gen_s=gen, gen_critical_s=crit, update_actor_s=upd, other_s=other, git_rev=rev,
               gen_wait_s=phases.get("timing_s/gen_wait"), update_weights_s=phases.get("timing_s/update_weights"),
               h_trace=" ".join(map(str, r.get("h_trace", []))),
               time_to_target_s=time_to(r["curve"], target) if target is not None and r.get("curve") else None)
    return row


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Per run, over seeds: median and mean samples/s (billed, warm-up excluded: ``steady``), mean billed training
    time and final accuracy; time-to-target is the median over seeds, None unless every seed reached the target."""
    out: dict[str, dict] = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run and r["status"] == "ok"]
        if not mine:
            continue
        reached = [r["time_to_target_s"] for r in mine if r["time_to_target_s"] is not None]
        steady = [r["steady_samples_per_s"] for r in mine if r.get("steady_samples_per_s")]
        acc = [r["accuracy_final"] for r in mine if r["accuracy_final"] is not None]
        out[run] = {"seeds_ok": len(mine), "train_s": _fmean(r["train_s"] for r in mine),
                    "train_wall_s": _fmean(r.get("train_wall_s") for r in mine),
                    "samples_per_s": _fmean(r["samples_per_s"] for r in mine),
                    "steady_samples_per_s_median": statistics.median(steady) if steady else None,
                    "steady_samples_per_s_mean": statistics.fmean(steady) if steady else None,
                    "accuracy_final": statistics.fmean(acc) if acc else None,
                    "time_to_target_s": statistics.median(reached) if reached and len(reached) == len(mine) else None,
                    "reached_target": f"{len(reached)}/{len(mine)}",
                    "loadavg": [min(r["loadavg_start"] for r in mine if r.get("loadavg_start") is not None),
                                max(r["loadavg_end"] for r in mine if r.get("loadavg_end") is not None)]
                    if all(r.get("loadavg_start") is not None for r in mine) else None}
    return out


def _fmean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(vals) if vals else None


def speedups(rows: list[dict]) -> dict[str, dict]:
    """Each overlap run against every other run: ratio of median steady samples/s, and the median of the per-seed
    ratios (the runs of one seed ran back to back, so they shared the box's load)."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("steady_samples_per_s")]
    names = list(dict.fromkeys(r["run"] for r in ok))
    out = {}
    for a in [n for n in names if "overlap" in n]:
        for b in [n for n in names if n != a]:
            sa = [r for r in ok if r["run"] == a]
            sb = [r for r in ok if r["run"] == b]
            pairs = [(x["steady_samples_per_s"], y["steady_samples_per_s"]) for x in sa for y in sb
                     if x["seed"] == y["seed"]]
            med = lambda rs: statistics.median(r["steady_samples_per_s"] for r in rs)  # noqa: E731
            out[f"{a} / {b}"] = {"ratio_of_medians": med(sa) / med(sb),
                                 "median_pairwise": statistics.median(x / y for x, y in pairs) if pairs else None}
    return out


def plot(results: list[dict], rows: list[dict], target: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5))
    for i, run in enumerate(dict.fromkeys(r["run"] for r in results)):
        curves = [r["curve"] for r in results if r["run"] == run and r.get("curve")]
        if not curves:
            continue
        colour, ls = f"C{i % 10}", "--" if run in ("grpg", "grpo") or run.startswith("trl") else "-"
        for c in curves if len(curves) > 1 else []:          # each seed, faint
            a1.plot([p.get("wall_s", p["train_s"]) for p in c], [p["accuracy"] for p in c], color=colour, ls=ls,
                    alpha=0.15)
        n = min(len(c) for c in curves)                        # same eval schedule per run: average by index
        a1.plot([statistics.fmean(c[j].get("wall_s", c[j]["train_s"]) for c in curves) for j in range(n)],
                [statistics.fmean(c[j]["accuracy"] for c in curves) for j in range(n)],
                color=colour, ls=ls, marker="o", ms=3, label=f"{run} (mean of {len(curves)})")
    names = list(dict.fromkeys(row["run"] for row in rows if row["status"] == "ok"))
    if any(r.get("curve") for r in results):
        if target is not None:
            a1.axhline(target, color="gray", lw=0.8, ls=":", label=f"target {target:.3f}")
        a1.set_xlabel("training wall-clock (s, billed from the timeline, eval excluded)")
        a1.set_ylabel("held-out accuracy")
        a1.legend(fontsize=8)
    else:                                       # throughput only: steady samples/s, median bar and each seed
        per = [[row["steady_samples_per_s"] for row in rows if row["run"] == n and row["status"] == "ok"
                and row.get("steady_samples_per_s")] for n in names]
        a1.bar(names, [statistics.median(v) if v else 0.0 for v in per], color="tab:green", alpha=0.6)
        for i, v in enumerate(per):
            a1.plot([i] * len(v), v, "k.", ms=6)
        a1.set_ylabel("samples/s, warm-up excluded (bar: median; dots: seeds)")
        a1.tick_params(axis="x", rotation=45)
    bottom = [0.0] * len(names)
    for key, colour, label in (("gen_critical_s", "tab:blue", "generation (overlap: the wait for it)"),
                               ("update_actor_s", "tab:orange", "update"),
                               ("other_s", "tab:gray", "other (TRL: all, not split)")):
        vals = [statistics.fmean(row.get(key) or 0.0 for row in rows if row["run"] == n and row["status"] == "ok")
                for n in names]
        a2.bar(names, vals, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    a2.set_ylabel("trainer wall-clock (s), same samples, seed mean")
    a2.tick_params(axis="x", rotation=45)
    a2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=DEFAULT_RUNS)
    p.add_argument("--out", default=None)
    p.add_argument("--gpu", action="store_true", help="qwen0.5b-random + vLLM, 256 new tokens, 8192 samples")
    p.add_argument("--model", choices=("tiny", "mid", "qwen0.5b-random", "smollm2"), default=None)
    p.add_argument("--engine", choices=("auto", "hf", "vllm"), default=None)
    p.add_argument("--budget-samples", type=int, default=None)
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--prompts-per-step", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seeds", default="0", help="RL seeds, comma list (the warm start is shared)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval-every-steps", type=int, default=None)
    p.add_argument("--n-eval", type=int, default=None)
    p.add_argument("--max-h", type=int, default=None)
    p.add_argument("--grpo-h", type=int, default=None)
    p.add_argument("--engine-threads", type=int, default=None, help="overlap runs: the engine's cores")
    p.add_argument("--trl-python", default=sys.executable, help="python of a venv with trl (for trl-h<H> runs)")
    p.add_argument("--target", type=float, default=None, help="accuracy for time-to-accuracy")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--report-only", action="store_true", help="rebuild CSV/plot/JSON from OUT's result files")
    args = p.parse_args(argv)
    if args.gpu:
        args.model = args.model or "qwen0.5b-random"
        args.engine = args.engine or "vllm"
        args.max_new_tokens = args.max_new_tokens or 256
        args.budget_samples = args.budget_samples or 8192
        args.eval_every_steps = args.eval_every_steps or 1_000_000   # throughput only: no mid-run evals
        args.n_eval = args.n_eval or 64
    out = Path(args.out or f"runs/e2e-{'gpu' if args.gpu else 'cpu'}")
    out.mkdir(parents=True, exist_ok=True)
    rev = git_rev()
    results = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            if args.report_only:
                done = out / f"seed{seed}" / run / "result.json"
                status = "ok" if done.exists() else "missing"
                results.append({**(json.loads(done.read_text()) if done.exists() else {"run": run}),
                                "status": status, "seed": seed})
                continue
            print(f"[e2e] {run} seed {seed} ...", file=sys.stderr, flush=True)
            results.append(run_one(run, seed, args, out / f"seed{seed}"))
            r = results[-1]
            print(f"[e2e] {run} seed {seed}: {r['status']} train_wall_s={r.get('train_wall_s')} "
                  f"steady samples/s={r.get('steady_samples_per_s')} "
                  f"samples/s={r.get('samples_per_s')} acc={r.get('accuracy_final')}", file=sys.stderr, flush=True)
    ok = [r for r in results if r["status"] == "ok"]
    starts = {r.get("warm_start") for r in ok}
    if len(starts) > 1:   # the demo's warm-start settings changed between runs: accuracies are not comparable
        print(f"[e2e] WARNING: runs used different warm starts {sorted(map(str, starts))}", file=sys.stderr)
    target = args.target
    if target is None and ok and all(r.get("curve") for r in ok) and all(r["accuracy_final"] is not None for r in ok):
        init = statistics.fmean(r["accuracy_init"] for r in ok)
        best = max(statistics.fmean(r["accuracy_final"] for r in ok if r["run"] == run)
                   for run in {r["run"] for r in ok})
        target = init + 0.5 * (best - init) if best > init else None
    rows = [to_row(r, target, rev) if r["status"] == "ok" else {**{k: None for k in CSV_FIELDS}, "run": r["run"],
            "seed": r["seed"], "status": r["status"], "git_rev": rev} for r in results]
    with open(out / "e2e.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    device = ok[0]["device"] if ok else "?"
    plot(results, rows, target, out / "e2e.png", f"rapid e2e — {device}, {args.budget_samples or 'default'} samples")
    print(json.dumps(headline(rows, target, device, rev, args)))
    return 0 if ok else 1


def headline(rows: list[dict], target: float | None, device: str, rev: str, args) -> dict:
    """The targets: RAPID vs GRPG wall-clock at equal samples, and adaptive vs best fixed H time-to-accuracy."""
    by = aggregate(rows)
    fixed = {k: v for k, v in by.items() if k.startswith("rapid-h")}
    out: dict = {"benchmark": "e2e", "device": device, "git_rev": rev, "target_accuracy": target,
                 "model": args.model or "tiny", "speedups": speedups(rows),
                 "warm_starts": sorted({str(r.get("warm_start")) for r in rows if r["status"] == "ok"}),
                 "seeds": args.seeds, "budget_samples": args.budget_samples, "runs": by}
    grpg = by.get("grpg")
    if grpg and fixed:
        name = min(fixed, key=lambda k: fixed[k]["train_s"])
        fastest = fixed[name]
        out["rapid_fastest_fixed_h"] = name
        out["rapid_vs_grpg_time_saving"] = 1 - fastest["train_s"] / grpg["train_s"]
        out["rapid_vs_grpg_accuracy_delta"] = (fastest["accuracy_final"] or 0) - (grpg["accuracy_final"] or 0)
    reached = {k: v for k, v in fixed.items() if v["time_to_target_s"] is not None}
    if reached:
        name = min(reached, key=lambda k: reached[k]["time_to_target_s"])
        best = reached[name]
        out["best_fixed_h_by_time_to_target"] = name
        auto = by.get("rapid-auto")
        if auto and auto["time_to_target_s"] is not None:
            out["auto_vs_best_fixed_time_to_target"] = auto["time_to_target_s"] / best["time_to_target_s"]
    return out


if __name__ == "__main__":
    sys.exit(main())
