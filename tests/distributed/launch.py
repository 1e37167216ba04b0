"""Run a function on N local ranks (spawned processes, gloo, 1 thread each) the way torchrun would.

Each child gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so the code under test
goes through ``init_distributed``'s torchrun path. Results come back through files (tensors included); a child
that raises returns its exception type, message and traceback. ``wait_for`` lists the ranks whose end the test
waits for: the others (a deliberately hung rank) are killed then. Nothing outlives ``timeout``.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class RankResult:
    rank: int
    value: Any = None
    error: str | None = None          # "TypeName: message" when the function raised
    trace: str | None = None
    exitcode: int | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise AssertionError(f"rank {self.rank} raised {self.error}\n{self.trace}")
        return self.value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable, rank: int, world_size: int, port: int, out: str, start, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    start.wait(60)          # imports done on every rank: short rendezvous timeouts in the tests stay safe
    try:
        result = {"value": fn(*args)}
    except BaseException as err:  # noqa: BLE001 — reported to the parent, which asserts on it
        result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except RuntimeError:
                pass
    torch.save(result, f"{out}.tmp")
    os.replace(f"{out}.tmp", out)


def run_ranks(fn: Callable, world_size: int, tmp_path: Path, *args: Any, timeout: float = 60.0,
              wait_for: list[int] | None = None) -> list[RankResult]:
    """``fn(*args)`` on ``world_size`` ranks; one RankResult per rank, in rank order."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    outs = [str(tmp_path / f"rank-{r}.result") for r in range(world_size)]
    start = ctx.Barrier(world_size)
    procs = [ctx.Process(target=_child, args=(fn, r, world_size, port, outs[r], start, args), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    waited = range(world_size) if wait_for is None else wait_for
    for r in waited:
        procs[r].join(max(0.0, deadline - time.monotonic()))
    results = []
    for r, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            p.join(5)
        if os.path.exists(outs[r]):
            data = torch.load(outs[r], weights_only=False)
            results.append(RankResult(r, data.get("value"), data.get("error"), data.get("trace"), p.exitcode))
        else:
            results.append(RankResult(r, error=f"no result (exit code {p.exitcode})", exitcode=p.exitcode))
    late = [r for r in waited if results[r].exitcode is None or results[r].exitcode < 0]
    if late:
        raise AssertionError(f"ranks {late} did not finish within {timeout} s: a collective hung")
    return results
