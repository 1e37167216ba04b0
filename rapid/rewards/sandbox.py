"""Run one untrusted program in a confined subprocess and bring back what its functions returned.

Isolation, in the order it is set up (by ``_sandbox_child.py``, trusted code that runs before the program):

* a fresh temporary directory as cwd (removed afterwards), a scrubbed environment, stdin at /dev/null;
* ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core files; a wall-clock limit enforced by
  the parent;
* no network: a new, empty network namespace (``unshare(CLONE_NEWNET)``; needs root). Without root it falls back to
  refusing ``socket`` creation at the Python level, which ctypes can bypass — the fallback is logged;
* as root, the program runs under a private uid (one of ``UID_BASE + slot``, a slot held by ``flock`` so concurrent
  sandboxes, even from different processes, never share one). That makes ``RLIMIT_NPROC`` effective (the kernel
  does not enforce it for root), keeps the program from writing outside world-writable directories, from signalling
  or reading the trainer, and lets the parent find every process the program started — even ones that called
  ``setsid`` — by uid, and every file it left in /tmp, /var/tmp or /dev/shm by owner;
* output (stdout + stderr) is read up to a cap; past it the program is killed.

Afterwards the process group is killed, then every process of the sandbox uid (repeated until none is left), then
files owned by the uid in the world-writable directories and the working directory are removed. Without root the
sweep falls back to the process group and the session (a program that calls ``setsid`` and forks can escape it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

UID_BASE = 1_990_000_000
"""First private uid for sandboxed programs (far above real accounts and the usual subordinate-id ranges)."""
_NUM_SLOTS = 4096
_SLOT_DIR = os.path.join(tempfile.gettempdir(), "rapid-sandbox-slots")
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")


@dataclass
class SandboxLimits:
    """Resource limits of one sandboxed program."""

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
    """Most bytes of stdout + stderr read; more kills the program (status "output_limit")."""
    result_bytes: int = 4 << 20
    """Most bytes of result messages accepted."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE) in MiB."""
    nofile: int = 64
    """Open-file limit (RLIMIT_NOFILE)."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("memory_mb", "nproc", "output_bytes", "result_bytes", "file_mb", "nofile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


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


class _Opaque:
    """A returned value of a type the wire format does not carry: equal to nothing, not even itself."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<opaque {self.type_name}>"


def from_wire(w):
    """Decode one value of ``_sandbox_child.to_wire``'s format; anything malformed raises ValueError."""
    if w is None or isinstance(w, (bool, str)):
        return w
    if not isinstance(w, list) or not w or not isinstance(w[0], str):
        raise ValueError(f"malformed value {w!r:.80}")
    tag, *rest = w
    try:
        if tag == "i":
            return int(rest[0])
        if tag == "f":
            return float(rest[0])
        if tag == "c":
            return complex(float(rest[0]), float(rest[1]))
        if tag == "b":
            return bytes.fromhex(rest[0])
        if tag == "x":
            return _Opaque(str(rest[0]))
        items = rest[0]
        if tag == "d":
            return {from_wire(k): from_wire(v) for k, v in items}
        decoded = [from_wire(v) for v in items]
        kinds = {"l": list, "t": tuple, "s": set, "fs": frozenset}
        return kinds[tag](decoded)
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed value {w!r:.80}") from exc


class _UidSlot:
    """A private uid held for the duration of one run: ``flock`` on a per-slot file (released if we die)."""

    def __init__(self) -> None:
        os.makedirs(_SLOT_DIR, mode=0o700, exist_ok=True)
        start = (os.getpid() * 31 + threading.get_ident()) % _NUM_SLOTS
        for k in range(_NUM_SLOTS):
            slot = (start + k) % _NUM_SLOTS
            fd = os.open(os.path.join(_SLOT_DIR, str(slot)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, UID_BASE + slot
            return
        raise RuntimeError(f"all {_NUM_SLOTS} sandbox uid slots are busy")

    def release(self) -> None:
        os.close(self.fd)  # closing drops the flock


def _proc_owner_and_session(pid: str) -> tuple[int, int, str] | None:
    """(real uid, session id, state) of a process from /proc/PID/status, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "State", "NSsid"):
            fields[key] = value.split()
    if len(fields) < 3:
        return None
    return int(fields["Uid"][0]), int(fields["NSsid"][0]), fields["State"][0]


def leftover_pids(uid: int | None, session: int | None) -> list[int]:
    """Live (non-zombie) processes owned by ``uid`` or in ``session``."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        info = _proc_owner_and_session(name)
        if info is None or info[2] in ("Z", "X"):
            continue
        if (uid is not None and info[0] == uid) or (session is not None and info[1] == session):
            found.append(int(name))
    return found


def _sweep_processes(uid: int | None, session: int) -> None:
    """SIGKILL the session's process group, then everything of the uid / session until nothing is left."""
    try:
        os.killpg(session, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for round_ in range(200):
        pids = leftover_pids(uid, session)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(min(0.001 * (round_ + 1), 0.02))
    logger.warning("sandbox: processes of uid %s / session %s survived 200 kill rounds", uid, session)


def _remove_files_of(uid: int) -> None:
    """Delete top-level entries owned by ``uid`` in the world-writable directories."""
    for root in dict.fromkeys((*_WORLD_WRITABLE, tempfile.gettempdir())):
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:  # removed meanwhile by its owner (another process's temp entry)
                continue
            except OSError as exc:
                logger.warning("sandbox: could not remove %s: %s", entry.path, exc)


_PROBE: dict | None = None
_PROBE_LOCK = threading.Lock()


def isolation() -> dict:
    """What confinement this machine allows (probed once per process): {"uid": bool, "netns": bool}."""
    global _PROBE
    with _PROBE_LOCK:
        if _PROBE is None:
            _PROBE = {"uid": os.geteuid() == 0, "netns": True}
            result = _run(None, [], SandboxLimits(timeout_s=10), probe=True)
            ready = result.isolation
            if _PROBE["uid"] and not ready:  # dropping to a private uid failed (e.g. unmapped in a user namespace)
                _PROBE["uid"] = False
                ready = _run(None, [], SandboxLimits(timeout_s=10), probe=True).isolation
            _PROBE["netns"] = bool(ready.get("netns"))
            level = logging.INFO if _PROBE["uid"] and _PROBE["netns"] else logging.WARNING
            logger.log(level, "code sandbox isolation: private uid=%s, network namespace=%s", _PROBE["uid"],
                       _PROBE["netns"])
    return dict(_PROBE)


def run_sandboxed(program: str, holes: list[list[str]], limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``program``, then evaluate each test's expressions ``holes[i]`` in its namespace; see the module doc."""
    iso = isolation()
    return _run(program, holes, limits or SandboxLimits(), uid_drop=iso["uid"])


def _run(program: str | None, holes: list[list[str]], limits: SandboxLimits, probe: bool = False,
         uid_drop: bool | None = None) -> SandboxResult:
    if uid_drop is None:
        uid_drop = _PROBE["uid"] if _PROBE else False
    slot = _UidSlot() if uid_drop else None
    workdir = tempfile.mkdtemp(prefix="rapid-sbx-")
    read_fd, write_fd = os.pipe()
    proc = None
    try:
        if slot is not None:
            os.chown(workdir, slot.uid, slot.uid)
        request = {
            "program": program, "holes": holes, "probe": probe, "result_fd": write_fd, "netns": True,
            "uid": slot.uid if slot else None,
            "limits": {"cpu_s": limits.cpu_s or max(1, int(limits.timeout_s + 0.999)),
                       "as_bytes": limits.memory_mb << 20, "fsize_bytes": limits.file_mb << 20,
                       "nofile": limits.nofile, "nproc": limits.nproc if slot else None},
        }
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=workdir, env=env, pass_fds=(write_fd,),
                                start_new_session=True)
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        result = _collect(proc, read_fd, limits, start)
        result.wall_s = time.monotonic() - start
        return result
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        if proc is not None:
            _sweep_processes(slot.uid if slot else None, proc.pid)
            proc.wait()
            proc.stdout.close()
        if slot is not None:
            _remove_files_of(slot.uid)
        shutil.rmtree(workdir, ignore_errors=True)
        if slot is not None:
            slot.release()


def _collect(proc: subprocess.Popen, result_fd: int, limits: SandboxLimits, start: float) -> SandboxResult:
    """Read output (capped) and result lines until the program exits, breaks a limit or runs out of time."""
    out_fd = proc.stdout.fileno()
    for fd in (out_fd, result_fd):
        os.set_blocking(fd, False)
    streams = {out_fd: _Stream(limits.output_bytes, "output_limit"),
               result_fd: _Stream(limits.result_bytes, "result_limit")}
    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    status = None
    deadline = start + limits.timeout_s
    while status is None:
        exited = proc.poll() is not None
        wait = 0 if exited else min(0.05, max(0.0, deadline - time.monotonic()))
        for key, _ in sel.select(timeout=wait):
            status = status or streams[key.fd].read(key.fd, sel, drain=False)
        if status is None and exited:
            for fd in list(sel.get_map()):  # what the program wrote before exiting is still in the pipes
                status = status or streams[fd].read(fd, sel, drain=True)
            status = status or "ok"
        elif status is None and not sel.get_map():  # both pipes closed: just wait for the exit
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = "timeout"
        elif status is None and time.monotonic() >= deadline:
            status = "timeout"
    sel.close()
    return _parse(status, proc, streams[result_fd].data, bytes(streams[out_fd].data))


class _Stream:
    """One capped pipe reader."""

    def __init__(self, cap: int, over_status: str) -> None:
        self.data, self.cap, self.over_status = bytearray(), cap, over_status

    def read(self, fd: int, sel: selectors.BaseSelector, drain: bool) -> str | None:
        """Read what is available (all of it when ``drain``); the limit status if the cap is passed."""
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return None
            if not chunk:
                sel.unregister(fd)
                return None
            self.data += chunk
            if len(self.data) > self.cap:
                return self.over_status
            if not drain:
                return None


def _parse(status: str, proc: subprocess.Popen, raw: bytearray, output: bytes) -> SandboxResult:
    result = SandboxResult(status=status, returncode=proc.poll(), output_tail=output[-2048:].decode(errors="replace"))
    if status in ("output_limit", "result_limit"):
        return result
    lines = bytes(raw).split(b"\n")
    for line in lines[:-1] if not raw.endswith(b"\n") else lines:
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "ready" in msg and not result.isolation and isinstance(msg["ready"], dict):
            result.isolation = msg["ready"]
        elif "program_error" in msg:
            result.status = "program_error"
        elif isinstance(msg.get("test"), int) and msg["test"] not in result.tests:
            result.tests[msg["test"]] = _decode_test(msg)
    if status == "ok" and not result.isolation:
        result.status = "crashed"
    return result


def _decode_test(msg: dict) -> list | str:
    if "error" in msg:
        return str(msg["error"])
    try:
        return [from_wire(v) for v in msg["values"]]
    except (ValueError, KeyError, TypeError, OverflowError):
        return "BadValue"
