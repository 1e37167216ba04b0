"""Reward shaping helpers (DAPO's soft overlong penalty, a regex format reward) and the unbiased pass@k estimator.

Both shaping helpers come as a plain function and as a picklable reward function for ``combine``::

    reward_fn = combine([(math_reward, 1.0),
                         (format_reward(r"<think>.*</think>\\s*<answer>.*</answer>"), 0.1),
                         (OverlongPenalty(max_length=512, cache_length=128, tokenizer=tok), 1.0)])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["FormatReward", "OverlongPenalty", "format_reward", "overlong_penalty", "pass_at_k"]


def _count(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1): 1 − C(n−c, k) / C(n, k), the probability that at least one of
    k samples drawn without replacement from the n is correct.

    Computed as 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which never forms the huge binomials (the paper's numerically stable
    form). Average it over problems for the benchmark's pass@k.
    """
    _count(n, "n", 1)
    _count(c, "c", 0)
    _count(k, "k", 1)
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n ({n}), got {c}")
    if k > n:
        raise ValueError(f"k must be <= n ({n}): pass@{k} needs at least {k} samples per problem")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def overlong_penalty(lengths: Sequence[int], max_length: int, cache_length: int, factor: float = 1.0) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), one value per response length, to add to the task
    reward. With L_max = ``max_length`` and L_cache = ``cache_length``:

    * 0 for a length up to L_max − L_cache (no penalty while the response is comfortably short);
    * (L_max − L_cache − length) / L_cache in the last L_cache tokens before L_max: a linear ramp from 0 to −1;
    * −1 beyond L_max.

    DAPO sets L_max to the generation limit (``max_new_tokens``), so a truncated response (length = L_max) gets −1,
    and L_cache to a quarter of it (4096 of 20480). ``factor`` scales the whole penalty.
    """
    _count(max_length, "max_length", 1)
    _count(cache_length, "cache_length", 0)
    if cache_length > max_length:
        raise ValueError(f"cache_length ({cache_length}) must be <= max_length ({max_length})")
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"factor must be finite and >= 0, got {factor}")
    free = max_length - cache_length
    out = []
    for length in lengths:
        if length <= free:
            out.append(0.0)
        elif length <= max_length:
            out.append(factor * (free - length) / cache_length)
        else:
            out.append(-factor)
    return out


@dataclass
class OverlongPenalty:
    """``overlong_penalty`` as a reward function. Lengths are counted in tokens with ``tokenizer`` (no special
    tokens added) — give the policy's tokenizer so they match the generation limit — or in characters without one."""

    max_length: int
    cache_length: int
    tokenizer: Any = None
    factor: float = 1.0

    def __post_init__(self) -> None:
        overlong_penalty([], self.max_length, self.cache_length, self.factor)  # validates the parameters

    def __call__(self, prompts: list[str], completions: list[str], **_columns) -> list[float]:
        if self.tokenizer is None:
            lengths = [len(c) for c in completions]
        else:
            lengths = [len(ids) for ids in self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]]
        return overlong_penalty(lengths, self.max_length, self.cache_length, self.factor)


@dataclass
class FormatReward:
    """``value`` for each completion that matches ``pattern``, else 0.0 (picklable: the pattern is kept as text)."""

    pattern: str
    search: bool = False
    flags: int = re.DOTALL
    value: float = 1.0

    def __post_init__(self) -> None:
        try:
            self._regex = re.compile(self.pattern, self.flags)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_regex"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def __call__(self, prompts: list[str], completions: list[str], **_columns) -> list[float]:
        match = self._regex.search if self.search else self._regex.fullmatch
        return [self.value if match(c.strip()) else 0.0 for c in completions]


def format_reward(pattern: str | re.Pattern, *, search: bool = False, flags: int = re.DOTALL,
                  value: float = 1.0) -> FormatReward:
    """A reward function giving ``value`` when a completion (surrounding whitespace stripped) matches ``pattern``
    as a whole (``search=True``: anywhere), else 0.0. ``flags`` default to ``re.DOTALL`` so ``.`` spans lines."""
    if isinstance(pattern, re.Pattern):
        pattern, flags = pattern.pattern, pattern.flags
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty regular expression, got {pattern!r}")
    return FormatReward(pattern, search=search, flags=flags, value=float(value))
