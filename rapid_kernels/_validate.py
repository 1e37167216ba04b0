"""Input validation shared by every backend (DESIGN.md section 2).

Every public op validates here, once, before dispatch: a bad argument raises ``ValueError`` naming it, never a
silent wrong answer or a crash inside a kernel. Shape, dtype, device and option checks read only metadata. Checks
that need the data (target range, ``cu_seqlens`` bounds and order, finite rewards and behaviour log-probs, NaN-free
thresholds) are gathered as small device tensors by a ``DataChecks`` and read back together: **one host sync per
call** (on CUDA each sync is a pipeline bubble, and the old per-check ``.item()`` cost seven per fused call).

Under ``torch.compile`` the data checks become ``torch._assert_async`` (no sync, no graph break; a failure raises
``RuntimeError`` carrying the same message instead of ``ValueError``).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, get_args

import torch

Baseline = Literal["loo", "mean"]
ISLevel = Literal["sequence", "token", "geometric"]
ISClip = Literal["truncate", "mask", "none"]
AdvScale = Literal["none", "std"]
Backend = Literal["auto", "triton", "cuda", "cpp", "torch"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


class DataChecks:
    """Data-dependent checks, evaluated together with one device-to-host copy.

    Each check is a 0-d bool tensor ``bad`` plus optional int64 ``detail`` values for the message; ``run`` copies
    every flag and detail in one ``tolist()`` and raises ``ValueError`` for the first failing check, in the order
    they were added (so the error is the same one the old sequential checks raised).
    """

    def __init__(self) -> None:
        self._items: list[tuple[torch.Tensor, torch.Tensor | None, Callable[[list[int]], str]]] = []

    def add(self, bad: torch.Tensor, message: Callable[[list[int]], str], detail: torch.Tensor | None = None) -> None:
        self._items.append((bad, detail, message))

    def run(self) -> None:
        if not self._items:
            return
        if torch.compiler.is_compiling():
            for bad, detail, message in self._items:   # details unknown without a sync: "?" in the message
                torch._assert_async(~bad, message(["?"] * (0 if detail is None else detail.numel())))
            return
        parts = []
        for bad, detail, _ in self._items:
            parts.append(bad.reshape(1).to(torch.int64))
            if detail is not None:
                parts.append(detail.reshape(-1).to(torch.int64))
        values = torch.cat(parts).tolist()                       # the one host sync of the call
        i = 0
        for bad, detail, message in self._items:
            k = 0 if detail is None else detail.numel()
            if values[i]:
                raise ValueError(message(values[i + 1:i + 1 + k]))
            i += 1 + k


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


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")


def check_softcap(softcap: object) -> float | None:
    """None (no soft-cap) or a finite number > 0; returned as a float."""
    if softcap is None:
        return None
    _positive_finite("softcap", softcap)  # type: ignore[arg-type]
    return float(softcap)  # type: ignore[arg-type]


def check_threshold(threshold: object, ref: torch.Tensor, ref_name: str, checks: DataChecks) -> None:
    """threshold: None, or float32 [N] on ref's device, no NaN (−inf = no truncation for that row)."""
    if threshold is None:
        return
    t = _tensor("threshold", threshold, 1, (torch.float32,))
    if t.shape[0] != ref.shape[0]:
        raise ValueError(f"threshold has {t.shape[0]} entries but {ref_name} has {ref.shape[0]} rows")
    _same_device(ref_name, ref, threshold=t)
    if t.numel():
        checks.add(torch.isnan(t).any(), lambda _: "threshold must not contain NaN (use -inf for no truncation)")


def check_targets(targets: object, n: int, vocab: int, ref_name: str, checks: DataChecks) -> None:
    t = _tensor("targets", targets, 1, INDEX_DTYPES)
    if t.shape[0] != n:
        raise ValueError(f"targets has {t.shape[0]} entries but {ref_name} has {n} rows")
    if n and vocab == 0:
        raise ValueError(f"{ref_name} has a vocabulary of size 0")
    if n:
        lo, hi = torch.aminmax(t)
        checks.add((lo < 0) | (hi >= vocab),
                   lambda v: f"targets must lie in [0, {vocab}), got values in [{v[0]}, {v[1]}]",
                   torch.stack([lo, hi]))


def check_token_logprobs(logits: object, targets: object, temperature: float, softcap: object = None,
                         threshold: object = None, return_entropy: object = False) -> float | None:
    """Validate token_logprobs' arguments; returns the soft-cap as float | None."""
    x = _tensor("logits", logits, 2, FLOAT_DTYPES)
    _positive_finite("temperature", temperature)
    cap = check_softcap(softcap)
    check_flag("return_entropy", return_entropy)
    _tensor("targets", targets, 1, INDEX_DTYPES)
    _same_device("logits", x, targets=targets)  # before the data checks read it
    checks = DataChecks()
    check_targets(targets, x.shape[0], x.shape[1], "logits", checks)
    check_threshold(threshold, x, "logits", checks)
    checks.run()
    return cap


def _check_linear_meta(hidden: object, weight: object, targets: object, temperature: float, bias: object,
                       softcap: object, return_entropy: object) -> tuple[torch.Tensor, torch.Tensor, float | None]:
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
    cap = check_softcap(softcap)
    check_flag("return_entropy", return_entropy)
    _tensor("targets", targets, 1, INDEX_DTYPES)
    _same_device("hidden", h, weight=w, targets=targets, bias=bias)  # before the data checks read it
    return h, w, cap


def check_linear_token_logprobs(hidden: object, weight: object, targets: object, temperature: float,
                                bias: object, softcap: object = None, threshold: object = None,
                                return_entropy: object = False) -> float | None:
    """Validate linear_token_logprobs' arguments; returns the soft-cap as float | None."""
    h, w, cap = _check_linear_meta(hidden, weight, targets, temperature, bias, softcap, return_entropy)
    checks = DataChecks()
    check_targets(targets, h.shape[0], w.shape[0], "hidden", checks)
    check_threshold(threshold, h, "hidden", checks)
    checks.run()
    return cap


def check_rapid_loss(token_logprobs: object, behavior_logprobs: object, rewards: object, cu_seqlens: object,
                     group_size: int, eta: float, baseline: str, loss_norm: float, is_level: str, is_clip: str,
                     adv_scale: str) -> None:
    lp = _tensor("token_logprobs", token_logprobs, 1, (torch.float32, torch.float64))
    checks = DataChecks()
    check_sequence_args(lp, "token_logprobs", behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                        loss_norm, is_level, is_clip, adv_scale, checks)
    checks.run()


def check_fused_rapid_loss(hidden: object, weight: object, targets: object, behavior_logprobs: object,
                           rewards: object, cu_seqlens: object, group_size: int, eta: float, baseline: str,
                           loss_norm: float, is_level: str, is_clip: str, adv_scale: str, temperature: float,
                           bias: object, softcap: object = None, threshold: object = None,
                           return_entropy: object = False) -> float | None:
    """Validate fused_rapid_loss' arguments (all data checks in one sync); returns the soft-cap."""
    h, w, cap = _check_linear_meta(hidden, weight, targets, temperature, bias, softcap, return_entropy)
    checks = DataChecks()
    check_sequence_args(h, "hidden", behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
                        is_level, is_clip, adv_scale, checks, meta_only=True)
    check_targets(targets, h.shape[0], w.shape[0], "hidden", checks)
    check_threshold(threshold, h, "hidden", checks)
    check_sequence_data(h.shape[0], behavior_logprobs, rewards, cu_seqlens, checks)  # type: ignore[arg-type]
    checks.run()
    return cap


def check_sequence_args(ref: torch.Tensor, ref_name: str, behavior_logprobs: object, rewards: object,
                        cu_seqlens: object, group_size: int, eta: float, baseline: str, loss_norm: float,
                        is_level: str, is_clip: str, adv_scale: str, checks: DataChecks,
                        meta_only: bool = False) -> None:
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
    if not meta_only:
        check_sequence_data(n, blp, r, cu, checks)


def check_sequence_data(n: int, behavior_logprobs: torch.Tensor, rewards: torch.Tensor, cu_seqlens: torch.Tensor,
                        checks: DataChecks) -> None:
    """The data checks of the sequence arguments (shapes already validated)."""
    cu = cu_seqlens
    first, last = cu[0], cu[-1]
    checks.add((first != 0) | (last != n),
               lambda v: f"cu_seqlens must start at 0 and end at N = {n}, got {v[0]} ... {v[1]}",
               torch.stack([first, last]).to(torch.int64))
    if cu.shape[0] > 2:
        checks.add((cu[1:] < cu[:-1]).any(), lambda _: "cu_seqlens must be non-decreasing")
    checks.add(~torch.isfinite(rewards).all(),
               lambda _: "rewards must be finite (got NaN or inf); map failed rewards to a number first")
    if n:
        checks.add(~torch.isfinite(behavior_logprobs).all(),
                   lambda _: "behavior_logprobs must be finite (got NaN or inf)")
