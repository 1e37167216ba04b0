"""Running reward functions: weighted combinations, time limits in every mode, stop requests, worker processes.

The reward API is ``reward_fn(prompts, completions, **columns) -> list[float | None]``: one value per completion,
``None`` meaning "could not score". ``compute_rewards`` is what the trainer calls::

    rewards, stats = compute_rewards(reward_fn, prompts, completions, columns, num_workers=4, timeout_s=60,
                                     should_stop=lambda: stop_flag.is_set())
    # rewards: list[float | None]; the loss uses 0.0 for None. stats: {"reward/errors": ..., ...}

An exception, a timeout, a wrong-length result or a non-finite value gives ``None`` for the samples concerned and
is counted; nothing a reward function does can end or hang the run:

* ``timeout_s`` limits every call (one chunk of samples) in every mode. In worker processes an overrunning worker
  is killed. In this process (``num_workers=0``) the call runs in a watchdog thread; a call past its limit is
  abandoned (a Python thread cannot be killed: it keeps running in the background until it returns, so a reward that
  can truly hang belongs in workers) and its samples score None, counted in ``reward/timeouts``.
* ``should_stop()`` is polled at least every 0.5 s (e.g. the trainer's SIGINT/SIGTERM flag): when it says stop,
  what was scored is returned, the rest is None, and ``reward/interrupted`` counts the samples left unscored.
"""

from __future__ import annotations

import logging
import math
import numbers
import pickle
import queue
import statistics
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence

from .reward_pool import close_pools, get_pool, references_main

logger = logging.getLogger(__name__)

__all__ = ["RewardFn", "WeightedReward", "check_reward_values", "close_pools", "combine", "compute_rewards",
           "probe_reward"]

RewardFn = Callable[..., list]
_POLL_S = 0.5
_WARNED_MAIN: set[str] = set()


@dataclass
class WeightedReward:
    """Σ weight_i · fn_i(prompts, completions, **columns); a sample is None if any term is None.
    Picklable when its functions are (module-level), so it can run in worker processes."""

    components: list[tuple[RewardFn, float]]

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        total: list[float | None] = [0.0] * len(completions)
        for fn, weight in self.components:
            values = fn(prompts, completions, **columns)
            if len(values) != len(completions):
                raise ValueError(f"{_name(fn)} returned {len(values)} values for {len(completions)} completions")
            total = [None if t is None or v is None else t + weight * float(v) for t, v in zip(total, values)]
        return total


def combine(components: Sequence[tuple[RewardFn, float]]) -> WeightedReward:
    """One reward function from several weighted ones: ``combine([(math_reward, 1.0), (fmt, 0.1)])``."""
    if not components:
        raise ValueError("combine() needs at least one (fn, weight) pair")
    for fn, weight in components:
        if not callable(fn) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"each component must be (callable, finite weight), got ({fn!r}, {weight!r})")
    return WeightedReward([(fn, float(weight)) for fn, weight in components])


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class _WatchdogThread:
    """A daemon thread that runs calls handed to it, one at a time, until it is given ``None``. Reused while its
    calls finish in time (a new thread per call measured ~1 ms per call on the 2-core box, a reused one 0.04 ms)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="rapid-reward", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            call, box, done = job
            try:
                box.append(("ok", call()))
            except BaseException:  # noqa: B036 - SystemExit / KeyboardInterrupt raised by a reward must not escape
                box.append(("error", traceback.format_exc()))
            finally:
                done.set()


_IDLE: list[_WatchdogThread] = []         # threads whose last call finished in time
_IDLE_LOCK = threading.Lock()


def call_with_watchdog(call: Callable[[], object], timeout_s: float | None,
                       should_stop: Callable[[], bool] | None = None) -> tuple[str, object]:
    """``call()`` in a daemon thread: ("ok", value) | ("error", traceback text) | ("timeout", None) |
    ("stopped", None). On timeout or stop the thread is abandoned, not killed (see the module doc): it exits when
    the call returns, and later calls get another thread. Concurrent callers never share a thread."""
    with _IDLE_LOCK:
        worker = _IDLE.pop() if _IDLE else None
    worker = worker or _WatchdogThread()
    box: list = []
    done = threading.Event()
    deadline = time.monotonic() + timeout_s if timeout_s else math.inf
    worker.jobs.put((call, box, done))
    while not done.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
        if should_stop is not None and should_stop():
            worker.jobs.put(None)
            return "stopped", None
        if time.monotonic() >= deadline:
            worker.jobs.put(None)
            return "timeout", None
    with _IDLE_LOCK:
        _IDLE.append(worker)
    return box[0]


def _call_inline(fn: RewardFn, jobs: list[tuple], timeout_s: float | None,
                 should_stop: Callable[[], bool] | None) -> list[tuple[str, object]]:
    results = []
    for args, kwargs in jobs:
        if results and results[-1][0] == "stopped":
            results.append(("stopped", None))
            continue
        status, payload = call_with_watchdog(lambda: fn(*args, **kwargs), timeout_s, should_stop)
        if status == "error":
            payload = str(payload).strip().splitlines()[-1]
        results.append((status, payload))
    return results


def _use_workers(reward_fn: RewardFn, num_workers: int) -> bool:
    """Whether ``reward_fn`` can run in worker processes; ValueError if it cannot be sent there at all."""
    if num_workers < 1:
        return False
    try:
        in_main = references_main(reward_fn)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"reward function {_name(reward_fn)!r} cannot be sent to worker processes (define it at "
                         f"module level, or use num_workers=0): {exc}") from exc
    if in_main and _name(reward_fn) not in _WARNED_MAIN:
        _WARNED_MAIN.add(_name(reward_fn))
        logger.warning("reward function %r is defined in the script being run (__main__): a worker process could only "
                       "find it by re-running that script, so it runs in this process with a watchdog thread instead. "
                       "Put it in an importable module to use reward workers.", _name(reward_fn))
    return not in_main


def compute_rewards(reward_fn: RewardFn, prompts: list[str], completions: list[str],
                    columns: dict[str, list] | None = None, *, num_workers: int = 0,
                    timeout_s: float | None = None, chunk_size: int | None = None,
                    should_stop: Callable[[], bool] | None = None) -> tuple[list[float | None], dict[str, float]]:
    """Score every completion; return ``(rewards, stats)`` where a reward is a float or None (failed: the trainer
    uses 0.0), and stats has ``reward/errors`` (samples that got None through an exception, a timeout, a bad
    return), ``reward/timeouts``, ``reward/interrupted`` (left unscored because ``should_stop()`` said so),
    ``reward/none`` (None returned by the function itself), ``reward/mean`` and ``reward/std`` (non-None values).

    ``columns[k][i]`` is column k for completion i (e.g. ``{"answer": [...]}``). ``num_workers=0`` calls
    ``reward_fn`` in this process, on all samples at once; ``>= 1`` uses that many worker processes, each chunk of
    ``chunk_size`` samples (default: an even split over the workers). ``timeout_s`` (None: no limit) limits each call
    in either mode; ``should_stop`` is polled every 0.5 s (see the module doc). A failed chunk is retried one sample
    at a time, so one bad sample does not cost its neighbours — except on a timeout, which gives the chunk None.
    """
    columns = columns or {}
    n = len(completions)
    if len(prompts) != n or any(len(v) != n for v in columns.values()):
        raise ValueError(f"prompts ({len(prompts)}), completions ({n}) and every column "
                         f"({ {k: len(v) for k, v in columns.items()} }) must have the same length")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    workers = _use_workers(reward_fn, num_workers)
    size = chunk_size or max(1, math.ceil(n / max(1, num_workers if workers else 1)))
    chunks = [list(range(s, min(n, s + size))) for s in range(0, n, size)]

    def run(groups: list[list[int]]) -> list[tuple[str, object]]:
        jobs = [(([prompts[i] for i in g], [completions[i] for i in g]),
                 {k: [v[i] for i in g] for k, v in columns.items()}) for g in groups]
        if workers:
            return get_pool(num_workers).run(reward_fn, jobs, timeout_s, should_stop)
        return _call_inline(reward_fn, jobs, timeout_s, should_stop)

    rewards: list[float | None] = [None] * n
    counts = {"errors": 0, "timeouts": 0, "interrupted": 0, "none": 0}
    retry: list[list[int]] = []
    for group, result in zip(chunks, run(chunks)):
        if not _store(group, result, rewards, counts, final=len(group) == 1):
            retry.extend([i] for i in group)
    if retry and not counts["interrupted"]:
        for group, result in zip(retry, run(retry)):
            _store(group, result, rewards, counts, final=True)
    elif retry:
        counts["interrupted"] += sum(len(g) for g in retry)
    if counts["interrupted"]:
        logger.warning("reward computation stopped on request: %d of %d samples left unscored",
                       counts["interrupted"], n)
    values = [r for r in rewards if r is not None]
    stats = {f"reward/{k}": float(v) for k, v in counts.items()}
    stats["reward/mean"] = statistics.fmean(values) if values else 0.0
    stats["reward/std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    return rewards, stats


def _store(group: list[int], result: tuple[str, object], rewards: list, counts: dict, final: bool) -> bool:
    """Put one chunk's result into ``rewards``; False if the chunk should be retried sample by sample."""
    status, payload = result
    if status == "stopped":
        counts["interrupted"] += len(group)
        return True
    if status == "timeout":
        logger.warning("reward function timed out on %d sample(s)", len(group))
        counts["errors"] += len(group)
        counts["timeouts"] += len(group)
        return True
    if status == "ok":
        try:
            payload = list(payload)
        except TypeError:
            pass
    problem = payload if status == "error" else None
    if problem is None and (not isinstance(payload, list) or len(payload) != len(group)):
        problem = f"returned {type(payload).__name__} of length {len(payload) if isinstance(payload, list) else '?'}" \
                  f" for {len(group)} samples"
    if problem is not None:
        if not final:
            return False
        logger.warning("reward function failed on sample %d: %s", group[0], str(problem).strip()[-2000:])
        counts["errors"] += len(group)
        return True
    for i, value in zip(group, payload):
        if value is None:
            counts["none"] += 1
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value):
            rewards[i] = value
        else:
            logger.warning("reward function gave a non-finite or non-numeric value for sample %d", i)
            counts["errors"] += 1
    return True


def check_reward_values(raw: object, expected: int, name: str = "reward_fn") -> list:
    """``raw`` as a list of ``expected`` numbers or None; else ValueError naming ``name``."""
    try:
        values = list(raw)  # type: ignore[call-overload]
    except TypeError as err:
        raise ValueError(f"{name} must return a list of floats (or None), got {type(raw).__name__}") from err
    if len(values) != expected:
        raise ValueError(f"{name} returned {len(values)} rewards for {expected} completions")
    for i, r in enumerate(values):
        if r is None:
            continue
        plain = r.item() if not isinstance(r, (bool, numbers.Real)) and hasattr(r, "item") and getattr(
            r, "numel", lambda: 1)() == 1 else r
        if isinstance(plain, bool) or not isinstance(plain, numbers.Real):
            raise ValueError(f"{name} returned a non-number at index {i}: {r!r} (use None for a failed reward)")
        if not math.isfinite(float(plain)):
            raise ValueError(f"{name} returned a non-finite reward at index {i}: {r!r}")
    return values


def probe_reward(reward_fn: RewardFn, rows: list[dict], timeout_s: float | None = 60.0, *,
                 should_stop: Callable[[], bool] | None = None) -> str:
    """Call ``reward_fn`` once on two empty completions (the first two rows' prompts and columns), under
    ``timeout_s``, before any expensive work. A wrong length or a non-number raises ValueError naming the function
    (a bug that would score every sample wrong); an exception or a hang is logged as a WARNING (with the traceback)
    and the run goes on, as such samples would score None during training. Returns "ok", "error", "timeout" or
    "stopped"."""
    if not rows:
        raise ValueError("probe_reward needs at least one row")
    sample = rows[:2]
    prompts = [row["prompt"] for row in sample]
    columns = {k: [row.get(k) for row in sample] for k in sample[0] if k != "prompt"}
    name = _name(reward_fn)
    status, payload = call_with_watchdog(lambda: reward_fn(prompts, [""] * len(sample), **columns), timeout_s,
                                         should_stop)
    if status == "error":
        logger.warning("reward function %r raised on the start-up probe (two empty completions); the run continues and "
                       "samples it raises on score 0 (counted in reward/errors):\n%s", name, payload)
    elif status == "timeout":
        logger.warning("reward function %r did not return within %s s on the start-up probe (two empty completions); "
                       "the run continues, and calls past reward_timeout_s score 0 (counted in reward/timeouts)",
                       name, timeout_s)
    elif status == "ok":
        check_reward_values(payload, len(sample), f"reward function {name!r}")
    return status
