"""``collect_rollout``: wake → sync weights → generate → sleep → rewards → buffer; and the evaluation pass.

The sampling parameters come from ``RapidConfig`` alone (temperature, top_k, top_p; the model's
``generation_config`` is never consulted), and every completion is drawn with a seed derived from the run seed,
the rollout and the prompt's global position (``SamplingConfig.prompt_keys``), so a rollout does not depend on
how the engine batches it.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from .buffer import RolloutBuffer, score
from .config import RapidConfig
from .engines import SamplingConfig


@dataclass
class RolloutInfo:
    """What the metrics need to know about a collected rollout besides the buffer."""

    rows: list[dict]                    # the dataset rows of its prompts
    reward_stats: dict[str, float]


def rollout_sampling(cfg: RapidConfig, rollout_index: int, first_key: int, num_prompts: int) -> SamplingConfig:
    """The behaviour distribution of a training rollout (only RapidConfig's settings shape it)."""
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, seed=cfg.seed * 1_000_003 + rollout_index,
                          prompt_keys=tuple(range(first_key, first_key + num_prompts)))


def collect_rollout(engine, model, rows: list[dict], texts: list[str], reward_fn, cfg: RapidConfig,
                    sampling: SamplingConfig, profiler, should_stop=None) -> tuple[RolloutBuffer, RolloutInfo]:
    """Generate ``cfg.group_size`` completions for each of ``texts`` (rendered prompts of ``rows``) and score
    them. ``model`` is what the engine syncs from (the fp32 master; the engine casts to its dtype)."""
    with profiler.phase("wake"):
        engine.wake()
    with profiler.phase("update_weights"):
        engine.sync_weights(model)
    with profiler.phase("gen"):
        rollout = engine.generate(texts, cfg.group_size, sampling)
    profiler.add_tokens("gen", rollout.num_completion_tokens)
    with profiler.phase("sleep"):
        engine.sleep()
    with profiler.phase("reward"):
        rewards, reward_stats = score_rows(reward_fn, cfg, rollout, rows, should_stop)
    return RolloutBuffer(rollout, rewards, cfg.group_size), RolloutInfo(rows=rows, reward_stats=reward_stats)


def score_rows(reward_fn, cfg: RapidConfig, rollout, rows: list[dict], should_stop=None):
    """Rewards with the dataset's own prompts (a string or chat messages), not the rendered engine text."""
    return score(reward_fn, _with_prompts(rollout, rows), rows, cfg.reward_workers, cfg.reward_timeout_s,
                 should_stop)


def rollout_metrics(buffer: RolloutBuffer, info: RolloutInfo, step_stats: list[dict[str, float]]) -> dict:
    """Reward, length and per-step diagnostics of one rollout (timings come from the profiler)."""
    rollout, rewards = buffer.rollout, buffer.rewards
    lengths = [len(c) for c in rollout.completion_ids]
    metrics = {
        **info.reward_stats,                                    # errors, timeouts (the mean is of the 0-filled)
        "rapid/steps": float(len(step_stats)),
        "reward/mean": statistics.fmean(rewards), "reward/std": statistics.pstdev(rewards),
        "response_length/mean": statistics.fmean(lengths),
        "response_length/max": float(max(lengths)),
        "response_length/clip_ratio": 1.0 - statistics.fmean(float(f) for f in rollout.finished),
    }
    for key in step_stats[0] if step_stats else ():
        values = [s[key] for s in step_stats if key in s]
        metrics[key] = max(values) if key.endswith("_max") else statistics.fmean(values)
    if step_stats:
        metrics["rapid/engine_logprob_diff"] = step_stats[0]["engine_logprob_diff"]   # before any update
        metrics.pop("engine_logprob_diff", None)
        for key in ("rapid/ess", "rapid/clip_frac"):
            if key in step_stats[-1]:
                metrics[key + "_last"] = step_stats[-1][key]                            # the stalest step
    return metrics


def evaluate_rewards(engine, model, rows: list[dict], texts: list[str], reward_fn, cfg: RapidConfig) -> dict:
    """Greedy decoding of every eval prompt (in engine calls of ``max_num_seqs``); the mean reward is
    ``eval/reward`` (accuracy for 0/1 rewards)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=cfg.seed)
    engine.wake()
    engine.sync_weights(model)
    rollout = engine.generate(texts, 1, sampling)
    engine.sleep()
    rewards, reward_stats = score_rows(reward_fn, cfg, rollout, rows)
    return {"eval/reward": statistics.fmean(rewards), "eval/errors": reward_stats["reward/errors"],
            "eval/response_length": statistics.fmean(len(c) for c in rollout.completion_ids)}


def _with_prompts(rollout, rows: list[dict]):
    """The rollout with the rows' own prompts (what reward functions receive)."""
    return dataclasses.replace(rollout, prompts=[row["prompt"] for row in rows])

