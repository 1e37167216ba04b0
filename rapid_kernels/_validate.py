"""Input validation shared by every backend (DESIGN.md section 2).

Every public op validates here, once, before dispatch: a bad argument raises ``ValueError`` naming it, never a
silent wrong answer or a crash inside a kernel. Checks that need the data (target range, monotone ``cu_seqlens``,
finite rewards) read a handful of scalars back from the device; that costs one small sync per call.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

Baseline = Literal["loo", "mean"]
ISLevel = Literal["sequence", "token", "geometric"]
ISClip = Literal["truncate", "mask", "none"]
AdvScale = Literal["none", "std"]
Backend = Literal["auto", "triton", "cuda", "cpp", "torch"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _choice(name: str, value: object, allowed: type) -> None:
    options = get_args(allowed)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def _tensor(name: str, x: object, ndim: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    return x


def _same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def check_backend(backend: object) -> None:
    _choice("backend", backend, Backend)


def check_targets(targets: object, n: int, vocab: int, ref_name: str) -> None:
    t = _tensor("targets", targets, 1, INDEX_DTYPES)
    if t.shape[0] != n:
        raise ValueError(f"targets has {t.shape[0]} entries but {ref_name} has {n} rows")
    if n and vocab == 0:
        raise ValueError(f"{ref_name} has a vocabulary of size 0")
    if n:
        lo, hi = torch.aminmax(t)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= vocab:
            raise ValueError(f"targets must lie in [0, {vocab}), got values in [{lo}, {hi}]")


def check_token_logprobs(logits: object, targets: object, temperature: float) -> None:
    x = _tensor("logits", logits, 2, FLOAT_DTYPES)
    _positive_finite("temperature", temperature)
    _tensor("targets", targets, 1, INDEX_DTYPES)
    _same_device("logits", x, targets=targets)  # before check_targets reads the data
    check_targets(targets, x.shape[0], x.shape[1], "logits")


def check_linear_token_logprobs(hidden: object, weight: object, targets: object, temperature: float,
                                bias: object) -> None:
    h = _tensor("hidden", hidden, 2, FLOAT_DTYPES)
    w = _tensor("weight", weight, 2, FLOAT_DTYPES)
    if w.shape[1] != h.shape[1]:
        raise ValueError(f"weight must be [V, D] with D = hidden.shape[1] = {h.shape[1]}, got {tuple(w.shape)}")
    if w.dtype != h.dtype:
        raise ValueError(f"weight dtype {w.dtype} differs from hidden dtype {h.dtype}")
    if bias is not None:
        b = _tensor("bias", bias, 1, FLOAT_DTYPES)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"bias must have V = {w.shape[0]} entries, got {b.shape[0]}")
    _positive_finite("temperature", temperature)
    _tensor("targets", targets, 1, INDEX_DTYPES)
    _same_device("hidden", h, weight=w, targets=targets, bias=bias)  # before check_targets reads the data
    check_targets(targets, h.shape[0], w.shape[0], "hidden")


def check_rapid_loss(token_logprobs: object, behavior_logprobs: object, rewards: object, cu_seqlens: object,
                     group_size: int, eta: float, baseline: str, loss_norm: float, is_level: str, is_clip: str,
                     adv_scale: str) -> None:
    lp = _tensor("token_logprobs", token_logprobs, 1, (torch.float32, torch.float64))
    check_sequence_args(lp, "token_logprobs", behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                        loss_norm, is_level, is_clip, adv_scale)


def check_fused_rapid_loss(hidden: object, weight: object, targets: object, behavior_logprobs: object,
                           rewards: object, cu_seqlens: object, group_size: int, eta: float, baseline: str,
                           loss_norm: float, is_level: str, is_clip: str, adv_scale: str, temperature: float,
                           bias: object) -> None:
    check_linear_token_logprobs(hidden, weight, targets, temperature, bias)
    check_sequence_args(hidden, "hidden", behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                        loss_norm, is_level, is_clip, adv_scale)


def check_sequence_args(ref: torch.Tensor, ref_name: str, behavior_logprobs: object, rewards: object,
                        cu_seqlens: object, group_size: int, eta: float, baseline: str, loss_norm: float,
                        is_level: str, is_clip: str, adv_scale: str) -> None:
    """Checks of the per-token behaviour log-probs and the per-sequence arguments against N = ref.shape[0]."""
    blp = _tensor("behavior_logprobs", behavior_logprobs, 1, (torch.float32, torch.float64))
    r = _tensor("rewards", rewards, 1, FLOAT_DTYPES)
    cu = _tensor("cu_seqlens", cu_seqlens, 1, INDEX_DTYPES)
    _same_device(ref_name, ref, behavior_logprobs=blp, rewards=r, cu_seqlens=cu)
    n = ref.shape[0]
    if blp.shape[0] != n:
        raise ValueError(f"behavior_logprobs has {blp.shape[0]} entries but {ref_name} has {n}")
    num_seqs = r.shape[0]
    if cu.shape[0] != num_seqs + 1:
        raise ValueError(f"cu_seqlens must have S + 1 = {num_seqs + 1} entries (S = len(rewards)), got {cu.shape[0]}")
    if num_seqs == 0:
        raise ValueError("rewards is empty: the batch must hold at least one group")
    _choice("baseline", baseline, Baseline)
    _choice("is_level", is_level, ISLevel)
    _choice("is_clip", is_clip, ISClip)
    _choice("adv_scale", adv_scale, AdvScale)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if baseline == "loo" and group_size < 2:
        raise ValueError(f"group_size must be >= 2 with baseline='loo' (leave-one-out), got {group_size}")
    if num_seqs % group_size != 0:
        raise ValueError(f"the number of sequences S = {num_seqs} is not divisible by group_size = {group_size}")
    _positive_finite("eta", eta)
    _positive_finite("loss_norm", loss_norm)
    first, last = int(cu[0]), int(cu[-1])
    if first != 0 or last != n:
        raise ValueError(f"cu_seqlens must start at 0 and end at N = {n}, got {first} ... {last}")
    if num_seqs > 1 and bool((cu[1:] < cu[:-1]).any()):
        raise ValueError("cu_seqlens must be non-decreasing")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite (got NaN or inf); map failed rewards to a number first")
    if n and not bool(torch.isfinite(blp).all()):
        raise ValueError("behavior_logprobs must be finite (got NaN or inf)")
