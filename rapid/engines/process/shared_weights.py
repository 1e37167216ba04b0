"""The shared-memory weight transport (``transport="shm"``): one buffer both processes map, laid out as the
trainer's HF-named weights in the engine dtype; the parent copies the weights in once per rollout and the child's
parameters are views of it (the other transport, a broadcast group, is ``weight_channel``)."""

from __future__ import annotations

import math
import os
import tempfile

import torch

from ..base import EngineError
from ..weights import hf_weights

_ALIGN_BYTES = 64        # each weight starts on a cache line in the shared buffer


class SharedBuffer:
    """The parent's side of the shared weights: ``numel`` elements of ``dtype`` in memory both processes map (the
    child opens ``path`` with ``torch.from_file(..., shared=True)``): a memfd (Linux; passed to the child as an
    inherited fd, never visible in /dev/shm, so nothing can leak) or a temporary file in /dev/shm (elsewhere),
    unlinked once the child has mapped it."""

    def __init__(self, numel: int, dtype: torch.dtype) -> None:
        nbytes = numel * dtype.itemsize
        self.fds: tuple[int, ...] = ()
        self._file: str | None = None
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("rapid-engine-weights")
            os.ftruncate(fd, nbytes)
            self.fds, self.path = (fd,), f"/proc/self/fd/{fd}"    # the child inherits fd under the same number
        else:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            handle, self._file = tempfile.mkstemp(prefix="rapid-engine-weights-", dir=shm)
            os.ftruncate(handle, nbytes)
            os.close(handle)
            self.path = self._file
        self.tensor = torch.from_file(self.path, shared=True, size=numel, dtype=dtype)   # (numel,)

    def attached(self) -> None:
        """The child has mapped the buffer: its name is no longer needed."""
        if self._file is not None:
            os.unlink(self._file)
            self._file = None

    def close(self) -> None:
        self.attached()
        for fd in self.fds:
            os.close(fd)
        self.fds = ()


def weight_layout(model: torch.nn.Module, dtype: torch.dtype) -> tuple[list[tuple[str, int, tuple[int, ...]]], int]:
    """(name, element offset, shape) of each HF-named weight in the shared buffer, and the buffer's length."""
    align = max(1, _ALIGN_BYTES // dtype.itemsize)
    layout, offset = [], 0
    for name, tensor in hf_weights(model):
        shape = tuple(tensor.shape)                      # a DTensor reports its global shape
        layout.append((name, offset, shape))
        offset += -(-math.prod(shape) // align) * align
    if not layout:
        raise ValueError("model has no weights to share with the engine")
    return layout, offset


def views(flat: torch.Tensor, layout: list[tuple[str, int, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Each weight's view of the flat (numel,) buffer, by name."""
    return {name: flat[off:off + math.prod(shape)].view(shape) for name, off, shape in layout}


def copy_weights(model: torch.nn.Module, views: dict[str, torch.Tensor]) -> None:
    """Copy ``model``'s HF-named weights into their views (cast to the engine dtype, moved to host memory)."""
    seen = 0
    with torch.no_grad():
        for name, tensor in hf_weights(model):      # FSDP2 shards arrive gathered, one at a time
            view = views.get(name)
            if view is None:
                raise EngineError(f"weight {name!r} is not in the engine's layout: the model's structure "
                                  "changed since the engine started")
            if tuple(tensor.shape) != tuple(view.shape):
                raise EngineError(f"weight {name!r} has shape {tuple(tensor.shape)}, the engine's is "
                                  f"{tuple(view.shape)}")
            view.copy_(tensor)                       # casts to the engine dtype and moves to host memory
            seen += 1
    if seen != len(views):
        raise EngineError(f"the model yielded {seen} weights, the engine holds {len(views)}")
