"""Running reward functions: weighted combinations, a process pool for slow verifiers, and error isolation.

The reward API is ``reward_fn(prompts, completions, **columns) -> list[float | None]``: one value per completion,
``None`` meaning "could not score". ``compute_rewards`` is what the trainer calls::

    rewards, stats = compute_rewards(reward_fn, prompts, completions, columns, num_workers=4, timeout_s=30)
    # rewards: list[float | None]; the loss uses 0.0 for None. stats: {"reward/errors": ..., ...}

An exception, a timeout, a wrong-length result or a non-finite value gives ``None`` for the samples concerned and
is counted in ``reward/errors``; nothing a reward function does can end the run.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import pickle
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]


@dataclass
class WeightedReward:
    """Σ weight_i · fn_i(prompts, completions, **columns); a sample is None if any term is None.
    Picklable when its functions are (module-level), so it can run in the process pool."""

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
    """One reward function from several weighted ones: ``combine([(math_reward, 1.0), (format_reward, 0.1)])``."""
    if not components:
        raise ValueError("combine() needs at least one (fn, weight) pair")
    for fn, weight in components:
        if not callable(fn) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"each component must be (callable, finite weight), got ({fn!r}, {weight!r})")
    return WeightedReward([(fn, float(weight)) for fn, weight in components])


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _worker(conn: multiprocessing.connection.Connection) -> None:
    """Pool worker: receive (fn, prompts, completions, columns), send back ("ok", values) or ("error", text)."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        fn, prompts, completions, columns = job
        try:
            conn.send(("ok", list(fn(prompts, completions, **columns))))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, counted as an error there
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class RewardPool:
    """Worker processes for reward functions; a worker that overruns its chunk's deadline is killed and replaced.
    Workers start with the "spawn" method by default, safe in a process holding CUDA or vLLM threads: reward
    functions must then be importable (module-level)."""

    def __init__(self, num_workers: int, start_method: str = "spawn") -> None:
        self.ctx = multiprocessing.get_context(start_method)
        self.num_workers = num_workers
        self.workers: list[tuple[multiprocessing.Process, multiprocessing.connection.Connection]] = []

    def _start_worker(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child,), daemon=True, name="rapid-reward-worker")
        proc.start()
        child.close()
        return proc, parent

    def run(self, fn: RewardFn, jobs: list[tuple], timeout_s: float | None) -> list[tuple[str, object]]:
        """Run ``fn(*job)`` for each job; results in order: ("ok", values) | ("error", text) | ("timeout", None)."""
        while len(self.workers) < min(self.num_workers, len(jobs)):
            self.workers.append(self._start_worker())
        results: list = [None] * len(jobs)
        pending = list(range(len(jobs)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (job index, deadline)
        while pending or busy:
            for w in range(len(self.workers)):
                if w not in busy and pending:
                    j = pending.pop()
                    try:
                        self.workers[w][1].send((fn, *jobs[j]))
                    except (BrokenPipeError, OSError):  # the idle worker had died: replace it, try again
                        self._replace(w)
                        self.workers[w][1].send((fn, *jobs[j]))
                    busy[w] = (j, time.monotonic() + timeout_s if timeout_s else math.inf)
            conns = {self.workers[w][1]: w for w in busy}
            nearest = min(deadline for _, deadline in busy.values())
            wait = None if nearest == math.inf else max(0.0, nearest - time.monotonic())
            for conn in multiprocessing.connection.wait(list(conns), timeout=wait):
                w = conns[conn]
                j, _ = busy.pop(w)
                try:
                    results[j] = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. os._exit in the reward function)
                    results[j] = ("error", "reward worker died")
                    self._replace(w)
            now = time.monotonic()
            for w, (j, deadline) in list(busy.items()):
                if now >= deadline:
                    busy.pop(w)
                    results[j] = ("timeout", None)
                    self._replace(w)
        return results

    def _replace(self, w: int) -> None:
        proc, conn = self.workers[w]
        proc.kill()
        proc.join()
        conn.close()
        self.workers[w] = self._start_worker()

    def close(self) -> None:
        """Stop every worker."""
        for proc, conn in self.workers:
            conn.close()
            proc.kill()
            proc.join()
        self.workers = []


_POOLS: dict[int, RewardPool] = {}


def get_pool(num_workers: int) -> RewardPool:
    """The process-wide pool of ``num_workers`` workers (started on first use, reused after)."""
    if num_workers not in _POOLS:
        _POOLS[num_workers] = RewardPool(num_workers)
    return _POOLS[num_workers]


def close_pools() -> None:
    """Stop all reward worker processes (also done at interpreter exit: the workers are daemons)."""
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def _call_inline(fn: RewardFn, jobs: list[tuple]) -> list[tuple[str, object]]:
    results = []
    for prompts, completions, columns in jobs:
        try:
            results.append(("ok", list(fn(prompts, completions, **columns))))
        except Exception as exc:  # noqa: BLE001 - counted as an error, never raised into the training loop
            results.append(("error", f"{type(exc).__name__}: {exc}"))
    return results


def compute_rewards(reward_fn: RewardFn, prompts: list[str], completions: list[str],
                    columns: dict[str, list] | None = None, *, num_workers: int = 0,
                    timeout_s: float | None = None, chunk_size: int | None = None
                    ) -> tuple[list[float | None], dict[str, float]]:
    """Score every completion; return ``(rewards, stats)`` where a reward is a float or None (failed: the trainer
    uses 0.0), and stats has ``reward/errors`` (samples that got None through an exception, a timeout, a bad
    return), ``reward/timeouts``, ``reward/none`` (None returned by the function itself), ``reward/mean`` and
    ``reward/std`` (over the non-None values).

    ``columns[k][i]`` is column k for completion i (e.g. ``{"answer": [...]}``). ``num_workers=0`` runs in this
    process (``timeout_s`` is then not enforced); ``>= 1`` uses a process pool of that size, each chunk of
    ``chunk_size`` samples (default: an even split over the workers) limited to ``timeout_s`` seconds. A failed
    chunk is retried one sample at a time, so one bad sample does not cost its neighbours — except on a timeout,
    which gives the whole chunk None.
    """
    columns = columns or {}
    n = len(completions)
    if len(prompts) != n or any(len(v) != n for v in columns.values()):
        raise ValueError(f"prompts ({len(prompts)}), completions ({n}) and every column "
                         f"({ {k: len(v) for k, v in columns.items()} }) must have the same length")
    if num_workers >= 1:
        try:
            pickle.dumps(reward_fn)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(f"reward function {_name(reward_fn)!r} cannot be sent to worker processes (define it at "
                             f"module level, or use num_workers=0): {exc}") from exc
    size = chunk_size or max(1, math.ceil(n / max(1, num_workers)))
    chunks = [list(range(s, min(n, s + size))) for s in range(0, n, size)]

    def jobs_for(groups: list[list[int]]) -> list[tuple]:
        return [([prompts[i] for i in g], [completions[i] for i in g], {k: [v[i] for i in g] for k, v in
                                                                        columns.items()}) for g in groups]

    def run(groups: list[list[int]]) -> list[tuple[str, object]]:
        if num_workers >= 1:
            return get_pool(num_workers).run(reward_fn, jobs_for(groups), timeout_s)
        return _call_inline(reward_fn, jobs_for(groups))

    rewards: list[float | None] = [None] * n
    counts = {"errors": 0, "timeouts": 0, "none": 0}
    retry: list[list[int]] = []
    for group, result in zip(chunks, run(chunks)):
        if not _store(group, result, rewards, counts, final=len(group) == 1):
            retry.extend([i] for i in group)
    if retry:
        for group, result in zip(retry, run(retry)):
            _store(group, result, rewards, counts, final=True)
    values = [r for r in rewards if r is not None]
    stats = {f"reward/{k}": float(v) for k, v in counts.items()}
    stats["reward/mean"] = statistics.fmean(values) if values else 0.0
    stats["reward/std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    return rewards, stats


def _store(group: list[int], result: tuple[str, object], rewards: list, counts: dict, final: bool) -> bool:
    """Put one chunk's result into ``rewards``; False if the chunk should be retried sample by sample."""
    status, payload = result
    if status == "timeout":
        logger.warning("reward function timed out on %d sample(s)", len(group))
        counts["errors"] += len(group)
        counts["timeouts"] += len(group)
        return True
    problem = payload if status == "error" else None
    if problem is None and (not isinstance(payload, list) or len(payload) != len(group)):
        problem = f"returned {type(payload).__name__} of length {len(payload) if isinstance(payload, list) else '?'}" \
                  f" for {len(group)} samples"
    if problem is not None:
        if not final:
            return False
        logger.warning("reward function failed on sample %d: %s", group[0], problem)
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
