"""One end-to-end run of the e2e benchmark (a subprocess of run_e2e.py, so one crash does not end the others).

    python benchmarks/e2e/worker.py --run rapid-h4 --out runs/e2e [options]   # writes runs/e2e/rapid-h4/result.json

Runs (all with the same model, task, seed, prompts per step, group size and *sample budget*):
    rapid-h{H}   RAPID, H optimizer steps per rollout (rollout = H * prompts_per_step prompts)
    grpg         on-policy group policy gradient (H = 1, w = 1)
    grpo         PPO-clip per-token, std-normalised advantages, --grpo-h mini-batches per rollout (as TRL/verl)
    rapid-auto   RAPID with adaptive H (rapid.training.adaptive.AdaptiveH), H_max = --max-h, capped at the same budget

Models (benchmarks/e2e/setups.py): ``tiny`` (CPU): the demo's SFT-warm-started tiny Qwen2 on the demo's arithmetic
task; accuracy is greedy exact-match on the held-out split. ``mid`` (CPU): issue 17's mid geometry, a random Qwen2
(hidden 256, 4 layers, vocab 8192) with 48 new tokens and a throughput reward: throughput only, no eval.
``qwen0.5b-random`` (GPU): a Qwen2.5-0.5B-shaped model with random bf16 weights: throughput only (rewards ~0).

Modes: sequential (default; ``--threads`` torch threads) or ``--overlap`` (rapid's overlap=True: the engine in its own
process with ``--engine-threads`` cores, the trainer with the rest; rollout r+1 generated during rollout r's update).
Times: ``train_s`` is the trainer's ``time/train_s``; ``train_wall_s`` / ``steady_samples_per_s`` / the curve's
``wall_s`` are billed from the profile timeline (benchmarks/e2e/timeline.py), which charges every wait for
generation in both modes; ``steady_samples_per_s`` excludes the first rollout (warm-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from rapid.observe.profiling import device_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setups import setup  # noqa: E402
from timeline import load_clock, wall_numbers  # noqa: E402


def parse_run(run: str, max_h: int, grpo_h: int) -> dict:
    """Run name -> algo, H (rollout size in steps), whether H is adaptive, and mode overrides from suffixes:
    ``-overlap`` (overlap=True), ``-t<N>`` (N torch threads, sequential), ``-e<N>`` (N engine threads, overlap),
    ``-bf16`` / ``-fp32`` (the compute dtype; default dtype="auto"). E.g. ``rapid-h4-t2`` (sequential, 2 threads)
    and ``rapid-h4-overlap-e1`` (engine 1 core, trainer the rest)."""
    base, mods = run, {}
    while True:
        m = re.fullmatch(r"(.+)-(overlap|bf16|fp32|t(\d+)|e(\d+))", base)
        if not m:
            break
        base = m.group(1)
        if m.group(2) in ("bf16", "fp32"):
            mods["dtype"] = {"bf16": "bfloat16", "fp32": "float32"}[m.group(2)]
        elif m.group(2) == "overlap":
            mods["overlap"] = True
        elif m.group(3):
            mods["threads"] = int(m.group(3))
        else:
            mods["engine_threads"] = int(m.group(4))
    m = re.fullmatch(r"rapid-h(\d+)", base)
    if m:
        return {"algo": "rapid", "h": int(m.group(1)), "adaptive": False, **mods}
    if base == "grpg":
        return {"algo": "grpg", "h": 1, "adaptive": False, **mods}
    if base == "grpo":
        return {"algo": "grpo", "h": grpo_h, "adaptive": False, **mods}
    if base == "rapid-auto":
        return {"algo": "rapid", "h": max_h, "adaptive": True, **mods}
    raise ValueError(f"unknown run {run!r}: rapid-h<H>, grpg, grpo or rapid-auto, optionally with -overlap, -t<N>, "
                     "-e<N>, -bf16/-fp32 suffixes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", choices=("tiny", "mid", "qwen0.5b-random", "smollm2"), default="tiny")
    p.add_argument("--engine", choices=("auto", "hf", "vllm"), default="hf")
    p.add_argument("--budget-samples", type=int, default=1024, help="completions per run (all runs equal)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    p.add_argument("--lr", type=float, default=1e-3, help="the demo's RL learning rate")
    p.add_argument("--seed", type=int, default=0, help="RL seed (sampling, prompt order)")
    p.add_argument("--warm-seed", type=int, default=0, help="seed of the demo's SFT warm start (cached per seed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo's: tiny matmuls)")
    p.add_argument("--eval-every-steps", type=int, default=8, help="evaluate about every this many steps")
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--max-h", type=int, default=16)
    p.add_argument("--grpo-h", type=int, default=4)
    p.add_argument("--max-train-seconds", type=float, default=None)
    p.add_argument("--overlap", action="store_true", help="rapid overlap=True (engine in its own process)")
    p.add_argument("--engine-threads", type=int, default=None, help="overlap: the engine's cores (default half)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import rapid
    from rapid.observe.loggers import read_metrics

    spec = parse_run(args.run, args.max_h, args.grpo_h)
    args.overlap = spec.get("overlap", args.overlap)
    args.threads = spec.get("threads", args.threads)
    args.engine_threads = spec.get("engine_threads", args.engine_threads)
    torch.set_num_threads(args.threads)          # overlap=True then gives the trainer the cores the engine leaves
    run_dir = Path(args.out) / args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    samples_per_step = args.prompts_per_step * args.group_size
    if args.budget_samples % (samples_per_step * spec["h"]):
        raise SystemExit(f"--budget-samples ({args.budget_samples}) must be a multiple of prompts_per_step * "
                         f"group_size * H ({samples_per_step * spec['h']}) for {args.run}")
    budget_steps = args.budget_samples // samples_per_step
    t_setup = time.perf_counter()
    model, tok, task = setup(args.model, args.seed, args.warm_seed, args.n_eval, run_dir)
    setup_s = time.perf_counter() - t_setup
    max_new = args.max_new_tokens or task.max_new_tokens
    extra = {"benchmark": "e2e", "run": args.run}
    if spec["adaptive"]:
        extra["adaptive_h"] = {"max_steps": budget_steps}
        num_rollouts = budget_steps       # enough even if H falls to 1; rollouts past the budget are cut below
        eval_every = 1
    else:
        num_rollouts = budget_steps // spec["h"]
        eval_every = max(1, args.eval_every_steps // spec["h"])
    cfg = rapid.RapidConfig(
        algo=spec["algo"], group_size=args.group_size, prompts_per_step=args.prompts_per_step,
        prompts_per_rollout=spec["h"] * args.prompts_per_step, num_rollouts=num_rollouts, adaptive_h=spec["adaptive"],
        max_new_tokens=max_new, lr=args.lr, engine=args.engine, seed=args.seed, output_dir=str(run_dir / "train"),
        eval_every=eval_every if task.eval else 0, progress_bar=False, max_train_seconds=args.max_train_seconds,
        overlap=args.overlap, engine_threads=args.engine_threads, dtype=spec.get("dtype", "auto"), extra=extra)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    result = rapid.train(model, task.train, task.reward_fn, cfg, tokenizer=tok, eval_dataset=task.eval or None)
    wall = time.perf_counter() - t0
    records = read_metrics(str(run_dir / "train"))
    kept = within_budget(records, budget_steps)
    summary = summarize(args, spec, kept, samples_per_step, wall, setup_s)
    summary.update(billed(load_clock(run_dir / "train"), kept, samples_per_step, summary["curve"]))
    summary.update(loadavg_start=load_start, loadavg_end=os.getloadavg()[0])
    summary["steps_run_past_budget"] = sum(int(r.get("rapid/steps", 0)) for r in records) - summary["optimizer_steps"]
    summary["interrupted"] = result.interrupted
    summary["warm_start"] = getattr(getattr(model, "config", None), "rapid_warm_start", args.model)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}))
    return 0


def within_budget(records: list[dict], budget_steps: int) -> list[dict]:
    """The records up to the rollout that completes the step budget (and the evals logged with or after it).

    Fixed-H runs end exactly there. An adaptive run cannot tell the trainer to stop (AdaptiveH only caps each
    rollout at the steps left, minimum 1), so the 1-step rollouts it runs past the budget are cut off here."""
    kept, steps = [], 0
    for r in records:
        n = int(r.get("rapid/steps", 0))
        if n and steps >= budget_steps:
            break
        steps += n
        kept.append(r)
    return kept


def summarize(args, spec: dict, records: list[dict], samples_per_step: int, wall: float, setup_s: float) -> dict:
    """Per-run numbers: phase wall-clock, samples/s, and the accuracy-vs-train-time curve."""
    steps = [r for r in records if "rapid/steps" in r]
    phases: dict[str, float] = {}
    for r in steps:
        for key, value in r.items():
            if key.startswith("timing_s/") and isinstance(value, (int, float)):
                phases[key] = phases.get(key, 0.0) + value
    samples = sum(int(r["rapid/steps"]) for r in steps) * samples_per_step
    train_s = steps[-1]["time/train_s"] if steps else 0.0
    curve, n_steps = [], 0
    for r in records:
        n_steps += int(r.get("rapid/steps", 0))
        if "eval/reward" in r:
            curve.append({"train_s": r["time/train_s"], "samples": n_steps * samples_per_step,
                          "accuracy": r["eval/reward"]})
    return {
        "run": args.run, "algo": spec["algo"], "h": "auto" if spec["adaptive"] else spec["h"],
        "h_trace": [int(r["rapid/steps"]) for r in steps],
        "model": args.model, "engine": args.engine, "seed": args.seed, "budget_samples": args.budget_samples,
        "overlap": args.overlap, "engine_threads": args.engine_threads if args.overlap else None,
        "overlap_frac_mean": _mean([r.get("perf/overlap_frac") for r in steps]),
        "samples": samples, "optimizer_steps": sum(int(r["rapid/steps"]) for r in steps), "rollouts": len(steps),
        "train_s": train_s, "samples_per_s": samples / train_s if train_s else None,
        "phases_s": phases, "accuracy_init": curve[0]["accuracy"] if curve else None,
        "accuracy_final": curve[-1]["accuracy"] if curve else None, "curve": curve,
        "wall_with_eval_s": wall, "setup_s": setup_s,
        "ess_mean": _mean([r.get("rapid/ess") for r in steps]),
        "clip_frac_mean": _mean([r.get("rapid/clip_frac") for r in steps]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
    }


def billed(clock, records: list[dict], samples_per_step: int, curve: list[dict]) -> dict:
    """Timeline-billed numbers (benchmarks/e2e/timeline.py): train_wall_s, steady_samples_per_s, warm-up, and each
    curve point's ``wall_s`` (evals in order; the initial one is at 0)."""
    per_rollout = [int(r["rapid/steps"]) * samples_per_step for r in records if "rapid/steps" in r]
    out = wall_numbers(clock, len(per_rollout), per_rollout)
    if clock is not None and curve:
        stamps = [0.0] + [clock(t) for t in clock.evals]
        for point, stamp in zip(curve, stamps):
            point["wall_s"] = stamp
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


if __name__ == "__main__":
    sys.exit(main())
