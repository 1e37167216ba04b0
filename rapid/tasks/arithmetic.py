"""Offline arithmetic: prompts like ``"12+7="``, reward 1 for the exact answer. No downloads, any tokenizer.

The difficulty knob sets the operand size and the operations:

    difficulty 1: a+b,       a, b < 10
    difficulty 2: a+b,       a, b < 100
    difficulty 3: a+b, a-b,  a, b < 100   (a-b may be negative)
    difficulty 4: a+b, a-b,  a, b < 1000
    difficulty 5: a+b, a-b, a*b, a, b < 100

``digits`` / ``ops`` override the table; ``digits`` may be a pair ``(digits_of_a, digits_of_b)``, e.g. ``(2, 1)``
for "47+8=" (the demo's setting: carries, but learnable by a 2-layer model in seconds). Train and eval problems
are disjoint.
"""

from __future__ import annotations

import random

from .base import Task

DIFFICULTIES: dict[int, tuple[int, str]] = {1: (1, "+"), 2: (2, "+"), 3: (2, "+-"), 4: (3, "+-"), 5: (2, "+-*")}


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def arithmetic_reward(prompts: list[str], completions: list[str], answer: list[str], **_: object) -> list[float]:
    """1.0 when the completion (surrounding whitespace stripped) is exactly the answer, else 0.0."""
    return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]


def make_problems(n: int, digits: int | tuple[int, int], ops: str, rng: random.Random,
                  exclude: set[str] = frozenset()) -> list[dict]:
    """n distinct problems (fewer when the space is smaller), none in ``exclude``."""
    da, db = (digits, digits) if isinstance(digits, int) else digits
    hi_a, hi_b = 10**da, 10**db
    space = hi_a * hi_b * len(ops)
    n = min(n, space - len(exclude))
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        a, b, op = rng.randrange(hi_a), rng.randrange(hi_b), rng.choice(ops)
        prompt = f"{a}{op}{b}="
        if prompt in seen or prompt in exclude:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": str(_answer(a, op, b))})
    return rows


def make_arithmetic_task(difficulty: int = 2, n_train: int = 2000, n_eval: int = 200, seed: int = 0,
                         digits: int | tuple[int, int] | list[int] | None = None, ops: str | None = None) -> Task:
    """The arithmetic task at a difficulty level (see the module docstring); eval problems never appear in train."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty}")
    d_digits, d_ops = DIFFICULTIES[difficulty]
    digits, ops = digits or d_digits, ops or d_ops
    pair = (digits, digits) if isinstance(digits, int) else tuple(digits)
    if len(pair) != 2 or min(pair) < 1 or not ops or set(ops) - set("+-*"):
        raise ValueError(f"digits must be >= 1 and ops a non-empty subset of '+-*', got {digits}, {ops!r}")
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"n_train must be >= 1 and n_eval >= 0, got {n_train}, {n_eval}")
    rng = random.Random(seed)
    eval_rows = make_problems(n_eval, pair, ops, rng)
    train_rows = make_problems(n_train, pair, ops, rng, exclude={r["prompt"] for r in eval_rows})
    longest_answer = max(len(str(_answer(a, op, b))) for a in (0, 10 ** pair[0] - 1) for b in (0, 10 ** pair[1] - 1)
                         for op in ops)
    return Task(name="arithmetic", train=train_rows, eval=eval_rows, reward_fn=arithmetic_reward,
                description=f"exact-match arithmetic, {pair[0]}- and {pair[1]}-digit operands, ops {ops!r}",
                max_new_tokens=longest_answer + 2)
