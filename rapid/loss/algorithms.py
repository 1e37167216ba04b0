"""The policy losses of ``rapid``, ``grpg`` and ``grpo`` on packed sequences (DESIGN.md section 1).

All three run in the same trainer on the same data, so comparisons are fair:

- ``rapid``: sequence importance ratio w = π/μ truncated at η, importance-weighted group baseline (LOO by
  default), L = −(1/S) Σ_s sg(w̄_s A_s) Σ_t log π(y_t) / loss_norm. One fused op: ``rapid_kernels.fused_rapid_loss``.
- ``grpg``: the same loss with μ = π (w ≡ 1): on-policy group policy gradient, the paper's baseline.
- ``grpo``: per-token PPO-clip with group-std-normalised advantages and a token-mean loss, as TRL/verl run it.

Each returns the loss of one micro-batch, normalised within it, plus the count it was normalised by (sequences for
rapid/grpg, tokens for grpo); the trainer rescales by count / total to accumulate a mini-batch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import rapid_kernels
from rapid_kernels import RapidLossOutput

from ..config import RapidConfig


@dataclass
class PackedBatch:
    """The training view of one micro-batch: S sequences in whole groups, their N completion tokens packed."""

    targets: torch.Tensor            # (N,) int64  sampled completion tokens
    behavior_logprobs: torch.Tensor  # (N,) fp32   log μ(y_t) of the tempered behaviour distribution
    rewards: torch.Tensor            # (S,) fp32
    cu_seqlens: torch.Tensor         # (S+1,) int64 offsets of each completion in the packed tokens

    @property
    def num_seqs(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.targets.shape[0]


@dataclass
class LossResult:
    loss: torch.Tensor                  # ()  normalised within the micro-batch
    count: int                          # what it was normalised by: sequences (rapid, grpg) or tokens (grpo)
    token_logprobs: torch.Tensor        # (N,) detached log π(y_t)
    stats: dict[str, torch.Tensor]      # scalar tensors; ``diagnostics`` turns them into floats


def _loss_kwargs(cfg: RapidConfig) -> dict:
    return dict(eta=cfg.eta, baseline=cfg.baseline, loss_norm=cfg.effective_loss_norm, is_level=cfg.is_level,
                is_clip=cfg.is_clip, adv_scale=cfg.adv_scale)


def kernel_kwargs(threshold: torch.Tensor | None = None, softcap: float | None = None) -> dict:
    """The optional kernel arguments actually in use (top-k/top-p thresholds, logit soft-cap)."""
    out: dict = {}
    if threshold is not None:
        out["threshold"] = threshold
    if softcap:
        out["softcap"] = float(softcap)
    return out


def loss_from_hidden(cfg: RapidConfig, batch: PackedBatch, hidden: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None, threshold: torch.Tensor | None = None,
                     softcap: float | None = None) -> LossResult:
    """Policy loss from the last hidden states (N, D) and the lm_head weight (V, D): no (N, V) logits.

    ``threshold`` (N,) restricts each row's softmax to the top-k / top-p set the engine sampled from.
    """
    backend = cfg.kernel_backend
    extra = kernel_kwargs(threshold, softcap)
    if cfg.algo == "rapid":
        out = rapid_kernels.fused_rapid_loss(hidden, weight, batch.targets, batch.behavior_logprobs, batch.rewards,
                                             batch.cu_seqlens, cfg.group_size, temperature=cfg.temperature,
                                             bias=bias, backend=backend, **_loss_kwargs(cfg), **extra)
        return _from_rapid_output(out, batch, cfg)
    lp = rapid_kernels.linear_token_logprobs(hidden, weight, batch.targets, cfg.temperature, bias, backend=backend,
                                             **extra)
    return loss_from_logprobs(cfg, batch, lp)


def loss_from_logprobs(cfg: RapidConfig, batch: PackedBatch, token_logprobs: torch.Tensor) -> LossResult:
    """Policy loss from per-token log-probs (N,) — the path for heads that are not a plain linear layer."""
    if cfg.algo == "grpo":
        return grpo_loss(token_logprobs, batch, cfg.group_size, cfg.grpo_clip_eps)
    behavior = batch.behavior_logprobs if cfg.algo == "rapid" else token_logprobs.detach()  # grpg: μ = π, w ≡ 1
    out = rapid_kernels.rapid_loss(token_logprobs, behavior, batch.rewards, batch.cu_seqlens, cfg.group_size,
                                   backend=cfg.kernel_backend, **_loss_kwargs(cfg))
    return _from_rapid_output(out, batch, cfg)


def token_coefficients(cfg: RapidConfig, batch: PackedBatch, token_logprobs: torch.Tensor
                       ) -> tuple[torch.Tensor, LossResult]:
    """g_t = ∂L/∂log π(y_t) of the whole mini-batch's loss, with the log-probs held fixed (no model in the graph).

    Every loss here depends on θ only through the per-token log-probs, so ∇θ L = Σ_t g_t ∇θ log π(y_t): the
    second phase of a group-splitting update backpropagates g_t through micro-batches of any size and gets the
    whole-step gradient exactly (for rapid: g_t = −sg(w̄_s) A_s / (S · loss_norm), the same for each token of s).
    Returns (g (N,), the mini-batch's LossResult for diagnostics).
    """
    lp = token_logprobs.detach().float().requires_grad_(True)                       # (N,) leaf
    with torch.enable_grad():
        res = loss_from_logprobs(cfg, batch, lp)
        (grad,) = torch.autograd.grad(res.loss, lp)                                 # (N,)
    return grad.detach(), res


def _from_rapid_output(out: RapidLossOutput, batch: PackedBatch, cfg: RapidConfig) -> LossResult:
    stats = weight_stats(out.weights, out.seq_logratio, cfg.group_size)
    stats["rapid/clip_frac"] = out.clip_fraction
    stats["rapid/adv_abs_mean"] = out.advantages.abs().mean()
    stats["rapid/kl_k3"] = kl_k3(out.token_logprobs, batch.behavior_logprobs)
    return LossResult(out.loss, batch.num_seqs, out.token_logprobs, stats)


def grpo_loss(token_logprobs: torch.Tensor, batch: PackedBatch, group_size: int, clip_eps: float = 0.2) -> LossResult:
    """PPO-clip on per-token ratios with group-normalised advantages, averaged over tokens.

    A_s = (R_s − mean_g R) / (std_g R + 1e-6)  (unbiased std, as TRL);  r_t = π(y_t)/μ(y_t)
    L   = −(1/N) Σ_t min(r_t A_s, clip(r_t, 1−ε, 1+ε) A_s)
    """
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()                  # (S,)
    seq_ids = torch.repeat_interleave(torch.arange(batch.num_seqs, device=lengths.device), lengths)  # (N,)
    r = batch.rewards.float().view(-1, group_size)                                    # (G, K)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).reshape(-1)  # (S,)
    lp = token_logprobs.float()                                                       # (N,)
    log_ratio = lp - batch.behavior_logprobs.float()                                  # (N,)
    ratio = torch.exp(log_ratio.clamp(max=20.0))                                      # (N,)
    a_tok = adv[seq_ids]                                                              # (N,)
    unclipped = ratio * a_tok
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * a_tok
    per_token = -torch.minimum(unclipped, clipped)                                    # (N,)
    n = max(batch.num_tokens, 1)
    loss = per_token.sum() / n
    with torch.no_grad():
        seq_logratio = torch.zeros(batch.num_seqs, device=lp.device).index_add_(0, seq_ids, log_ratio.detach())
        stats = weight_stats(torch.exp(seq_logratio.clamp(max=80.0)), seq_logratio, group_size)
        stats["rapid/clip_frac"] = (clipped < unclipped).float().mean() if batch.num_tokens else lp.new_zeros(())
        stats["rapid/adv_abs_mean"] = adv.abs().mean()
        stats["rapid/kl_k3"] = kl_k3(lp.detach(), batch.behavior_logprobs)
    return LossResult(loss, n, lp.detach(), stats)


@torch.no_grad()
def weight_stats(weights: torch.Tensor, seq_logratio: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Mean / max importance weight and the per-group effective sample size (Σw)² / (K Σw²), averaged."""
    w = weights.float().view(-1, group_size)                                          # (G, K)
    sq = (w * w).sum(1)                                                               # (G,)
    ess = torch.where(sq > 0, w.sum(1) ** 2 / (group_size * sq.clamp(min=1e-30)), torch.zeros_like(sq))
    return {
        "rapid/w_mean": weights.float().mean(),
        "rapid/w_max": torch.exp(seq_logratio.float().max().clamp(max=80.0)),
        "rapid/log_w_abs_mean": seq_logratio.float().abs().mean(),
        "rapid/ess": ess.mean(),
    }


@torch.no_grad()
def kl_k3(token_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π‖μ) from tokens sampled from μ: mean of r log r − (r − 1), r = π/μ.

    Unbiased (E_μ[r log r] = KL(π‖μ) and E_μ[r − 1] = 0) and non-negative per sample — the k3 construction for
    the KL direction that measures how far the policy has moved from the behaviour policy that sampled the data.
    """
    if token_logprobs.numel() == 0:
        return token_logprobs.new_zeros(())
    log_r = (token_logprobs.float() - behavior_logprobs.float()).clamp(max=20.0)
    r = torch.exp(log_r)
    return (r * log_r - (r - 1)).mean()


def diagnostics(stats: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Scalar tensors (or floats) to floats in one host transfer: stacked on their device, then copied once."""
    if not stats:
        return {}
    keys = list(stats)
    device = next((v.device for v in stats.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    values = torch.stack([torch.as_tensor(stats[k], device=device).detach().float().reshape(()) for k in keys])
    return dict(zip(keys, values.tolist()))                                           # the one host transfer
