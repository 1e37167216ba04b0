"""Code reward: the fraction of a task's ``assert`` tests a generated program passes, judged outside the program.

Each test must be one ``assert <expr>[, msg]`` statement (the MBPP / MBPP+ ``test_list`` format). The test is split
into *holes* — the maximal sub-expressions that need the program (calls of its functions, its names, comprehensions
over them) — and a *judge* expression over the holes' values (comparisons, ``set``/``sorted``/``len``/``math.isclose``
and other pure builtins). The sandboxed child runs the program and evaluates only the holes; their values come back
as plain data (ints, floats, strings, lists, tuples, dicts, sets, ...; anything else is an opaque value equal to
nothing) and the trusted parent evaluates the judge. So:

* ``sys.exit(0)``, ``os._exit(0)``, a crash or a timeout before a test's values arrive fail that test;
* printing "all tests passed" does nothing (stdout is not a channel);
* overriding ``AssertionError``, ``assert`` behaviour, builtins or ``__eq__`` does nothing: no assertion and no
  comparison runs in the child, and custom objects do not survive the trip;
* forging the result channel only lets the program claim what its functions returned — which it could do by
  writing the functions that way; expected values stay in the parent.

Tests with several statements (HumanEval ``check`` functions) are not supported: ``split_test`` raises ValueError.
"""

from __future__ import annotations

import ast
import builtins
import functools
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import CodeType

from .sandbox import SandboxLimits, run_sandboxed

logger = logging.getLogger(__name__)

_JUDGE_BUILTINS = {
    name: getattr(builtins, name) for name in (
        "abs", "all", "any", "bool", "bytes", "complex", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
        "int", "isinstance", "len", "list", "map", "max", "min", "pow", "range", "repr", "reversed", "round", "set",
        "slice", "sorted", "str", "sum", "tuple", "type", "zip")
}
_JUDGE_NAMES = frozenset(_JUDGE_BUILTINS) | {"math", "True", "False", "None"}
_DESCEND = (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.IfExp, ast.Tuple, ast.List, ast.Set, ast.Dict,
            ast.Subscript, ast.Slice, ast.Starred, ast.keyword)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_program(completion: str) -> str:
    """The program in a completion: the first fenced Python block that defines something (else the last fenced
    block; an unclosed fence runs to the end of the text), or the whole completion when it has no fence."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    if not blocks:
        return completion
    python = [body for lang, body in blocks if lang in ("python", "py", "python3", "")] or [b for _, b in blocks]
    for body in python:
        if re.search(r"^\s*(def|class)\s", body, re.M):
            return body
    return python[-1]


def _user_names(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id not in _JUDGE_NAMES for n in ast.walk(node))


def _judge_callable(func: ast.AST) -> bool:
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in _JUDGE_NAMES


class _HoleCutter(ast.NodeTransformer):
    """Replace each maximal program-dependent sub-expression by a placeholder name ``_hole<i>``."""

    def __init__(self) -> None:
        self.holes: list[str] = []

    def visit(self, node: ast.AST) -> ast.AST:
        if not _user_names(node):
            return node
        descend = isinstance(node, _DESCEND) or (
            isinstance(node, ast.Call) and _judge_callable(node.func)
            and not any(isinstance(a, ast.Name) for a in node.args))  # map(f, xs): f itself would not travel
        if descend:
            return self.generic_visit(node)
        self.holes.append(ast.unparse(node))
        return ast.copy_location(ast.Name(id=f"_hole{len(self.holes) - 1}", ctx=ast.Load()), node)


@dataclass(frozen=True)
class SplitTest:
    """A test cut into what the child evaluates (``holes``) and what the parent judges (``judge``)."""

    source: str
    holes: tuple[str, ...]
    judge: CodeType


@functools.lru_cache(maxsize=65536)
def split_test(test: str) -> SplitTest:
    """Parse one ``assert`` statement into holes and a judge expression; ValueError if it is not one."""
    try:
        tree = ast.parse(test.strip())
    except SyntaxError as exc:
        raise ValueError(f"test is not valid Python: {test!r:.200}") from exc
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"each test must be a single `assert <expr>` statement, got {test!r:.200}")
    cutter = _HoleCutter()
    expr = cutter.visit(tree.body[0].test)
    judge = compile(ast.fix_missing_locations(ast.Expression(body=expr)), "<judge>", "eval")
    return SplitTest(source=test, holes=tuple(cutter.holes), judge=judge)


def judge_test(split: SplitTest, values: list | str | None) -> bool:
    """True iff the child reported the test's values and the assertion holds on them (evaluated here)."""
    if not isinstance(values, list) or len(values) != len(split.holes):
        return False
    namespace = {"__builtins__": _JUDGE_BUILTINS, "math": math}
    namespace.update({f"_hole{i}": v for i, v in enumerate(values)})
    try:
        return bool(eval(split.judge, namespace))  # noqa: S307 - dataset test code on plain data, never user code
    except Exception:  # noqa: BLE001 - any error in the assertion is a failed test
        return False


def run_tests(program: str, tests: list[str], limits: SandboxLimits | None = None, setup_code: str = "") -> list[bool]:
    """Per-test pass/fail of ``program`` (already extracted) against ``tests``."""
    splits = [split_test(t) for t in tests]
    source = f"{setup_code}\n{program}" if setup_code else program
    result = run_sandboxed(source, [list(s.holes) for s in splits], limits)
    if result.status not in ("ok", "timeout"):
        return [False] * len(splits)
    return [judge_test(s, result.tests.get(i)) for i, s in enumerate(splits)]


def code_tests_reward(completions: list[str], tests: list[list[str]], timeout_s: float = 5.0, *,
                      setup_code: list[str] | str | None = None, limits: SandboxLimits | None = None,
                      num_workers: int | None = None) -> list[float]:
    """Fraction of each completion's tests passed, each program in its own sandbox (see the module doc).

    ``tests[i]`` are the assert statements of completion i; ``setup_code`` (one string, or one per completion: e.g.
    MBPP's ``test_imports``) runs before the program. ``timeout_s`` is the wall limit per program (all its tests
    together; tests finished before a timeout still count). ``num_workers`` sandboxes run at once (threads waiting on
    subprocesses; default: the CPU count).
    """
    if len(completions) != len(tests):
        raise ValueError(f"completions ({len(completions)}) and tests ({len(tests)}) differ in length")
    for case in tests:
        if not case:
            raise ValueError("every completion needs at least one test")
        for t in case:
            split_test(t)  # fail early, in the caller, on malformed tests
    if limits is None:
        limits = SandboxLimits(timeout_s=timeout_s)
    setups = setup_code if isinstance(setup_code, list) else [setup_code or ""] * len(completions)

    def score(i: int) -> float:
        passed = run_tests(extract_program(completions[i]), tests[i], limits, setups[i] or "")
        return sum(passed) / len(passed)

    workers = max(1, min(num_workers or os.cpu_count() or 1, len(completions)))
    if workers == 1:
        return [score(i) for i in range(len(completions))]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rapid-sandbox") as pool:
        return list(pool.map(score, range(len(completions))))


def code_reward(prompts: list[str], completions: list[str], tests: list[list[str]],
                test_setup: list[str] | None = None, **_columns) -> list[float]:
    """``code_tests_reward`` in the reward-function form (columns ``tests`` and optional ``test_setup``)."""
    return code_tests_reward(completions, tests, setup_code=test_setup)
