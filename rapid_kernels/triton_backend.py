"""The Triton backend (``backend="triton"``), in the module shape ``_dispatch`` expects.

It runs on CUDA tensors, and on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``, set before
this module is imported: tests do that in ``tests/kernels/conftest.py``). ``is_level="token"`` is not implemented
here (``TOKEN_LEVEL = False``), so the dispatch sends it to the reference. Nothing here touches a GPU at import.

The op modules share their names with the package's public functions (``rapid_kernels.token_logprobs`` is both a
function in ``__init__`` and the file ``token_logprobs.py``). Importing a submodule makes Python set it as an
attribute of the package, which would replace the public function by the module; this module restores the public
functions after importing the op modules, so ``rapid_kernels.token_logprobs(...)`` keeps working. Import the op
modules through this module (or restore likewise), not with ``import rapid_kernels.token_logprobs`` first.
"""

from __future__ import annotations

import importlib
import logging
import os

import torch

log = logging.getLogger(__name__)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE_TYPES: tuple[str, ...] = ("cuda", "cpu") if _INTERPRET else ("cuda",)
TOKEN_LEVEL = False
_OPS = ("token_logprobs", "linear_token_logprobs", "rapid_loss")


def _import_ops():
    """Import the op modules (the package keeps its public functions: see ``rapid_kernels._Package``)."""
    return tuple(importlib.import_module(f"{__package__}.{name}") for name in _OPS)


_tlp, _ltlp, _loss = _import_ops()   # raises ImportError without triton: _dispatch reports the backend unavailable


def available() -> str | None:
    """None when usable here; else why not. Cheap: never initialises CUDA beyond asking whether it exists."""
    if _INTERPRET or torch.cuda.is_available():
        return None
    return "no CUDA device (set TRITON_INTERPRET=1 before import to run the kernels on CPU, slowly)"


def token_logprobs(logits, targets, temperature, softcap, threshold, want_entropy):
    return _tlp.token_logprobs(logits, targets, temperature, softcap, threshold, want_entropy)


def linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy):
    return _ltlp.linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy)


def rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
               is_level, is_clip, adv_scale):
    return _loss.rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                            loss_norm, is_level, is_clip, adv_scale)


def fused_rapid_loss(hidden, weight, targets, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                     loss_norm, is_level, is_clip, adv_scale, temperature, bias, softcap, threshold, want_entropy):
    """The linear log-prob kernel chained into the epilogue: hidden states in, loss out, no (N, V) tensor."""
    lp, entropy = _ltlp.linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold,
                                              want_entropy)                          # (N,) fp32
    out = _loss.rapid_loss(lp, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
                           is_level, is_clip, adv_scale)
    return out._replace(entropy=entropy) if want_entropy else out
