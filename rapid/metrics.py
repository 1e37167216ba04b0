"""Trainer plumbing that is not the algorithm: metrics sink, progress bar, profiler, memory, interrupt flag."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch

from .config import RapidConfig
from .precision import cpu_gemm_peak
from .profiling import Profiler

logger = logging.getLogger(__name__)


class MetricsSink:
    """``history`` (returned to the caller) + ``output_dir/metrics.jsonl`` (+ TensorBoard) via rapid.loggers."""

    def __init__(self, out_dir: Path | None, cfg: RapidConfig, history: list[dict], tensorboard: bool,
                 wandb: bool = False, resume_rollout: int | None = None) -> None:
        from .loggers import MetricsLogger, truncate_metrics

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
