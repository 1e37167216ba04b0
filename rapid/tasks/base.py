"""The ``Task`` record: a dataset, its reward, and an eval split — everything ``--task NAME`` resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Task:
    """A ready-to-train task.

    ``train`` and ``eval`` are lists of dicts; each dict has a ``"prompt"`` (a string) and the columns the reward
    needs (e.g. ``"answer"`` for math, ``"tests"`` for code). ``reward_fn`` follows the reward API
    ``reward_fn(prompts, completions, **columns) -> list[float | None]``, where each column is the list of that
    key's values across the batch, in the same order as ``prompts``.
    """

    name: str
    """Registry name (``get_task(name)``)."""
    train: list[dict]
    """Training examples: ``{"prompt": str, <reward columns>...}``."""
    eval: list[dict]
    """Held-out examples in the same format."""
    reward_fn: Callable
    """``reward_fn(prompts, completions, **columns) -> list[float | None]``."""
    description: str = ""
    """One line for logs and ``--help``."""
    max_new_tokens: int = 32
    """A completion length that suffices for this task."""
    stop: list[str] | None = None
    """Stop strings the benchmark conventionally generates with (e.g. HumanEval's for base models: a completion ends
    where the next top-level statement would start); None: none. The CLI passes them to ``RapidConfig.stop``."""

    def __post_init__(self) -> None:
        for split_name in ("train", "eval"):
            split = getattr(self, split_name)
            if not isinstance(split, list):
                raise TypeError(f"Task.{split_name} must be a list of dicts, got {type(split).__name__}")
            for i, row in enumerate(split[:1]):
                if not isinstance(row, dict) or "prompt" not in row:
                    raise ValueError(f"Task.{split_name}[{i}] must be a dict with a 'prompt' key, got {row!r}")
        if not callable(self.reward_fn):
            raise TypeError("Task.reward_fn must be callable")
        if self.max_new_tokens < 1:
            raise ValueError(f"Task.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stop is not None:
            if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
                raise ValueError(f"Task.stop must be None or a list of non-empty strings, got {self.stop!r}")
            self.stop = list(self.stop)

    def columns(self, rows: list[dict]) -> dict[str, list]:
        """The reward columns of ``rows`` (every key but ``"prompt"``) as ``{key: [values...]}``."""
        keys = [k for k in (rows[0] if rows else {}) if k != "prompt"]
        return {k: [row.get(k) for row in rows] for k in keys}
