"""Countdown: reach a target number with + - * / from given numbers, each used at most once. Offline, exact.

Every puzzle is built from a solution, so it is solvable. The verifier parses the completion's expression with
``ast.parse`` and walks only integer literals, parentheses and the four binary operators with exact rational
arithmetic: nothing is ever evaluated by Python.

    difficulty 1: 3 numbers in 1..10,  ops + -
    difficulty 2: 3 numbers in 1..20,  ops + - *
    difficulty 3: 4 numbers in 1..25,  ops + - * /
    difficulty 4: 5 numbers in 1..50,  ops + - * /
    difficulty 5: 6 numbers in 1..100, ops + - * /

Reward (``answer=``): ``"final"`` (default) finds the expression a chat model states — inside ``<answer>`` tags or
``\\boxed{}``, else on its last line, also inside a sentence ("The expression is (3 + 5) * 2 = 16.") — and
``"exact"`` is the strict form: the last non-empty line (or the tagged answer) must be the expression itself.
Prompt: "Using the numbers 3, 5, 2, make 16. Use + - * / and parentheses; each number at most once. Answer with
the expression only." (``prompt_template``).
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from fractions import Fraction

from .base import Task

DIFFICULTIES: dict[int, tuple[int, int, str]] = {1: (3, 10, "+-"), 2: (3, 20, "+-*"), 3: (4, 25, "+-*/"),
                                                 4: (5, 50, "+-*/"), 5: (6, 100, "+-*/")}
MAX_EXPRESSION_CHARS = 200
PROMPT = "Using the numbers {numbers}, make {target}. Use + - * / and parentheses; each number at most once. " \
         "Answer with the expression only.\n"
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integer literals used) of an arithmetic expression, or None if it is anything else (names,
    calls, unary minus, floats, powers, division by zero, too long)."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not allowed in an expression: {type(node).__name__}")

    try:
        return walk(tree.body), used
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def extract_expression(completion: str) -> str:
    """The expression in a completion: inside ``<answer>...</answer>`` when present, else the last non-empty line;
    a trailing ``= <target>`` and a leading ``Expression:``/``Answer:`` are dropped."""
    tagged = re.findall(r"<answer>(.*?)</answer>", completion, re.S)
    text = tagged[-1] if tagged else next((ln for ln in reversed(completion.splitlines()) if ln.strip()), "")
    text = re.sub(r"^\s*(?:expression|answer)\s*:\s*", "", text.strip(), flags=re.I)
    return text.split("=")[0].strip().rstrip(".")


_EXPRESSION = re.compile(r"[\d\s+\-*/×÷()]*\d[\d\s+\-*/×÷()]*")


def extract_stated_expression(completion: str) -> str:
    """The expression a chat model states: tagged, boxed, or the last arithmetic run with an operator on the last
    line that has one (what follows a "=" is its value, not the expression)."""
    from rapid.rewards.math_answer import extract_boxed

    for latex, op in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/")):
        completion = completion.replace(latex, op)
    tagged = re.findall(r"<answer>(.*?)</answer>", completion, re.S)
    boxed = extract_boxed(completion)
    if tagged or boxed is not None:
        return extract_expression(tagged[-1] if tagged else boxed)
    for line in reversed([ln for ln in completion.splitlines() if ln.strip()]):
        runs = [r.strip() for r in _EXPRESSION.findall(line.split("=")[0]) if re.search(r"\d\s*[-+*/]\s*\(?\d", r)]
        if runs:
            return runs[-1]
    return extract_expression(completion)


def check_solution(expr: str, numbers: list[int], target: int) -> bool:
    """True iff ``expr`` equals ``target`` exactly and uses each of ``numbers`` at most once (as a multiset)."""
    got = evaluate_expression(expr)
    if got is None:
        return False
    value, used = got
    return value == target and not (Counter(used) - Counter(numbers))


def countdown_reward(prompts: list[str], completions: list[str], numbers: list[list[int]], target: list[int],
                     **_columns) -> list[float]:
    """1.0 for a correct stated expression (``extract_stated_expression``, ``check_solution``), else 0.0."""
    return [float(check_solution(extract_stated_expression(c), list(n), int(t)))
            for c, n, t in zip(completions, numbers, target)]


def countdown_exact_reward(prompts: list[str], completions: list[str], numbers: list[list[int]], target: list[int],
                           **_columns) -> list[float]:
    """The strict form: the last non-empty line (or the tagged answer) must be a correct expression."""
    return [float(check_solution(extract_expression(c), list(n), int(t)))
            for c, n, t in zip(completions, numbers, target)]


def make_puzzle(rng: random.Random, count: int, high: int, ops: str, max_target: int = 1000) -> dict:
    """One puzzle: ``count`` numbers in 1..high and a target reached by combining 2..count of them."""
    while True:
        numbers = [rng.randint(1, high) for _ in range(count)]
        pool = [(Fraction(n), str(n)) for n in rng.sample(numbers, rng.randint(2, count))]
        while len(pool) > 1:
            (a, ea), (b, eb) = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
            op = rng.choice(ops)
            if op == "-" and a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            if op == "/" and (b == 0 or (a / b).denominator != 1):
                op = "+"
            value = _OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}[op]](a, b)
            pool.append((value, f"({ea} {op} {eb})"))
        value, solution = pool[0]
        if value.denominator == 1 and 0 < value <= max_target and int(value) not in numbers:
            return {"numbers": numbers, "target": int(value), "solution": solution[1:-1]}


def make_countdown_task(difficulty: int = 2, n_train: int = 2000, n_eval: int = 200, seed: int = 0,
                        prompt_template: str = PROMPT, answer: str = "final") -> Task:
    """The countdown task at a difficulty level (see the module docstring); eval puzzles never appear in train."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty}")
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"n_train must be >= 1 and n_eval >= 0, got {n_train}, {n_eval}")
    if answer not in ("final", "exact"):
        raise ValueError(f"answer must be 'final' or 'exact', got {answer!r}")
    count, high, ops = DIFFICULTIES[difficulty]
    rng = random.Random(seed)
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n_train + n_eval and attempts < 50 * (n_train + n_eval):
        attempts += 1
        puzzle = make_puzzle(rng, count, high, ops)
        key = (tuple(sorted(puzzle["numbers"])), puzzle["target"])
        if key in seen:
            continue
        seen.add(key)
        puzzle["prompt"] = prompt_template.format(numbers=", ".join(map(str, puzzle["numbers"])),
                                                  target=puzzle["target"])
        rows.append({"prompt": puzzle.pop("prompt"), **puzzle})
    if not rows[n_eval:]:
        raise ValueError(f"n_eval={n_eval} takes all {len(rows)} distinct puzzles of difficulty {difficulty}, "
                         "leaving no training data: lower n_eval")
    return Task(name="countdown", train=rows[n_eval:], eval=rows[:n_eval],
                reward_fn=countdown_exact_reward if answer == "exact" else countdown_reward,
                description=f"countdown: {count} numbers in 1..{high}, ops {ops!r}, exact verifier",
                max_new_tokens=8 * count + 8)
