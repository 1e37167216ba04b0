"""rapid: fast RL fine-tuning of small language models with RAPID (arXiv 2510.03515).

    import rapid
    result = rapid.train(model, dataset, reward_fn, config=rapid.RapidConfig(...))
    rapid.tasks.list_tasks()            # built-in tasks;  rapid.rewards.math_answer_reward, ...

Heavy modules (torch, transformers, the engines) are imported on first use, so ``import rapid`` stays cheap:
``rapid.train`` / ``rapid.TrainResult`` load the trainer, and the subpackages ``rapid.tasks`` / ``rapid.rewards``
(and ``rapid.tiny``) are imported the first time they are touched.
"""

from __future__ import annotations

import importlib

from .config import RapidConfig

__all__ = ["RapidConfig", "TrainResult", "rewards", "tasks", "train"]
__version__ = "0.1.0"

_LAZY_ATTRS = {"train": "trainer", "TrainResult": "trainer"}
_LAZY_MODULES = ("tasks", "rewards", "tiny")


def __getattr__(name: str):
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(f".{_LAZY_ATTRS[name]}", __name__), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)      # also binds rapid.<name> for next time
    raise AttributeError(f"module 'rapid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRS) | set(_LAZY_MODULES))
