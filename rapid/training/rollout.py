"""``collect_rollout``: wake → sync weights → generate → sleep → rewards → buffer; and the evaluation pass.

The sampling parameters come from ``RapidConfig`` alone (temperature, top_k, top_p; the model's
``generation_config`` is never consulted), and every completion is drawn with a seed derived from the run seed,
the rollout and the prompt's global position (``SamplingConfig.prompt_keys``), so a rollout does not depend on
how the engine batches it.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from dataclasses import dataclass

from ..config import RapidConfig
from ..engines import SamplingConfig
from ..loss.seeds import eval_seed, rollout_seed
from .buffer import RolloutBuffer, score


@dataclass
class RolloutInfo:
    """What the metrics need to know about a collected rollout besides the buffer."""

    rows: list[dict]                    # the dataset rows of its prompts
    reward_stats: dict[str, float]


def rollout_sampling(cfg: RapidConfig, rollout_index: int, first_key: int, num_prompts: int | None = None,
                     groups: list[int] | None = None) -> SamplingConfig:
    """The behaviour distribution of a training rollout (only RapidConfig's settings shape it). Prompt ``g`` of the
    rollout (``groups``, default all ``num_prompts``) is keyed by its global position ``first_key + g``."""
    groups = list(range(num_prompts or 0)) if groups is None else groups
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, seed=rollout_seed(cfg.seed, rollout_index),
                          stop=tuple(cfg.stop) if cfg.stop else None,
                          prompt_keys=tuple(first_key + g for g in groups))


def plan_rollout(num_groups: int, h: int, seed: int, rank: int = 0, world_size: int = 1
                 ) -> tuple[list[int], list[list[int]]]:
    """The rollout's H mini-batches (a seeded shuffle of its groups into H equal sets) and this rank's part.

    Returns (the global groups this rank generates, scores and trains on — ascending; its mini-batches as indices
    into that list). Rank r takes every world_size-th group of each mini-batch, so each rank generates only its
    share and a group never spans ranks (the baseline stays rank-local). The split depends only on ``seed``, so a
    run resumed at another world size trains on the same mini-batches.
    """
    if num_groups % h:
        raise ValueError(f"{num_groups} groups cannot be split into {h} equal mini-batches")
    order = list(range(num_groups))
    random.Random(seed).shuffle(order)
    per = num_groups // h
    mine = [order[i * per:(i + 1) * per][rank::world_size] for i in range(h)]
    local = sorted(g for mb in mine for g in mb)
    index = {g: i for i, g in enumerate(local)}
    return local, [[index[g] for g in mb] for mb in mine]


def subset_rollout(rollout, groups: list[int]):
    """The rollout restricted to prompts ``groups`` (each with its n completions), in that order."""
    n = rollout.n
    seqs = [g * n + j for g in groups for j in range(n)]
    pick = lambda xs: [xs[i] for i in seqs] if xs else []            # noqa: E731
    return dataclasses.replace(rollout, prompts=[rollout.prompts[g] for g in groups],
                               prompt_ids=[rollout.prompt_ids[g] for g in groups],
                               completion_ids=pick(rollout.completion_ids), logprobs=pick(rollout.logprobs),
                               completions=pick(rollout.completions), finished=pick(rollout.finished))


def merge_rollouts(parts: list[tuple[list[int], object]]):
    """One rollout from per-rank parts ``(global groups, rollout)``, ordered by global group (for checkpoints)."""
    entries = sorted((g, part, i) for groups, part in parts for i, g in enumerate(groups))
    first = parts[0][1]
    n = first.n
    out = dataclasses.replace(first, prompts=[], prompt_ids=[], completion_ids=[], logprobs=[], completions=[],
                              finished=[], stats={})
    for _, part, i in entries:
        out.prompts.append(part.prompts[i])
        out.prompt_ids.append(part.prompt_ids[i])
        for j in range(i * n, (i + 1) * n):
            out.completion_ids.append(part.completion_ids[j])
            out.logprobs.append(part.logprobs[j])
            out.completions.append(part.completions[j])
            if part.finished:
                out.finished.append(part.finished[j])
    return out


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


def rollout_metrics(info: RolloutInfo, step_stats: list[dict[str, float]]) -> dict:
    """This rank's reward-scoring counters and per-step diagnostics of one rollout (timings come from the profiler;
    the whole rollout's reward and length statistics, over every rank, from ``Session.rollout_totals``)."""
    metrics = {
        **info.reward_stats,                                    # errors, timeouts (the mean is of the 0-filled)
        "rapid/steps": float(len(step_stats)),
    }
    keys = list(dict.fromkeys(k for s in step_stats for k in s))
    for key in keys:
        values = [s[key] for s in step_stats if key in s]
        metrics[key] = max(values) if key.endswith("_max") else statistics.fmean(values)
    metrics.pop("engine_logprob_diff", None)
    trained = [s for s in step_stats if "rapid/w_mean" in s]        # steps that ran a forward
    if trained:
        metrics["rapid/engine_logprob_diff"] = trained[0]["engine_logprob_diff"]   # before any update
        for key in ("rapid/ess", "rapid/clip_frac"):
            if key in trained[-1]:
                metrics[key + "_last"] = trained[-1][key]                               # the stalest step
    return metrics


def evaluate_rewards(engine, model, rows: list[dict], texts: list[str], reward_fn, cfg: RapidConfig,
                     samples: list[dict] | None = None) -> dict:
    """Greedy decoding of every eval prompt (``eval/reward``, the accuracy for 0/1 rewards), and with
    ``cfg.eval_samples = n`` also n samples per prompt from the training distribution: ``eval/mean@n`` and the
    unbiased ``eval/pass@k`` (a sample passes when its reward is >= 1). Engine calls are chunked by the engine
    (``max_num_seqs``). ``samples``, when given, receives one row per generation (for eval_completions.jsonl)."""
    return eval_metrics(eval_records(engine, model, rows, texts, reward_fn, cfg, samples), cfg.eval_samples)


def eval_records(engine, model, rows: list[dict], texts: list[str], reward_fn, cfg: RapidConfig,
                 samples: list[dict] | None = None) -> list[dict]:
    """One record per eval prompt: greedy reward, its length, whether scoring failed, the sampled rewards."""
    stop = tuple(cfg.stop) if cfg.stop else None
    engine.wake()
    engine.sync_weights(model)
    greedy = engine.generate(texts, 1, SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                                                      seed=cfg.seed, stop=stop))
    sampled = None
    if cfg.eval_samples:
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                  top_p=cfg.top_p, seed=eval_seed(cfg.seed), stop=stop,
                                  prompt_keys=tuple(hash_key(row) for row in rows))
        sampled = engine.generate(texts, cfg.eval_samples, sampling)
    engine.sleep()
    if not texts:
        return []
    rewards, _ = score_rows(reward_fn, cfg, greedy, rows)
    records = [{"reward": r, "length": len(ids)} for r, ids in zip(rewards, greedy.completion_ids)]
    _record(samples, "greedy", rows, greedy, rewards)
    if sampled is not None:
        n = cfg.eval_samples
        s_rewards, _ = score_rows(reward_fn, cfg, sampled, rows)
        for i, record in enumerate(records):
            record["sampled"] = s_rewards[i * n:(i + 1) * n]
        _record(samples, "sampled", rows, sampled, s_rewards)
    return records


def eval_metrics(records: list[dict], n: int) -> dict:
    """eval/reward (greedy), eval/response_length and, with n samples per prompt, eval/mean@n and eval/pass@k."""
    from ..rewards import pass_at_k

    if not records:
        return {}
    metrics = {"eval/reward": statistics.fmean(r["reward"] for r in records),
               "eval/response_length": statistics.fmean(r["length"] for r in records)}
    if n and all("sampled" in r for r in records):
        metrics[f"eval/mean@{n}"] = statistics.fmean(x for r in records for x in r["sampled"])
        correct = [sum(x >= 1.0 for x in r["sampled"]) for r in records]
        k = 1
        while k <= n:
            metrics[f"eval/pass@{k}"] = statistics.fmean(pass_at_k(n, c, k) for c in correct)
            k *= 2
    return metrics


def hash_key(row: dict) -> int:
    """A stable per-row key (the eval sampling seed of a prompt does not depend on which rank evaluates it)."""
    import hashlib

    digest = hashlib.sha256(repr(row.get("prompt")).encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _record(samples: list[dict] | None, kind: str, rows: list[dict], rollout, rewards: list[float]) -> None:
    if samples is None:
        return
    for i, (text, reward) in enumerate(zip(rollout.completions, rewards)):
        samples.append({"kind": kind, "prompt": rows[i // rollout.n]["prompt"], "completion": text,
                        "reward": reward, "tokens": len(rollout.completion_ids[i])})


def completion_rows(buffer: RolloutBuffer, info: RolloutInfo, limit: int, seed: int) -> list[dict]:
    """Up to ``limit`` (prompt, completion, reward) rows of a rollout, a seeded sample, for completions.jsonl."""
    import random

    rollout = buffer.rollout
    picked = sorted(random.Random(seed).sample(range(len(buffer.rewards)), min(limit, len(buffer.rewards))))
    return [{"prompt": info.rows[i // rollout.n]["prompt"], "completion": rollout.completions[i],
             "reward": buffer.rewards[i], "tokens": len(rollout.completion_ids[i]),
             "finished": bool(rollout.finished[i]) if rollout.finished else None} for i in picked]


def _with_prompts(rollout, rows: list[dict]):
    """The rollout with the rows' own prompts (what reward functions receive)."""
    return dataclasses.replace(rollout, prompts=[row["prompt"] for row in rows])

