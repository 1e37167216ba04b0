"""Peer comparison on CPU: TRL ``GRPOTrainer`` vs rapid's loop, same model, task and batch geometry.

    python benchmarks/peers/trl_grpo.py --trl-python /path/to/venv-with-trl/bin/python [--steps 24 --h 1,8]

Both sides train the demo's SFT-warm-started tiny Qwen2 (rapid.demo, cached under .cache/rapid-demo/) on the
demo's arithmetic task with: group size K, prompts per optimizer step P (K*P completions a step), the same
max_new_tokens, learning rate, temperature 1, no KL term, no gradient checkpointing, 1 torch thread, HF
``generate`` on CPU. For each H in --h, generation happens once every H optimizer steps:
    rapid: prompts_per_rollout = H*P (H = 1 runs algo="grpg", the on-policy loop; H > 1 runs algo="rapid")
    TRL:   steps_per_generation = H (so generation_batch_size = H*K*P)
Each provider runs in its own subprocess (TRL lives in the bench extra only, possibly in another venv). Timing:
per optimizer step (TRL: a TrainerCallback's on_step_begin/on_step_end; rapid: the profiler's timing_s/step per
rollout), the first generation block (H steps) excluded as warm-up and reported apart. Providers alternate
(rapid, TRL, rapid, TRL, ...) --repeats times so drifting load from other processes hits both; the summary takes
the median. Writes OUT/trl_grpo.csv and prints one JSON line last.

TRL inside the end-to-end benchmark (same budget, accuracy over time, the mid geometry): benchmarks/peers/trl_e2e.py,
which run_e2e.py calls for ``trl-h<H>`` runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSV_FIELDS = ("provider", "h", "repeat", "status", "steps_timed", "samples_timed", "time_per_step_s", "samples_per_s",
              "warmup_s", "gen_s", "update_actor_s", "reward_mean", "version", "device", "threads", "date", "command")


def cpu_name() -> str:
    import torch

    from rapid.observe.profiling import device_name

    return device_name(torch.device("cpu"))


def warm_model(seed: int):
    """The demo's warm-started tiny model and task, exactly as the e2e benchmark builds them."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "e2e"))
    from setups import tiny_setup

    return tiny_setup(seed, log=lambda msg: print(msg, file=sys.stderr))


def trl_config(tmp: str, args, h: int, steps: int, max_new: int):
    """TRL's GRPOConfig with rapid's shared settings: K, P*K completions a step, generation every H steps, the same
    lr with rapid's schedule (constant, no warm-up, no weight decay, grad-norm clip 1), temperature 1, no KL, no
    gradient checkpointing. TRL's own algorithm choices (loss_type, PPO clip, reward scaling) stay its defaults."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=tmp, use_cpu=True, bf16=getattr(args, "bf16", False), report_to="none", save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True, seed=args.seed, max_steps=steps, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        per_device_train_batch_size=args.group_size * args.prompts_per_step, gradient_accumulation_steps=1,
        num_generations=args.group_size, steps_per_generation=h, max_completion_length=max_new,
        temperature=1.0, beta=0.0, gradient_checkpointing=False, dataloader_num_workers=0)


def run_rapid(args) -> dict:
    import rapid
    from rapid.observe.loggers import read_metrics

    model, tok, task = warm_model(args.seed)
    algo = "grpg" if args.h == 1 else "rapid"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = rapid.RapidConfig(algo=algo, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                                prompts_per_rollout=args.h * args.prompts_per_step, num_rollouts=args.steps // args.h,
                                max_new_tokens=task.max_new_tokens, lr=args.lr, engine="hf", seed=args.seed,
                                output_dir=tmp, progress_bar=False)
        rapid.train(model, task.train, task.reward_fn, cfg, tokenizer=tok)
        records = [r for r in read_metrics(tmp) if "timing_s/step" in r]
    step_times = [r["timing_s/step"] for r in records]
    phases = {k: sum(r.get(f"timing_s/{k}", 0.0) for r in records[1:]) for k in ("gen", "update_actor")}
    return {"warmup_s": step_times[0], "timed_s": sum(step_times[1:]), "steps_timed": args.steps - args.h,
            "gen_s": phases["gen"], "update_actor_s": phases["update_actor"],
            "reward_mean": statistics.fmean(r["reward/mean"] for r in records), "version": rapid.__version__}


def run_trl(args) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    model, tok, task = warm_model(args.seed)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self._t)

    rewards: list[float] = []

    def reward(prompts, completions, answer, **kw):
        r = task.reward_fn(prompts, completions, answer)
        rewards.extend(r)
        return r

    with tempfile.TemporaryDirectory() as tmp:
        config = trl_config(tmp, args, args.h, args.steps, task.max_new_tokens)
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=config,
                              train_dataset=Dataset.from_list(task.train), callbacks=[StepTimer()])
        trainer.train()
    return {"warmup_s": sum(times[:args.h]), "timed_s": sum(times[args.h:]), "steps_timed": len(times) - args.h,
            "reward_mean": statistics.fmean(rewards) if rewards else None, "version": trl.__version__}


def worker(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    res = run_rapid(args) if args.provider == "rapid" else run_trl(args)
    res["samples_timed"] = res["steps_timed"] * args.group_size * args.prompts_per_step
    res["time_per_step_s"] = res["timed_s"] / res["steps_timed"]
    res["samples_per_s"] = res["samples_timed"] / res["timed_s"]
    print("RESULT " + json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", choices=("rapid", "trl"), default=None, help="(internal) run one side")
    p.add_argument("--trl-python", default=sys.executable, help="python of an environment with trl installed")
    p.add_argument("--h", default="1,8", help="generation every H steps; comma list")
    p.add_argument("--steps", type=int, default=48, help="optimizer steps per run (a multiple of every H)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rapid/TRL runs per H (median reported)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--out", default="runs/peers")
    args, _ = p.parse_known_args(argv)
    if args.provider is not None:
        args.h = int(args.h)
        return worker(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for h in [int(x) for x in args.h.split(",")]:
        if args.steps % h or args.steps // h < 2:
            raise SystemExit(f"--steps ({args.steps}) must be a multiple of H={h} with at least 2 blocks")
        for rep, (provider, python) in [(rep, pp) for rep in range(args.repeats)
                                        for pp in (("rapid", sys.executable), ("trl", args.trl_python))]:
            cmd = [python, str(Path(__file__).resolve()), "--provider", provider, "--h", str(h)] + [
                f"--{k}={getattr(args, k.replace('-', '_'))}" for k in
                ("steps", "group-size", "prompts-per-step", "lr", "seed", "threads")]
            print(f"[peers] {provider} H={h} ...", file=sys.stderr, flush=True)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            row = {"provider": provider, "h": h, "repeat": rep, "command": " ".join(cmd[1:]), "threads": args.threads,
                   "device": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
                (out / f"{provider}_h{h}_r{rep}.log").write_text(proc.stdout + proc.stderr)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                row["status"] = "ok" if proc.returncode == 0 and line else f"exit {proc.returncode}"
                if line:
                    row.update(json.loads(line[len("RESULT "):]))
            except subprocess.TimeoutExpired:
                row["status"] = f"timeout {args.timeout}s"
            print(f"[peers] {provider} H={h}: {row['status']} samples/s={row.get('samples_per_s')}",
                  file=sys.stderr, flush=True)
            rows.append(row)
    with open(out / "trl_grpo.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = {"benchmark": "peers_trl_grpo", "device": cpu_name(), "threads": args.threads,
               "python": platform.python_version(), "steps": args.steps, "group_size": args.group_size,
               "prompts_per_step": args.prompts_per_step}
    for provider in ("rapid", "trl"):
        for h in {row["h"] for row in rows}:
            mine = [row for row in rows if row["provider"] == provider and row["h"] == h and row["status"] == "ok"]
            if mine:
                summary[f"{provider}_h{h}_samples_per_s"] = statistics.median(r["samples_per_s"] for r in mine)
                summary[f"{provider}_h{h}_time_per_step_s"] = statistics.median(r["time_per_step_s"] for r in mine)
                summary[f"{provider}_version"] = mine[0].get("version")
    for h in [int(x) for x in args.h.split(",")]:
        r, t = summary.get(f"rapid_h{h}_samples_per_s"), summary.get(f"trl_h{h}_samples_per_s")
        if r and t:
            summary[f"speedup_h{h}"] = r / t          # ratio of the medians
        pairs = [(a["samples_per_s"], b["samples_per_s"]) for a in rows for b in rows
                 if a["h"] == b["h"] == h and a["repeat"] == b["repeat"] and a["provider"] == "rapid"
                 and b["provider"] == "trl" and a["status"] == b["status"] == "ok"]
        if pairs:                                     # back-to-back pairs: less exposed to drifting load
            summary[f"speedup_h{h}_pairwise_median"] = statistics.median(x / y for x, y in pairs)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
