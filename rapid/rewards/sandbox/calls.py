"""Call a sandboxed program's functions from the parent, one call at a time, with plain-data arguments and results.

This is what lets a *test program* (HumanEval's ``def check(candidate): assert ...``, MBPP+'s input/result loops)
run in the trusted parent while the code under test stays in the sandbox: the test gets a ``SandboxedFunction`` as
``candidate``; each call sends the arguments to the child as plain data, the child calls the real function, and
only the returned value (ints, floats, strings, lists, tuples, dicts, sets, ...; anything else is an opaque value
equal to nothing) comes back. The program never sees the test, its expected values or its assertions.
``lookup`` hands the test the program's other module-level names the same way (its helpers as proxies, its plain
values as copies), for tests that share the candidate's namespace as in HumanEval's harness.

    with open_program(source, SandboxLimits(timeout_s=5)) as program:
        add = program.function("add")
        assert add(1, 2) == 3        # evaluated here; add ran in the sandbox

A call raises ``SandboxGone`` (a ``BaseException``, so a test's ``except Exception`` cannot swallow it) when the
program failed to load, was killed by a limit, or ran out of its wall-clock budget; it re-raises the function's
exception as the built-in exception of the same name (``ValueError``, ``IndexError``, ...) or as
``SandboxedError``. ``StopIteration`` is never re-raised as itself: inside ``map()`` or a generator in the test it
would silently end the iteration and could turn a failing test into a passing one.
"""

from __future__ import annotations

import builtins
import itertools

from . import SandboxLimits, SandboxResult, _Session, isolation
from ._wire import from_wire, to_wire

__all__ = ["SandboxGone", "SandboxedError", "SandboxedFunction", "SandboxedProgram", "open_program"]

_NOT_RERAISED = {"StopIteration", "StopAsyncIteration"}


class SandboxGone(BaseException):
    """The sandboxed program cannot answer: it failed to load, hit a limit, or its wall-clock budget ran out."""


class SandboxedError(Exception):
    """The sandboxed function raised an exception that is not a built-in one (its type name is the message)."""


def _exception(name: str) -> BaseException:
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and name not in _NOT_RERAISED:
        try:
            return cls("raised in the sandboxed program")
        except TypeError:  # built-ins whose constructor needs more (UnicodeDecodeError, ...)
            pass
    return SandboxedError(name)


class SandboxedFunction:
    """A callable stand-in for the program's function ``name``."""

    def __init__(self, program: "SandboxedProgram", name: str) -> None:
        self._program, self.__name__ = program, name

    def __call__(self, *args, **kwargs):
        return self._program.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self.__name__}>"


class SandboxedProgram:
    """A running sandboxed program whose functions can be called (see the module doc); use as a context manager."""

    def __init__(self, source: str, limits: SandboxLimits) -> None:
        iso = isolation()
        self._session = _Session({"mode": "calls", "program": source}, limits, uid_drop=iso["uid"],
                                 mountns=iso["mountns"], interactive=True)
        self._ids = itertools.count()
        self._result: SandboxResult | None = None

    @property
    def loaded(self) -> bool:
        """Whether the program ran to its end and now answers calls (waits for that, within the wall limit)."""
        session = self._session
        session.wait_until(lambda: session.loaded or session.program_error)
        return session.loaded and not session.program_error

    def function(self, name: str) -> SandboxedFunction:
        return SandboxedFunction(self, name)

    def call(self, name: str, args: tuple, kwargs: dict):
        """``name(*args, **kwargs)`` in the sandbox; the plain-data result (see the module doc)."""
        if not self.loaded:
            raise SandboxGone(f"the program is not running ({self._session.status or 'failed to load'})")
        call_id = next(self._ids)
        self._session.send({"id": call_id, "fn": name, "args": [to_wire(a) for a in args],
                            "kwargs": {str(k): to_wire(v) for k, v in kwargs.items()}})
        session = self._session
        if not session.wait_until(lambda: call_id in session.replies):
            raise SandboxGone(f"no answer from the program ({session.status})")
        reply = session.replies.pop(call_id)
        if "error" in reply:
            raise _exception(str(reply["error"]))
        try:
            return from_wire(reply.get("value"))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise SandboxedError("BadValue") from exc

    def lookup(self, names: list[str]) -> dict[str, object]:
        """The program's module-level ``names``, as a test that shares its namespace sees them: a
        ``SandboxedFunction`` for each callable, a plain-data copy of each other value; names the module lacks (or
        whose value cannot travel) are left out. Only the names asked for come back, whatever the program replies.
        Raises ``SandboxGone`` like ``call``."""
        names = [str(n) for n in names]
        if not names:
            return {}
        if not self.loaded:
            raise SandboxGone(f"the program is not running ({self._session.status or 'failed to load'})")
        call_id = next(self._ids)
        self._session.send({"id": call_id, "lookup": names})
        session = self._session
        if not session.wait_until(lambda: call_id in session.replies):
            raise SandboxGone(f"no answer from the program ({session.status})")
        reply = session.replies.pop(call_id)
        callables, values = reply.get("callables"), reply.get("values")
        callables = set(callables) & set(names) if isinstance(callables, list) and all(
            isinstance(n, str) for n in callables) else set()
        values = values if isinstance(values, dict) else {}
        found: dict[str, object] = {}
        for name in names:
            if name in callables:
                found[name] = self.function(name)
            elif name in values:
                try:
                    found[name] = from_wire(values[name])
                except (ValueError, TypeError, OverflowError, RecursionError):
                    continue
        return found

    def close(self) -> SandboxResult:
        """Stop the program (it gets end-of-input on its request channel, then is killed), sweep, and report."""
        if self._result is None:
            try:
                self._session.finish()
                self._result = self._session.result()
            finally:
                self._session.close()
        return self._result

    def __enter__(self) -> "SandboxedProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_program(source: str, limits: SandboxLimits | None = None) -> SandboxedProgram:
    """Start ``source`` in the sandbox and keep it alive for calls (see the module doc)."""
    return SandboxedProgram(source, limits or SandboxLimits())
