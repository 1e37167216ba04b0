"""The state of a run between optimizer steps: counters, prompt order, the rollout in progress, checkpoints.

``Session`` is what ``rapid.train`` saves and resumes. A checkpoint holds, besides the model and optimizer
(``rapid.checkpoint``, torch.distributed.checkpoint), where the run is *inside* a rollout: when SIGINT / SIGTERM
stops it between two optimizer steps, the rollout's buffer and the next step are saved, and the resumed run
continues with exactly the steps that were left (bitwise on CPU). The buffer is stored whole (the ranks' shares
gathered by group), so a run saved at world size N resumes at world size M: each rank takes its share again with
``rollout.plan_rollout``.

Distributed evaluation and metrics live here too: every rank evaluates its share of the eval set and the records
are gathered, so the numbers are the whole set's whatever the world size.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import torch

from .. import checkpoint
from ..distributed import Dist
from ..engines.weights import merged_copy
from ..loss import seeds
from .buffer import RolloutBuffer
from .rollout import RolloutInfo, merge_rollouts, plan_rollout, subset_rollout


@dataclasses.dataclass
class Request:
    """What a rollout will be: its prompts (this rank's share), sampling and mini-batch plan."""

    rows: list[dict]
    texts: list[str]
    sampling: object
    h: int
    groups: list[int]
    plan: list[list[int]]
    num_groups: int
    first_key: int = 0


@dataclasses.dataclass
class Pending:
    """A rollout being trained on: this rank's buffer, its mini-batches and how far the update got."""

    buffer: RolloutBuffer
    info: RolloutInfo
    h: int
    groups: list[int]                   # the rollout's global group ids this rank holds (ascending)
    plan: list[list[int]]               # this rank's part of each mini-batch (indices into ``groups``)
    num_groups: int                     # groups in the whole rollout (all ranks)
    weights_step: int = 0               # global optimizer step at which the behaviour weights were taken
    first_key: int = 0                  # the prompt sampler's position before this rollout took its prompts
    next_step: int = 0
    step_stats: list = dataclasses.field(default_factory=list)
    tokens: int = 0

    @classmethod
    def of(cls, request: Request, buffer: RolloutBuffer, info: RolloutInfo, weights_step: int) -> Pending:
        """The generated and scored ``request``, sampled from the weights of global step ``weights_step``."""
        return cls(buffer=buffer, info=info, h=request.h, groups=request.groups, plan=request.plan,
                   num_groups=request.num_groups, weights_step=weights_step, first_key=request.first_key)


class Session:
    """Counters, history and the pending rollout, with collective save / load (every rank calls them)."""

    def __init__(self, cfg, dist: Dist, policy, controller, sampler) -> None:
        self.cfg, self.dist, self.policy, self.controller, self.sampler = cfg, dist, policy, controller, sampler
        self.rollout = 0
        self.global_step = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.pending: Pending | None = None    # the rollout being trained on (an interrupt may save it half done)
        self.ready: Pending | None = None      # overlap: the next rollout, generated and scored, not yet trained

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def save(self, root: Path) -> None:
        """Checkpoint ``rollout`` under ``root`` (collective): model, optimizer, schedule, counters, the adaptive-H
        controller, the prompt sampler, and the pending rollout gathered from every rank."""
        state = {"rollout": self.rollout, "global_step": self.global_step, "train_seconds": self.train_seconds,
                 "history": self.history, "prompts_consumed": self.sampler.consumed,
                 "policy": self.policy.state_dict(),
                 "adaptive_h": self.controller.state_dict() if self.controller is not None else None,
                 "pending": self._gather(self.pending, self.rollout),
                 "ready": self._gather(self.ready, self.rollout + (self.pending is not None))}
        checkpoint.save_checkpoint(root, self.rollout, self.policy.module, self.policy.optimizer, state,
                                   self.cfg.to_dict(), keep=self.cfg.keep_checkpoints, dist=self.dist)

    def load(self, path: Path) -> None:
        state = checkpoint.load_checkpoint(path, self.policy.module, self.policy.optimizer, dist=self.dist)
        self.rollout, self.global_step = state["rollout"], state["global_step"]
        self.train_seconds, self.history = state["train_seconds"], state["history"]
        self.sampler.consumed = state["prompts_consumed"]
        self.policy.load_state_dict(state["policy"])
        if self.controller is not None and state.get("adaptive_h") is not None:
            self.controller.load_state_dict(state["adaptive_h"])
        self.pending = self._scatter(state.get("pending"))
        self.ready = self._scatter(state.get("ready"))

    def _gather(self, p: Pending | None, index: int) -> dict | None:
        """A rollout's state with every rank's share merged by group (collective when there is one)."""
        if not self.dist.all_reduce(float(p is not None), "max"):
            return None
        parts = self.dist.all_gather_object((p.groups, p.buffer.rollout, p.buffer.rewards, p.buffer.behavior,
                                             p.info.rows))
        rollout = merge_rollouts([(groups, r) for groups, r, _, _, _ in parts])
        by_group: dict[int, tuple] = {}
        for groups, r, rewards, behavior, rows in parts:
            n = r.n
            for i, g in enumerate(groups):
                by_group[g] = (rewards[i * n:(i + 1) * n], behavior[i * n:(i + 1) * n], rows[i])
        order = sorted(by_group)
        return {"rollout": rollout, "rewards": [x for g in order for x in by_group[g][0]],
                "behavior": [x for g in order for x in by_group[g][1]], "rows": [by_group[g][2] for g in order],
                "reward_stats": p.info.reward_stats, "h": p.h, "num_groups": p.num_groups,
                "weights_step": p.weights_step, "first_key": p.first_key, "next_step": p.next_step,
                "step_stats": p.step_stats,
                "tokens": p.tokens, "seed": self.minibatch_seed(index)}

    def _scatter(self, saved: dict | None) -> Pending | None:
        if saved is None:
            return None
        groups, plan = plan_rollout(saved["num_groups"], saved["h"], saved["seed"], self.dist.rank,
                                    self.dist.world_size)
        rollout = subset_rollout(saved["rollout"], groups)
        n = rollout.n
        rewards = [saved["rewards"][g * n + j] for g in groups for j in range(n)]
        buffer = RolloutBuffer(rollout, rewards, self.cfg.group_size)
        buffer.set_behavior([saved["behavior"][g * n + j] for g in groups for j in range(n)])
        info = RolloutInfo(rows=[saved["rows"][g] for g in groups], reward_stats=saved["reward_stats"])
        return Pending(buffer=buffer, info=info, h=saved["h"], groups=groups, plan=plan,
                       num_groups=saved["num_groups"], weights_step=saved["weights_step"],
                       first_key=saved.get("first_key", 0),
                       next_step=saved["next_step"], step_stats=list(saved["step_stats"]), tokens=saved["tokens"])

    def accept(self, p: Pending | None) -> Pending | None:
        """A rollout whose scoring was cut short by an interrupt is not trained on: it is dropped and the prompt
        sampler rolls back to before it, so the resumed run generates and scores it again (exact resume)."""
        if p is None or not p.info.reward_stats.get("reward/interrupted"):
            return p
        self.sampler.consumed = min(self.sampler.consumed, p.first_key)
        return None

    def minibatch_seed(self, rollout: int) -> int:
        return seeds.minibatch_seed(self.cfg.seed, rollout)

    # ---- metrics across ranks ------------------------------------------------------------------------------------
    def rollout_totals(self, buffer: RolloutBuffer) -> dict[str, float]:
        """Reward and length statistics of the whole rollout (all ranks' completions, exactly)."""
        rollout = buffer.rollout
        local = (buffer.rewards, [len(c) for c in rollout.completion_ids], [bool(f) for f in rollout.finished])
        parts = self.dist.all_gather_object(local) if self.dist.active else [local]
        rewards = [x for p in parts for x in p[0]]
        lengths = [x for p in parts for x in p[1]]
        finished = [x for p in parts for x in p[2]]
        return {"reward/mean": statistics.fmean(rewards), "reward/std": statistics.pstdev(rewards),
                "response_length/mean": statistics.fmean(lengths), "response_length/max": float(max(lengths)),
                "response_length/clip_ratio": 1.0 - statistics.fmean(float(f) for f in finished) if finished
                else 0.0, "perf/samples": float(len(rewards))}

    def gather_records(self, records: list) -> list:
        if not self.dist.active:
            return records
        return [r for part in self.dist.all_gather_object(records) for r in part]


def share(items: list, dist: Dist) -> list:
    """This rank's share of a list (every world_size-th item)."""
    return items[dist.rank::dist.world_size]


def engine_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A full, unsharded copy of the model for an in-process HF engine under FSDP2 (generation must not run the
    sharded training model: ranks stop at different lengths, and its forward gathers collectively)."""
    return merged_copy(model).eval().requires_grad_(False)   # LoRA: the engine runs merged weights, plain HF names
