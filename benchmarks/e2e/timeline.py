"""Training wall-clock from a run's ``profile.json`` timeline, charged the same way for sequential and overlapped runs.

Why not ``time/train_s``: the trainer sums each rollout's step time (generation + rewards + update) and leaves out
what happens between rollouts. With ``overlap=True`` an evaluation first lands the rollout in flight (``settle``)
*outside* any timed step, so with frequent evals part of the generation would go unbilled. Here the clock runs
from the end of the initial evaluation to the end of the last update, minus only the intervals spent in the
``eval`` and ``save`` phases — every wait for generation counts, whatever mode produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

EXCLUDED = ("eval", "save")


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


class Clock:
    """Maps profiler timestamps (seconds since the profiler started) to billed training seconds."""

    def __init__(self, events: list[list]) -> None:
        events = sorted(((str(n), float(a), float(b)) for n, a, b in events), key=lambda e: e[1])
        updates = [e for e in events if e[0] == "update_actor"]
        first_work = updates[0][1] if updates else (events[0][1] if events else 0.0)
        initial_evals = [e for e in events if e[0] == "eval" and e[2] <= first_work]
        work = [e for e in events if e[0] not in EXCLUDED]
        self.start = initial_evals[-1][2] if initial_evals else (work[0][1] if work else 0.0)
        self.excluded = _union([(a, b) for n, a, b in events if n in EXCLUDED and b > self.start])
        self.rollout_ends = [b for n, a, b in updates]
        self.evals = [a for n, a, b in events if n == "eval" and a >= self.start]

    def __call__(self, t: float) -> float:
        """Billed seconds from the start of training to profiler time ``t``."""
        skipped = sum(max(0.0, min(b, t) - a) for a, b in self.excluded if a < t)
        return max(0.0, t - self.start - skipped)


def load_clock(run_dir: Path) -> Clock | None:
    path = Path(run_dir) / "profile.json"
    if not path.exists():
        return None
    return Clock(json.loads(path.read_text()).get("events", []))


def wall_numbers(clock: Clock | None, rollouts: int, samples_per_rollout: list[int]) -> dict:
    """``train_wall_s`` (billed time to the end of the ``rollouts``-th update) and ``steady_samples_per_s`` (the
    first rollout excluded as warm-up: it includes the engine's first call and, with overlap, an unhidden wait)."""
    if clock is None or len(clock.rollout_ends) < rollouts or rollouts < 1:
        return {"train_wall_s": None, "steady_samples_per_s": None, "warmup_s": None}
    end = clock(clock.rollout_ends[rollouts - 1])
    first = clock(clock.rollout_ends[0])
    steady = sum(samples_per_rollout[1:rollouts]) / (end - first) if rollouts > 1 and end > first else None
    return {"train_wall_s": end, "steady_samples_per_s": steady, "warmup_s": first}
