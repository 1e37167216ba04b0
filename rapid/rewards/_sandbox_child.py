"""Trusted start-up code of one sandboxed program (run as ``python -I -S _sandbox_child.py``; stdlib only).

The parent (``rapid.rewards.sandbox``) writes one JSON request on stdin. This script then, *before* any untrusted
code runs: applies resource limits, moves into a fresh network namespace (root only), drops to the sandbox's
private uid (root only), re-points ``sys.path`` at directory descriptors opened while still privileged (the
interpreter may live under a directory the sandbox uid cannot enter), and closes stdin. Then it executes the
program and evaluates each requested expression, writing one JSON line per test to the result descriptor.

Nothing written here is trusted as a verdict: the parent receives *values* (what the user's functions returned)
and judges the assertions itself, so user code that takes over this process can at most choose the values its
functions "returned" — which it could do by writing the functions that way.
"""

import builtins
import ctypes
import json
import os
import resource
import sys

CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE = 4
_PLAIN = (bool, int, float, str, bytes, complex, type(None))


def _limit(which, value):
    if value is not None:
        resource.setrlimit(which, (value, value))


def _confine(req):
    """Limits, network namespace, privilege drop. Returns the isolation actually achieved."""
    lim = req["limits"]
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_AS, lim.get("as_bytes"))
    _limit(resource.RLIMIT_FSIZE, lim.get("fsize_bytes"))
    _limit(resource.RLIMIT_NOFILE, lim.get("nofile"))
    _limit(resource.RLIMIT_CORE, 0)
    got = {"netns": False, "uid": os.getuid()}
    libc = ctypes.CDLL(None, use_errno=True)
    if req.get("netns") and libc.unshare(CLONE_NEWNET) == 0:
        got["netns"] = True
    uid = req.get("uid")
    if uid is not None and os.getuid() == 0:
        fds = []
        for entry in sys.path:
            try:
                fds.append(os.open(entry, os.O_RDONLY | os.O_DIRECTORY))
            except OSError:
                continue
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the uid change cleared it; /proc/self/fd needs it
        sys.path[:] = ["/proc/self/fd/%d" % fd for fd in fds]
        sys.path_importer_cache.clear()
        got["uid"] = os.getuid()
    _limit(resource.RLIMIT_NPROC, lim.get("nproc"))
    if not got["netns"]:
        _block_sockets()
    return got


def _block_sockets():
    """Fallback when no network namespace could be made: refuse socket creation at the Python level (weaker:
    ctypes or ``_socket`` can get around it; the parent logs that the sandbox runs without a network namespace)."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in the rapid sandbox")

    socket.socket = refuse
    socket.create_connection = refuse
    socket.socketpair = refuse


def to_wire(value, depth=0):
    """A JSON-able tagged tree of plain data; anything else becomes an opaque marker (equal to nothing)."""
    if depth > 64:
        raise ValueError("value nested too deeply")
    t = type(value)
    if t is bool or t is type(None) or t is str:
        return value
    if t is int:
        return ["i", str(value)]
    if t is float:
        return ["f", repr(value)]
    if t is complex:
        return ["c", repr(value.real), repr(value.imag)]
    if t is bytes:
        return ["b", value.hex()]
    if isinstance(value, dict):
        return ["d", [[to_wire(k, depth + 1), to_wire(v, depth + 1)] for k, v in dict.items(value)]]
    if isinstance(value, tuple):
        return ["t", [to_wire(v, depth + 1) for v in tuple.__iter__(value)]]
    if isinstance(value, (set, frozenset)):
        tag = "fs" if isinstance(value, frozenset) else "s"
        return [tag, [to_wire(v, depth + 1) for v in value]]
    if isinstance(value, (bool, int, float, str)):  # subclasses: keep the plain value only
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return to_wire(base(value), depth)
    if isinstance(value, list) or hasattr(value, "__next__") or type(value).__name__ in (
            "range", "map", "filter", "zip", "reversed", "dict_keys", "dict_values", "dict_items", "deque"):
        return ["l", [to_wire(v, depth + 1) for v in value]]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        plain = item()
        if type(plain) in _PLAIN:
            return to_wire(plain, depth)
    return ["x", type(value).__name__]


def main():
    request = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out_fd = int(request["result_fd"])
    write, dumps = os.write, json.dumps

    def emit(obj):
        data = (dumps(obj) + "\n").encode()
        while data:
            data = data[write(out_fd, data):]

    got = _confine(request)
    emit({"ready": got})
    if request.get("probe"):
        os._exit(0)
    env = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(request["program"], "<solution>", "exec"), env)
    except BaseException as exc:  # the program itself failed: every test fails; the parent sees no values
        emit({"program_error": type(exc).__name__})
        os._exit(1)
    for index, holes in enumerate(request["holes"]):
        try:
            values = [to_wire(eval(compile(src, "<test>", "eval"), env)) for src in holes]
            emit({"test": index, "values": values})
        except BaseException as exc:  # noqa: B036 - a failing test is data, not a harness failure
            emit({"test": index, "error": type(exc).__name__})
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - user code may have replaced or closed stdout; nothing is lost
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
