"""Backend registry and selection.

A backend is a module exposing::

    def available() -> str | None     # None when usable, else the reason it is not (cheap; never touches a GPU)
    DEVICE_TYPES: tuple[str, ...]      # device types its kernels run on ("cuda", "cpu")
    token_logprobs(logits, targets, temperature) -> Tensor
    linear_token_logprobs(hidden, weight, targets, temperature, bias) -> Tensor
    rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
               is_level, is_clip, adv_scale) -> RapidLossOutput
    fused_rapid_loss(...)              # optional: else linear_token_logprobs + rapid_loss of the same backend
    TOKEN_LEVEL: bool                  # optional: False -> is_level="token" falls back to the reference

Inputs reach a backend already validated. float64 inputs always go to the reference.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType
from typing import Callable

import torch

from . import reference

log = logging.getLogger(__name__)

# Order matters for "auto": first available backend for the device wins.
_MODULES = {"triton": "rapid_kernels.triton_backend", "cuda": "rapid_kernels.cuda_backend",
            "cpp": "rapid_kernels.cpp_backend"}
_AUTO_ORDER = {"cuda": ("triton", "cuda"), "cpu": ("cpp",)}


class _Reference:
    """The eager reference, seen as a backend."""

    DEVICE_TYPES = ("cpu", "cuda")
    TOKEN_LEVEL = True

    @staticmethod
    def available() -> str | None:
        return None

    token_logprobs = staticmethod(reference.token_logprobs)
    rapid_loss = staticmethod(reference.rapid_loss)
    fused_rapid_loss = staticmethod(reference.fused_rapid_loss)

    @staticmethod
    def linear_token_logprobs(hidden, weight, targets, temperature, bias):
        return reference.linear_token_logprobs(hidden, weight, targets, temperature, bias)


@functools.cache
def _load(name: str) -> tuple[ModuleType | type | None, str | None]:
    """Import a backend module; return (module, None) or (None, reason)."""
    if name == "torch":
        return _Reference, None
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as exc:  # the module itself, or what it needs (triton, the compiled extension)
        return None, f"import failed: {exc}"
    reason = module.available()
    return (module, None) if reason is None else (None, reason)


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends usable here (for ``device`` when given), fastest first, "torch" last."""
    device_type = None if device is None else torch.device(device).type
    names = []
    for name in (*_MODULES, "torch"):
        module, _ = _load(name)
        if module is not None and (device_type is None or device_type in module.DEVICE_TYPES):
            names.append(name)
    return names


def _pick_auto(device_type: str) -> ModuleType | type:
    if os.environ.get("RAPID_KERNEL_BACKEND"):  # global override, handy in benchmarks
        return _explicit(os.environ["RAPID_KERNEL_BACKEND"], device_type)
    for name in _AUTO_ORDER.get(device_type, ()):
        module, _ = _load(name)
        if module is not None and device_type in module.DEVICE_TYPES:
            return module
    return _Reference


def _explicit(name: str, device_type: str) -> ModuleType | type:
    if name not in _MODULES and name != "torch":
        raise ValueError(f"backend must be one of {('auto', *_MODULES, 'torch')}, got {name!r}")
    module, reason = _load(name)
    if module is None:
        raise ValueError(f"backend={name!r} is not available here: {reason}")
    if device_type not in module.DEVICE_TYPES:
        raise ValueError(f"backend={name!r} does not run on {device_type} tensors "
                         f"(it runs on {', '.join(module.DEVICE_TYPES)})")
    return module


def resolve_backend(backend: str, op: str, example: torch.Tensor, is_level: str = "sequence") -> Callable:
    """The implementation of ``op`` for ``backend`` and the device / dtype of ``example``."""
    device_type = example.device.type
    module = _pick_auto(device_type) if backend == "auto" else _explicit(backend, device_type)
    if example.dtype == torch.float64 or (is_level == "token" and not getattr(module, "TOKEN_LEVEL", False)):
        module = _Reference  # float64 checks and token-level IS are reference-only
    impl = getattr(module, op, None)
    if impl is None and op == "fused_rapid_loss":
        impl = functools.partial(_compose_fused, module)
    if impl is None:
        return getattr(_Reference, op)
    return impl


def _compose_fused(module, hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size, eta,
                   baseline, loss_norm, is_level, is_clip, adv_scale, temperature, bias):
    lp = module.linear_token_logprobs(hidden, weight, targets, temperature, bias)
    return module.rapid_loss(lp, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
                             is_level, is_clip, adv_scale)
