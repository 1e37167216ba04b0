"""Run one untrusted program in a confined subprocess and bring back what its functions returned or printed.

Isolation, in the order it is set up (by ``_child.py``, trusted code that runs before the program):

* a fresh temporary directory as cwd (removed afterwards), a scrubbed environment, stdin at /dev/null;
* ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core files; a wall-clock limit enforced by
  the parent;
* no network: new, empty network and IPC namespaces (``unshare``; needs root). Without root it falls back to
  refusing ``socket`` creation at the Python level, which ctypes can bypass — the fallback is logged;
* a private mount namespace (root): every mount read-only, and fresh size-limited tmpfs on /tmp, /var/tmp,
  /dev/shm and /run/lock that vanish with the program — so it cannot leave a file anywhere; and the places where
  tests, datasets and code live (``hidden_paths``) covered by empty mounts — so it cannot read them;
* as root, the program runs under a private uid (one of ``UID_BASE + slot``, a slot held by ``flock`` so concurrent
  sandboxes, even from different processes, never share one). That makes ``RLIMIT_NPROC`` effective (the kernel
  does not enforce it for root), keeps the program from signalling or reading the trainer, and lets the parent find
  every process the program started — even ones that called ``setsid`` — by uid, and every file it left by owner;
* only the standard library is importable, plus the site-packages named in ``SandboxLimits.packages`` (each reached
  through a descriptor to that package alone, never the whole site-packages directory);
* output (stdout + stderr) is read up to a cap; past it the program is killed.

Afterwards the process group is killed, then every process of the sandbox uid (repeated until none is left), then
files owned by the uid in world-writable directories are removed (all of them on writable mounts when the mount
namespace could not be made; see ``_host``). Without root the sweep falls back to the process group and the
session (a program that calls ``setsid`` and forks can escape it).

Three ways to talk to a program: ``run_sandboxed`` (evaluate expressions after it ran: assert tests),
``run_stdio`` (run it once per stdin input, capture stdout) and ``calls.open_program`` (call its functions from the
parent one call at a time, with plain-data arguments and results: test programs such as HumanEval's ``check``).

The package: this module (limits, results, one sandboxed child process per run); ``calls`` (calling a running
program's functions); ``_host`` (uid slots, hidden paths, the sweep: the parent's side); ``_child`` and
``_confine`` (the trusted start-up script of the child and its confinement, stdlib only); ``_wire`` (the value
format both sides share).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ._host import (UID_BASE, UidSlot, hidden_paths, leftover_pids, package_locations, remove_files_of,
                            sweep_processes)
from ._wire import Opaque, from_wire, to_wire

logger = logging.getLogger(__name__)

__all__ = ["UID_BASE", "Opaque", "SandboxLimits", "SandboxResult", "from_wire", "isolation", "leftover_pids",
           "run_sandboxed", "run_stdio", "to_wire"]

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")
LANDLOCK = True
"""Confine writes with Landlock where no mount namespace can be made (tests turn it off to exercise the sweep)."""


@dataclass
class SandboxLimits:
    """Resource limits of one sandboxed program, and what it may import."""

    timeout_s: float = 5.0
    """Wall-clock limit for the whole run (program and all tests)."""
    cpu_s: int | None = None
    """CPU-time limit (RLIMIT_CPU); None: ceil(timeout_s)."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB."""
    nproc: int = 16
    """Process-count limit (RLIMIT_NPROC) for the sandbox uid (as root; without root it is not applied, since the
    limit would count every process of the calling user)."""
    output_bytes: int = 1 << 20
    """Most bytes of stdout + stderr read; more kills the program (status "output_limit"). Also the cap on one
    stdin/stdout case's captured stdout."""
    result_bytes: int = 4 << 20
    """Most bytes of result messages accepted."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE) in MiB."""
    nofile: int = 64
    """Open-file limit (RLIMIT_NOFILE)."""
    tmpfs_mb: int = 64
    """Size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run/lock) in MiB; it is memory, not disk."""
    packages: tuple[str, ...] = ()
    """Installed top-level packages the program may import besides the standard library, e.g. ``("numpy",)``.
    Off by default. A package's own dependencies must be listed too."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("memory_mb", "nproc", "output_bytes", "result_bytes", "file_mb", "nofile", "tmpfs_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.packages, str):
            raise ValueError(f"packages must be a sequence of names, got the string {self.packages!r}")
        self.packages = tuple(self.packages)
        for name in self.packages:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"packages: {name!r} is not a top-level package name")


@dataclass
class SandboxResult:
    """What came back from one run. ``tests[i]`` is a list of the i-th test's requested values (decoded from the
    result channel), or the name of the exception the test raised."""

    status: str
    """ok | timeout | output_limit | result_limit | program_error | crashed."""
    tests: dict[int, list | str] = field(default_factory=dict)
    returncode: int | None = None
    wall_s: float = 0.0
    output_tail: str = ""
    isolation: dict = field(default_factory=dict)


_PROBE: dict | None = None
_PROBE_LOCK = threading.Lock()


def isolation() -> dict:
    """What confinement this machine allows (probed once per process):
    {"uid", "netns", "ipcns", "mountns", "hidden", "landlock"} → bool ("landlock": in force, which it is only
    where the mount namespace could not be made)."""
    global _PROBE
    with _PROBE_LOCK:
        if _PROBE is None:
            root = os.geteuid() == 0
            ready = _probe(uid_drop=root)
            if root and not ready:  # dropping to a private uid failed (e.g. unmapped in a user namespace)
                root, ready = False, _probe(uid_drop=False)
            _PROBE = {"uid": root, **{k: bool(ready.get(k)) for k in ("netns", "ipcns", "mountns", "hidden",
                                                                           "landlock")}}
            full = _PROBE["uid"] and _PROBE["netns"] and _PROBE["hidden"]
            logger.log(logging.INFO if full else logging.WARNING, "code sandbox isolation: %s%s", _PROBE,
                       "" if _PROBE["hidden"] else " (without a private mount namespace a program can read any file "
                       "its uid may, test files and datasets included; Landlock, where in force, still keeps it "
                       "from writing outside its working directory)")
    return dict(_PROBE)


def _probe(uid_drop: bool) -> dict:
    session = _Session({"mode": "probe"}, SandboxLimits(timeout_s=10), uid_drop=uid_drop, mountns=uid_drop)
    try:
        session.finish()
        return session.isolation
    finally:
        session.close()


def run_sandboxed(program: str, holes: list[list[str]], limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``program``, then evaluate each test's expressions ``holes[i]`` in its namespace; see the module doc."""
    return _run_batch({"mode": "holes", "program": program, "holes": holes}, limits or SandboxLimits())


def run_stdio(program: str, inputs: list[str], limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``program`` as ``__main__`` once per input (fed on stdin, each in a fresh process); ``tests[i]`` is
    ``[stdout, exited_cleanly]``. Cases finished before the wall limit count."""
    limits = limits or SandboxLimits()
    return _run_batch({"mode": "stdio", "program": program, "inputs": list(inputs), "output_cap": limits.output_bytes},
                      limits)


def _run_batch(request: dict, limits: SandboxLimits) -> SandboxResult:
    iso = isolation()
    session = _Session(request, limits, uid_drop=iso["uid"], mountns=iso["mountns"])
    try:
        session.finish()
        return session.result()
    finally:
        session.close()


def _decode_test(msg: dict) -> list | str:
    if "error" in msg:
        return str(msg["error"])
    try:
        return [from_wire(v) for v in msg["values"]]
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return "BadValue"


class _Session:
    """One sandboxed child process: spawned on construction, read by ``pump``, killed and swept by ``close``."""

    def __init__(self, request: dict, limits: SandboxLimits, uid_drop: bool, mountns: bool,
                 interactive: bool = False) -> None:
        self.limits = limits
        self.isolation: dict = {}
        self.tests: dict[int, list | str] = {}
        self.replies: dict[int, dict] = {}
        self.loaded = self.program_error = False
        self.status: str | None = None
        self.proc: subprocess.Popen | None = None
        self._partial, self._result_bytes, self._output = bytearray(), 0, bytearray()
        self._outgoing, self._request_w = bytearray(), -1
        self.slot = UidSlot() if uid_drop else None
        self.workdir = tempfile.mkdtemp(prefix="rapid-sbx-")
        self._result_r, result_w = os.pipe()
        request_r = -1
        try:
            if interactive:
                request_r, self._request_w = os.pipe()
                os.set_blocking(self._request_w, False)
            if self.slot is not None:
                os.chown(self.workdir, self.slot.uid, self.slot.uid)
            packages = package_locations(limits.packages)
            request = {**request, "result_fd": result_w, "request_fd": request_r, "netns": True, "mountns": mountns,
                       "landlock": LANDLOCK,
                       "hide": hidden_paths(private_uid=self.slot is not None) if mountns else [],
                       "uid": self.slot.uid if self.slot else None, "packages": packages,
                       "limits": {"cpu_s": limits.cpu_s or max(1, int(limits.timeout_s + 0.999)),
                                  "as_bytes": limits.memory_mb << 20, "fsize_bytes": limits.file_mb << 20,
                                  "nofile": limits.nofile, "nproc": limits.nproc if self.slot else None,
                                  "tmpfs_mb": limits.tmpfs_mb}}
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.workdir, "TMPDIR": self.workdir,
                   "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self.start = time.monotonic()
            self.deadline = self.start + limits.timeout_s
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                pass_fds=tuple(fd for fd in (result_w, request_r) if fd >= 0), start_new_session=True)
            try:
                self.proc.stdin.write(json.dumps(request).encode())
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            for fd in (self._result_r, self.proc.stdout.fileno()):
                os.set_blocking(fd, False)
            self._reading = {self._result_r, self.proc.stdout.fileno()}
        except BaseException:
            self.close()
            raise
        finally:
            for fd in (result_w, request_r):
                if fd >= 0:
                    os.close(fd)

    def pump(self, wait: float) -> None:
        """Move data for up to ``wait`` seconds; sets ``status`` when the run is over (exit, limit or timeout)."""
        if self.status is not None:
            return
        exited = self.proc.poll() is not None
        writing = [self._request_w] if self._outgoing and self._request_w >= 0 else []
        wait = 0.0 if exited else max(0.0, min(wait, self.deadline - time.monotonic()))
        readable, writable, _ = select.select(list(self._reading), writing, [], wait)
        for fd in readable:
            self.status = self.status or self._read(fd, drain=False)
        if writable and self.status is None:
            try:
                sent = os.write(self._request_w, self._outgoing)
                del self._outgoing[:sent]
            except BlockingIOError:
                pass
            except OSError:  # the child closed its end: it is gone or ignoring us
                self._outgoing.clear()
        if self.status is None and exited:
            for fd in list(self._reading):  # what the program wrote before exiting is still in the pipes
                self.status = self.status or self._read(fd, drain=True)
            self.status = self.status or "ok"
        elif self.status is None and not self._reading:  # both pipes closed: wait for the exit
            try:
                self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.status = "timeout"
        elif self.status is None and time.monotonic() >= self.deadline:
            self.status = "timeout"

    def _read(self, fd: int, drain: bool) -> str | None:
        """Read what is available (all of it when ``drain``); the limit status if a cap is passed."""
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return None
            if not chunk:
                self._reading.discard(fd)
                return None
            if fd == self._result_r:
                self._result_bytes += len(chunk)
                if self._result_bytes > self.limits.result_bytes:
                    return "result_limit"
                self._absorb(chunk)
            else:
                self._output += chunk
                if len(self._output) > self.limits.output_bytes:
                    return "output_limit"
            if not drain:
                return None

    def _absorb(self, chunk: bytes) -> None:
        self._partial += chunk
        *lines, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        for line in lines:
            try:
                msg = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(msg, dict):
                continue
            if "ready" in msg:
                if not self.isolation and isinstance(msg["ready"], dict):
                    self.isolation = msg["ready"]
            elif not self.isolation:  # nothing before "ready" comes from the trusted start-up
                continue
            elif "program_error" in msg:
                self.program_error = True
            elif msg.get("loaded") is True:
                self.loaded = True
            elif isinstance(msg.get("reply"), int) and msg["reply"] not in self.replies:
                self.replies[msg["reply"]] = msg
            elif isinstance(msg.get("test"), int) and msg["test"] not in self.tests:
                self.tests[msg["test"]] = _decode_test(msg)

    def wait_until(self, done) -> bool:
        """Pump until ``done()`` or the end of the run; whether ``done()`` holds."""
        while not done():
            if self.status is not None:
                return False
            self.pump(0.05)
        return True

    def send(self, msg: dict) -> None:
        self._outgoing += (json.dumps(msg) + "\n").encode()

    def finish(self) -> None:
        """Let the child run to its end (closing the request channel first: unsent requests are dropped), within
        the wall limit."""
        if self._request_w >= 0:
            self._outgoing.clear()
            os.close(self._request_w)
            self._request_w = -1
        while self.status is None:
            self.pump(0.05)

    def result(self) -> SandboxResult:
        status = self.status or "running"
        if status == "ok" and self.program_error:
            status = "program_error"
        elif status == "ok" and not self.isolation:
            status = "crashed"
        tests = {} if status in ("output_limit", "result_limit") else self.tests
        return SandboxResult(status=status, tests=tests, returncode=self.proc.poll() if self.proc else None,
                             wall_s=time.monotonic() - self.start, isolation=self.isolation,
                             output_tail=bytes(self._output[-2048:]).decode(errors="replace"))

    def close(self) -> None:
        """Kill everything the program started, remove what it left, release the uid."""
        for fd in (self._request_w, self._result_r):
            if fd >= 0:
                os.close(fd)
        self._request_w = self._result_r = -1
        if self.proc is not None:
            sweep_processes(self.slot.uid if self.slot else None, self.proc.pid)
            self.proc.wait()
            self.proc.stdout.close()
        if self.slot is not None:
            remove_files_of(self.slot.uid)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.slot is not None:
            self.slot.release()
            self.slot = None
