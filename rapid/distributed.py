"""Data-parallel plumbing on ``torch.distributed``: the process group and the few collectives the trainer needs
(the one place that wraps the loss module, DDP or FSDP2, is ``rapid.parallel``).

Everything here degrades to a no-op at world size 1 without a process group, so single-process runs never need
``torchrun``. The pattern follows torchtitan: parallelism is applied once (``rapid.parallel.parallelize``), model
and loss code never mention ranks, and rank-0-only logging is one helper (:func:`main_logger`).

Order of calls on every rank (each is collective where noted)::

    dist = init_distributed()                 # collective: joins/creates the group (+ a gloo side group on nccl)
    dist.check_same_config(cfg.to_dict())     # collective: ValueError naming ranks and fields on mismatch
    wrapped = parallelize(loss_module, "ddp", torch.bfloat16, dist.device, dist)   # collective
    ... per micro-batch: with no_sync(wrapped, enabled=not last): loss.backward()
    dist.barrier("rollout 3")                 # collective: RankFailureError naming a rank that did not arrive
    metrics = dist.reduce_metrics(metrics)    # collective: identical reduced dict on every rank
    for name, w in hf_weights(model): engine takes w   # engines.weights; collective under FSDP2: ranks iterate fully
    dist.close()

Hung and crashed ranks: the process group and the gloo monitor group are created with ``timeout_s``, so a blocked
collective raises instead of hanging forever; :meth:`Dist.barrier` uses ``monitored_barrier(wait_all_ranks=True)``
whose error on rank 0 names every rank that did not arrive, and rank 0 posts those names in the rendezvous store
so the other ranks' errors name them too.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import re
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as tdist

logger = logging.getLogger(__name__)

# reduce_metrics rule (documented once, here): keys with these prefixes take the max over ranks (phase times: the
# slowest rank sets the pace; maxima stay maxima), these take the sum (counts and rates of disjoint work), these
# are kept per rank as ``key/rank{r}`` besides their mean; every other number is the mean over the ranks that have it.
MAX_PREFIXES = ("timing_s/", "time/", "perf/max_memory", "rapid/w_max", "rapid/log_w_max")
SUM_PREFIXES = ("count/", "reward/errors", "reward/timeouts", "reward/none", "perf/throughput",
                "perf/samples_per_s", "perf/tokens_per_s/")
PER_RANK_PREFIXES = ("perf/util", "perf/gpu_util")


class RankFailureError(RuntimeError):
    """A peer rank crashed or hung: a barrier or collective did not complete within the timeout."""


def _rank_from_env() -> int:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


class _MainOnly(logging.LoggerAdapter):
    """Logger adapter that emits on rank 0 only (the rank is read at each call: the group may come later)."""

    def isEnabledFor(self, level: int) -> bool:          # noqa: N802 (logging's API name)
        return _rank_from_env() == 0 and self.logger.isEnabledFor(level)


def main_logger(name: str) -> logging.LoggerAdapter:
    """``logging.getLogger(name)`` that is silent off rank 0: progress and summaries are logged once, not N times.
    Errors that concern one rank should use a plain logger (they are that rank's news)."""
    return _MainOnly(logging.getLogger(name), {})


@dataclass
class Dist:
    """This process's place in the job. ``Dist()`` is world size 1: every collective is a local no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None                  # None: no process group
    timeout_s: float = 1800.0
    monitor_group: Any = None                   # gloo group for barriers and object collectives
    owns_group: bool = False                    # this Dist created the default group and destroys it on close()
    owns_monitor: bool = False                  # monitor_group is a side group this Dist made (nccl): close() ends it
    _barriers: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group is in use (collectives communicate)."""
        return self.backend is not None

    # ---- collectives ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as err:
            if isinstance(err, RankFailureError):
                raise
            raise RankFailureError(f"rank {self.rank}: collective {what} failed (timeout {self.timeout_s:g} s): "
                                   f"{err}. If a peer rank crashed or hung, rank 0's barrier error names it."
                                   ) from err

    def all_reduce(self, value, op: Literal["sum", "max", "min"] = "sum"):
        """Sum/max/min over ranks of a float, a sequence of floats or a small tensor; returns the same kind."""
        if op not in ("sum", "max", "min"):
            raise ValueError(f"op must be 'sum', 'max' or 'min', got {op!r}")
        is_tensor = isinstance(value, torch.Tensor)
        if not self.active:
            return value.clone() if is_tensor else value
        scalar = not is_tensor and not isinstance(value, (list, tuple))
        values = [value] if scalar else value
        t = value.detach().clone() if is_tensor else torch.tensor(list(values), dtype=torch.float64)
        out_device = t.device
        comm = t.to(self.device) if "nccl" in self.backend else t.cpu()
        with self._collective(f"all_reduce({op})"):
            tdist.all_reduce(comm, op=getattr(tdist.ReduceOp, op.upper()))
        if is_tensor:
            return comm.to(out_device)
        return comm.item() if scalar else comm.tolist()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (pickled, over the gloo monitor group)."""
        if not self.active:
            return obj
        box = [obj]
        with self._collective("broadcast_object"):
            tdist.broadcast_object_list(box, src=src, group=self.monitor_group)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        with self._collective("all_gather_object"):
            tdist.all_gather_object(out, obj, group=self.monitor_group)
        return out

    def barrier(self, name: str = "", timeout_s: float | None = None) -> None:
        """Wait for every rank; raise :class:`RankFailureError` naming the ranks that did not arrive in time."""
        if not self.active:
            return
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self._barriers += 1
        key = f"rapid/barrier/{self._barriers}"
        label = f"barrier {name!r}" if name else f"barrier #{self._barriers}"
        try:
            tdist.monitored_barrier(group=self.monitor_group, timeout=datetime.timedelta(seconds=timeout),
                                    wait_all_ranks=True)
        except RuntimeError as err:
            raise RankFailureError(self._describe_failure(label, key, err, timeout)) from err

    def _describe_failure(self, label: str, key: str, err: RuntimeError, timeout: float) -> str:
        store = _default_store()
        if self.is_main:
            found = re.search(r"Ranks? ([\d, ]+) failed to pass", str(err))
            missing = found.group(1).strip() if found else "unknown"
            if store is not None:
                with contextlib.suppress(Exception):   # best effort: the error below is raised either way
                    store.set(key, missing)
            return f"{label}: rank(s) {missing} did not arrive within {timeout:g} s (crashed or hung)"
        missing = None
        if store is not None:
            with contextlib.suppress(Exception):       # rank 0 (the store's host) may be the one that died
                store.wait([key], datetime.timedelta(seconds=min(2.0, timeout)))
                missing = store.get(key).decode()
        if missing:
            return f"{label}: rank(s) {missing} did not arrive within {timeout:g} s (crashed or hung; seen by rank 0)"
        return (f"{label}: rank {self.rank} arrived but rank 0 did not confirm within {timeout:g} s — rank 0 "
                f"crashed or hung ({type(err).__name__}: {str(err).splitlines()[0][:200]})")

    # ---- metrics and start-up checks -----------------------------------------------------------------------------
    def reduce_metrics(self, metrics: dict[str, Any], max_prefixes: Iterable[str] = MAX_PREFIXES,
                       sum_prefixes: Iterable[str] = SUM_PREFIXES,
                       per_rank_prefixes: Iterable[str] = PER_RANK_PREFIXES) -> dict[str, Any]:
        """Reduce one metrics dict per rank to one dict, identical on every rank (only rank 0 should log it).

        Rule: max for ``max_prefixes`` (phase times, maxima), sum for ``sum_prefixes`` (counts, rates of disjoint
        work), the mean for every other number — over the ranks that report the key (``None`` is "not reported");
        ``per_rank_prefixes`` also keep ``key/rank{r}``. A value every rank agrees on (counters) keeps its type;
        non-numbers (and bools) take the first reporting rank's value. Means of per-rank means equal the global
        mean because every rank holds the same number of groups.
        """
        if not self.active:
            return dict(metrics)
        per_rank = self.all_gather_object(dict(metrics))
        max_p, sum_p, keep_p = tuple(max_prefixes), tuple(sum_prefixes), tuple(per_rank_prefixes)
        out: dict[str, Any] = {}
        for key in dict.fromkeys(k for m in per_rank for k in m):
            present = [(r, m[key]) for r, m in enumerate(per_rank) if key in m and m[key] is not None]
            numbers = [float(v) for _, v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not present:
                out[key] = None
            elif len(numbers) != len(present) or (len(set(numbers)) == 1 and not key.startswith(sum_p)):
                out[key] = present[0][1]
            elif key.startswith(max_p):
                out[key] = max(numbers)
            elif key.startswith(sum_p):
                out[key] = sum(v for _, v in present) if all(isinstance(v, int) for _, v in present) \
                    else math.fsum(numbers)
            else:
                out[key] = math.fsum(numbers) / len(numbers)
                if key.startswith(keep_p):
                    out.update({f"{key}/rank{r}": float(v) for r, v in present})
        return out

    def check_same_config(self, config: dict[str, Any], ignore: Iterable[str] = ()) -> None:
        """Every rank must run the same config: compare a hash at start-up (collective).

        Raises ValueError on every rank, naming the ranks that differ from rank 0 and the differing fields."""
        skip = set(ignore)
        mine = {k: v for k, v in config.items() if k not in skip}
        digest = hashlib.sha256(json.dumps(mine, sort_keys=True, default=str).encode()).hexdigest()
        digests = self.all_gather_object(digest)
        if len(set(digests)) == 1:
            return
        configs = self.all_gather_object(mine)               # only on mismatch: the full dicts, to name the fields
        lines = []
        for r, cfg in enumerate(configs):
            if digests[r] == digests[0]:
                continue
            fields = sorted(k for k in set(cfg) | set(configs[0])
                            if cfg.get(k, "<absent>") != configs[0].get(k, "<absent>"))
            detail = ", ".join(f"{k} (rank 0: {configs[0].get(k, '<absent>')!r}, rank {r}: {cfg.get(k, '<absent>')!r})"
                               for k in fields)
            lines.append(f"rank {r} differs from rank 0 in {detail}")
        raise ValueError("config differs across ranks: " + "; ".join(lines))

    def close(self) -> None:
        """Destroy the process group if this Dist created it (a group the caller made is the caller's, but the
        references torch's modules took to it while rapid imported them are dropped, so that the caller's own
        ``destroy_process_group()`` frees it: :func:`drop_group_defaults`). A gloo side group this Dist made is
        destroyed in either case: rapid's groups never outlive ``rapid.train``."""
        monitor, self.monitor_group = self.monitor_group, None
        if self.owns_monitor and monitor is not None and tdist.is_initialized():
            with contextlib.suppress(ValueError):       # the caller destroyed every group already
                tdist.destroy_process_group(monitor)
        self.owns_monitor = False
        if self.active:
            drop_group_defaults()
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
        self.backend, self.owns_group = None, False


def drop_group_defaults() -> int:
    """Replace the process groups that loaded ``torch.distributed`` modules hold as default arguments with None.

    ``torch.distributed.nn.functional`` declares ``group=group.WORLD`` in ten signatures, and ``rapid.trainer``
    imports it (through ``torch.distributed.checkpoint``): imported while a default group exists — a group the user
    made before calling ``rapid.train`` — the group object is stored in those ``__defaults__`` for the life of the
    process. ``destroy_process_group()`` then only unregisters it: the ProcessGroupGloo and its worker threads live
    into interpreter shutdown, where a worker that frees the last collective's tensors (their Python objects need
    the GIL) is ended by the finalizing interpreter inside a noexcept destructor — ``terminate called without an
    active exception``, SIGABRT at exit. None is what these functions pass on to mean the default group (resolved
    at call time), so calls keep their meaning. Returns how many defaults were replaced."""
    replaced = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("torch.distributed") or module is None:
            continue
        for obj in list(vars(module).values()):
            # type() only: some module attributes warn on any attribute access (torch.distributed.reduce_op)
            if not (type(obj) is types.FunctionType or issubclass(type(obj), type)) or obj.__module__ != name:
                continue                                    # defined elsewhere: seen under its own module
            for fn in [obj, *vars(obj).values()] if issubclass(type(obj), type) else [obj]:
                fn = fn.__func__ if type(fn) in (staticmethod, classmethod) else fn
                if type(fn) is not types.FunctionType:
                    continue
                if fn.__defaults__ and any(isinstance(d, tdist.ProcessGroup) for d in fn.__defaults__):
                    replaced += sum(isinstance(d, tdist.ProcessGroup) for d in fn.__defaults__)
                    fn.__defaults__ = tuple(None if isinstance(d, tdist.ProcessGroup) else d for d in fn.__defaults__)
                pinned = [k for k, d in (fn.__kwdefaults__ or {}).items() if isinstance(d, tdist.ProcessGroup)]
                for key in pinned:
                    fn.__kwdefaults__[key] = None
                replaced += len(pinned)
    return replaced


def _default_store():
    """The rendezvous store of the default group (private torch API, used only to name a failed rank)."""
    getter = getattr(tdist.distributed_c10d, "_get_default_store", None)
    try:
        return getter() if getter is not None else None
    except (RuntimeError, ValueError):
        return None


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(timeout_s: float = 1800.0) -> Dist:
    """Join the default process group, or create it from torchrun's environment, or return a world-size-1 Dist.

    - a default group already exists (the caller made it): join it; ``close()`` will leave it alone.
    - ``RANK`` and ``WORLD_SIZE`` are set (torchrun): nccl when CUDA is available (device ``cuda:LOCAL_RANK``),
      else gloo; ``MASTER_ADDR``/``MASTER_PORT`` come from the environment (torchrun sets them).
    - neither: ``Dist()``, world size 1, no group, every collective a no-op.
    On nccl a gloo side group (same timeout) carries barriers and object collectives, so monitoring never touches
    the GPU. Must be called on every rank (group creation is collective).
    """
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    timeout = datetime.timedelta(seconds=timeout_s)
    cuda = torch.cuda.is_available()
    owns = False
    if tdist.is_available() and tdist.is_initialized():
        backend = str(tdist.get_backend())
        local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device() if cuda else 0))
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
        local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
        if not 0 <= rank < world:
            raise ValueError(f"environment: RANK={rank} is not in [0, WORLD_SIZE={world})")
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"environment variable {var} is not set (launch with torchrun, which sets it)")
        backend = "nccl" if cuda else "gloo"
        device_id = None
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices")
            torch.cuda.set_device(local_rank)
            device_id = torch.device("cuda", local_rank)
        tdist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world, device_id=device_id)
        owns = True
    else:
        return Dist(timeout_s=float(timeout_s))
    device = torch.device("cuda", local_rank) if "nccl" in backend else torch.device("cpu")
    side = backend != "gloo"
    monitor = tdist.new_group(backend="gloo", timeout=timeout) if side else tdist.group.WORLD
    found = Dist(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=local_rank, device=device,
                 backend=backend, timeout_s=float(timeout_s), monitor_group=monitor, owns_group=owns,
                 owns_monitor=side)
    main_logger(__name__).info("distributed: world size %d, backend %s (+gloo monitor), timeout %g s",
                               found.world_size, backend, timeout_s)
    return found


def current_dist() -> Dist:
    """A Dist for the existing default group without creating anything (object collectives on that group)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist()
    backend = str(tdist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
    return Dist(rank=tdist.get_rank(), world_size=tdist.get_world_size(), device=device, backend=backend,
                monitor_group=tdist.group.WORLD)
