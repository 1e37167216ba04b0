"""Adaptive H: how many optimizer steps to take per rollout (the paper leaves H open).

Interface used by the trainer (each rollout generates ``next_h() * prompts_per_step`` prompts):

    controller = AdaptiveH(config)
    h = controller.next_h()          # before generating
    controller.update(metrics)       # after the rollout, with its metrics (timing_s/*, rapid/ess, rapid/clip_frac)

This placeholder keeps H fixed at config.steps_per_rollout; the profiling/benchmark work replaces the policy.
"""

from __future__ import annotations

from .config import RapidConfig


class AdaptiveH:
    def __init__(self, config: RapidConfig) -> None:
        self.config = config
        self.h = config.steps_per_rollout

    def next_h(self) -> int:
        return self.h

    def update(self, metrics: dict[str, float]) -> None:
        return None
