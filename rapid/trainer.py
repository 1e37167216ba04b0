"""``rapid.train``: generate one large batch, then H small off-policy policy-gradient steps on it (RAPID).

Reads top to bottom: validate → model / optimizer / engine → (resume) → loop over rollouts
[adaptive H → wake → sync weights → generate → sleep → rewards → (recompute log μ) → H optimizer steps
→ metrics → eval / checkpoint] → final checkpoint.

Departures from textbook GRPO (Shao et al. 2024), each deliberate:

1. One generation call per rollout, then H = prompts_per_rollout / prompts_per_step optimizer steps on disjoint
   mini-batches of whole groups (not several epochs over the same batch): steps after the first are off-policy.
2. The off-policy correction is a *sequence-level* importance weight w = π(y)/μ(y), truncated at η (min(w, η),
   computed in log space), not PPO's per-token clipped ratio; there is no KL penalty and no reference model.
3. The baseline is importance-weighted and leave-one-out within the group, b_s = Σ_{j≠s} w̄_j R_j / (K−1);
   advantages are not divided by the group std (``adv_scale="none"`` default).
4. The loss is the sequence log-prob sum scaled by a constant (``loss_norm``, default max_new_tokens), averaged
   over sequences — no per-token length normalisation (which biases towards long wrong answers).
5. log μ comes from the generation engine (the tempered distribution it sampled from), not a second forward pass,
   unless ``behavior_logprobs="recompute"``; the gap is logged as ``rapid/engine_logprob_diff``.
6. Failed rewards (``None``) count as 0.0 and are reported as ``reward/errors``.
7. ``algo="grpg"`` (on-policy, w ≡ 1) and ``algo="grpo"`` (PPO-clip, std-normalised advantages, token-mean loss)
   run in this same loop, for fair comparisons.

Interrupts (SIGINT / SIGTERM) finish the current optimizer step, skip the rest of the rollout, save a checkpoint
(when output_dir is set) and *return* a ``TrainResult`` with ``interrupted=True``; a second signal raises
``KeyboardInterrupt`` at once. ``resume=True`` continues from the newest checkpoint with the same model,
optimizer, RNG, prompt order and counters, so the rollouts that follow match an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import algorithms, checkpoint, data
from .adaptive import AdaptiveH
from .buffer import RolloutBuffer, score
from .config import RapidConfig
from .engines import SamplingConfig, make_engine
from .forward import check_packing, completion_hidden, micro_batch_loss, model_parts, token_logprobs
from .metrics import MetricsSink, StopFlag, make_profiler, memory_gb, progress_bar
from .model_utils import apply_peft, context_length, load_model, load_tokenizer, peak_flops, training_device

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: torch.nn.Module
    tokenizer: object
    history: list[dict] = field(default_factory=list)   # one metrics dict per rollout (and eval points)
    output_dir: str | None = None
    interrupted: bool = False                           # stopped by SIGINT/SIGTERM (after saving a checkpoint)
    profile_summary: str | None = None                  # per-phase time / utilisation table of the run


def train(model, dataset, reward_fn, config: RapidConfig | None = None, tokenizer=None, peft_config=None,
          eval_dataset=None, eval_fn=None) -> TrainResult:
    cfg = config if config is not None else RapidConfig()
    if not isinstance(cfg, RapidConfig):
        raise ValueError(f"config must be a RapidConfig, got {type(cfg).__name__}")

    # ---- validate everything cheap before anything expensive ------------------------------------------------
    rows = data.as_rows(dataset, "dataset")
    data.check_columns(rows, reward_fn, "dataset")
    eval_rows = data.as_rows(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    if eval_rows is not None:
        data.check_columns(eval_rows, reward_fn, "eval_dataset")
    if eval_fn is not None and not callable(eval_fn):
        raise ValueError("eval_fn must be callable: eval_fn(model, tokenizer) -> dict[str, float]")
    tokenizer = load_tokenizer(model, tokenizer)
    context = context_length(model)
    limit = cfg.max_prompt_tokens or ((context - cfg.max_new_tokens) if context else None)
    if limit is not None and limit < 1:
        raise ValueError(f"max_new_tokens ({cfg.max_new_tokens}) leaves no room for prompts in the context "
                         f"({context})")
    if limit is not None:
        for split, split_rows in (("dataset", rows), ("eval_dataset", eval_rows or [])):
            if split_rows:
                data.check_prompt_lengths(split_rows, tokenizer, limit, split)
    data.probe_reward(reward_fn, rows)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    if cfg.resume and checkpoint.latest_checkpoint(out_dir / "checkpoints") is None:
        logger.warning("resume=True but no checkpoint under %s: starting fresh", out_dir)
    logger.info("rapid config: %s", json.dumps(cfg.to_dict(), default=str))

    # ---- model, optimizer, engine, profiler ---------------------------------------------------------------------
    device = training_device()
    model = load_model(model, cfg, device)
    if peft_config is not None:
        model = apply_peft(model, peft_config)
    parts = model_parts(model)
    parts.packed = check_packing(parts.base, device, parts.weight.shape[0])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    num_params = sum(p.numel() for p in model.parameters())
    summary: list[str | None] = []                # the profiler's table, filled when it closes
    with contextlib.ExitStack() as cleanup:
        engine = make_engine(cfg, model, tokenizer, out_dir)
        cleanup.callback(engine.close)         # also on errors: a leaked vLLM engine breaks the next one
        profiler = make_profiler(device, out_dir, num_params)
        cleanup.callback(lambda: summary.append(profiler.close()))
        controller = AdaptiveH(cfg) if cfg.adaptive_h else None
        peak = peak_flops(device)

        # ---- resume ----------------------------------------------------------------------------------------------
        state = {"rollout": 0, "prompts_consumed": 0, "global_step": 0, "train_seconds": 0.0, "history": []}
        last = checkpoint.latest_checkpoint(out_dir / "checkpoints") if cfg.resume and out_dir else None
        if last is not None:
            state.update(checkpoint.load_checkpoint(last, model, optimizer))
        history: list[dict] = state["history"]
        sink = MetricsSink(out_dir, cfg, history, tensorboard=cfg.tensorboard, wandb=cfg.wandb)
        cleanup.callback(sink.close)
        sampler = data.PromptSampler(rows, cfg.seed, state["prompts_consumed"])

        def save() -> None:
            if out_dir is None:
                return
            with profiler.phase("save"):
                state.update(prompts_consumed=sampler.consumed, history=history)
                checkpoint.save_checkpoint(out_dir / "checkpoints", state["rollout"], model, optimizer, state,
                                           cfg.to_dict(), keep=cfg.keep_checkpoints)

        def evaluate() -> dict[str, float]:
            metrics: dict[str, float] = {}
            with profiler.phase("eval"):
                if eval_fn is not None:
                    metrics.update({k if k.startswith("eval/") else f"eval/{k}": float(v)
                                    for k, v in eval_fn(model, tokenizer).items()})
                if eval_rows is not None:
                    metrics.update(evaluate_rewards(engine, model, eval_rows, reward_fn, cfg))
            return metrics

        # ---- the loop -------------------------------------------------------------------------------------------
        interrupted = False
        if state["rollout"] == 0 and (eval_rows is not None or eval_fn is not None):
            sink.log({"rollout": 0, "time/train_s": 0.0, **evaluate()})
        bar = progress_bar(cfg, initial=state["rollout"])
        with StopFlag() as stop:
            while state["rollout"] < cfg.num_rollouts and not stop.requested:
                if cfg.max_train_seconds is not None and state["train_seconds"] >= cfg.max_train_seconds:
                    break
                profiler.start_rollout()
                t_start = time.perf_counter()
                h = controller.next_h() if controller is not None else cfg.steps_per_rollout
                batch_rows = sampler.take(h * cfg.prompts_per_step)
                sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                          top_p=cfg.top_p, seed=cfg.seed * 1_000_003 + state["rollout"])
                with profiler.phase("wake"):
                    engine.wake()
                with profiler.phase("update_weights"):
                    engine.sync_weights(model)
                with profiler.phase("gen"):
                    rollout = engine.generate([r["prompt"] for r in batch_rows], cfg.group_size, sampling)
                profiler.add_tokens("gen", rollout.num_completion_tokens)
                with profiler.phase("sleep"):
                    engine.sleep()
                with profiler.phase("reward"):
                    rewards, reward_stats = score(reward_fn, rollout, batch_rows, cfg.reward_workers,
                                                  cfg.reward_timeout_s)
                buffer = RolloutBuffer(rollout, rewards, cfg.group_size)
                logprob_diff = None
                if cfg.behavior_logprobs == "recompute":
                    with profiler.phase("old_log_prob"):
                        logprob_diff = recompute_behavior(cfg, parts, buffer, device)

                # H optimizer steps on disjoint whole-group mini-batches of this one rollout
                step_stats: list[dict[str, float]] = []
                trained_tokens = 0
                with profiler.phase("update_actor"):
                    for j, groups in enumerate(buffer.minibatches(h, seed=cfg.seed * 7_919 + state["rollout"])):
                        micro = buffer.micro_batches(groups, cfg.micro_batch_size, device)
                        stats, diff = optimizer_step(cfg, parts, model, optimizer, micro, params)
                        stats["rapid/staleness"] = float(j)     # optimizer steps since the rollout was sampled
                        step_stats.append(stats)
                        trained_tokens += sum(mb.num_tokens for mb in micro)
                        logprob_diff = diff if logprob_diff is None else logprob_diff
                        if controller is not None and hasattr(controller, "observe_step"):
                            controller.observe_step(stats)
                        state["global_step"] += 1
                        if stop.requested:
                            logger.warning("interrupt: skipping the remaining %d steps of this rollout", h - j - 1)
                            break
                profiler.add_tokens("update_actor", trained_tokens)

                state["rollout"] += 1
                metrics = profiler.end_rollout()
                step_s = time.perf_counter() - t_start
                state["train_seconds"] += step_s
                lengths = [len(c) for c in rollout.completion_ids]
                total_tokens = rollout.num_completion_tokens + sum(len(rollout.prompt_ids[i // rollout.n])
                                                                   for i in range(len(lengths)))
                metrics.update({
                    "rollout": state["rollout"], "global_step": state["global_step"], "rapid/steps": len(step_stats),
                    "time/train_s": state["train_seconds"],
                    "reward/mean": statistics.fmean(rewards), "reward/std": statistics.pstdev(rewards),
                    **reward_stats,
                    "response_length/mean": statistics.fmean(lengths),
                    "response_length/clip_ratio": 1.0 - statistics.fmean(float(f) for f in rollout.finished),
                    "perf/throughput": total_tokens / step_s, "perf/samples_per_s": len(lengths) / step_s,
                    "perf/max_memory_allocated_gb": memory_gb(device),
                    "rapid/engine_logprob_diff": logprob_diff,
                })
                for key in step_stats[0] if step_stats else ():
                    metrics[key] = statistics.fmean(s[key] for s in step_stats)
                update_s = metrics.get("timing_s/update_actor", 0.0)
                if peak and update_s > 0 and "perf/mfu/actor" not in metrics:
                    metrics["perf/mfu/actor"] = 6 * num_params * trained_tokens / update_s / peak
                if controller is not None:
                    controller.update(metrics)
                if cfg.eval_every and state["rollout"] % cfg.eval_every == 0 and state["rollout"] < cfg.num_rollouts:
                    metrics.update(evaluate())
                sink.log(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", tok_s=f"{metrics['perf/throughput']:.0f}")
                if cfg.save_every and state["rollout"] % cfg.save_every == 0 and not stop.requested:
                    save()
                if controller is not None and getattr(controller, "exhausted", False):
                    break                                   # the controller's step budget is spent
            interrupted = stop.requested
            bar.close()
            already = bool(history) and history[-1].get("rollout") == state["rollout"] and any(
                k.startswith("eval/") for k in history[-1])
            if not interrupted and not already and (eval_rows is not None or eval_fn is not None):
                sink.log({"rollout": state["rollout"], "time/train_s": state["train_seconds"], "final": True,
                          **evaluate()})
            save()
    if out_dir is not None and not interrupted:
        model.save_pretrained(out_dir / "model")
        tokenizer.save_pretrained(out_dir / "model")
    return TrainResult(model=model, tokenizer=tokenizer, history=history,
                       output_dir=str(out_dir) if out_dir else None, interrupted=interrupted,
                       profile_summary=summary[0] if summary else None)


def optimizer_step(cfg: RapidConfig, parts, model, optimizer, micro_batches, params) -> tuple[dict, float]:
    """One optimizer step over a mini-batch, accumulating gradients over its micro-batches exactly.

    Each micro-batch loss is normalised within itself (by its sequences, or tokens for grpo); weighting it by
    count / total makes the accumulated gradient that of the whole mini-batch. Returns the averaged diagnostics
    and the mean |log μ_engine − log π_trainer| per token, measured before this step's update.
    """
    counts = [mb.batch.num_tokens if cfg.algo == "grpo" else mb.batch.num_seqs for mb in micro_batches]
    total = max(sum(counts), 1)
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}          # count-weighted diagnostics, kept on the device until the end
    diff_sum, diff_n = 0.0, 0
    for mb, count in zip(micro_batches, counts):
        res = micro_batch_loss(cfg, parts, mb.prompt_ids, mb.completion_ids, mb.batch, mb.batch.targets.device)
        (res.loss * (count / total)).backward()
        weight = count / total
        for key, value in (("actor/loss", res.loss.detach()), *res.stats.items()):
            sums[key] = sums.get(key, 0.0) + value.float() * weight
        diff_sum = diff_sum + (res.token_logprobs - mb.batch.behavior_logprobs).abs().sum()
        diff_n += mb.batch.num_tokens
    sums["actor/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
    optimizer.step()
    sums["engine_logprob_diff"] = diff_sum / max(diff_n, 1)
    stats = algorithms.diagnostics(sums)        # one device-to-host transfer per step, not one per statistic
    return stats, stats.pop("engine_logprob_diff")


@torch.no_grad()
def recompute_behavior(cfg: RapidConfig, parts, buffer: RolloutBuffer, device: torch.device) -> float:
    """log μ by the trainer's own forward (exact: w = 1 on the first step); returns the engine's mean gap."""
    all_groups = list(range(buffer.num_groups))
    recomputed = [None] * len(buffer.rewards)
    diff_sum, n = 0.0, 0
    for mb in buffer.micro_batches(all_groups, cfg.micro_batch_size, device):
        hidden = completion_hidden(parts, mb.prompt_ids, mb.completion_ids, device)                  # (N, D)
        lp = token_logprobs(cfg, parts, hidden.to(parts.weight.dtype), mb.batch.targets)              # (N,)
        diff_sum += (lp - mb.batch.behavior_logprobs).abs().sum().item()
        n += lp.numel()
        cu = mb.batch.cu_seqlens.tolist()
        for i, s in enumerate(mb.seq_index):
            recomputed[s] = lp[cu[i]:cu[i + 1]]
    buffer.set_behavior(recomputed)
    return diff_sum / max(n, 1)


def evaluate_rewards(engine, model, rows: list[dict], reward_fn, cfg: RapidConfig) -> dict[str, float]:
    """Greedy decoding of every eval prompt; the mean reward is ``eval/reward`` (accuracy for 0/1 rewards)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=cfg.seed)
    engine.wake()
    engine.sync_weights(model)
    rollout = engine.generate([r["prompt"] for r in rows], 1, sampling)
    engine.sleep()
    rewards, reward_stats = score(reward_fn, rollout, rows, cfg.reward_workers, cfg.reward_timeout_s)
    return {"eval/reward": statistics.fmean(rewards), "eval/errors": reward_stats["reward/errors"],
            "eval/response_length": statistics.fmean(len(c) for c in rollout.completion_ids)}
