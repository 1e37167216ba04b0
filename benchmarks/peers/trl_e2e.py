"""TRL ``GRPOTrainer`` as one run of the end-to-end benchmark (run_e2e.py calls it for ``trl-h<H>[-t<N>]`` runs with
the python of a venv that has TRL; see benchmarks/peers/trl_grpo.py for that venv).

    /work/trl-venv/bin/python benchmarks/peers/trl_e2e.py --run trl-h32 --out OUT --model tiny --budget-samples 32768 \\
        --prompts-per-step 2 --group-size 8 --lr 3e-4 --eval-every-steps 256 --threads 2

Same model, task, geometry and sample budget as benchmarks/e2e/worker.py: P prompts x K samples per optimizer step,
generation every H steps (``steps_per_generation = H``), rapid's shared optimiser settings (benchmarks/peers/
trl_grpo.trl_config). Greedy held-out accuracy is measured with rapid's own evaluator
(``rapid.trainer.evaluate_rewards`` on the model TRL trains) before training and every --eval-every-steps steps;
eval time is excluded from the clock, as for rapid. Writes OUT/<run>/result.json in the e2e worker's format:
``train_wall_s`` (wall-clock from the first step to the last, evals subtracted), ``steady_samples_per_s`` (the first
generation block excluded as warm-up) and the accuracy curve with ``wall_s`` per point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "e2e"))
sys.path.insert(0, str(HERE))


def parse_run(run: str) -> tuple[int, int | None, bool]:
    """``trl-h<H>[-t<threads>][-bf16]`` -> (H, threads or None, bf16 autocast)."""
    m = re.fullmatch(r"trl-h(\d+)(?:-t(\d+))?(-bf16)?", run)
    if not m:
        raise ValueError(f"unknown TRL run {run!r}: trl-h<H>, optionally with -t<threads> and -bf16")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None, bool(m.group(3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", choices=("tiny", "mid", "smollm2"), default="tiny")
    p.add_argument("--budget-samples", type=int, default=1024)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every-steps", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=200)
    args, _ = p.parse_known_args(argv)        # run_e2e passes rapid-only flags too (max-h, engine, ...)
    h, threads, args.bf16 = parse_run(args.run)
    args.threads = threads or args.threads

    import torch

    torch.set_num_threads(args.threads)
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    import rapid
    from rapid import data
    from rapid.engines.hf import HFEngine
    from rapid.models import chat_template_decision
    from rapid.observe.profiling import device_name
    from rapid.trainer import evaluate_rewards
    from setups import setup
    from trl_grpo import trl_config

    run_dir = Path(args.out) / args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    samples_per_step = args.group_size * args.prompts_per_step
    if args.budget_samples % (samples_per_step * h):
        raise SystemExit(f"--budget-samples must be a multiple of {samples_per_step * h} for {args.run}")
    steps = args.budget_samples // samples_per_step
    t_setup = time.perf_counter()
    model, tok, task = setup(args.model, args.seed, args.warm_seed, args.n_eval)
    setup_s = time.perf_counter() - t_setup
    max_new = args.max_new_tokens or task.max_new_tokens
    eval_cfg = rapid.RapidConfig(max_new_tokens=max_new, seed=args.seed)
    template, _ = chat_template_decision(eval_cfg.chat_template, tok, model)
    texts = data.render_prompts(task.eval, tok, template) if task.eval else None

    def accuracy(m) -> float:
        was_training = m.training
        m.eval()
        acc = evaluate_rewards(HFEngine(m, tok), m, task.eval, texts, task.reward_fn, eval_cfg)["eval/reward"]
        m.train(was_training)
        return acc

    curve: list[dict] = []
    clock = {"t0": 0.0, "eval_s": 0.0, "ends": []}

    def billed() -> float:
        return time.perf_counter() - clock["t0"] - clock["eval_s"]

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **k):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, a, state, control, model=None, **k):
            step = state.global_step
            if step % h == 0:
                clock["ends"].append(billed())          # end of a generation block (H steps)
            if texts and (step % args.eval_every_steps == 0 or step == steps):
                t = time.perf_counter()
                curve.append({"train_s": billed(), "wall_s": billed(), "samples": step * samples_per_step,
                              "accuracy": accuracy(model)})
                clock["eval_s"] += time.perf_counter() - t

    rewards: list[float] = []

    def reward(prompts, completions, **columns):
        # conversational rows (a chat model, below): TRL hands over the assistant message; score its text
        completions = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        r = task.reward_fn(prompts, completions, **columns)
        rewards.extend(r)
        return r

    # The same prompts rapid trains on: where rapid applies the chat template to string prompts, TRL gets them as
    # conversations (TRL applies the template, with the generation prompt, only to conversational rows).
    train_rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in task.train] if template \
        else task.train
    if texts:
        curve.append({"train_s": 0.0, "wall_s": 0.0, "samples": 0, "accuracy": accuracy(model)})
    load_start = os.getloadavg()[0]
    t_wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = trl_config(tmp, args, h, steps, max_new)
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=config,
                              train_dataset=Dataset.from_list(train_rows), callbacks=[Timer()])
        trainer.train()
    wall = time.perf_counter() - t_wall
    ends = clock["ends"]
    block = h * samples_per_step
    steady = (len(ends) - 1) * block / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else None
    summary = {
        "run": args.run, "algo": "trl-grpo", "h": h, "h_trace": [h] * len(ends), "model": args.model, "engine": "hf",
        "seed": args.seed, "budget_samples": args.budget_samples, "overlap": False, "engine_threads": None,
        "samples": steps * samples_per_step, "optimizer_steps": steps, "rollouts": len(ends),
        "train_s": ends[-1] if ends else None, "samples_per_s": steps * samples_per_step / ends[-1] if ends else None,
        "train_wall_s": ends[-1] if ends else None, "steady_samples_per_s": steady,
        "warmup_s": ends[0] if ends else None,
        "phases_s": {}, "accuracy_init": curve[0]["accuracy"] if curve else None,
        "accuracy_final": curve[-1]["accuracy"] if curve else None, "curve": curve,
        "reward_mean": sum(rewards) / len(rewards) if rewards else None,
        "wall_with_eval_s": wall, "setup_s": setup_s, "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0],
        "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "trl": trl.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
        "warm_start": getattr(model.config, "rapid_warm_start", args.model),
    }
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
