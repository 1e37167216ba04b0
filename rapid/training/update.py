"""``update``: the H optimizer steps of one rollout, each over token-budget micro-batches (DESIGN.md section 3).

One optimizer step = one mini-batch of whole groups. Two ways to accumulate its gradient exactly:

- **one phase** (every group fits a micro-batch): each micro-batch's loss is normalised within it (sequences, or
  tokens for grpo) and weighted by count / total, so the accumulated gradient is the mini-batch's;
- **two phases** (a group is larger than the budget, so a micro-batch splits it): RAPID's weights and baseline
  couple the sequences of a group, so a no-grad pass first computes every token's log-prob, then the coefficient
  g_t = ∂L/∂log π(y_t) of the whole mini-batch's loss (``algorithms.token_coefficients``), and the backward runs
  over micro-batches of any size with those coefficients fixed. Costs one extra forward; equals the whole step.

Data parallel (rapid.distributed): a mini-batch's groups are split across ranks (training.rollout.plan_rollout), the
normaliser ``total`` is all-reduced, and each rank's loss is its share × world size because the wrapper averages
gradients. Every rank runs the same number of forwards and backwards per phase (FSDP2 gathers parameters in each
one; DDP needs one synchronised backward per step): ranks with fewer micro-batches add zero-weight ones.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..loss import algorithms
from ..loss.algorithms import PackedBatch
from .buffer import MicroBatch, RolloutBuffer
from .policy import Policy


def update(policy: Policy, buffer: RolloutBuffer, plan: list[list[int]], start: int = 0,
           on_step: Callable[[int, dict[str, float]], bool] | None = None) -> tuple[list[dict], int]:
    """Optimizer steps ``start`` … H−1; ``plan[j]`` lists this rank's groups (buffer indices) of mini-batch j.

    ``on_step(j, stats)`` runs after step j; returning False stops the update early (an interrupt). Returns the
    per-step diagnostics and the number of tokens trained on here.
    """
    cfg, dist = policy.cfg, policy.dist
    step_stats: list[dict[str, float]] = []
    tokens = 0
    for j, groups in enumerate(plan):
        if j < start:
            continue
        # the normaliser of the whole mini-batch (all ranks, skipped groups included)
        total = int(dist.all_reduce(float(_normaliser(cfg.algo, buffer, groups))))
        kept = [g for g in groups if not buffer.zero_variance(g)] if cfg.filter_groups else groups
        micro, split = buffer.micro_batches(buffer.sequences(kept), cfg.micro_batch_tokens, cfg.micro_batch_size,
                                            policy.device)
        split = bool(dist.all_reduce(float(split), "max"))  # every rank takes the same path (same collectives)
        scale = float(dist.world_size)                       # the wrapper averages gradients over ranks
        if split:
            stats = two_phase_step(policy, buffer, micro, total, scale)
        else:
            stats = one_phase_step(policy, buffer, micro, total, scale)
        stats["rapid/split_groups"] = float(split)
        stats["rapid/skipped_groups"] = float(len(groups) - len(kept))
        step_stats.append(stats)
        tokens += sum(mb.num_tokens for mb in micro)
        if on_step is not None and on_step(j, stats) is False:
            break
    return step_stats, tokens


def _normaliser(algo: str, buffer: RolloutBuffer, groups: list[int]) -> int:
    """What the mini-batch loss divides by: its sequences (rapid, grpg) or completion tokens (grpo)."""
    seqs = buffer.sequences(groups)
    if algo == "grpo":
        return sum(len(buffer.rollout.completion_ids[s]) for s in seqs)
    return len(seqs)


def _padded(policy: Policy, buffer: RolloutBuffer, micro: list[MicroBatch]) -> list[tuple[MicroBatch, bool]]:
    """(micro-batch, real) pairs, padded with zero-weight copies of a one-sequence micro-batch up to the largest
    count of any rank (and at least one), so collectives line up across ranks."""
    want = max(1, int(policy.dist.all_reduce(float(len(micro)), "max")))   # ≥ 1: AdamW steps even when all skip
    out = [(mb, True) for mb in micro]
    if len(out) < want:
        dummy = micro[0] if micro else buffer.pack([0], policy.device)
        out += [(dummy, False)] * (want - len(out))
    return out


def one_phase_step(policy: Policy, buffer: RolloutBuffer, micro: list[MicroBatch], total: int,
                   scale: float = 1.0) -> dict[str, float]:
    """Whole groups per micro-batch: loss per micro-batch, weighted by its share of the mini-batch."""
    cfg = policy.cfg
    total = max(total, 1)
    sums: dict[str, torch.Tensor] = {}          # count-weighted diagnostics, kept on the device until the end
    maxima: dict[str, torch.Tensor] = {}
    diff_sum: torch.Tensor | float = 0.0
    padded = _padded(policy, buffer, micro)
    local = max(1, sum(mb.batch.num_tokens if cfg.algo == "grpo" else mb.batch.num_seqs for mb in micro))
    for i, (mb, real) in enumerate(padded):
        count = mb.batch.num_tokens if cfg.algo == "grpo" else mb.batch.num_seqs
        weight = count / total if real else 0.0
        with policy.accumulating(last=i == len(padded) - 1):
            res = policy(mb, "loss")
            policy.backward(res.loss * (weight * scale))
        if real:
            _accumulate(sums, maxima, {"actor/loss": res.loss.detach(), **res.stats}, count / local)
            diff_sum = diff_sum + (res.token_logprobs - mb.batch.behavior_logprobs).abs().sum()
    return _finish(policy, sums, maxima, diff_sum, sum(mb.batch.num_tokens for mb in micro))


def two_phase_step(policy: Policy, buffer: RolloutBuffer, micro: list[MicroBatch], total: int,
                   scale: float = 1.0) -> dict[str, float]:
    """A micro-batch splits a group: fix the per-token coefficients first, then backpropagate them."""
    padded = _padded(policy, buffer, micro)
    with torch.no_grad():
        logprobs = [policy(mb, "logprobs") for mb, _ in padded][:len(micro)]                    # each (N_i,)
    sums: dict[str, torch.Tensor] = {}
    maxima: dict[str, torch.Tensor] = {}
    grad = None
    diff: torch.Tensor | float = 0.0
    full = None
    if micro:
        full = _concat([mb.batch for mb in micro])
        lp = torch.cat(logprobs)                                                              # (N,)
        grad, res = algorithms.token_coefficients(policy.cfg, full, lp)                        # (N,)
        own = full.num_tokens if policy.cfg.algo == "grpo" else full.num_seqs
        grad = grad * (own / max(total, 1) * scale)       # the whole mini-batch's normalisation, all ranks
        _accumulate(sums, maxima, {"actor/loss": res.loss.detach(), **res.stats}, 1.0)
        diff = (lp - full.behavior_logprobs).abs().sum()
    offset = 0
    for i, (mb, real) in enumerate(padded):
        n = mb.batch.num_tokens
        g = grad[offset:offset + n] if real else torch.zeros(n, device=policy.device)
        with policy.accumulating(last=i == len(padded) - 1):
            policy.backward(policy(mb, "coef", g).loss)
        offset += n if real else 0
    return _finish(policy, sums, maxima, diff, full.num_tokens if full is not None else 0)


def _accumulate(sums: dict, maxima: dict, stats: dict[str, torch.Tensor], weight: float) -> None:
    """Weighted means, except ``*_max`` statistics, which are maxima (a mean of maxima is not a maximum)."""
    for key, value in stats.items():
        value = value.detach().float()
        if key.endswith("_max"):
            maxima[key] = value if key not in maxima else torch.maximum(maxima[key], value)
        else:
            sums[key] = sums.get(key, 0.0) + value * weight


def _finish(policy: Policy, sums: dict, maxima: dict, diff_sum, num_tokens: int) -> dict[str, float]:
    sums.update(maxima)
    sums["actor/grad_norm"] = policy.step()
    if num_tokens:
        sums["engine_logprob_diff"] = diff_sum / num_tokens
    stats = algorithms.diagnostics(sums)        # one device-to-host transfer per step, not one per statistic
    stats["actor/lr"] = policy.lr
    return stats


def _concat(batches: list[PackedBatch]) -> PackedBatch:
    """One PackedBatch of consecutive micro-batches (offsets shifted), for the whole-mini-batch coefficients."""
    cu = [batches[0].cu_seqlens[:1]]
    offset = 0
    for b in batches:
        cu.append(b.cu_seqlens[1:] + offset)
        offset += b.num_tokens
    return PackedBatch(targets=torch.cat([b.targets for b in batches]),
                       behavior_logprobs=torch.cat([b.behavior_logprobs for b in batches]),
                       rewards=torch.cat([b.rewards for b in batches]), cu_seqlens=torch.cat(cu))


@torch.no_grad()
def recompute_behavior(policy: Policy, buffer: RolloutBuffer) -> float:
    """log μ by the trainer's own forward (exact: w = 1 on the first step), under the same token budget as the
    update; returns the engine's mean |log μ_engine − log π| per token."""
    cfg = policy.cfg
    seqs = list(range(len(buffer.rewards)))
    recomputed: list[torch.Tensor | None] = [None] * len(seqs)
    diff_sum, n = 0.0, 0
    micro, _ = buffer.micro_batches(seqs, cfg.micro_batch_tokens, cfg.micro_batch_size or cfg.max_num_seqs,
                                    policy.device)
    for mb, real in _padded(policy, buffer, micro):
        lp = policy(mb, "logprobs")                                                            # (N_i,)
        if not real:
            continue
        diff_sum += (lp - mb.batch.behavior_logprobs).abs().sum().item()
        n += lp.numel()
        cu = mb.batch.cu_seqlens.tolist()
        for i, s in enumerate(mb.seq_index):
            recomputed[s] = lp[cu[i]:cu[i + 1]]
    buffer.set_behavior(recomputed)            # type: ignore[arg-type]
    return diff_sum / n if n else math.nan
