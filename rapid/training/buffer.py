"""Rollout → rewards → whole-group mini-batches (one optimizer step each) → token-budget micro-batches.

A rollout holds G groups of K completions (completion i belongs to prompt i // K). The H mini-batches of a rollout
are disjoint sets of whole groups, drawn by a seeded shuffle. A mini-batch is cut into micro-batches by
``plan_micro_batches``: whole groups while every group fits the token budget (``micro_batch_tokens``) and sequence
cap (``micro_batch_size``), else single sequences — the update is then two-phase (training.update), because RAPID's
weights and baseline couple the sequences of a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..engines.base import Rollout
from ..loss.algorithms import PackedBatch


@dataclass
class MicroBatch:
    prompt_ids: list[list[int]]        # S prompts (repeated per completion)
    completion_ids: list[list[int]]    # S completions
    batch: PackedBatch                 # targets / behaviour log-probs (N,), rewards (S,), cu_seqlens (S+1,)
    seq_index: list[int]               # positions of these sequences in the rollout

    @property
    def num_tokens(self) -> int:
        """Prompt + completion tokens run through the model."""
        return sum(len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids))


def score(reward_fn: Callable, rollout: Rollout, rows: list[dict], num_workers: int = 0,
          timeout_s: float | None = None, should_stop: Callable[[], bool] | None = None,
          ) -> tuple[list[float], dict[str, float]]:
    """Rewards of every completion through ``rapid.rewards.compute_rewards``: an exception, a timeout or a bad
    return value in ``reward_fn`` gives ``None`` for that sample, which becomes 0.0 here and is counted in the
    returned stats — it never kills the run.

    ``rows`` are the dataset rows of the rollout's prompts; their non-prompt columns are repeated per completion and
    passed to ``reward_fn`` as keyword lists.
    """
    from ..rewards import compute_rewards

    n = rollout.n
    prompts = [p for p in rollout.prompts for _ in range(n)]
    columns = {k: [row[k] for row in rows for _ in range(n)] for k in rows[0] if k != "prompt"} if rows else {}
    raw, stats = compute_rewards(reward_fn, prompts, rollout.completions, columns, num_workers=num_workers,
                                 timeout_s=timeout_s, should_stop=should_stop)
    rewards = [0.0 if r is None else float(r) for r in raw]
    # reward/errors counts every sample scored 0.0 for want of a reward: exceptions, timeouts, bad returns and
    # None returned by reward_fn itself (broken down in reward/timeouts and reward/none). The counters only: the
    # rollout's reward mean / std (of the 0-filled rewards, every rank's) are Session.rollout_totals'.
    out = {"reward/errors": float(sum(r is None for r in raw))}
    out.update({k: float(v) for k, v in stats.items()
                if k.startswith("reward/") and k not in ("reward/errors", "reward/mean", "reward/std")})
    return rewards, out


def plan_micro_batches(costs: list[int], group_size: int, max_tokens: int | None,
                       max_seqs: int | None) -> tuple[list[tuple[int, int]], bool]:
    """Cut a mini-batch's sequences (costs = tokens each, groups contiguous) into [lo, hi) micro-batches.

    Returns (ranges, split_groups): whole groups, greedily filled, when every group fits both caps; otherwise
    sequences one by one (``split_groups`` True). A single sequence over ``max_tokens`` still gets its own range
    (the trainer validates the budget against the longest possible sequence before it starts).
    """
    tok_cap = max_tokens or math.inf
    seq_cap = max_seqs or math.inf
    groups = [sum(costs[i:i + group_size]) for i in range(0, len(costs), group_size)]
    if all(g <= tok_cap for g in groups) and group_size <= seq_cap:
        unit, unit_costs = group_size, groups
    else:
        unit, unit_costs = 1, costs
    ranges: list[tuple[int, int]] = []
    lo, tokens = 0, 0
    for u, cost in enumerate(unit_costs):
        start = u * unit
        if start > lo and (tokens + cost > tok_cap or start + unit - lo > seq_cap):
            ranges.append((lo, start))
            lo, tokens = start, 0
        tokens += cost
    if lo < len(costs):
        ranges.append((lo, len(costs)))
    return ranges, unit == 1 and len(ranges) > 1


class RolloutBuffer:
    def __init__(self, rollout: Rollout, rewards: list[float], group_size: int) -> None:
        if len(rewards) != len(rollout.completion_ids) or len(rewards) % group_size:
            raise ValueError(f"{len(rewards)} rewards do not form whole groups of {group_size}")
        self.rollout = rollout
        self.group_size = group_size
        self.rewards = rewards
        self.behavior = list(rollout.logprobs)   # (len_i,) fp32 each; replaced by ``set_behavior`` on recompute

    @property
    def num_groups(self) -> int:
        return len(self.rewards) // self.group_size

    def set_behavior(self, logprobs: list[torch.Tensor]) -> None:
        self.behavior = [lp.detach().float().cpu() for lp in logprobs]

    def zero_variance(self, group: int) -> bool:
        """All K rewards of the group are equal (no learning signal on-policy)."""
        k = self.group_size
        values = self.rewards[group * k:(group + 1) * k]
        return max(values) == min(values)

    def sequences(self, groups: list[int]) -> list[int]:
        """Rollout positions of the groups' sequences, group by group."""
        k = self.group_size
        return [g * k + j for g in groups for j in range(k)]

    def cost(self, seq: int) -> int:
        """Tokens the model runs on for sequence ``seq`` (prompt + completion)."""
        r = self.rollout
        return len(r.prompt_ids[seq // r.n]) + len(r.completion_ids[seq])

    def pack(self, seqs: list[int], device: torch.device) -> MicroBatch:
        """Sequences ``seqs`` (rollout positions) as one micro-batch with packed completion tokens."""
        r = self.rollout
        completions = [r.completion_ids[s] for s in seqs]
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.long)
        cu = torch.zeros(len(seqs) + 1, dtype=torch.long)
        cu[1:] = torch.cumsum(lengths, 0)                                                 # (S+1,)
        targets = torch.tensor([t for c in completions for t in c], dtype=torch.long)     # (N,)
        behavior = torch.cat([self.behavior[s] for s in seqs]) if seqs else torch.zeros(0)  # (N,)
        batch = PackedBatch(targets=targets.to(device), behavior_logprobs=behavior.float().to(device),
                            rewards=torch.tensor([self.rewards[s] for s in seqs], dtype=torch.float32, device=device),
                            cu_seqlens=cu.to(device))
        return MicroBatch(prompt_ids=[r.prompt_ids[s // r.n] for s in seqs], completion_ids=completions, batch=batch,
                          seq_index=list(seqs))

    def micro_batches(self, seqs: list[int], max_tokens: int | None, max_seqs: int | None,
                      device: torch.device) -> tuple[list[MicroBatch], bool]:
        """``seqs`` (whole groups, contiguous) cut by ``plan_micro_batches``; returns (micro-batches, split_groups)."""
        ranges, split = plan_micro_batches([self.cost(s) for s in seqs], self.group_size, max_tokens, max_seqs)
        return [self.pack(seqs[lo:hi], device) for lo, hi in ranges], split
