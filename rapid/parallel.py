"""The one place that wraps the loss module for data parallelism (DDP or FSDP2), and the two helpers its users need.

:func:`parallelize` is applied once, by ``Policy``; :func:`no_sync` skips the gradient all-reduce on all but the last
micro-batch; :func:`full_tensor` gathers an FSDP2 shard. The process group itself is ``rapid.distributed``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Literal

import torch
import torch.distributed as tdist

from .distributed import Dist, current_dist

logger = logging.getLogger(__name__)

Parallel = Literal["ddp", "fsdp"]


def _fsdp2():
    """(fully_shard, MixedPrecisionPolicy), or None on a torch build without FSDP2."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        return None
    return fully_shard, MixedPrecisionPolicy


def check_parallel(parallel: str) -> None:
    """Validate ``parallel`` before any expensive work (ValueError naming it)."""
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    if parallel == "fsdp" and _fsdp2() is None:
        raise ValueError(f"parallel='fsdp' needs FSDP2 (torch.distributed.fsdp.fully_shard), which this torch "
                         f"build ({torch.__version__}) lacks; use parallel='ddp'")


def block_class_names(module: torch.nn.Module) -> set[str]:
    """Transformer block classes, as HF models name them in ``_no_split_modules`` (one FSDP2 unit each)."""
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or ())
    return names


def parallelize(module: torch.nn.Module, parallel: Parallel, compute_dtype: torch.dtype, device: torch.device,
                dist: Dist | None = None) -> torch.nn.Module:
    """Wrap the loss module for data parallelism; its ``forward`` must compute the loss so the hooks run.

    - ``"ddp"``: ``DistributedDataParallel(broadcast_buffers=False)``; gradients are *averaged* over ranks, so a
      rank's loss must be its share of the global loss times world size (e.g. Σ_local / S_global · world_size, with
      S_global all-reduced). DDP does not cast: the caller's autocast sets the compute dtype.
    - ``"fsdp"``: FSDP2 ``fully_shard`` on every transformer block, then the root, with
      ``MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=float32)``: the sharded parameters and the
      optimizer state stay fp32 (the master copy); gradients are averaged like DDP's. Rank 0's weights are
      broadcast first (DDP does the same), so randomly initialised adapters agree across ranks.
    Works on CPU with gloo (tested) and on CUDA with nccl. Without a process group (world size 1) the module is
    returned unwrapped on ``device``. Collective: every rank calls it with the same module structure.
    """
    check_parallel(parallel)
    dist = dist if dist is not None else current_dist()
    low = [(n, p.dtype) for n, p in module.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low:
        raise ValueError(f"module: trainable parameters must be the fp32 master weights, but {low[0][0]} is "
                         f"{low[0][1]} (compute_dtype={compute_dtype} is applied by the wrapper, not stored)")
    if not dist.active:
        return module.to(device)
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        module.to(device)
        # no buffer broadcast before each forward (rapid's buffers are constants); torch >= 2.13 renames the switch
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       **no_buffer_sync)
    from torch.distributed.device_mesh import DeviceMesh

    fully_shard, mixed_precision = _fsdp2()
    with torch.no_grad():
        for p in module.parameters():                       # one tensor at a time: never a second full model
            buf = p.data.to(dist.device)
            tdist.broadcast(buf, src=0)
            p.data.copy_(buf)
    mesh = DeviceMesh.from_group(tdist.group.WORLD, device.type)
    policy = mixed_precision(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    blocks = block_class_names(module)
    if not blocks:
        logger.warning("parallel='fsdp': no module names its transformer blocks (_no_split_modules); sharding the "
                       "whole model as one unit (no per-block memory saving)")
    for sub in list(module.modules()):
        if sub is not module and type(sub).__name__ in blocks:
            fully_shard(sub, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


@contextlib.contextmanager
def no_sync(module: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Skip the gradient all-reduce for this backward (gradient accumulation over micro-batches).

    Use on every micro-batch but the last: ``with no_sync(wrapped, enabled=i < n - 1): loss.backward()``.
    DDP: ``module.no_sync()``; FSDP2: ``set_requires_gradient_sync(False)`` (restored after); else a no-op."""
    from torch.nn.parallel import DistributedDataParallel

    setter = getattr(module, "set_requires_gradient_sync", None)
    if not enabled or (setter is None and not isinstance(module, DistributedDataParallel)):
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        setter(False)
        try:
            yield
        finally:
            setter(True)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``full_tensor()`` of an FSDP2 shard (a collective), the tensor itself otherwise."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
