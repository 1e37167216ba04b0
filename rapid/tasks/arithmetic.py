"""Offline arithmetic: prompts like ``"12+7="``, reward 1 for the exact answer. No downloads, any tokenizer.

The difficulty knob sets the operand size and the operations:

    difficulty 1: a+b,       a, b < 10
    difficulty 2: a+b,       a, b < 100
    difficulty 3: a+b, a-b,  a, b < 100   (a-b may be negative)
    difficulty 4: a+b, a-b,  a, b < 1000
    difficulty 5: a+b, a-b, a*b, a, b < 100

``digits`` / ``ops`` override the table; ``digits`` may be a pair ``(digits_of_a, digits_of_b)``, e.g. ``(2, 1)``
for "47+8=" (the tiny demo's setting: carries, but learnable by a 2-layer model in seconds). Train and eval problems
are disjoint; ``n_eval`` defaults to a fifth of the problem space, at most 200, so the small spaces (difficulty 1:
100 problems) keep most problems for training, and an ``n_eval`` that leaves none is a ValueError naming it.

Prompt wording (``prompt=``):

    "equation" (default)   "12+7="              a completion model continues it with the answer
    "question"             "What is 12 + 7?"    what a chat model is asked (the real-model demo)

Reward (``answer=``): ``"final"`` (default) scores a chat model's answer — the number in ``\boxed{}``, after "the
answer is", else the last number of the completion ("7 + 7 = 14" is right) — through ``rapid.rewards.extract_answer``;
``"exact"`` is the strict form: the stripped completion must be exactly the answer.
"""

from __future__ import annotations

import random
import re

from .base import Task

DIFFICULTIES: dict[int, tuple[int, str]] = {1: (1, "+"), 2: (2, "+"), 3: (2, "+-"), 4: (3, "+-"), 5: (2, "+-*")}


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


PROMPTS = {"equation": "{a}{op}{b}=", "question": "What is {a} {op} {b}?"}
_INTEGER = re.compile(r"-?\d+")


def final_number(completion: str) -> int | None:
    """The integer a completion states as its answer: ``\\boxed{}``, "the answer is ...", else its last number."""
    from rapid.rewards import extract_answer

    stated = extract_answer(completion)
    numbers = _INTEGER.findall((stated or "").replace(",", ""))
    return int(numbers[-1]) if numbers else None


def arithmetic_reward(prompts: list[str], completions: list[str], answer: list[str], **_: object) -> list[float]:
    """1.0 when the completion's final answer (``final_number``) equals the answer, else 0.0."""
    return [1.0 if final_number(c) == int(a) else 0.0 for c, a in zip(completions, answer)]


def arithmetic_exact_reward(prompts: list[str], completions: list[str], answer: list[str], **_: object
                            ) -> list[float]:
    """The strict form: 1.0 when the completion (surrounding whitespace stripped) is exactly the answer."""
    return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]


def make_problems(n: int, digits: int | tuple[int, int], ops: str, rng: random.Random,
                  exclude: set[str] = frozenset(), prompt: str = "equation") -> list[dict]:
    """n distinct problems (fewer when the space is smaller), none in ``exclude`` (prompts in the same wording)."""
    da, db = (digits, digits) if isinstance(digits, int) else digits
    hi_a, hi_b = 10**da, 10**db
    space = hi_a * hi_b * len(ops)
    n = min(n, space - len(exclude))
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        a, b, op = rng.randrange(hi_a), rng.randrange(hi_b), rng.choice(ops)
        text = PROMPTS[prompt].format(a=a, op=op, b=b)
        if text in seen or text in exclude:
            continue
        seen.add(text)
        rows.append({"prompt": text, "answer": str(_answer(a, op, b))})
    return rows


def make_arithmetic_task(difficulty: int = 2, n_train: int = 2000, n_eval: int | None = None, seed: int = 0,
                         digits: int | tuple[int, int] | list[int] | None = None, ops: str | None = None,
                         prompt: str = "equation", answer: str = "final") -> Task:
    """The arithmetic task at a difficulty level (see the module docstring); eval problems never appear in train."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty}")
    d_digits, d_ops = DIFFICULTIES[difficulty]
    digits, ops = digits or d_digits, ops or d_ops
    pair = (digits, digits) if isinstance(digits, int) else tuple(digits)
    if len(pair) != 2 or min(pair) < 1 or not ops or set(ops) - set("+-*"):
        raise ValueError(f"digits must be >= 1 and ops a non-empty subset of '+-*', got {digits}, {ops!r}")
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(map(repr, PROMPTS))}, got {prompt!r}")
    if answer not in ("final", "exact"):
        raise ValueError(f"answer must be 'final' or 'exact', got {answer!r}")
    space = 10 ** pair[0] * 10 ** pair[1] * len(ops)
    if n_eval is None:
        n_eval = max(1, min(200, space // 5))
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"n_train must be >= 1 and n_eval >= 0, got {n_train}, {n_eval}")
    if n_eval >= space:
        raise ValueError(f"n_eval={n_eval} holds out all {space} problems of this setting ({pair[0]}- and "
                         f"{pair[1]}-digit operands, ops {ops!r}), leaving no training data: choose n_eval < {space}")
    rng = random.Random(seed)
    eval_rows = make_problems(n_eval, pair, ops, rng, prompt=prompt)
    train_rows = make_problems(n_train, pair, ops, rng, exclude={r["prompt"] for r in eval_rows}, prompt=prompt)
    longest_answer = max(len(str(_answer(a, op, b))) for a in (0, 10 ** pair[0] - 1) for b in (0, 10 ** pair[1] - 1)
                         for op in ops)
    exact = answer == "exact"
    return Task(name="arithmetic", train=train_rows, eval=eval_rows,
                reward_fn=arithmetic_exact_reward if exact else arithmetic_reward,
                description=f"{'exact-match' if exact else 'final-answer'} arithmetic, {pair[0]}- and {pair[1]}-digit "
                            f"operands, ops {ops!r}, {prompt} prompts",
                max_new_tokens=longest_answer + 2 if prompt == "equation" else 32)
