"""Eager PyTorch reference of every rapid op (DESIGN.md section 2).

This is the readable definition that tests, benchmarks and the CPU fallback (``backend="torch"``) share. It is
float64-capable: float64 inputs are computed and returned in float64 (for gradcheck); every other input dtype is
computed with float32 accumulation and returns float32. Inputs are assumed validated (see ``_validate``).

Shapes: N packed completion tokens, V vocabulary, D hidden size, S sequences, K = group_size, G = S / K groups.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# log w is capped here when is_clip="none" (pure importance sampling), only so exp() cannot overflow.
LOG_W_CAP = 80.0
# Vocabulary chunk of the reference linear op: bounds its extra memory to N * chunk floats.
DEFAULT_VOCAB_CHUNK = 8192


class RapidLossOutput(NamedTuple):
    """What ``rapid_loss`` / ``fused_rapid_loss`` return. All per-sequence tensors are detached."""

    loss: torch.Tensor             # ()   the scalar to backpropagate
    seq_logratio: torch.Tensor     # (S,) log w_s, unclipped (level-dependent: sum, or mean for "geometric")
    weights: torch.Tensor          # (S,) w̄_s after the clip (truncate / mask / none)
    baselines: torch.Tensor        # (S,) b_s
    advantages: torch.Tensor       # (S,) A_s (after adv_scale)
    clip_fraction: torch.Tensor    # ()   fraction of sequences whose weight the clip changed
    token_logprobs: torch.Tensor   # (N,) log π_θ(y_t), detached (diagnostics: KL, engine/trainer gap)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (reference checks); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------- token log-probs
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[targets] per row: logit[t]/T − logsumexp(logits/T). Returns (N,)."""
    x = logits.to(compute_dtype(logits.dtype)) / temperature                        # (N, V)
    picked = x.gather(1, targets.long().unsqueeze(1)).squeeze(1)                     # (N,)
    return picked - torch.logsumexp(x, dim=1)                                       # (N,)


# ------------------------------------------------------------------------------------------ linear + token log-probs
def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, stop: int,
                  temperature: float, dtype: torch.dtype) -> torch.Tensor:
    z = hidden.to(dtype) @ weight[start:stop].to(dtype).T                          # (N, C)
    if bias is not None:
        z = z + bias[start:stop].to(dtype)
    return z / temperature


class _LinearTokenLogprobs(torch.autograd.Function):
    """Vocab-chunked lm_head + log-prob. Never holds more than one (N, chunk) logits tile.

    Forward keeps a running log-sum-exp over chunks; backward recomputes each tile and applies
    d z = g · (onehot − softmax) / T, so d hidden = Σ_chunks dz @ W_c and d W_c = dzᵀ @ hidden.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, temperature, chunk):
        dtype = compute_dtype(hidden.dtype)
        n, vocab = hidden.shape[0], weight.shape[0]
        lse = torch.full((n,), float("-inf"), dtype=dtype, device=hidden.device)    # (N,)
        picked = torch.zeros(n, dtype=dtype, device=hidden.device)                  # (N,)
        tgt = targets.long()
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            z = _chunk_logits(hidden, weight, bias, start, stop, temperature, dtype)   # (N, C)
            lse = torch.logaddexp(lse, torch.logsumexp(z, dim=1))
            in_chunk = (tgt >= start) & (tgt < stop)                                 # (N,)
            local = (tgt - start).clamp(0, stop - start - 1)
            picked = torch.where(in_chunk, z.gather(1, local.unsqueeze(1)).squeeze(1), picked)
        ctx.save_for_backward(hidden, weight, targets, bias, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, bias, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        dtype = lse.dtype
        g = grad_out.to(dtype)                                                       # (N,)
        tgt = targets.long()
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
        d_hidden = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        d_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        d_bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        for start in range(0, weight.shape[0], chunk):
            stop = min(start + chunk, weight.shape[0])
            z = _chunk_logits(hidden, weight, bias, start, stop, temperature, dtype)   # (N, C)
            dz = -torch.exp(z - lse.unsqueeze(1)) * g.unsqueeze(1)                   # (N, C): −g·softmax
            in_chunk = (tgt >= start) & (tgt < stop)
            rows = in_chunk.nonzero().squeeze(1)
            dz[rows, tgt[rows] - start] += g[rows]                                   # +g·onehot
            dz = dz / temperature
            if need_h:
                d_hidden += dz @ weight[start:stop].to(dtype)                        # (N, D)
            if need_w:
                d_weight[start:stop] = dz.T @ hidden.to(dtype)                       # (C, D)
            if need_b:
                d_bias[start:stop] = dz.sum(0)
        cast = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return cast(d_hidden, hidden), cast(d_weight, weight), None, (cast(d_bias, bias) if need_b else None), None, None


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0, bias: torch.Tensor | None = None,
                          chunk: int = DEFAULT_VOCAB_CHUNK) -> torch.Tensor:
    """log softmax((hidden @ weightᵀ + bias) / T)[targets], vocab-chunked: never materialises (N, V)."""
    return _LinearTokenLogprobs.apply(hidden, weight, targets, bias, temperature, chunk)


# ------------------------------------------------------------------------------------------------------ RAPID loss
def clip_weights(seq_logratio: torch.Tensor, eta: float, is_clip: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w̄ from log w, computed in log space. Returns (weights (S,), clipped mask (S,))."""
    log_eta = torch.log(torch.tensor(eta, dtype=seq_logratio.dtype, device=seq_logratio.device))
    if is_clip == "truncate":                      # w̄ = min(w, η)
        clipped = seq_logratio > log_eta
        return torch.exp(torch.minimum(seq_logratio, log_eta)), clipped
    if is_clip == "mask":                          # drop sequences with w > η
        clipped = seq_logratio > log_eta
        return torch.where(clipped, torch.zeros_like(seq_logratio), torch.exp(seq_logratio)), clipped
    clipped = seq_logratio > LOG_W_CAP             # "none": pure IS, capped for float safety only
    return torch.exp(seq_logratio.clamp(max=LOG_W_CAP)), clipped


def group_advantages(weights: torch.Tensor, rewards: torch.Tensor, group_size: int, baseline: str,
                     adv_scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted group baseline and advantage. Returns (baselines (S,), advantages (S,)).

    loo:  b_s = 1/(K−1) Σ_{j≠s} w̄_j R_j        mean: b_s = 1/K Σ_j w̄_j R_j
    std:  A_s /= std(R over the group, unbiased) + 1e-6
    """
    k = group_size
    wr = (weights * rewards).view(-1, k)                                             # (G, K)
    total = wr.sum(dim=1, keepdim=True)                                              # (G, 1)
    if baseline == "loo":
        b = (total - wr) / (k - 1)                                                   # (G, K)
    else:
        b = (total / k).expand_as(wr)                                                # (G, K)
    adv = rewards.view(-1, k) - b                                                    # (G, K)
    if adv_scale == "std":
        std = rewards.view(-1, k).std(dim=1, keepdim=True) if k > 1 else torch.zeros_like(total)
        adv = adv / (std + 1e-6)
    return b.reshape(-1), adv.reshape(-1)


def rapid_loss(token_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, rewards: torch.Tensor,
               cu_seqlens: torch.Tensor, group_size: int, eta: float = 2.0, baseline: str = "loo",
               loss_norm: float = 1.0, is_level: str = "sequence", is_clip: str = "truncate",
               adv_scale: str = "none") -> RapidLossOutput:
    """The RAPID loss on packed tokens (DESIGN.md section 1).

    log w_s = Σ_t [log π(y_t) − log μ(y_t)]  ("geometric": the mean instead of the sum)
    w̄_s    = clip(w_s)  (truncate: min(w, η); mask: 0 if w > η; none: w)
    A_s    = R_s − b_s  (importance-weighted LOO or mean group baseline, optional std scaling)
    L      = −(1/S) Σ_s sg(w̄_s A_s) Σ_t log π(y_t) / loss_norm
    is_level="token": the policy-gradient term uses per-token clipped ratios sg(w̄_t) instead of sg(w̄_s); the
    baseline still uses the sequence-level w̄_s.
    """
    dtype = compute_dtype(token_logprobs.dtype)
    num_seqs = rewards.shape[0]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()                             # (S,)
    seq_ids = torch.repeat_interleave(torch.arange(num_seqs, device=rewards.device), lengths)  # (N,)
    lp = token_logprobs.to(dtype)                                                    # (N,) differentiable
    tok_logratio = lp.detach() - behavior_logprobs.to(dtype)                         # (N,)
    seq_logratio = torch.zeros(num_seqs, dtype=dtype, device=lp.device).index_add_(0, seq_ids, tok_logratio)
    if is_level == "geometric":
        seq_logratio = seq_logratio / lengths.clamp(min=1).to(dtype)
    weights, clipped = clip_weights(seq_logratio, eta, is_clip)                      # (S,), (S,)
    r = rewards.to(dtype)
    baselines, advantages = group_advantages(weights, r, group_size, baseline, adv_scale)

    if is_level == "token":
        tok_weights, _ = clip_weights(tok_logratio, eta, is_clip)                    # (N,)
        coef_tok = tok_weights * advantages[seq_ids]                                 # (N,)
    else:
        coef_tok = (weights * advantages)[seq_ids]                                   # (N,)
    loss = -(coef_tok * lp).sum() / (num_seqs * loss_norm)
    return RapidLossOutput(
        loss=loss,
        seq_logratio=seq_logratio,
        weights=weights,
        baselines=baselines,
        advantages=advantages,
        clip_fraction=clipped.to(dtype).mean(),
        token_logprobs=lp.detach(),
    )


def fused_rapid_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     behavior_logprobs: torch.Tensor, rewards: torch.Tensor, cu_seqlens: torch.Tensor,
                     group_size: int, eta: float = 2.0, baseline: str = "loo", loss_norm: float = 1.0,
                     is_level: str = "sequence", is_clip: str = "truncate", adv_scale: str = "none",
                     temperature: float = 1.0, bias: torch.Tensor | None = None) -> RapidLossOutput:
    """lm_head + log-prob + RAPID loss: hidden states in, loss out, no (N, V) tensor."""
    lp = linear_token_logprobs(hidden, weight, targets, temperature, bias)
    return rapid_loss(lp, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm,
                      is_level, is_clip, adv_scale)
