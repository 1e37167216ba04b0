"""Per-phase timing of a run (DESIGN.md section 3: verl metric names).

The trainer wraps each phase in ``profiler.phase(name)``; ``end_rollout()`` returns that rollout's
``timing_s/<phase>`` metrics. On CUDA the device is synchronised at phase boundaries so time lands in the phase
that spent it.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch

PHASES = ("gen", "reward", "old_log_prob", "update_actor", "update_weights", "sleep", "wake", "eval", "save")


class Profiler:
    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self._times: dict[str, float] = defaultdict(float)
        self._tokens: dict[str, int] = defaultdict(int)
        self._rollout_start = time.perf_counter()
        self.current_phase: str | None = None
        self.events: list[tuple[str, float, float]] = []   # (phase, start, end) in perf_counter seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        outer, self.current_phase = self.current_phase, name
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            end = time.perf_counter()
            self._times[name] += end - start
            self.events.append((name, start, end))
            self.current_phase = outer

    def add_tokens(self, phase: str, n: int) -> None:
        """Count tokens processed in a phase (for tokens/s per phase)."""
        self._tokens[phase] += int(n)

    def start_rollout(self) -> None:
        self._times.clear()
        self._tokens.clear()
        self._rollout_start = time.perf_counter()

    def end_rollout(self) -> dict[str, float]:
        """This rollout's metrics: timing_s/<phase>, timing_s/step, and tokens/s per phase."""
        step = time.perf_counter() - self._rollout_start
        metrics = {f"timing_s/{k}": v for k, v in self._times.items()}
        metrics["timing_s/step"] = step
        for phase, n in self._tokens.items():
            if self._times.get(phase):
                metrics[f"perf/tokens_per_s/{phase}"] = n / self._times[phase]
        return metrics

    def close(self) -> None:
        """Flush reports (profile.json, timeline PNG) — extended by the profiling issue."""
