"""Weights from the trainer to an engine process over a two-member process group of their own (``transport=
"broadcast"`` of ``ProcessEngine``): NCCL when both ends are on CUDA (the engine on its own GPU, DESIGN.md section
6), gloo otherwise (CPU, where it runs in the tests; the CPU default stays shared memory).

The group is built directly from a ``TCPStore`` (``ProcessGroupGloo`` / ``ProcessGroupNCCL`` constructors), not with
``init_process_group``: the trainer may already be a torchrun rank with its own default group, and the engine
process is not a member of it. The trainer is rank 0 and hosts the store; the engine process is rank 1.

Weights travel as the layout ``ProcessEngine`` computes (HF names, element offsets in one flat address space, the
engine dtype), cut into buckets of at most ``BUCKET_BYTES`` (a weight larger than that is a bucket of its own). Both
sides derive the same buckets from the layout, so only tensor bytes cross the group. The sender packs each bucket on
its own device (casting to the engine dtype on the way) and broadcasts it; the receiver unpacks into its parameters.
Every wait polls ``is_completed`` and asks ``alive()`` in between, so a peer that died surfaces within a poll instead
of after the group's timeout.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterable, Iterator

import torch

BUCKET_BYTES = 256 * 2**20
_POLL_S = 0.005

Layout = list[tuple[str, int, tuple[int, ...]]]      # (HF name, element offset, shape)


def buckets(layout: Layout, itemsize: int, bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices into ``layout`` grouped into consecutive buckets of at most ``bucket_bytes`` (one weight at least)."""
    out: list[list[int]] = []
    size = 0
    for i, (_, _, shape) in enumerate(layout):
        nbytes = math.prod(shape) * itemsize
        if not out or size + nbytes > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append(i)
        size += nbytes
    return out


class WeightChannel:
    """One end of the trainer → engine weight group. ``rank`` 0 sends (and hosts the store), 1 receives.

    Args:
        host, port: the store's address; rank 0 passes port 0 and publishes ``self.port`` to the peer.
        rank: 0 (trainer) or 1 (engine process).
        device: where this end's buckets live: a CUDA device selects NCCL, anything else gloo.
        timeout_s: how long joining and each collective may take before the group gives up.
        bucket_bytes: the largest broadcast (both ends must agree).
    """

    def __init__(self, host: str, port: int, rank: int, device: torch.device | str, timeout_s: float,
                 bucket_bytes: int = BUCKET_BYTES) -> None:
        from torch import distributed as dist

        if rank not in (0, 1):
            raise ValueError(f"rank must be 0 (trainer) or 1 (engine), got {rank!r}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.rank, self.device, self.bucket_bytes = rank, device, bucket_bytes
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, 2, rank == 0, timeout=timeout, wait_for_workers=False)
        self.port = self.store.port
        self._timeout = timeout
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        self.group = None

    def join(self) -> None:
        """Build the group; both ends must call it (each blocks until the other has)."""
        from torch import distributed as dist

        store = dist.PrefixStore("rapid-weights", self.store)
        if self.backend == "nccl":
            torch.cuda.set_device(self.device)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = self._timeout
            self.group = dist.ProcessGroupNCCL(store, self.rank, 2, options)
        else:
            self.group = dist.ProcessGroupGloo(store, self.rank, 2, self._timeout)

    def send(self, weights: Iterable[tuple[str, torch.Tensor]], layout: Layout, dtype: torch.dtype,
             alive: Callable[[], None]) -> None:
        """Broadcast ``weights`` (yielded in ``layout`` order, any dtype/device) bucket by bucket.

        A weight that does not match the layout (another model's structure) raises ValueError only after every
        bucket was broadcast — the rest zero-filled — so the receiver, which waits for all of them, stays in step
        with the group; its weights are then a mix the caller must replace with a good send."""
        source = iter(weights)
        mismatch = None
        for bucket in buckets(layout, dtype.itemsize, self.bucket_bytes):
            flat = torch.zeros(sum(math.prod(layout[i][2]) for i in bucket), dtype=dtype, device=self.device)
            for view, i in zip(_views(flat, layout, bucket), bucket):
                if mismatch is not None:
                    break
                name, tensor = next(source, (None, None))
                if name != layout[i][0] or tuple(tensor.shape) != layout[i][2]:
                    got = "nothing" if name is None else f"weight {name!r} {tuple(tensor.shape)}"
                    mismatch = (f"{got} arrived where the engine's layout has {layout[i][0]!r} {layout[i][2]}: the "
                                "model's structure changed")
                    break
                view.copy_(tensor)
            self._broadcast(flat, alive)
        if mismatch is None and next(source, None) is not None:
            mismatch = "the model yielded more weights than the engine's layout holds: the model's structure changed"
        if mismatch is not None:
            raise ValueError(mismatch)

    def receive(self, layout: Layout, dtype: torch.dtype, alive: Callable[[], None]) -> Iterator[
            tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every weight the sender broadcasts (views of a bucket, valid until the
        next item's bucket arrives: copy them out before asking for more)."""
        for bucket in buckets(layout, dtype.itemsize, self.bucket_bytes):
            flat = torch.empty(sum(math.prod(layout[i][2]) for i in bucket), dtype=dtype, device=self.device)
            self._broadcast(flat, alive)
            for view, i in zip(_views(flat, layout, bucket), bucket):
                yield layout[i][0], view

    def _broadcast(self, flat: torch.Tensor, alive: Callable[[], None]) -> None:
        from torch import distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        work = self.group.broadcast([flat], options)
        deadline = time.monotonic() + self._timeout.total_seconds()
        while not work.is_completed():
            alive()                                  # raises when the peer is gone
            if time.monotonic() > deadline:
                raise TimeoutError(f"weight broadcast not done after {self._timeout.total_seconds():.0f} s")
            time.sleep(_POLL_S)
        work.wait()                                  # re-raises the collective's own error, if any
        if flat.is_cuda:
            torch.cuda.current_stream(flat.device).synchronize()

    def close(self) -> None:
        group, self.group = self.group, None
        if group is not None and hasattr(group, "shutdown"):
            try:
                group.shutdown()
            except RuntimeError:                      # an aborted or never-used group: nothing left to release
                pass


def _views(flat: torch.Tensor, layout: Layout, bucket: list[int]) -> Iterator[torch.Tensor]:
    offset = 0
    for i in bucket:
        shape = layout[i][2]
        numel = math.prod(shape)
        yield flat[offset:offset + numel].view(shape)
        offset += numel
