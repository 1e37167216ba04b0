"""Trainer plumbing that is not the algorithm: metrics sink, progress bar, profiler, memory, interrupt flag."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch

from ..config import RapidConfig
from ..observe.profiling import Profiler

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


def make_profiler(device: torch.device, out_dir: Path | None, num_params: int) -> Profiler:
    """The run's profiler (writes profile.json and the timeline PNG under ``out_dir`` when given)."""
    return Profiler(device, output_dir=str(out_dir) if out_dir else None, num_params=num_params)


class _NoBar:
    def update(self, n: int) -> None:
        return None

    def set_postfix(self, **kwargs: object) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(cfg: RapidConfig, initial: int = 0, enabled: bool = True):
    if not cfg.progress_bar or not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=cfg.num_rollouts, initial=initial, desc=f"rapid[{cfg.algo}]", unit="rollout")


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
