"""Confinement of the sandbox child, applied before any untrusted code runs (stdlib only; see ``_child``).

In order: resource limits; new network and IPC namespaces; descriptors to the interpreter's library and the
allow-listed packages; a private mount namespace (every mount read-only, private size-limited tmpfs on /tmp,
/var/tmp, /dev/shm, /run/lock, the parent's ``hide`` list covered by empty mounts); the drop to the private uid;
where no mount namespace could be made, a Landlock ruleset allowing writes only below the working directory;
``sys.path`` and package search paths re-pointed at the descriptors; the process-count limit; sockets refused at
the Python level when there is no network namespace. ``confine`` returns what was achieved; the parent logs it.
"""

import ctypes
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # x86_64 and arm64
LANDLOCK_WRITE = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))  # write, remove, make anything
LANDLOCK_REFER, LANDLOCK_TRUNCATE = 1 << 13, 1 << 14
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _limit(which, value):
    if value is not None:
        resource.setrlimit(which, (value, value))


def _hide(libc, paths):
    """Cover each path (directories: an empty read-only tmpfs; files: /dev/null) so the program cannot read the
    test data, datasets or code that live there. True if every existing path was covered."""
    ok = True
    for path in paths:
        if os.path.isdir(path):
            ok &= libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                             b"size=4k,nr_inodes=16,mode=0755") == 0
        elif os.path.isfile(path):
            ok &= libc.mount(b"/dev/null", path.encode(), None, MS_BIND, None) == 0
    return bool(ok)


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


def _landlock_writes_only_in(libc, workdir):
    """Fallback when no mount namespace could be made: a Landlock ruleset (Linux >= 5.13, unprivileged) under which
    this process and its children can create, change or remove files only below ``workdir`` (and write /dev/null).
    True if it is in force."""
    libc.syscall.restype = ctypes.c_long
    long = ctypes.c_long
    abi = libc.syscall(long(SYS_LANDLOCK_CREATE_RULESET), None, long(0), long(1))  # ..._RULESET_VERSION
    if abi < 1:
        return False
    handled = LANDLOCK_WRITE | (LANDLOCK_REFER if abi >= 2 else 0) | (LANDLOCK_TRUNCATE if abi >= 3 else 0)
    attr = ctypes.c_uint64(handled)  # struct landlock_ruleset_attr, first field only (size 8 is accepted)
    ruleset = libc.syscall(long(SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), long(8), long(0))
    if ruleset < 0:
        return False

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    try:
        file_rights = (1 << 1) | (LANDLOCK_TRUNCATE if abi >= 3 else 0)
        for path, rights in ((workdir, handled), ("/dev/null", file_rights)):
            fd = os.open(path, os.O_PATH)
            rule = PathBeneath(rights, fd)
            added = libc.syscall(long(SYS_LANDLOCK_ADD_RULE), long(ruleset), long(1), ctypes.byref(rule),
                                 long(0))  # LANDLOCK_RULE_PATH_BENEATH
            os.close(fd)
            if added != 0:
                return False
        return (libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                and libc.syscall(long(SYS_LANDLOCK_RESTRICT_SELF), long(ruleset), long(0)) == 0)
    finally:
        os.close(ruleset)


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


def confine(req):
    """Limits, namespaces, privilege drop, allowed packages. Returns the isolation actually achieved."""
    lim = req["limits"]
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_AS, lim.get("as_bytes"))
    _limit(resource.RLIMIT_FSIZE, lim.get("fsize_bytes"))
    _limit(resource.RLIMIT_NOFILE, lim.get("nofile"))
    _limit(resource.RLIMIT_CORE, 0)
    got = {"netns": False, "ipcns": False, "mountns": False, "hidden": False, "landlock": False, "uid": os.getuid()}
    libc = ctypes.CDLL(None, use_errno=True)
    if req.get("netns") and libc.unshare(CLONE_NEWNET) == 0:
        got["netns"] = True
    if req.get("netns") and libc.unshare(CLONE_NEWIPC) == 0:
        got["ipcns"] = True
    fds = _open_dirs(sys.path)  # before any path is hidden: the interpreter's own library stays reachable
    packages = {}
    for name, path in (req.get("packages") or {}).items():
        try:
            is_dir = os.path.isdir(path)
            packages[name] = (os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0)), is_dir)
        except OSError:
            continue
    if req.get("mountns") and os.getuid() == 0:
        got["mountns"] = _private_mounts(libc, int(lim.get("tmpfs_mb") or 64))
        got["hidden"] = got["mountns"] and _hide(libc, req.get("hide") or [])
        workdir = os.environ.get("TMPDIR", "/tmp")
        if os.path.isdir("/tmp") and not os.path.isdir(workdir):  # the parent's workdir is under the hidden /tmp
            os.makedirs(workdir, mode=0o700)
        os.chdir(workdir)
    uid = req.get("uid")
    if uid is not None and os.getuid() == 0:
        os.chown(".", uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the uid change cleared it; /proc/self/fd needs it
        got["uid"] = os.getuid()
    _repoint_paths(fds)
    if packages:
        sys.meta_path.append(_AllowedPackages(packages))
    if req.get("landlock", True) and not got["mountns"]:
        got["landlock"] = _landlock_writes_only_in(libc, os.getcwd())
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
