"""The behaviour distribution, defined once: temperature, top-k, top-p, and a batch-invariant sampler.

RAPID's importance weight w = π(y)/μ(y) is only right when the trainer's log π is the same function of the
logits as the distribution the engine sampled from (DESIGN.md section 1, "the behaviour distribution is exact").
This module is that function:

- ``truncate(z, top_k, top_p)`` masks the processed logits z = logit / T to the kept set exactly as transformers'
  ``TopKLogitsWarper`` then ``TopPLogitsWarper`` do (and vLLM's top-k/top-p: ascending sort, cumulative
  probability, drop what sums to at most 1 − p, always keep the most likely token).
- ``thresholds(...)`` gives the trainer, per completion token, the smallest kept processed logit; the fused
  kernels take it (``threshold=``) and normalise over {v : z_v ≥ threshold} ∪ {target}, so top-k / top-p cost no
  (N, V) tensor in the loss. It is computed without gradient (the kept set is piecewise constant in θ).
- ``draw(z, seeds, step)`` draws one token per row by inverse-CDF sampling with one counter-based uniform per row
  and step: row b's draw depends only on (seeds[b], step, z[b]), never on which other rows share the batch.
  Rollouts are therefore identical whatever the engine's chunking (``max_num_seqs``), the world size or the
  process that generates them.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def truncate(z: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """z (B, V) processed logits → the same with −inf outside the top-k / nucleus set (top-k first, as HF)."""
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]                          # (B, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1)                                       # ascending (B, V)
        cum = sorted_z.float().softmax(dim=-1).cumsum(dim=-1)                         # (B, V)
        drop = cum <= (1.0 - top_p)
        drop[..., -1] = False                                                         # keep the most likely token
        z = z.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return z


def truncates(top_k: int, top_p: float) -> bool:
    return bool(top_k) or top_p < 1.0


@torch.no_grad()
def thresholds(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float,
               top_k: int, top_p: float, softcap: float | None = None,
               max_chunk_bytes: int = 256 << 20) -> torch.Tensor:
    """(N,) float32 smallest kept processed logit per row (the top-k / top-p boundary), from hidden (N, D).

    Row-chunked so at most ``max_chunk_bytes`` of fp32 logits exist at once.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)                   # (N,)
    rows = max(1, max_chunk_bytes // (4 * vocab * 3))
    for lo in range(0, n, rows):
        z = processed_logits(hidden[lo:lo + rows], weight, bias, temperature, softcap)  # (R, V)
        kept = truncate(z, top_k, top_p)
        out[lo:lo + rows] = kept.masked_fill(torch.isinf(kept), float("inf")).amin(dim=-1)
    return out


def processed_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float,
                     softcap: float | None = None) -> torch.Tensor:
    """z = softcap(hidden @ Wᵀ + b) / T in float32 (R, V), computed in the weight's dtype like the kernels."""
    logits = (hidden.to(weight.dtype) @ weight.T).float()                             # (R, V)
    if bias is not None:
        logits = logits + bias.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits / temperature


# --------------------------------------------------------------------------------------------- batch-invariant draw
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply, 'lowbias32' constants) on int64 holding values < 2^32."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, step: int, vocab: int = 1, start: int = 0) -> torch.Tensor:
    """(B, V) float64 uniforms in (0, 1) for columns start … start+V−1, a pure function of (seeds[b], step,
    column): counter-based, so a row's noise does not depend on the batch it is drawn in. The sampler uses one
    column (one uniform per row and step)."""
    seeds = seeds.to(torch.int64)                                                     # (B,)
    key = _mix32(_mix32(seeds & _MASK32) ^ _mix32((seeds >> 32) & _MASK32) + 0x9E3779B9)
    key = _mix32(key + _mix32(torch.full_like(key, step & _MASK32)))                  # (B,)
    col = torch.arange(start, start + vocab, device=seeds.device, dtype=torch.int64)  # (V,)
    bits = _mix32(_mix32(key[:, None] ^ col[None, :]) + 0x68E31DA4)                   # (B, V) in [0, 2^32)
    hi = _mix32(bits ^ 0x5BD1E995)                                                    # 21 more bits: 53 in all
    return ((bits * 2097152 + (hi >> 11)).to(torch.float64) + 0.5) / 9007199254740992.0


SAMPLE_BLOCK = 256            # vocabulary ids per block of the two-level inverse CDF


def draw(z: torch.Tensor, seeds: torch.Tensor, step: int, block: int = SAMPLE_BLOCK) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """One token per row from softmax(z) (z (B, V) float32 may hold −inf) and its log-probability: (B,) int64,
    (B,) float32.

    Inverse-CDF sampling with one counter-based uniform per row (``uniform_noise(seeds, step)``): u · Σ e is
    located first among blocks of ``block`` ids (cumulative block sums, float64), then inside the chosen block.
    Every quantity is a row-wise function of that row's z alone, so a row's draw does not depend on which other rows
    share the batch. Cost: one softmax over (B, V) and a block sum; Gumbel-max over B × V hashed noise, which this
    replaces, cost 1.07 s per decode step at B = 128, V = 49 152 on 2 CPU cores (this: ~15 ms).
    Tokens with z = −inf have zero mass and are never drawn.
    """
    rows, vocab = z.shape
    pad = (-vocab) % block
    e = torch.softmax(z, dim=-1)                                                      # (B, V) fp32, −inf → 0
    if pad:
        e = torch.nn.functional.pad(e, (0, pad))
    e = e.view(rows, -1, block)                                                       # (B, nb, block)
    block_mass = e.sum(dim=-1).double()                                               # (B, nb)
    cum = block_mass.cumsum(dim=-1)                                                   # (B, nb)
    target = uniform_noise(seeds.to(z.device), step)[:, 0] * cum[:, -1]               # (B,) in (0, Σ)
    nb = cum.shape[1]
    b = torch.searchsorted(cum, target[:, None], right=True).squeeze(1).clamp_(max=nb - 1)   # (B,)
    # never a block without mass (u · Σ rounding up to the last cumulative value)
    b = torch.where(block_mass.gather(1, b[:, None]).squeeze(1) > 0, b, _last_positive(block_mass))
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(target))
    inner = e[torch.arange(rows, device=z.device), b].double()                        # (B, block)
    inner_cum = inner.cumsum(dim=-1)                                                  # (B, block)
    i = torch.searchsorted(inner_cum, (target - before)[:, None], right=True).squeeze(1).clamp_(max=block - 1)
    i = torch.where(inner.gather(1, i[:, None]).squeeze(1) > 0, i, _last_positive(inner))
    token = b * block + i                                                             # (B,)
    return token, torch.log(inner.gather(1, i[:, None]).squeeze(1)).float()


def _last_positive(mass: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last entry > 0 in each row of ``mass`` (B, M)."""
    index = torch.arange(mass.shape[1], device=mass.device).expand_as(mass)
    return torch.where(mass > 0, index, -1).amax(dim=-1).clamp(min=0)


def sample(z: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One token per row from softmax(z), (B,) int64: ``draw`` without the log-probability."""
    return draw(z, seeds, step)[0]


def row_seeds(base: int, prompt_ids: list[int], n: int) -> torch.Tensor:
    """(len(prompt_ids) * n,) int64 seeds, one per completion: prompt ``p`` sample ``j`` → hash(base, p, j)."""
    p = torch.tensor(prompt_ids, dtype=torch.int64).repeat_interleave(n)              # (B,)
    j = torch.arange(n, dtype=torch.int64).repeat(len(prompt_ids))                    # (B,)
    b = torch.full_like(p, base & ((1 << 62) - 1))
    lo = _mix32(_mix32(b & _MASK32) ^ _mix32(p & _MASK32) ^ (_mix32(j) * 3 & _MASK32))
    hi = _mix32(_mix32((b >> 32) & _MASK32) + _mix32((p >> 32) & _MASK32) + 0x2545F491 + j)
    return (hi << 31) ^ lo
