"""``torch.library`` custom ops around the compiled extension ``rapid_kernels._C`` (C++/OpenMP and CUDA).

One op per kernel entry point, in the ``rapid`` namespace, each with a fake (shape) function so ``torch.compile``
traces through it, and autograd registered on the forward ops. The ops are device-generic: ``_C`` dispatches CPU
tensors to ``csrc/cpu`` and CUDA tensors to ``csrc/cuda`` (when compiled in). The backend modules
``cpp_backend`` / ``cuda_backend`` call the thin Python functions at the bottom of this file.

Importing this module raises ImportError when the extension was not built; ``_dispatch`` reports that as the
backend's reason for being unavailable.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _C  # noqa: F401  (ImportError here means: extension not built)
from .reference import RapidLossOutput

# Vocabulary columns per logits tile of linear_token_logprobs (CPU tiles are further cut into row blocks, ~8 MiB).
CPU_VOCAB_CHUNK = 2048
CUDA_VOCAB_CHUNK = 8192
_OPS = ("token_logprobs_fwd", "token_logprobs_bwd", "linear_token_logprobs_fwd", "linear_token_logprobs_bwd",
        "rapid_loss_fwd")


def has_ops() -> bool:
    return all(hasattr(_C, name) for name in _OPS)


# ------------------------------------------------------------------------------------------------ token_logprobs
# softcap is a float (0.0 = no soft-cap); threshold an optional float32 [N]; the forward's third output is the
# entropy of the processed distribution ([N], or empty when want_entropy is False), never differentiable.
@torch.library.custom_op("rapid::token_logprobs_fwd", mutates_args=())
def token_logprobs_fwd(logits: Tensor, targets: Tensor, temperature: float, softcap: float,
                       threshold: Optional[Tensor], want_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _C.token_logprobs_fwd(logits, targets, temperature, softcap, threshold, want_entropy)


def _logprob_outputs_fake(ref: Tensor, want_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    n = ref.shape[0]
    f32 = dict(dtype=torch.float32)
    return ref.new_empty(n, **f32), ref.new_empty(n, **f32), ref.new_empty(n if want_entropy else 0, **f32)


@token_logprobs_fwd.register_fake
def _(logits, targets, temperature, softcap, threshold, want_entropy):
    return _logprob_outputs_fake(logits, want_entropy)


@torch.library.custom_op("rapid::token_logprobs_bwd", mutates_args=())
def token_logprobs_bwd(grad: Tensor, logits: Tensor, targets: Tensor, lse: Tensor, temperature: float,
                       softcap: float, threshold: Optional[Tensor]) -> Tensor:
    return _C.token_logprobs_bwd(grad, logits, targets, lse, temperature, softcap, threshold)


@token_logprobs_bwd.register_fake
def _(grad, logits, targets, lse, temperature, softcap, threshold):
    return logits.new_empty(logits.shape)


def _tlp_setup(ctx, inputs, output):
    logits, targets, temperature, softcap, threshold, _ = inputs
    ctx.save_for_backward(logits, targets, output[1], threshold)
    ctx.temperature, ctx.softcap = temperature, softcap
    ctx.mark_non_differentiable(output[2])


def _tlp_backward(ctx, grad_out, grad_lse, grad_entropy):
    logits, targets, lse, threshold = ctx.saved_tensors
    dlogits = token_logprobs_bwd(grad_out, logits, targets, lse, ctx.temperature, ctx.softcap, threshold)
    return dlogits, None, None, None, None, None


token_logprobs_fwd.register_autograd(_tlp_backward, setup_context=_tlp_setup)


# ----------------------------------------------------------------------------------------- linear_token_logprobs
@torch.library.custom_op("rapid::linear_token_logprobs_fwd", mutates_args=())
def linear_token_logprobs_fwd(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor],
                              temperature: float, chunk: int, softcap: float, threshold: Optional[Tensor],
                              want_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _C.linear_token_logprobs_fwd(hidden, weight, targets, bias, temperature, chunk, softcap, threshold,
                                        want_entropy)


@linear_token_logprobs_fwd.register_fake
def _(hidden, weight, targets, bias, temperature, chunk, softcap, threshold, want_entropy):
    return _logprob_outputs_fake(hidden, want_entropy)


@torch.library.custom_op("rapid::linear_token_logprobs_bwd", mutates_args=())
def linear_token_logprobs_bwd(grad: Tensor, hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor],
                              lse: Tensor, temperature: float, chunk: int, softcap: float,
                              threshold: Optional[Tensor], need_hidden: bool, need_weight: bool,
                              need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(d hidden, d weight, d bias); a gradient not asked for comes back as an empty (0,) tensor."""
    return _C.linear_token_logprobs_bwd(grad, hidden, weight, targets, bias, lse, temperature, chunk, softcap,
                                        threshold, need_hidden, need_weight, need_bias)


@linear_token_logprobs_bwd.register_fake
def _(grad, hidden, weight, targets, bias, lse, temperature, chunk, softcap, threshold, need_hidden, need_weight,
      need_bias):
    d_hidden = hidden.new_empty(hidden.shape if need_hidden else (0,))
    d_weight = weight.new_empty(weight.shape if need_weight else (0,))
    d_bias = (bias.new_empty(bias.shape) if (need_bias and bias is not None)
              else hidden.new_empty(0, dtype=torch.float32))
    return d_hidden, d_weight, d_bias


def _ltlp_setup(ctx, inputs, output):
    hidden, weight, targets, bias, temperature, chunk, softcap, threshold, _ = inputs
    ctx.save_for_backward(hidden, weight, targets, bias, output[1], threshold)
    ctx.temperature, ctx.chunk, ctx.softcap = temperature, chunk, softcap
    ctx.mark_non_differentiable(output[2])


def _ltlp_backward(ctx, grad_out, grad_lse, grad_entropy):
    hidden, weight, targets, bias, lse, threshold = ctx.saved_tensors
    need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
    d_hidden, d_weight, d_bias = linear_token_logprobs_bwd(grad_out, hidden, weight, targets, bias, lse,
                                                           ctx.temperature, ctx.chunk, ctx.softcap, threshold,
                                                           need_h, need_w, need_b)
    return (d_hidden if need_h else None, d_weight if need_w else None, None,
            d_bias if (need_b and bias is not None) else None, None, None, None, None, None)


linear_token_logprobs_fwd.register_autograd(_ltlp_backward, setup_context=_ltlp_setup)


# ---------------------------------------------------------------------------------------------------- rapid_loss
@torch.library.custom_op("rapid::rapid_loss_fwd", mutates_args=())
def rapid_loss_fwd(token_logprobs: Tensor, behavior_logprobs: Tensor, rewards: Tensor, cu_seqlens: Tensor,
                   group_size: int, eta: float, baseline: str, loss_norm: float, is_level: str, is_clip: str,
                   adv_scale: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, seq_logratio, weights, baselines, advantages, clip_fraction, coef); coef = d loss / d token_logprobs."""
    return _C.rapid_loss_fwd(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline,
                             loss_norm, is_level, is_clip, adv_scale)


@rapid_loss_fwd.register_fake
def _(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm, is_level,
      is_clip, adv_scale):
    f32 = dict(dtype=torch.float32)
    num_seqs = rewards.shape[0]
    per_seq = [token_logprobs.new_empty(num_seqs, **f32) for _ in range(4)]
    return (token_logprobs.new_empty((), **f32), *per_seq, token_logprobs.new_empty((), **f32),
            token_logprobs.new_empty(token_logprobs.shape, **f32))


def _loss_setup(ctx, inputs, output):
    ctx.save_for_backward(output[6])


def _loss_backward(ctx, grad_loss, *unused):
    (coef,) = ctx.saved_tensors
    return (grad_loss * coef,) + (None,) * 10


rapid_loss_fwd.register_autograd(_loss_backward, setup_context=_loss_setup)


# ------------------------------------------------------------------------------- backend-facing functions
def token_logprobs(logits, targets, temperature, softcap, threshold, want_entropy):
    """(log-probs (N,), entropy (N,) or None)."""
    out, _, entropy = token_logprobs_fwd(logits, targets, float(temperature), float(softcap or 0.0), threshold,
                                         bool(want_entropy))
    return out, (entropy if want_entropy else None)


def linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy, chunk):
    """(log-probs (N,), entropy (N,) or None)."""
    out, _, entropy = linear_token_logprobs_fwd(hidden, weight, targets, bias, float(temperature), int(chunk),
                                                float(softcap or 0.0), threshold, bool(want_entropy))
    return out, (entropy if want_entropy else None)


def rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
               is_level, is_clip, adv_scale) -> RapidLossOutput:
    loss, seq_logratio, weights, baselines, advantages, clip_fraction, _ = rapid_loss_fwd(
        token_logprobs, behavior_logprobs, rewards, cu_seqlens, int(group_size), float(eta), baseline,
        float(loss_norm), is_level, is_clip, adv_scale)
    return RapidLossOutput(loss=loss, seq_logratio=seq_logratio.detach(), weights=weights.detach(),
                           baselines=baselines.detach(), advantages=advantages.detach(),
                           clip_fraction=clip_fraction.detach(), token_logprobs=token_logprobs.detach())
