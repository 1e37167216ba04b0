"""Trusted start-up code of one sandboxed program (run as ``python -I -S _sandbox_child.py``; stdlib only).

The parent (``rapid.rewards.sandbox``) writes one JSON request on stdin. This script then, *before* any untrusted
code runs: applies resource limits; moves into fresh network and IPC namespaces and a private mount namespace in
which every mount is read-only except new, size-limited tmpfs on /tmp, /var/tmp, /dev/shm and /run/lock (root
only; each step that fails is reported, and the parent falls back to sweeping files); drops to the sandbox's
private uid (root only); re-points ``sys.path`` and the search paths of already imported packages at directory
descriptors opened while still privileged (the interpreter may live under a directory the sandbox uid cannot
enter); makes the allow-listed site-packages importable through the same kind of descriptors; closes stdin.

Then, by ``mode``:

* ``holes``: run the program, evaluate each test's expressions, one JSON line of values per test;
* ``calls``: run the program, then answer call requests (``{"id", "fn", "args", "kwargs"}``, one JSON line each on
  the request descriptor) with the function's return value until the parent closes the descriptor;
* ``stdio``: for each input, fork a fresh process that runs the program as ``__main__`` with that input on stdin,
  and report its stdout and whether it exited cleanly.

Nothing written here is trusted as a verdict: the parent receives *values* (what the user's functions returned or
printed) and judges them itself, so user code that takes over this process can at most choose the values its
functions "returned" — which it could do by writing the functions that way.
"""

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_DUMPABLE = 4
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_PLAIN = (bool, int, float, str, bytes, complex, type(None))


class Opaque:
    """A value of a type the wire format does not carry: equal to nothing, not even itself."""

    __slots__ = ("type_name",)

    def __init__(self, type_name):
        self.type_name = type_name

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return "<opaque %s>" % self.type_name


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
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist) and type(value).__name__ == "ndarray":
        return to_wire(tolist(), depth)
    return ["x", type(value).__name__]


def from_wire(w):
    """Decode one value of ``to_wire``'s format; anything malformed raises ValueError."""
    if w is None or isinstance(w, (bool, str)):
        return w
    if not isinstance(w, list) or not w or not isinstance(w[0], str):
        raise ValueError("malformed value %.80r" % (w,))
    tag, rest = w[0], w[1:]
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
            return Opaque(str(rest[0]))
        items = rest[0]
        if tag == "d":
            return {from_wire(k): from_wire(v) for k, v in items}
        kinds = {"l": list, "t": tuple, "s": set, "fs": frozenset}
        return kinds[tag]([from_wire(v) for v in items])
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError("malformed value %.80r" % (w,)) from exc


def _limit(which, value):
    if value is not None:
        resource.setrlimit(which, (value, value))


def _private_mounts(libc, tmpfs_mb):
    """In a new mount namespace: every mount read-only, fresh tmpfs on the world-writable directories.
    True only if all of it worked (else the parent sweeps files as well)."""
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    ok = True
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point, options = fields[4], fields[5].split(",")
        if "ro" in options:
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC)):
            if name in options:
                flags |= bit
        target = point.encode().decode("unicode_escape").encode()  # mountinfo escapes spaces as \040
        if libc.mount(None, target, None, flags, None) != 0:
            ok = False
    data = ("size=%dm,nr_inodes=4096,mode=1777" % tmpfs_mb).encode()
    for path in PRIVATE_TMP:
        if os.path.isdir(path) and libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, data) != 0:
            ok = False
    return ok


def _open_dirs(paths):
    fds = {}
    for path in paths:
        try:
            fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
    return fds


def _repoint_paths(fds):
    """Search paths of sys.path and of already imported packages through /proc/self/fd (see the module doc)."""
    def mapped(path):
        for root, fd in fds.items():
            if path == root or path.startswith(root + os.sep):
                return "/proc/self/fd/%d%s" % (fd, path[len(root):])
        return path

    sys.path[:] = [mapped(p) for p in sys.path if p in fds]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [mapped(p) for p in search]
    sys.path_importer_cache.clear()


class _AllowedPackages:
    """Meta-path finder for the allow-listed site-packages, each reached through a descriptor opened before the
    privilege drop; nothing else of site-packages is importable."""

    def __init__(self, fds):
        self.fds = fds  # name -> (fd, is_dir)

    def find_spec(self, fullname, path=None, target=None):
        import importlib.util

        if fullname not in self.fds:
            return None
        fd, is_dir = self.fds[fullname]
        where = "/proc/self/fd/%d" % fd
        if is_dir:
            return importlib.util.spec_from_file_location(fullname, where + "/__init__.py",
                                                          submodule_search_locations=[where])
        return importlib.util.spec_from_loader(fullname, _FdSourceLoader(where))


class _FdSourceLoader:
    """Loads a single-file module (.py) from a descriptor path (no suffix, so the stock loaders would refuse)."""

    def __init__(self, path):
        self.path = path

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        with open(self.path, "rb") as f:
            exec(compile(f.read(), self.path, "exec"), module.__dict__)


def _confine(req):
    """Limits, namespaces, privilege drop, allowed packages. Returns the isolation actually achieved."""
    lim = req["limits"]
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_AS, lim.get("as_bytes"))
    _limit(resource.RLIMIT_FSIZE, lim.get("fsize_bytes"))
    _limit(resource.RLIMIT_NOFILE, lim.get("nofile"))
    _limit(resource.RLIMIT_CORE, 0)
    got = {"netns": False, "ipcns": False, "mountns": False, "uid": os.getuid()}
    libc = ctypes.CDLL(None, use_errno=True)
    if req.get("netns") and libc.unshare(CLONE_NEWNET) == 0:
        got["netns"] = True
    if req.get("netns") and libc.unshare(CLONE_NEWIPC) == 0:
        got["ipcns"] = True
    if req.get("mountns") and os.getuid() == 0:
        got["mountns"] = _private_mounts(libc, int(lim.get("tmpfs_mb") or 64))
        workdir = os.environ.get("TMPDIR", "/tmp")
        if os.path.isdir("/tmp") and not os.path.isdir(workdir):  # the parent's workdir is under the hidden /tmp
            os.makedirs(workdir, mode=0o700)
        os.chdir(workdir)
    uid = req.get("uid")
    packages = {}
    if uid is not None and os.getuid() == 0:
        fds = _open_dirs(sys.path)
        for name, path in (req.get("packages") or {}).items():
            try:
                is_dir = os.path.isdir(path)
                packages[name] = (os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0)), is_dir)
            except OSError:
                continue
        os.chown(".", uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the uid change cleared it; /proc/self/fd needs it
        _repoint_paths(fds)
        got["uid"] = os.getuid()
    else:
        packages = {name: (os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)),
                           os.path.isdir(path)) for name, path in (req.get("packages") or {}).items()}
    if packages:
        sys.meta_path.append(_AllowedPackages(packages))
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
            try:
                fn = env[msg["fn"]]
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
    got = _confine(request)
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
