"""Backend registry and selection.

A backend is a module exposing::

    def available() -> str | None     # None when usable, else the reason it is not (cheap; never touches a GPU)
    DEVICE_TYPES: tuple[str, ...]      # device types its kernels run on ("cuda", "cpu")
    token_logprobs(logits, targets, temperature, softcap, threshold, want_entropy) -> (lp, entropy | None)
    linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy)
        -> (lp, entropy | None)
    rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
               is_level, is_clip, adv_scale) -> RapidLossOutput
    fused_rapid_loss(...)              # optional: else linear_token_logprobs + rapid_loss of the same backend
    TOKEN_LEVEL: bool                  # optional: False -> is_level="token" falls back to the reference

Inputs reach a backend already validated (``softcap`` is a float or None). float64 inputs always go to the
reference.

How ``backend="auto"`` chooses (per device and op, decided once per process and cached):
1. ``RAPID_KERNEL_BACKEND`` in the environment, when set, wins (handy in benchmarks).
2. A recorded measurement: ``benchmarks/kernels/record_dispatch.py`` times every available backend on the device
   and writes ``{device key: {op: {"backend": fastest, "timings_ms": {...}, ...}}}``. Records are read from the
   file named by ``RAPID_DISPATCH_TABLE`` (else ``~/.cache/rapid/dispatch_table.json``) and from the table shipped
   in the package (``dispatch_table.json``); the user's file wins. The device key is ``cuda:<device name>`` or
   ``cpu:<CPU model name>``. A recorded backend that is unavailable here is ignored.
3. Without a usable record, a fixed order: CUDA: Triton, then the CUDA extension; CPU: the C++ extension; else the
   eager reference.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from . import reference

log = logging.getLogger(__name__)

_MODULES = {"triton": "rapid_kernels.triton_backend", "cuda": "rapid_kernels.cuda_backend",
            "cpp": "rapid_kernels.cpp_backend"}
_FALLBACK_ORDER = {"cuda": ("triton", "cuda"), "cpu": ("cpp",)}
SHIPPED_TABLE = Path(__file__).with_name("dispatch_table.json")


def user_table_path() -> Path:
    return Path(os.environ.get("RAPID_DISPATCH_TABLE") or Path.home() / ".cache" / "rapid" / "dispatch_table.json")


class _Reference:
    """The eager reference, seen as a backend."""

    DEVICE_TYPES = ("cpu", "cuda")
    TOKEN_LEVEL = True

    @staticmethod
    def available() -> str | None:
        return None

    @staticmethod
    def token_logprobs(logits, targets, temperature, softcap, threshold, want_entropy):
        out = reference.token_logprobs(logits, targets, temperature, softcap=softcap, threshold=threshold,
                                       return_entropy=want_entropy)
        return out if want_entropy else (out, None)

    @staticmethod
    def linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy):
        out = reference.linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap=softcap,
                                              threshold=threshold, return_entropy=want_entropy)
        return out if want_entropy else (out, None)

    rapid_loss = staticmethod(reference.rapid_loss)

    @staticmethod
    def fused_rapid_loss(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                         loss_norm, is_level, is_clip, adv_scale, temperature, bias, softcap, threshold,
                         want_entropy):
        return reference.fused_rapid_loss(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens,
                                          group_size, eta, baseline, loss_norm, is_level, is_clip, adv_scale,
                                          temperature, bias, softcap=softcap, threshold=threshold,
                                          return_entropy=want_entropy)


_LOADED: dict[str, tuple[ModuleType | type | None, str | None]] = {}


def _load(name: str) -> tuple[ModuleType | type | None, str | None]:
    """Import a backend module once; return (module, None) or (None, reason)."""
    if name not in _LOADED:
        if name == "torch":
            _LOADED[name] = (_Reference, None)
        else:
            try:
                module = importlib.import_module(_MODULES[name])
            except ImportError as exc:  # the module itself, or what it needs (triton, the compiled extension)
                _LOADED[name] = (None, f"import failed: {exc}")
            else:
                reason = module.available()
                _LOADED[name] = (module, None) if reason is None else (None, reason)
    return _LOADED[name]


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends usable here (for ``device`` when given), fallback order, "torch" last."""
    device_type = None if device is None else torch.device(device).type
    names = []
    for name in (*_MODULES, "torch"):
        module, _ = _load(name)
        if module is not None and (device_type is None or device_type in module.DEVICE_TYPES):
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------- recorded measurements
@functools.lru_cache(maxsize=None)
def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_key(device: torch.device) -> str:
    """The key a measurement is recorded under: ``cuda:<name>`` or ``cpu:<model name>``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{cpu_model_name()}"


def load_tables() -> dict:
    """{device key: {op: record}}: the shipped table overlaid by the user's."""
    merged: dict = {}
    for path in (SHIPPED_TABLE, user_table_path()):
        try:
            with open(path, encoding="utf-8") as f:
                records = json.load(f).get("records", {})
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable kernel dispatch table %s: %s", path, exc)
            continue
        for key, ops in records.items():
            merged.setdefault(key, {}).update(ops)
    return merged


_AUTO: dict[tuple[str, str], ModuleType | type] = {}


def _choose_auto(device: torch.device, op: str) -> ModuleType | type:
    record = load_tables().get(device_key(device), {}).get(op)
    if record is not None:
        module, reason = _load(record["backend"])
        if module is not None and device.type in module.DEVICE_TYPES:
            return module
        log.info("recorded backend %r for %s on %s unavailable (%s); using the fallback order", record["backend"],
                 op, device_key(device), reason)
    for name in _FALLBACK_ORDER.get(device.type, ()):
        module, _ = _load(name)
        if module is not None and device.type in module.DEVICE_TYPES:
            return module
    return _Reference


def _pick_auto(device: torch.device, op: str) -> ModuleType | type:
    if os.environ.get("RAPID_KERNEL_BACKEND"):  # global override, handy in benchmarks
        return _explicit(os.environ["RAPID_KERNEL_BACKEND"], device.type)
    key = (str(device), op)
    if key not in _AUTO:
        _AUTO[key] = _choose_auto(device, op)
    return _AUTO[key]


def auto_backend_name(device: str | torch.device, op: str) -> str:
    """The backend ``auto`` runs ``op`` with on ``device`` (for logs and tests)."""
    return _name_of(_pick_auto(torch.device(device), op))


def reset_auto_cache() -> None:
    """Forget the cached ``auto`` choices (after writing a new dispatch record)."""
    _AUTO.clear()


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
    name = _resolve_name(backend, op, str(example.device), example.dtype == torch.float64, is_level == "token")
    module = _Reference if name == "torch" else _LOADED[name][0]
    impl = getattr(module, op, None)
    if impl is None and op == "fused_rapid_loss":
        return functools.partial(_compose_fused, module)
    return impl if impl is not None else getattr(_Reference, op)


# Under torch.compile the choice is made once at trace time, in plain Python (importing a backend cannot be traced)
# and only its name enters the trace, as a constant; eager calls just run this.
@torch.compiler.assume_constant_result
def _resolve_name(backend: str, op: str, device: str, float64: bool, token_level: bool) -> str:
    dev = torch.device(device)
    module = _pick_auto(dev, op) if backend == "auto" else _explicit(backend, dev.type)
    if float64 or (token_level and not getattr(module, "TOKEN_LEVEL", False)):
        return "torch"  # float64 checks and token-level IS are reference-only
    return _name_of(module)


def _name_of(module: ModuleType | type) -> str:
    return "torch" if module is _Reference else module.__name__.rsplit(".", 1)[-1].removesuffix("_backend")


def _compose_fused(module, hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size, eta,
                   baseline, loss_norm, is_level, is_clip, adv_scale, temperature, bias, softcap, threshold,
                   want_entropy):
    lp, entropy = module.linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold,
                                               want_entropy)
    out = module.rapid_loss(lp, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
                            is_level, is_clip, adv_scale)
    return out._replace(entropy=entropy) if want_entropy else out
