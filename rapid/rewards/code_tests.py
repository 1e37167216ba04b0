"""Code reward: the fraction of a task's tests a generated program passes, judged outside the program.

``code_tests_reward`` takes, per completion, one of three test formats (details and guarantees in
``rapid.rewards.code_judges``):

* a list of ``assert`` statements (MBPP) — reward: the fraction that hold;
* a test program as one string (HumanEval's ``def check(candidate)``, MBPP+'s loops), with ``entry_point`` naming
  the function under test — reward: 1.0 if the whole test passes, else 0.0;
* a list of ``{"input": str, "output": str}`` stdin/stdout cases — reward: the fraction of cases passed.

A completion is either a full program (in a fenced block, or unfenced code) or the continuation of the prompt's
code (HumanEval: the prompt ends inside the function, after its docstring). Pass the code the prompt shows as
``prompt_code``: a continuation (an indented body; anything after a closing fence is dropped) is appended to it; a
fenced block, or code that defines ``entry_point`` itself, is run after it (so the prompt's imports and helpers are
there, and the full definition replaces the stub). A test program reads the prompt's helpers (HumanEval/32's
``poly``) from ``prompt_code`` when given, else from the program's own module, as HumanEval's harness would.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from .code_judges import (compile_test_program, judge_test, run_asserts, run_stdio_cases, run_test_program,
                          split_test)
from .sandbox._host import package_locations
from .sandbox import SandboxLimits

logger = logging.getLogger(__name__)

__all__ = ["CodeReward", "assemble_program", "code_reward", "code_tests_reward", "extract_program", "judge_test",
           "run_tests", "split_test", "classify_tests"]

_COMPILE_LOCK = threading.Lock()
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


def assemble_program(completion: str, prompt_code: str | None = None, entry_point: str | None = None) -> str:
    """The source to run for a completion (see the module doc for continuation vs. full program)."""
    code = extract_program(completion)
    if not prompt_code:
        return code
    defines = entry_point is not None and re.search(
        rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None
    first = next((line for line in completion.splitlines() if line.strip()), "")
    if not defines and first[:1] in (" ", "\t"):  # an indented body: a continuation, up to any closing fence
        return prompt_code + completion.split("```", 1)[0]
    if defines or _FENCE.search(completion) is not None:
        return f"{prompt_code.rstrip()}\n\n\n{code}"
    return prompt_code + completion


def classify_tests(tests: object) -> str:
    """"asserts", "program" or "stdio" for one completion's tests; ValueError for anything else."""
    if isinstance(tests, str):
        return "program"
    if isinstance(tests, (list, tuple)) and tests:
        if all(isinstance(t, str) for t in tests):
            return "asserts"
        if all(isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
               for t in tests):
            return "stdio"
    raise ValueError("tests must be a non-empty list of assert strings, a test program string, or a non-empty list "
                     f"of {{'input': str, 'output': str}} cases; got {str(tests)[:120]!r}")


def run_tests(program: str, tests: list[str], limits: SandboxLimits | None = None, setup_code: str = "") -> list[bool]:
    """Per-test pass/fail of ``program`` (already extracted) against assert ``tests``."""
    return run_asserts(f"{setup_code}\n{program}" if setup_code else program, tests, limits)


def _compiles(source: str) -> bool:
    """Whether ``source`` compiles (compiling runs none of it; CPython bounds nesting and reports it as an error).
    Its SyntaxWarnings are silenced (under a lock: the warning filters are process-wide) so generated code cannot
    flood the trainer's stderr."""
    with _COMPILE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(source, "<solution>", "exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
            return False
    return True


def _per_item(value, n: int, name: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} completions (give one per completion, or one "
                         f"string for all)")
    return value


def code_tests_reward(completions: list[str], tests: Sequence[list[str] | str | list[dict]], timeout_s: float = 5.0,
                      *, entry_point: Sequence[str | None] | str | None = None,
                      setup_code: Sequence[str | None] | str | None = None,
                      prompt_code: Sequence[str | None] | str | None = None, packages: Sequence[str] = (),
                      limits: SandboxLimits | None = None, num_workers: int | None = None) -> list[float]:
    """Score each completion against its tests, each program in its own sandbox (see the module doc).

    ``tests[i]``: an assert list, a test program, or stdin/stdout cases. ``entry_point[i]``: the function a test
    program calls (required for that format). ``setup_code[i]`` (e.g. MBPP's ``test_imports``) runs before the
    program and before a test program. ``prompt_code[i]``: the code the prompt showed (see ``assemble_program``).
    Each of these three is one string for all completions, or one per completion. ``timeout_s``: wall limit per
    program, all its tests together (tests finished before a timeout still count). ``packages``: site-packages the
    programs may import (e.g. ``("numpy",)``; default none). ``limits`` overrides ``timeout_s`` and ``packages``.
    ``num_workers`` sandboxes run at once (threads waiting on subprocesses; default: the CPU count).
    """
    n = len(completions)
    if len(tests) != n:
        raise ValueError(f"completions ({n}) and tests ({len(tests)}) differ in length")
    entries, setups, prompts = (_per_item(entry_point, n, "entry_point"), _per_item(setup_code, n, "setup_code"),
                                _per_item(prompt_code, n, "prompt_code"))
    kinds = []
    for i, case in enumerate(tests):  # fail early, in the caller, on malformed tests
        try:
            kinds.append(classify_tests(case))
            if kinds[-1] == "asserts":
                for t in case:
                    split_test(t)
            elif kinds[-1] == "program":
                compile_test_program(case)
                if not entries[i]:
                    raise ValueError(f"entry_point[{i}] must name the function under test for a test program")
        except ValueError as exc:
            raise ValueError(f"tests[{i}]: {exc}") from exc
    if limits is None:
        limits = SandboxLimits(timeout_s=timeout_s, packages=tuple(packages))
    package_locations(limits.packages)  # a package that is not installed: ValueError now, not per program

    def score(i: int) -> float:
        program = assemble_program(completions[i], prompts[i], entries[i])
        if not _compiles(f"{setups[i]}\n{program}" if setups[i] else program):
            return 0.0  # it cannot pass anything: no sandbox needed (most early-training samples)
        if kinds[i] == "program":
            source = f"{setups[i]}\n{program}" if setups[i] else program
            return float(run_test_program(source, tests[i], entries[i], limits, prompts[i] or "", setups[i] or ""))
        if kinds[i] == "stdio":
            passed = run_stdio_cases(f"{setups[i]}\n{program}" if setups[i] else program, list(tests[i]), limits)
        else:
            passed = run_tests(program, list(tests[i]), limits, setups[i] or "")
        return sum(passed) / len(passed)

    workers = max(1, min(num_workers or os.cpu_count() or 1, n))
    if workers == 1:
        return [score(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rapid-sandbox") as pool:
        return list(pool.map(score, range(n)))


def code_reward(prompts: list[str], completions: list[str], tests: list, test_setup: list[str] | None = None,
                entry_point: list[str | None] | None = None, prompt_code: list[str | None] | None = None,
                **_columns) -> list[float]:
    """``code_tests_reward`` in the reward-function form (columns ``tests`` and optional ``test_setup``,
    ``entry_point``, ``prompt_code``), with the default limits."""
    return code_tests_reward(completions, tests, setup_code=test_setup, entry_point=entry_point,
                             prompt_code=prompt_code)


@dataclass
class CodeReward:
    """``code_reward`` with chosen limits, as a picklable reward function (it can run in reward worker
    processes): ``CodeReward(timeout_s=10, packages=("numpy",))``."""

    timeout_s: float = 5.0
    packages: tuple[str, ...] = ()
    num_workers: int | None = None

    def __post_init__(self) -> None:
        self.limits = SandboxLimits(timeout_s=self.timeout_s, packages=tuple(self.packages))

    def __call__(self, prompts: list[str], completions: list[str], tests: list, test_setup: list | None = None,
                 entry_point: list | None = None, prompt_code: list | None = None, **_columns) -> list[float]:
        return code_tests_reward(completions, tests, setup_code=test_setup, entry_point=entry_point,
                                 prompt_code=prompt_code, limits=self.limits, num_workers=self.num_workers)
