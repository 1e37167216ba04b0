"""Trainer plumbing that is not the algorithm: metrics sink, progress bar, profiler, memory, interrupt flag."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch

from ..config import RapidConfig
from ..observe.profiling import Profiler
from ..precision import cpu_gemm_peak

logger = logging.getLogger(__name__)


class MetricsSink:
    """``history`` (returned to the caller) + ``output_dir/metrics.jsonl`` (+ TensorBoard) via rapid.observe.loggers."""

    def __init__(self, out_dir: Path | None, cfg: RapidConfig, history: list[dict], tensorboard: bool,
                 wandb: bool = False, resume_rollout: int | None = None) -> None:
        from ..observe.loggers import MetricsLogger, truncate_metrics

        self.history = history
        if out_dir is not None and resume_rollout is not None:
            truncate_metrics(str(out_dir), resume_rollout)   # rows past the checkpoint are replayed: drop them
        self._logger = MetricsLogger(str(out_dir) if out_dir else None, tensorboard=tensorboard, wandb=wandb,
                                     config=cfg.to_dict())

    def log(self, metrics: dict) -> None:
        self.history.append(dict(metrics))
        self._logger.log(metrics, step=int(metrics.get("rollout", len(self.history))))

    def close(self) -> None:
        self._logger.close()


def make_profiler(device: torch.device, out_dir: Path | None, num_params: int,
                  dtype: torch.dtype = torch.float32) -> Profiler:
    """The run's profiler (writes profile.json and the timeline PNG under ``out_dir`` when given). On CPU its MFU
    column is against this CPU's measured GEMM rate in the compute ``dtype`` (there is no datasheet peak)."""
    peak, source = cpu_gemm_peak(dtype) if device.type == "cpu" else (None, None)
    return Profiler(device, output_dir=str(out_dir) if out_dir else None, num_params=num_params, peak_flops=peak,
                    peak_source=source)


class _NoBar:
    def advance(self, seconds: float, **postfix: object) -> None:
        return None

    def close(self) -> None:
        return None


class _Bar:
    """The run's progress: rollouts done of ``num_rollouts``, or training seconds of ``max_train_seconds`` when the
    run is bounded by time (a demo's budget) — then the bar reaches its end when the budget does."""

    def __init__(self, cfg: RapidConfig, initial_rollouts: int, initial_seconds: float) -> None:
        from tqdm.auto import tqdm

        self.timed = cfg.max_train_seconds is not None
        if self.timed:
            total = float(cfg.max_train_seconds)
            self.bar = tqdm(total=total, initial=min(initial_seconds, total), desc=f"rapid[{cfg.algo}]", unit="s",
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s trained [{elapsed}{postfix}]")
        else:
            self.bar = tqdm(total=cfg.num_rollouts, initial=initial_rollouts, desc=f"rapid[{cfg.algo}]",
                            unit="rollout")

    def advance(self, seconds: float, **postfix: object) -> None:
        """One rollout finished after ``seconds`` of training."""
        self.bar.update(min(seconds, self.bar.total - self.bar.n) if self.timed else 1)
        self.bar.set_postfix(**postfix)

    def close(self) -> None:
        self.bar.close()


def progress_bar(cfg: RapidConfig, initial: int = 0, enabled: bool = True, initial_seconds: float = 0.0):
    if not cfg.progress_bar or not enabled:
        return _NoBar()
    return _Bar(cfg, initial, initial_seconds)


class StopFlag:
    """SIGINT / SIGTERM set ``requested`` (the trainer saves and returns); a second signal raises at once.

    Handlers are installed only from the main thread and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("received %s: finishing this optimizer step, then saving and stopping (again to abort)",
                       signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class SignalWatch:
    """Warns when rollouts carry no learning signal (every group's samples got one reward, so every advantage is 0).

    Never any signal since the start (a reward that never fires, a model that never succeeds): loudly after
    ``WARN_AFTER`` rollouts, again every 10. After the run has learnt from some rollouts, a stretch without signal is
    mostly a solved or saturated batch — normal for small rollouts (the demo's GRPG scores 2 groups per call) — so
    it is warned once per stretch only when it spans ``STALL_GROUPS`` groups.
    """

    WARN_AFTER = 3
    STALL_GROUPS = 256

    def __init__(self, log, history: list[dict]) -> None:
        self.log = log
        self.seen = any(h.get("reward/std", 0) > 0 for h in history)      # resume: what the run saw before
        self.rollouts = self.groups = 0

    def update(self, no_signal: bool, groups: int, reward_mean: float) -> None:
        if not no_signal:
            self.seen, self.rollouts, self.groups = True, 0, 0
            return
        self.rollouts += 1
        self.groups += groups
        if not self.seen:
            if self.rollouts == self.WARN_AFTER or self.rollouts % 10 == 0:
                self._warn("in each of the first", reward_mean)
        elif self.groups >= self.STALL_GROUPS and self.groups - groups < self.STALL_GROUPS:
            self._warn("after earlier rollouts had signal, in each of the last", reward_mean)

    def _warn(self, where: str, reward_mean: float) -> None:
        self.log.warning(
            "NO LEARNING SIGNAL: %s %d rollouts (%d groups) every group's samples got the same reward (reward/mean "
            "%.3f), so every advantage is zero and the model does not change. Check the reward function on a few "
            "completions (log_completions=8 writes them to completions.jsonl), raise temperature or group_size, or "
            "start from a model that sometimes succeeds (the CLI's --model tiny is warm-started).",
            where, self.rollouts, self.groups, reward_mean)


def evaluated_at(history: list[dict], rollout: int) -> bool:
    return bool(history) and history[-1].get("rollout") == rollout and any(k.startswith("eval/") for k in history[-1])


def quietly(fn, what: str) -> None:
    """Clean-up never masks the error that ended the run: its own failure is logged, not raised."""
    try:
        fn()
    except Exception:                     # noqa: BLE001 — any clean-up failure is secondary to the run's outcome
        logger.exception("clean-up failed while %s", what)
