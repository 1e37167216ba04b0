"""The Triton backend (``backend="triton"``), in the module shape ``_dispatch`` expects.

It runs on CUDA tensors, and on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``, set before
this module is imported: tests do that in ``tests/kernels/conftest.py``). ``is_level="token"`` is not implemented
here (``TOKEN_LEVEL = False``), so the dispatch sends it to the reference. Nothing here touches a GPU at import.

The Triton op modules are ``_token_logprobs.py``, ``_linear_token_logprobs.py`` and ``_rapid_loss.py``: private
names, so importing them never touches the package's public functions of the same op names.
"""

from __future__ import annotations

import logging
import os

import torch

# raises ImportError without triton: _dispatch reports the backend unavailable
from . import _linear_token_logprobs as _ltlp, _rapid_loss as _loss, _token_logprobs as _tlp

log = logging.getLogger(__name__)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE_TYPES: tuple[str, ...] = ("cuda", "cpu") if _INTERPRET else ("cuda",)
TOKEN_LEVEL = False


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
