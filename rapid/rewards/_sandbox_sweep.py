"""What the sandbox parent does after each program: private uid slots, killing every leftover process, and removing
every file the program left in a writable place.

The sandbox uid owns nothing outside its run, and (with no supplementary groups) can only create entries in its own
working directory and in world-writable directories. So, as root, "everything the program left" is: the processes
of that uid, and the entries owned by it at the top level of world-writable directories (anything deeper lies under
one of those entries, or under another world-writable directory). When the program ran in a private mount namespace
(``_sandbox_child``) its /tmp, /var/tmp, /dev/shm and /run/lock were private tmpfs mounts that vanish with it and the
rest of the tree was read-only, so the sweep finds nothing; without one, the world-writable directories of every
writable local mount are found by a scan (once, refreshed every ``SCAN_TTL_S``) and swept after each program.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time

logger = logging.getLogger(__name__)

UID_BASE = 1_990_000_000
"""First private uid for sandboxed programs (far above real accounts and the usual subordinate-id ranges)."""
NUM_SLOTS = 4096
SLOT_DIR = os.path.join(tempfile.gettempdir(), "rapid-sandbox-slots")
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
SCAN_TTL_S = 300.0
SCAN_BUDGET_S = 20.0
_PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs", "pstore",
              "bpf", "fusectl", "configfs", "autofs", "binfmt_misc", "hugetlbfs", "nsfs", "overlay_ro", "efivarfs"}


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


_SCAN: tuple[float, tuple[str, ...]] | None = None
_SCAN_LOCK = threading.Lock()


def _mounts() -> tuple[list[str], set[str]]:
    """(writable local mount points, every other mount point: read-only or pseudo file systems)."""
    writable, other = [], set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                point = fields[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
                fs_type = fields[fields.index("-") + 1]
                if "ro" in fields[5].split(",") or fs_type in _PSEUDO_FS:
                    other.add(point)
                else:
                    writable.append(point)
    except (OSError, ValueError):
        return ["/"], {"/proc", "/sys"}
    return writable, other - set(writable)


def world_writable_dirs(refresh: bool = False) -> tuple[str, ...]:
    """World-writable directories on writable local mounts (cached; rescanned after ``SCAN_TTL_S``)."""
    global _SCAN
    with _SCAN_LOCK:
        if _SCAN is not None and not refresh and time.monotonic() - _SCAN[0] < SCAN_TTL_S:
            return _SCAN[1]
        mounts, skip = _mounts()
        found: list[str] = []
        deadline = time.monotonic() + SCAN_BUDGET_S
        stack = sorted(set(mounts))
        seen: set[tuple[int, int]] = set()
        while stack and time.monotonic() < deadline:
            path = stack.pop()
            try:
                st = os.lstat(path)
                entries = list(os.scandir(path))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if st.st_mode & stat.S_IWOTH:
                found.append(path)
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False) and entry.path not in skip:
                        stack.append(entry.path)
                except OSError:
                    continue
        if stack:
            logger.warning("sandbox: the scan for world-writable directories stopped after %.0f s; files a program "
                           "leaves in unscanned directories are not removed", SCAN_BUDGET_S)
        _SCAN = (time.monotonic(), tuple(dict.fromkeys((*WORLD_WRITABLE, *found))))
        return _SCAN[1]


def remove_files_of(uid: int, full: bool) -> None:
    """Delete the top-level entries owned by ``uid`` in the world-writable directories (``full``: every one found by
    ``world_writable_dirs``, else the usual temporary directories)."""
    roots = world_writable_dirs() if full else WORLD_WRITABLE
    for root in dict.fromkeys((*roots, tempfile.gettempdir())):
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
