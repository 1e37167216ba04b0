"""Metrics sinks: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when asked.

    logger = MetricsLogger("runs/x", tensorboard=True, config=cfg.to_dict())
    logger.log(metrics, step=rollout)        # one JSON line; scalars to TB / W&B
    logger.close()

Optional backends are imported only when enabled; a backend that was asked for but is not installed raises an
ImportError naming the package to install, before any training starts. Non-numeric values go to the jsonl only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)          # torch / numpy scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return float(item())
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int)):                     # ints and bools keep their type (config rows)
        return value
    scalar = _scalar(value)
    if scalar is not None:
        return scalar if math.isfinite(scalar) else None   # JSON has no NaN/inf
    if isinstance(value, (str, type(None))):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class MetricsLogger:
    """Append-only metrics log for one run.

    Args:
        output_dir: run directory; metrics.jsonl goes there (None: no file, backends only).
        tensorboard: also write TensorBoard event files under output_dir/tensorboard (needs ``tensorboard``).
        wandb: also log to Weights & Biases (needs ``wandb``; online/offline follows WANDB_MODE, which rapid
            leaves alone).
        wandb_project / run_name: W&B project and run name.
        config: recorded as the run config (W&B config, TB text, and a ``{"config": ...}`` first jsonl line).
    """

    def __init__(self, output_dir: str | None, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "rapid", run_name: str | None = None, config: dict | None = None) -> None:
        self.output_dir = output_dir
        self._file = None
        self._tb = None
        self._wandb_run = None
        if tensorboard:
            if output_dir is None:
                raise ValueError("tensorboard=True needs an output_dir for the event files")
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (needs the tensorboard package)
            except ImportError as err:
                raise ImportError("tensorboard logging was asked for but the 'tensorboard' package is not "
                                  "installed: pip install tensorboard (or rapid-rl[bench])") from err
            self._tb = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))
            if config is not None:
                self._tb.add_text("config", "```\n" + json.dumps(_jsonable(config), indent=1) + "\n```")
        if wandb:
            try:
                import wandb as wandb_lib  # noqa: PLC0415
            except ImportError as err:
                raise ImportError("wandb logging was asked for but the 'wandb' package is not installed: "
                                  "pip install wandb") from err
            self._wandb_run = wandb_lib.init(project=wandb_project, name=run_name, dir=output_dir,
                                             config=_jsonable(config) if config else None)
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
            self._file = open(os.path.join(output_dir, METRICS_FILE), "a", encoding="utf-8")  # noqa: SIM115
            if config is not None:
                self._write({"config": _jsonable(config), "time": time.time()})

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record one step's metrics (a jsonl line; numeric values to TB / W&B)."""
        if self._file is not None:
            self._write({"step": int(step), "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}})
        scalars = {k: s for k, s in ((k, _scalar(v)) for k, v in metrics.items()) if s is not None}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=int(step))

    def log_summary(self, summary: dict[str, Any]) -> None:
        """End-of-run values (final accuracy, totals): a ``{"summary": ...}`` jsonl line and the W&B summary."""
        if self._file is not None:
            self._write({"summary": _jsonable(summary), "time": time.time()})
        if self._wandb_run is not None:
            self._wandb_run.summary.update(_jsonable(summary))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(output_dir: str) -> list[dict]:
    """The step records of a run's metrics.jsonl (config/summary lines skipped)."""
    path = os.path.join(output_dir, METRICS_FILE)
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                if "step" in record:
                    records.append(record)
    return records


COMPLETIONS_FILE = "completions.jsonl"
EVAL_COMPLETIONS_FILE = "eval_completions.jsonl"


class CompletionLog:
    """Sampled training completions and every eval generation, as JSONL rows tagged with their rollout."""

    def __init__(self, output_dir: str | None) -> None:
        self.output_dir = output_dir

    def write(self, rows: list[dict], rollout: int, eval_: bool = False) -> None:
        if self.output_dir is None or not rows:
            return
        name = EVAL_COMPLETIONS_FILE if eval_ else COMPLETIONS_FILE
        with open(os.path.join(self.output_dir, name), "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"rollout": rollout, **{k: _jsonable(v) for k, v in row.items()}}) + "\n")


def truncate_metrics(output_dir: str, last_rollout: int) -> int:
    """Drop the records after ``last_rollout`` from metrics.jsonl and the completion logs (a resumed run replays
    those rollouts), so every rollout appears once. Rewritten atomically; returns the number of records dropped."""
    return sum(_truncate(os.path.join(output_dir, name), last_rollout)
               for name in (METRICS_FILE, COMPLETIONS_FILE, EVAL_COMPLETIONS_FILE))


def _truncate(path: str, last_rollout: int) -> int:
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:          # a line cut by the crash
                dropped += 1
                continue
            rollout = record.get("rollout", record.get("step"))
            if rollout is not None and "config" not in record and int(rollout) > last_rollout:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if dropped:
        logger.info("%s: dropped %d record(s) after rollout %d (replayed on resume)", os.path.basename(path),
                    dropped, last_rollout)
    return dropped
