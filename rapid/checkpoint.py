"""Atomic checkpoints: model, optimizer, RNG states (torch, CUDA, python, numpy), counters and config.

A checkpoint is a directory ``output_dir/checkpoints/rollout-000012``. It is written into a temporary sibling
directory first and renamed into place with ``os.replace`` (atomic on POSIX), so a crash mid-save leaves the
previous checkpoints untouched and never a half-written one under a final name. The last ``keep`` are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PREFIX = "rollout-"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full state for full fine-tuning; only the adapter weights when the model is a peft model."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def save_checkpoint(root: str | Path, rollout: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, config: dict, keep: int = 2) -> Path:
    """Write checkpoint ``rollout`` atomically under ``root`` and prune all but the last ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{rollout:06d}"
    tmp = root / f".tmp-{PREFIX}{rollout:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        torch.save(_trainable_state(model), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"rng": rng_state(), **state}, tmp / "trainer_state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        _fsync_dir(tmp)
        if final.exists():                      # re-saving the same rollout: move the old one aside first
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    logger.info("checkpoint saved: %s", final)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states in place; return the trainer state (counters, history)."""
    path = Path(path)
    weights = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        model.load_state_dict(weights)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state.pop("rng"))
    logger.info("resumed from %s (rollout %s)", path, state.get("rollout"))
    return state
