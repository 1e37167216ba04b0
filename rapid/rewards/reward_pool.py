"""Worker processes for slow or fragile reward functions: a job that overruns its deadline, or a stop request, kills
the worker (it is replaced when next needed); nothing a reward function does reaches the caller's process.

Workers are fresh interpreters started with ``subprocess`` (``python -c`` running ``main`` below), not
``multiprocessing`` children: multiprocessing's "spawn" re-runs the parent's main script in every worker, so a user
script without an ``if __name__ == "__main__":`` guard would start training again inside each worker. Here a worker
imports only the modules that the pickled reward function names. A function defined in the script itself (module
``__main__``) cannot be found that way; ``references_main`` lets the caller detect it and run such a function in
its own process instead. The worker's ``sys.path`` is the parent's, so functions in modules next to the script load.
"""

from __future__ import annotations

import atexit
import io
import math
import multiprocessing.connection
import os
import pickle
import socket
import subprocess
import sys
import time
import traceback
from typing import Callable

__all__ = ["RewardPool", "close_pools", "get_pool", "references_main"]

_BOOT = "import sys; from rapid.rewards.reward_pool import main; main(int(sys.argv[1]))"


class _FindRecorder(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str):
        self.modules.add(module)
        return super().find_class(module, name)


def references_main(obj: object) -> bool:
    """Whether pickling ``obj`` refers to anything in ``__main__`` (the running script), which a worker could only
    find by re-running that script. Raises what ``pickle`` raises for an unpicklable object."""
    recorder = _FindRecorder(pickle.dumps(obj))
    recorder.load()
    return "__main__" in recorder.modules or "__mp_main__" in recorder.modules


def main(fd: int) -> None:
    """Worker loop: receive (fn, args, kwargs), send back ("ok", result) or ("error", traceback text)."""
    conn = multiprocessing.connection.Connection(fd)
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:
            return
        except Exception:  # noqa: BLE001 - e.g. the function's module does not import here: the job's error
            conn.send(("error", traceback.format_exc(limit=-3)))
            continue
        try:
            result = ("ok", fn(*args, **kwargs))
        except BaseException:  # noqa: B036 - SystemExit etc. in a reward is an error of that job, not our exit
            result = ("error", traceback.format_exc(limit=-3))
        try:
            conn.send(result)
        except Exception:  # noqa: BLE001 - an unpicklable result
            conn.send(("error", traceback.format_exc(limit=-3)))


class _Worker:
    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(child.fileno())], pass_fds=(child.fileno(),),
                                     env=env, stdin=subprocess.DEVNULL)
        child.close()
        self.conn = multiprocessing.connection.Connection(parent.detach())

    def kill(self) -> None:
        self.conn.close()
        self.proc.kill()
        self.proc.wait()


class RewardPool:
    """``num_workers`` worker processes (started on first use, replaced after a kill)."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.workers: list[_Worker | None] = []

    def _worker(self, w: int) -> _Worker:
        if self.workers[w] is None:
            self.workers[w] = _Worker()
        return self.workers[w]

    def _kill(self, w: int) -> None:
        if self.workers[w] is not None:
            self.workers[w].kill()
            self.workers[w] = None

    def run(self, fn: Callable, jobs: list[tuple[tuple, dict]], timeout_s: float | None,
            should_stop: Callable[[], bool] | None = None) -> list[tuple[str, object]]:
        """``fn(*args, **kwargs)`` for each job; in order: ("ok", result) | ("error", text) | ("timeout", None) |
        ("stopped", None) — the last for jobs not finished when ``should_stop()`` (polled every 0.5 s) said so."""
        self.workers += [None] * (min(self.num_workers, len(jobs)) - len(self.workers))
        results: list = [None] * len(jobs)
        pending = list(range(len(jobs)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (job index, deadline)
        while pending or busy:
            if should_stop is not None and should_stop():
                for w in list(busy):
                    self._kill(w)
                for j in [j for j, _ in busy.values()] + pending:
                    results[j] = ("stopped", None)
                return results
            for w in range(len(self.workers)):
                if w not in busy and pending:
                    j = pending.pop()
                    args, kwargs = jobs[j]
                    try:
                        self._worker(w).conn.send((fn, args, kwargs))
                    except (BrokenPipeError, ConnectionError, OSError):  # the idle worker had died: replace it
                        self._kill(w)
                        self._worker(w).conn.send((fn, args, kwargs))
                    busy[w] = (j, time.monotonic() + timeout_s if timeout_s else math.inf)
            conns = {self.workers[w].conn: w for w in busy}
            nearest = min(deadline for _, deadline in busy.values())
            wait = min(0.5, max(0.0, nearest - time.monotonic()))
            for conn in multiprocessing.connection.wait(list(conns), timeout=wait):
                w = conns[conn]
                j, _ = busy.pop(w)
                try:
                    results[j] = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. os._exit in the reward function)
                    results[j] = ("error", "reward worker died")
                    self._kill(w)
            now = time.monotonic()
            for w, (j, deadline) in list(busy.items()):
                if now >= deadline:
                    busy.pop(w)
                    results[j] = ("timeout", None)
                    self._kill(w)
        return results

    def close(self) -> None:
        """Stop every worker."""
        for w in range(len(self.workers)):
            self._kill(w)
        self.workers = []


_POOLS: dict[int, RewardPool] = {}


def get_pool(num_workers: int) -> RewardPool:
    """The process-wide pool of ``num_workers`` workers (started on first use, reused after)."""
    if not _POOLS:
        atexit.register(close_pools)
    if num_workers not in _POOLS:
        _POOLS[num_workers] = RewardPool(num_workers)
    return _POOLS[num_workers]


def close_pools() -> None:
    """Stop all reward worker processes."""
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
    atexit.unregister(close_pools)
