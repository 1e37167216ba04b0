"""Triton ``rapid_loss``: the whole RAPID epilogue (DESIGN.md section 1) in one launch, one program per group.

Physical floor (DESIGN.md section 2): the epilogue is tiny — it reads 2·N fp32 token log-probs plus S rewards and
S + 1 offsets (N = 16 384: ~130 kB, well under a microsecond of HBM time), so its cost is launch latency: it must be
one launch, not the twenty an eager implementation issues. Backward writes N floats.

Forward, program g owns the K = group_size contiguous sequences of group g and their packed tokens
[cu_seqlens[gK], cu_seqlens[(g+1)K]). It streams those tokens once, assigning each to its sequence with a
(tokens × K) membership mask, and accumulates per sequence Σ_t (log π − log μ) and Σ_t log π. Then, all in
registers: log w (the mean instead of the sum for ``is_level="geometric"``), the clip in log space (truncate:
min(w, η); mask: 0 when w > η; none: w with log w capped at ``LOG_W_CAP``), the importance-weighted group baseline
(LOO or mean), the advantage (optionally divided by the unbiased group reward std + 1e-6), and the group's share of
the loss and of the clip count. Those (2, G) per-group partials are then summed by one tiny torch reduction rather
than atomics, so the loss is deterministic. Backward: d log π_t = −g · w̄_s A_s / (S · loss_norm), the per-sequence
coefficient saved by the forward broadcast to the sequence's tokens, again one program per group.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_lib import launch, register_op
from .reference import LOG_W_CAP, RapidLossOutput

_CLIP_CODES = {"truncate": 0, "mask": 1, "none": 2}


@triton.jit
def _group_tokens(cu_ptr, g, K, BLOCK_K: tl.constexpr):
    """Sequence bounds of group g: (starts (BLOCK_K,), ends (BLOCK_K,), valid lanes, first token, end token)."""
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    seq = g.to(tl.int64) * K + ks
    starts = tl.load(cu_ptr + seq, mask=k_ok, other=0).to(tl.int64)
    ends = tl.load(cu_ptr + seq + 1, mask=k_ok, other=0).to(tl.int64)
    t0 = tl.load(cu_ptr + g.to(tl.int64) * K).to(tl.int64)
    t1 = tl.load(cu_ptr + g.to(tl.int64) * K + K).to(tl.int64)
    return seq, starts, ends, k_ok, t0, t1


@triton.jit
def _rapid_loss_fwd_kernel(lp_ptr, blp_ptr, rewards_ptr, cu_ptr, logratio_ptr, weights_ptr, baselines_ptr,
                           adv_ptr, coef_ptr, partial_ptr, G, K, log_eta, log_w_cap, scale, inv_num_seqs,
                           GEOMETRIC: tl.constexpr, CLIP: tl.constexpr, LOO: tl.constexpr, STD: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
    g = tl.program_id(0)
    seq, starts, ends, k_ok, t0, t1 = _group_tokens(cu_ptr, g, K, BLOCK_K)
    ratio_sum = tl.zeros((BLOCK_K,), dtype=tl.float32)                                  # Σ_t log π − log μ
    lp_sum = tl.zeros((BLOCK_K,), dtype=tl.float32)                                     # Σ_t log π
    for t in range(t0, t1, BLOCK_T):
        pos = t + tl.arange(0, BLOCK_T).to(tl.int64)                                    # (BLOCK_T,)
        ok = pos < t1
        lp = tl.load(lp_ptr + pos, mask=ok, other=0.0).to(tl.float32)
        blp = tl.load(blp_ptr + pos, mask=ok, other=0.0).to(tl.float32)
        member = (pos[:, None] >= starts[None, :]) & (pos[:, None] < ends[None, :])    # (BLOCK_T, BLOCK_K)
        ratio_sum += tl.sum(tl.where(member, (lp - blp)[:, None], 0.0), axis=0)
        lp_sum += tl.sum(tl.where(member, lp[:, None], 0.0), axis=0)
    logratio = ratio_sum
    if GEOMETRIC:
        logratio = ratio_sum / tl.maximum(ends - starts, 1).to(tl.float32)
    if CLIP == 0:      # truncate: w̄ = min(w, η)
        clipped = logratio > log_eta
        w = tl.exp(tl.minimum(logratio, log_eta))
    elif CLIP == 1:    # mask: drop sequences with w > η
        clipped = logratio > log_eta
        w = tl.where(clipped, 0.0, tl.exp(tl.minimum(logratio, log_eta)))
    else:              # none: pure IS, capped for float safety only
        clipped = logratio > log_w_cap
        w = tl.exp(tl.minimum(logratio, log_w_cap))
    r = tl.load(rewards_ptr + seq, mask=k_ok, other=0.0).to(tl.float32)                # (BLOCK_K,)
    wr = tl.where(k_ok, w * r, 0.0)
    total = tl.sum(wr, axis=0)
    if LOO:
        b = (total - wr) / (K - 1)
    else:
        b = tl.zeros((BLOCK_K,), dtype=tl.float32) + total / K
    adv = r - b
    if STD:            # unbiased group std of the rewards (0 when K = 1)
        dev = tl.where(k_ok, r - tl.sum(r, axis=0) / K, 0.0)
        std = tl.sqrt(tl.sum(dev * dev, axis=0) / tl.maximum(K - 1, 1))
        adv = adv / (std + 1e-6)
    coef = -(w * adv) * scale                                                          # d loss / d log π_t
    tl.store(logratio_ptr + seq, logratio, mask=k_ok)
    tl.store(weights_ptr + seq, w, mask=k_ok)
    tl.store(baselines_ptr + seq, b, mask=k_ok)
    tl.store(adv_ptr + seq, adv, mask=k_ok)
    tl.store(coef_ptr + seq, coef, mask=k_ok)
    tl.store(partial_ptr + g, tl.sum(tl.where(k_ok, coef * lp_sum, 0.0), axis=0))
    tl.store(partial_ptr + G + g, tl.sum(tl.where(k_ok & clipped, 1.0, 0.0), axis=0) * inv_num_seqs)


@triton.jit
def _rapid_loss_bwd_kernel(coef_ptr, cu_ptr, grad_ptr, dlp_ptr, K, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
    g = tl.program_id(0)
    seq, starts, ends, k_ok, t0, t1 = _group_tokens(cu_ptr, g, K, BLOCK_K)
    coef = tl.load(coef_ptr + seq, mask=k_ok, other=0.0) * tl.load(grad_ptr).to(tl.float32)  # (BLOCK_K,)
    for t in range(t0, t1, BLOCK_T):
        pos = t + tl.arange(0, BLOCK_T).to(tl.int64)                                    # (BLOCK_T,)
        member = (pos[:, None] >= starts[None, :]) & (pos[:, None] < ends[None, :])    # (BLOCK_T, BLOCK_K)
        tl.store(dlp_ptr + pos, tl.sum(tl.where(member, coef[None, :], 0.0), axis=1), mask=pos < t1)


def _blocks(group_size: int) -> tuple[int, int]:
    block_k = max(2, triton.next_power_of_2(group_size))
    return block_k, max(16, min(1024, 8192 // block_k))


def _fwd(token_logprobs: Tensor, behavior_logprobs: Tensor, rewards: Tensor, cu_seqlens: Tensor, group_size: int,
         eta: float, baseline: str, loss_norm: float, is_level: str, is_clip: str,
         adv_scale: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss (), seq_logratio, weights, baselines, advantages (all (S,)), clip_fraction (), coef (S,))."""
    num_seqs = rewards.shape[0]
    groups = num_seqs // group_size
    dev = token_logprobs.device
    # separate buffers, not views of one: an in-place edit of a diagnostic must not touch the saved coefficient
    logratio, weights, baselines, advantages, coef = (torch.empty(num_seqs, dtype=torch.float32, device=dev)
                                                      for _ in range(5))               # (S,) each
    partial = torch.empty((2, groups), dtype=torch.float32, device=dev)                # (2, G): loss, clip / S
    block_k, block_t = _blocks(group_size)
    launch(_rapid_loss_fwd_kernel)[(groups,)](
        token_logprobs, behavior_logprobs, rewards, cu_seqlens, logratio, weights, baselines, advantages, coef,
        partial, groups, group_size, math.log(eta), LOG_W_CAP, 1.0 / (num_seqs * loss_norm), 1.0 / num_seqs,
        GEOMETRIC=is_level == "geometric", CLIP=_CLIP_CODES[is_clip], LOO=baseline == "loo",
        STD=adv_scale == "std", BLOCK_K=block_k, BLOCK_T=block_t, num_warps=4)
    # two separate reductions, not views of one: custom-op outputs must not alias each other
    return partial[0].sum(), logratio, weights, baselines, advantages, partial[1].sum(), coef


def _fwd_fake(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
              is_level, is_clip, adv_scale):
    num_seqs = rewards.shape[0]
    f32 = dict(dtype=torch.float32)
    per_seq = [token_logprobs.new_empty(num_seqs, **f32) for _ in range(4)]
    return (token_logprobs.new_empty((), **f32), *per_seq, token_logprobs.new_empty((), **f32),
            token_logprobs.new_empty(num_seqs, **f32))


def _bwd(grad_loss: Tensor, coef: Tensor, cu_seqlens: Tensor, n_tokens: int, group_size: int) -> Tensor:
    """d token_logprobs (N,) fp32."""
    groups = coef.shape[0] // group_size
    dlp = torch.empty(n_tokens, dtype=torch.float32, device=coef.device)              # (N,)
    block_k, block_t = _blocks(group_size)
    launch(_rapid_loss_bwd_kernel)[(groups,)](coef, cu_seqlens, grad_loss, dlp, group_size, BLOCK_K=block_k,
                                              BLOCK_T=block_t, num_warps=4)
    return dlp


def _bwd_fake(grad_loss, coef, cu_seqlens, n_tokens, group_size):
    return coef.new_empty(n_tokens, dtype=torch.float32)


rapid_loss_fwd = register_op("rapid_triton::rapid_loss_fwd", _fwd, _fwd_fake)
rapid_loss_bwd = register_op("rapid_triton::rapid_loss_bwd", _bwd, _bwd_fake)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[6], inputs[3])
    ctx.group_size, ctx.n_tokens, ctx.lp_dtype = inputs[4], inputs[0].shape[0], inputs[0].dtype
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_loss, *_):
    coef, cu_seqlens = ctx.saved_tensors
    dlp = None
    if ctx.needs_input_grad[0]:
        dlp = rapid_loss_bwd(grad_loss.contiguous(), coef, cu_seqlens, ctx.n_tokens, ctx.group_size).to(ctx.lp_dtype)
    return (dlp,) + (None,) * 10


rapid_loss_fwd.register_autograd(_backward, setup_context=_setup)


def rapid_loss(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size: int, eta: float = 2.0,
               baseline: str = "loo", loss_norm: float = 1.0, is_level: str = "sequence", is_clip: str = "truncate",
               adv_scale: str = "none") -> RapidLossOutput:
    """The RAPID loss on packed tokens; ``is_level="token"`` is not implemented here (the dispatch routes it to the
    reference)."""
    if is_level == "token":
        raise ValueError("the Triton rapid_loss implements is_level='sequence' and 'geometric' only")
    loss, logratio, weights, baselines, advantages, clip_fraction, _ = rapid_loss_fwd(
        token_logprobs.contiguous(), behavior_logprobs.contiguous(), rewards.contiguous(), cu_seqlens.contiguous(),
        int(group_size), float(eta), baseline, float(loss_norm), is_level, is_clip, adv_scale)
    return RapidLossOutput(loss=loss, seq_logratio=logratio, weights=weights, baselines=baselines,
                           advantages=advantages, clip_fraction=clip_fraction,
                           token_logprobs=token_logprobs.detach())
