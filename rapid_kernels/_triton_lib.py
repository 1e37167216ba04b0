"""What every Triton op module shares: interpreter detection, op registration, the processing math.

Ops are registered with ``torch.library.triton_op`` (each kernel launched through ``wrap_triton``), so
``torch.compile`` traces into them and Inductor sees the kernels. Under the CPU interpreter (``TRITON_INTERPRET=1``)
``wrap_triton`` rejects the interpreted kernels (it accepts only ``JITFunction`` / ``Autotuner``), so there the same
op (same name and schema) is a plain ``torch.library.custom_op`` with an explicit fake function: opaque to
``torch.compile``, but traceable and ``opcheck``-able on a CPU machine.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Kernels may read globals only when they are tl.constexpr (the interpreter is laxer: the sm_90 tier catches it).
LOG2E = tl.constexpr(1.4426950408889634)


def launch(kernel):
    """The kernel as launched inside an op body: through ``wrap_triton`` on GPU, as is under the interpreter."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def register_op(name: str, fn: Callable, fake: Callable):
    """``triton_op`` on GPU; ``custom_op`` + ``fake`` under the interpreter (see module docstring)."""
    if INTERPRET:
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return torch.library.triton_op(name, fn, mutates_args=())


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (132 on an H100 SXM); 1 under the interpreter."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def autotune(configs: list, key: list[str]):
    """``triton.autotune`` on GPU; identity under the interpreter (it cannot autotune: a fixed config is passed)."""
    if INTERPRET:
        return lambda kernel: kernel
    return triton.autotune(configs, key=key)


@triton.jit
def process(raw, inv_t, softcap, HAS_SOFTCAP: tl.constexpr):
    """Processed logit z = softcap · tanh(raw / softcap) / T (HAS_SOFTCAP), else raw / T; fp32 in, fp32 out.

    tanh(y) = 1 − 2 / (exp(2y) + 1), with exp2: saturates cleanly to ±1 and needs no libdevice (the interpreter
    and every Triton version have exp2)."""
    if HAS_SOFTCAP:
        e = tl.exp2(tl.minimum(raw * (2.0 * 1.4426950408889634 / softcap), 64.0))   # tanh(≥ 22) = 1 in fp32
        raw = softcap * (1.0 - 2.0 / (e + 1.0))
    return raw * inv_t


@triton.jit
def slope(z, inv_t, softcap, HAS_SOFTCAP: tl.constexpr):
    """d z / d raw from z itself: (1 − tanh²) / T with tanh = z · T / softcap (HAS_SOFTCAP), else 1 / T."""
    out = inv_t
    if HAS_SOFTCAP:   # (one return statement: Triton wants a single return type even across a constexpr branch)
        th = z / (softcap * inv_t)
        out = inv_t * (1.0 - th * th)
    return out
