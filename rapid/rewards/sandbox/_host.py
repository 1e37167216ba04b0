"""The sandbox parent's side of confinement: private uid slots, what a program must not see (``hidden_paths``) and
where its allowed packages live, and, after each program, killing every leftover process and removing files it left.

The sandbox uid owns nothing outside its run, and (with no supplementary groups) can only create entries in its own
working directory and in world-writable directories. Where the program cannot write anywhere else — a private mount
namespace (read-only tree, private tmpfs that vanish with it) or, failing that, a Landlock ruleset that allows
writes only in its working directory (both set up by ``_child``) — nothing can be left outside the working
directory, which the parent removes. The sweep of /tmp, /var/tmp, /dev/shm and /run/lock by owner here is the last
line: it is all there is on a kernel with neither, where a world-writable directory elsewhere is not covered
(finding them all means walking the whole file system: `find / -xdev -perm -0002` took 82 s on the dev box).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import site
import sys
import sysconfig
import tempfile
import threading
import time

logger = logging.getLogger(__name__)

UID_BASE = 1_990_000_000
"""First private uid for sandboxed programs (far above real accounts and the usual subordinate-id ranges)."""
NUM_SLOTS = 4096
SLOT_DIR = os.path.join(tempfile.gettempdir(), "rapid-sandbox-slots")
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


class UidSlot:
    """A private uid held for the duration of one run: ``flock`` on a per-slot file (released if we die)."""

    def __init__(self) -> None:
        os.makedirs(SLOT_DIR, mode=0o700, exist_ok=True)
        start = (os.getpid() * 31 + threading.get_ident()) % NUM_SLOTS
        for k in range(NUM_SLOTS):
            slot = (start + k) % NUM_SLOTS
            fd = os.open(os.path.join(SLOT_DIR, str(slot)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, UID_BASE + slot
            return
        raise RuntimeError(f"all {NUM_SLOTS} sandbox uid slots are busy")

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


def sweep_processes(uid: int | None, session: int) -> None:
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


def remove_files_of(uid: int) -> None:
    """Delete the top-level entries owned by ``uid`` in the usual world-writable directories."""
    for root in dict.fromkeys((*WORLD_WRITABLE, tempfile.gettempdir())):
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


_PACKAGES: dict[str, str] = {}


def package_locations(names: tuple[str, ...]) -> dict[str, str]:
    """Directory (package) or file (single module) of each allowed package; ValueError naming one not installed."""
    found = {}
    for name in names:
        if name not in _PACKAGES:
            spec = importlib.util.find_spec(name)
            if spec is None or (spec.origin in (None, "built-in", "frozen") and not spec.submodule_search_locations):
                raise ValueError(f"packages: {name!r} is not installed in this environment")
            locations = list(spec.submodule_search_locations or [])
            _PACKAGES[name] = locations[0] if locations else spec.origin
        found[name] = _PACKAGES[name]
    return found


_KEEP = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/dev", "/proc", "/sys", "/tmp",
         "/run", "/var/tmp", "/var/run", "/var/lock")
_HIDDEN: dict[bool, list[str]] = {}


def _closed_to_others(path: str) -> bool:
    """Whether a private uid could not get in anyway: a directory others cannot search, a file they cannot read."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return True
    return not st.st_mode & (0o001 if os.path.isdir(path) else 0o004)


def _cover(path: str, keep: tuple[str, ...], private_uid: bool) -> list[str]:
    """Paths to cover so nothing under ``path`` stays visible except the ``keep`` paths (and the way to them);
    with ``private_uid``, paths that uid could not open anyway are left alone (fewer mounts per program)."""
    if any(path == k or path.startswith(k.rstrip("/") + "/") for k in keep):
        return []
    if private_uid and _closed_to_others(path):
        return []
    if not any(k.startswith(path.rstrip("/") + "/") for k in keep):
        return [path]
    try:
        entries = [e for e in os.scandir(path) if not e.is_symlink()]
    except OSError:
        return []
    return [p for e in entries for p in _cover(e.path, keep, private_uid)]


def hidden_paths(private_uid: bool = True) -> list[str]:
    """What a sandboxed program must not see (covered in its mount namespace): everything outside the system
    directories (/usr, /etc, /lib*, ...) and the interpreter's own installation, plus — even inside those — this
    environment's site-packages, the working directory, home and the Hugging Face cache: wherever test files,
    datasets and code live. ``private_uid``: the program runs under a uid of its own, so what others cannot open
    needs no cover. Computed once per process."""
    if private_uid not in _HIDDEN:
        keep = (*_KEEP, tempfile.gettempdir(), os.path.realpath(sys.base_prefix))
        base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
        extra = [p for p in (sys.prefix, *site.getsitepackages(), site.getusersitepackages(), base["purelib"],
                             base["platlib"], os.getcwd(), os.path.expanduser("~"), os.environ.get("HF_HOME"),
                             os.environ.get("XDG_CACHE_HOME")) if p and os.path.exists(p)]
        paths = set(_cover("/", keep, private_uid))
        for path in {os.path.realpath(p) for p in extra}:
            inside = [k for k in keep if path == k or path.startswith(k.rstrip("/") + "/")]
            # under a system directory (e.g. /usr/lib/python3/dist-packages): covered all the same, but never the
            # system directory itself nor the interpreter's installation
            paths.update(_cover(path, tuple(k for k in keep if k not in inside), private_uid))
        ordered = sorted(paths)
        _HIDDEN[private_uid] = [p for p in ordered if not any(p.startswith(q.rstrip("/") + "/") for q in ordered)]
    return list(_HIDDEN[private_uid])
