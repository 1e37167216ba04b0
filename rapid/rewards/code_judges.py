"""The three test formats of ``code_tests_reward``, each judged in the trusted parent, never inside the program.

* **assert list** (MBPP): each ``assert <expr>[, msg]`` is split into *holes* — the maximal sub-expressions that need
  the program (calls of its functions, its names, comprehensions over them) — and a *judge* expression over the
  holes' values (comparisons, ``set``/``sorted``/``len``/``math.isclose`` and other pure builtins). The child runs the
  program and evaluates only the holes; the parent evaluates the judge on the returned plain values.
* **test program** (HumanEval's ``def check(candidate): ...``, MBPP+'s input/result loops): the test source runs
  here, with ``candidate`` and the entry point's name bound to a ``SandboxedFunction`` whose calls go to the program
  and return plain values; if the test defines ``check``, ``check(candidate)`` is called. Pass = it finished without
  an exception. The test sees the names of the module it is part of, as in HumanEval's harness (which runs prompt +
  completion + test + ``check(entry_point)`` as one program): helpers defined by the task's prompt code
  (HumanEval/32's ``poly``) come from running the prompt code here first, as trusted dataset code; any other global
  the test reads and does not define (``module_references``) is looked up in the program's module — a function
  becomes a proxy like ``candidate``, a plain value a copy. Builtins, ``check`` and the test's own names are never
  taken from the program. Without ``prompt_code`` the helpers are the program's own, so a program can choose what
  they return (as under HumanEval's harness); pass ``prompt_code`` to judge with the dataset's helpers. The test's
  ``import random`` gets a private, seeded ``Random`` so tests are reproducible and never move the trainer's global
  random state.
* **stdin/stdout cases** (APPS, CodeContests, LiveCodeBench): ``[{"input": str, "output": str}, ...]``; the program
  runs once per case as ``__main__`` with the input on stdin; the captured stdout must equal the expected output
  after trailing whitespace is normalised (each line's, and trailing blank lines), and the program must exit
  cleanly.

So ``sys.exit(0)``, ``os._exit(0)``, a crash or a timeout before a value arrives fail the test; printing "all tests
passed" does nothing; overriding ``AssertionError``, builtins, ``__eq__`` or defining a ``check`` of its own does
nothing (no assertion and no comparison runs in the child, and custom objects do not survive the trip); forging
the result channel only lets the program claim what its functions returned — expected values stay in the parent,
and the files where tests and datasets live (the dataset package, the working directory, ...) are hidden from the
program by its mount namespace (``rapid.rewards.sandbox``), so it cannot read the test either.
"""

from __future__ import annotations

import ast
import builtins
import functools
import math
import random
import symtable
import types
from dataclasses import dataclass
from types import CodeType

from .sandbox import SandboxLimits, run_sandboxed, run_stdio
from .sandbox.calls import SandboxGone, open_program

_JUDGE_BUILTINS = {
    name: getattr(builtins, name) for name in (
        "abs", "all", "any", "bool", "bytes", "complex", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
        "int", "isinstance", "len", "list", "map", "max", "min", "pow", "range", "repr", "reversed", "round", "set",
        "slice", "sorted", "str", "sum", "tuple", "type", "zip")
}
_JUDGE_NAMES = frozenset(_JUDGE_BUILTINS) | {"math", "True", "False", "None"}
_DESCEND = (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.IfExp, ast.Tuple, ast.List, ast.Set, ast.Dict,
            ast.Subscript, ast.Slice, ast.Starred, ast.keyword)


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


def run_asserts(program: str, tests: list[str], limits: SandboxLimits | None = None) -> list[bool]:
    """Per-test pass/fail of ``program`` (complete source) against single-``assert`` tests."""
    splits = [split_test(t) for t in tests]
    result = run_sandboxed(program, [list(s.holes) for s in splits], limits)
    if result.status not in ("ok", "timeout"):
        return [False] * len(splits)
    return [judge_test(s, result.tests.get(i)) for i, s in enumerate(splits)]


_NEVER_LOOKED_UP = frozenset({"check", "candidate"}) | frozenset(vars(builtins))


@functools.lru_cache(maxsize=4096)
def module_references(source: str) -> tuple[str, ...]:
    """The global names a test program reads but never binds itself (at module level, by import, def or class, or
    through a ``global`` statement): what it expects the module it runs in to provide — HumanEval/32's ``poly``.
    Builtin names, ``check`` and ``candidate`` are never among them."""
    try:
        top = symtable.symtable(source, "<test program>", "exec")
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"test program is not valid Python: {exc}") from exc
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    read: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            if symbol.is_global() and symbol.is_referenced():
                read.add(symbol.get_name())
            if symbol.is_declared_global() and (symbol.is_assigned() or symbol.is_imported()):
                bound.add(symbol.get_name())
    return tuple(sorted(n for n in read - bound if n not in _NEVER_LOOKED_UP and not n.startswith("__")))


@functools.lru_cache(maxsize=4096)
def compile_test_program(source: str) -> CodeType:
    """A test program's code object; ValueError if it is not valid Python."""
    try:
        return compile(source, "<test program>", "exec")
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"test program is not valid Python: {exc}") from exc


def _private_import(seed: int):
    """``__import__`` for test code: ``random`` is a private module backed by ``random.Random(seed)``."""
    rng = random.Random(seed)
    private = types.ModuleType("random")
    for name in dir(random):
        value = getattr(random, name)
        bound = getattr(rng, name, None)
        setattr(private, name, bound if callable(value) and callable(bound) and not isinstance(value, type)
                else value)

    def import_(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "random" and level == 0:
            return private
        return builtins.__import__(name, globals, locals, fromlist, level)

    return import_


def run_test_program(program: str, test: str, entry_point: str, limits: SandboxLimits | None = None,
                     prompt_code: str = "", setup_code: str = "") -> bool:
    """Whether ``test`` (see the module doc) finishes without an exception against the sandboxed ``program``."""
    code = compile_test_program(test)
    with open_program(program, limits) as sandboxed:
        if not sandboxed.loaded:
            return False
        candidate = sandboxed.function(entry_point)
        namespace = {"__name__": "rapid_test", "__builtins__": {**vars(builtins), "__import__": _private_import(0)}}
        for helper in (setup_code, prompt_code):
            if helper:
                try:
                    exec(compile_test_program(helper), namespace)  # noqa: S102 - trusted dataset code
                except Exception:  # noqa: BLE001 - a broken helper costs only what the test then cannot use
                    pass
        namespace[entry_point] = namespace["candidate"] = candidate
        try:
            # what the test reads from the module it runs in and the trusted code above did not define: the
            # program's own module-level names (HumanEval runs prompt + completion + test as one program)
            wanted = [n for n in module_references(test) if n not in namespace]
            namespace.update(sandboxed.lookup(wanted))
            exec(code, namespace)  # noqa: S102 - trusted dataset test code, in the parent by design
            check = namespace.get("check")
            if callable(check):
                check(candidate)
        except (Exception, SandboxGone, SystemExit):  # noqa: BLE001 - any failure of the test is a fail
            return False
    return True


def normalise_output(text: str) -> str:
    """Output as compared for stdin/stdout cases: each line's trailing whitespace and trailing blank lines removed."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def run_stdio_cases(program: str, cases: list[dict], limits: SandboxLimits | None = None) -> list[bool]:
    """Per-case pass/fail of ``program`` on ``[{"input", "output"}, ...]`` (see the module doc)."""
    result = run_stdio(program, [str(c["input"]) for c in cases], limits)
    if result.status not in ("ok", "timeout"):
        return [False] * len(cases)
    passed = []
    for i, case in enumerate(cases):
        got = result.tests.get(i)
        ok = (isinstance(got, list) and len(got) == 2 and got[1] is True and isinstance(got[0], str)
              and normalise_output(got[0]) == normalise_output(str(case["output"])))
        passed.append(ok)
    return passed
