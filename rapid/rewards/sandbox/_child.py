"""Trusted start-up code of one sandboxed program (run as ``python -I -S _child.py``; stdlib only).

The parent (``rapid.rewards.sandbox``) writes one JSON request on stdin. This script then, *before* any untrusted
code runs: applies resource limits; moves into fresh network and IPC namespaces and a private mount namespace in
which every mount is read-only except new, size-limited tmpfs on /tmp, /var/tmp, /dev/shm and /run/lock (root
only; each step that fails is reported; without it, a Landlock ruleset confines writes to the working directory,
and failing that too the parent can only sweep the usual temporary directories); drops to the sandbox's
private uid (root only); covers the directories that hold data and code (the parent's list: site-packages, the
working directory, home, top-level data directories) so the program cannot read tests or datasets; re-points
``sys.path`` and the search paths of already imported packages at directory descriptors opened before that (the
interpreter may live under a hidden directory, or one the sandbox uid cannot enter); makes the allow-listed
site-packages importable through the same kind of descriptors; closes stdin.

Then, by ``mode``:

* ``holes``: run the program, evaluate each test's expressions, one JSON line of values per test;
* ``calls``: run the program, then answer call requests (``{"id", "fn", "args", "kwargs"}``, one JSON line each on
  the request descriptor) with the function's return value, and look-ups of module-level names (``{"id",
  "lookup": [names]}``) with which of them are callable and the values of the others, until the parent closes the
  descriptor;
* ``stdio``: for each input, fork a fresh process that runs the program as ``__main__`` with that input on stdin,
  and report its stdout and whether it exited cleanly.

Nothing written here is trusted as a verdict: the parent receives *values* (what the user's functions returned or
printed) and judges them itself, so user code that takes over this process can at most choose the values its
functions "returned" — which it could do by writing the functions that way.
"""

import builtins
import json
import os
import select
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this directory, for the two trusted modules below
from _confine import confine  # noqa: E402
from _wire import from_wire, to_wire  # noqa: E402

del sys.path[0]  # nothing of rapid's own directory is importable by the program


def _lookup(env, msg):
    """The program's module-level names asked for: which are callable (the parent binds a proxy), the plain-data
    value of the others; names the module lacks are left out. Data only: the parent decides what to bind."""
    callables, values = [], {}
    for name in msg["lookup"]:
        if name not in env:
            continue
        try:
            value = env[name]
            if callable(value):
                callables.append(name)
            else:
                values[name] = to_wire(value)
        except BaseException:  # noqa: B036 - a value that cannot travel is left out (the test gets NameError)
            continue
    return {"reply": msg["id"], "callables": callables, "values": values}


def _serve_calls(env, request_fd, emit):
    """Answer call requests until the parent closes the request descriptor."""
    pending = b""
    while True:
        chunk = os.read(request_fd, 1 << 16)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            msg = json.loads(line)
            if "lookup" in msg:
                emit(_lookup(env, msg))
                continue
            fn = env.get(msg["fn"])
            if not callable(fn):
                emit({"reply": msg["id"], "error": "NameError"})
                continue
            try:
                args = [from_wire(a) for a in msg["args"]]
                kwargs = {k: from_wire(v) for k, v in msg["kwargs"].items()}
                emit({"reply": msg["id"], "value": to_wire(fn(*args, **kwargs))})
            except BaseException as exc:  # noqa: B036 - the function's failure is data for the parent
                emit({"reply": msg["id"], "error": type(exc).__name__})


def _run_stdio(code, inputs, emit, output_cap, own_uid):
    """Each input in a fresh fork running the program as ``__main__``; report (stdout, exited cleanly)."""
    for index, text in enumerate(inputs):
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, text.encode())
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            os.dup2(stdin_fd, 0)
            os.dup2(write_fd, 1)
            for fd in (stdin_fd, read_fd, write_fd, emit.fd):
                os.close(fd)
            sys.stdin = open(0, "r", closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            status = 0
            try:
                exec(code, {"__name__": "__main__", "__builtins__": builtins})
            except SystemExit as exc:
                status = 0 if exc.code in (None, 0) else 1
            except BaseException:  # noqa: B036 - any failure is a failed case
                status = 1
            try:
                sys.stdout.flush()
            except BaseException:  # noqa: B036 - output the program broke is its own loss
                status = 1
            os._exit(status)
        os.close(stdin_fd)
        os.close(write_fd)
        out, exited = bytearray(), None
        while exited is None:
            ready, _, _ = select.select([read_fd], [], [], 0.01)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                out += chunk
                if len(out) > output_cap:
                    break
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exited = os.waitstatus_to_exitcode(status) == 0
        os.set_blocking(read_fd, False)
        try:
            out += os.read(read_fd, output_cap)
        except BlockingIOError:
            pass
        os.close(read_fd)
        try:  # whatever the case left running must not disturb the next case
            os.kill(-1, signal.SIGKILL) if own_uid else os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if exited is None:
            os.waitpid(pid, 0)
        emit({"test": index, "values": [to_wire(bytes(out[:output_cap]).decode(errors="replace")),
                                        bool(exited) and len(out) <= output_cap]})


class _Emitter:
    def __init__(self, fd):
        self.fd = fd

    def __call__(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]


def main():
    request = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.dont_write_bytecode = True
    emit = _Emitter(int(request["result_fd"]))
    got = confine(request)
    emit({"ready": got})
    mode = request.get("mode")
    if mode == "probe":
        os._exit(0)
    try:
        code = compile(request["program"], "<solution>", "exec")
        if mode == "stdio":
            _run_stdio(code, request["inputs"], emit, int(request["output_cap"]), request.get("uid") is not None)
            os._exit(0)
        env = {"__name__": "solution", "__builtins__": builtins}
        exec(code, env)
    except BaseException as exc:  # noqa: B036 - the program itself failed: every test fails
        emit({"program_error": type(exc).__name__})
        os._exit(1)
    if mode == "calls":
        emit({"loaded": True})
        _serve_calls(env, int(request["request_fd"]), emit)
    else:
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
