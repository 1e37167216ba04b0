"""Overlapped generation (``overlap=True``, DESIGN.md section 6): rollout r+1 is generated while the trainer takes
rollout r's H steps.

    pipeline = Pipeline(engine, model, reward_fn, cfg, profiler)     # engine: a ProcessEngine (own process)
    pipeline.submit(request_0, step)        # sync the current weights (one copy), start generating rollout 0
    pending = pipeline.take()               # wait for it; its rewards were computed as soon as it arrived
    pipeline.submit(request_1, step)        # rollout 1 from the weights *before* rollout 0's update
    ... H optimizer steps on rollout 0 ...  # meanwhile the engine process generates rollout 1
    pending = pipeline.take()               # ...

The estimator does not change: rollout r+1's behaviour policy is the weights before rollout r's update, one rollout
staler, and its truncated importance weights correct for it; ``rapid/staleness`` counts optimizer steps since those
weights were taken (so it spans two rollouts). Each rollout carries the weight version it was generated with; the
pipeline checks it against the version it pushed before submitting (the generator's weights are exactly the
trainer's at that step). Weights move once per rollout, into the engine's shared memory.
"""

from __future__ import annotations

import concurrent.futures
import time

from ..config import RapidConfig
from ..engines.base import EngineError
from .buffer import RolloutBuffer
from .rollout import RolloutInfo, score_rows
from .session import Pending, Request


class Pipeline:
    """One rollout in flight at a time; rewards are scored on a background thread as soon as it arrives."""

    def __init__(self, engine, model, reward_fn, cfg: RapidConfig, profiler, should_stop=None) -> None:
        self.engine, self.model, self.reward_fn, self.cfg = engine, model, reward_fn, cfg
        self.profiler, self.should_stop = profiler, should_stop
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapid-rollout")
        self._future: concurrent.futures.Future | None = None
        self._request: Request | None = None
        self._version: int | None = None
        self._weights_step = 0
        self._submitted_at = 0.0

    @property
    def busy(self) -> bool:
        return self._future is not None

    def submit(self, request: Request, weights_step: int) -> None:
        """Push the current weights (the rollout's behaviour policy), then start generating ``request``."""
        if self.busy:
            raise RuntimeError("a rollout is already in flight: take() it first")
        with self.profiler.phase("update_weights"):
            self._version = self.engine.sync_weights(self.model)
        self._weights_step, self._request = weights_step, request
        self._submitted_at = time.monotonic()
        handle = self.engine.submit(request.texts, self.cfg.group_size, request.sampling)
        self.profiler.add_interval("gen", "gen", self._submitted_at)          # busy from now until it lands
        self._future = self._pool.submit(self._finish, handle, request)

    def _finish(self, handle, request: Request):
        rollout = self.engine.result(handle)
        rewards, reward_stats = score_rows(self.reward_fn, self.cfg, rollout, request.rows, self.should_stop)
        return rollout, rewards, reward_stats

    def take(self) -> Pending:
        """Wait for the rollout in flight (a ``gen_wait`` phase when the trainer is ahead) and return it."""
        if not self.busy:
            raise RuntimeError("no rollout in flight")
        with self.profiler.phase("gen_wait"):
            rollout, rewards, reward_stats = self._future.result()
        request, self._future = self._request, None
        version = rollout.stats.get("weights_version")
        if version != self._version:
            raise EngineError(f"the engine generated with weights version {version}, but version {self._version} "
                              "was pushed for this rollout: the generator is not sampling from the trainer's weights")
        stats = rollout.stats
        self.profiler.add_interval("gen", "gen", stats.get("gen_start", self._submitted_at),
                                   stats.get("gen_end", time.monotonic()))
        self.profiler.add_tokens("gen", rollout.num_completion_tokens)
        buffer = RolloutBuffer(rollout, rewards, self.cfg.group_size)
        info = RolloutInfo(rows=request.rows, reward_stats=reward_stats)
        return Pending.of(request, buffer, info, weights_step=self._weights_step)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
