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
- ``sample(z, seeds, step)`` draws one token per row by Gumbel-max with counter-based noise: row b's draw depends
  only on (seeds[b], step, token id), never on which other rows share the batch. Rollouts are therefore identical
  whatever the engine's chunking (``max_num_seqs``), the world size or the process that generates them.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """ValueError naming the field for a setting the trainer cannot reproduce."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


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


def uniform_noise(seeds: torch.Tensor, step: int, vocab: int, start: int = 0) -> torch.Tensor:
    """(B, V) float64 uniforms in (0, 1) for vocabulary ids start … start+V−1, a pure function of (seeds[b], step,
    id): counter-based, so a row's noise does not depend on the batch or on how the vocabulary is chunked."""
    seeds = seeds.to(torch.int64)                                                     # (B,)
    key = _mix32(_mix32(seeds & _MASK32) ^ _mix32((seeds >> 32) & _MASK32) + 0x9E3779B9)
    key = _mix32(key + _mix32(torch.full_like(key, step & _MASK32)))                  # (B,)
    col = torch.arange(start, start + vocab, device=seeds.device, dtype=torch.int64)  # (V,)
    bits = _mix32(_mix32(key[:, None] ^ col[None, :]) + 0x68E31DA4)                   # (B, V) in [0, 2^32)
    return (bits.to(torch.float64) + 0.5) / 4294967296.0


SAMPLE_CHUNK = 16384          # vocabulary ids per noise chunk: bounds the sampler's temporaries to B × chunk


def sample(z: torch.Tensor, seeds: torch.Tensor, step: int, chunk: int = SAMPLE_CHUNK) -> torch.Tensor:
    """One token per row from softmax(z) (z may hold −inf), by Gumbel-max with ``uniform_noise``. (B,) int64.

    The vocabulary is walked in chunks with a running maximum, so a 151k vocabulary never costs (B, V) float64
    noise and int64 hashing temporaries at once (≈ 28 bytes per element, 1 GB at 256 rows)."""
    best = torch.full((z.shape[0],), float("-inf"), dtype=torch.float64, device=z.device)   # (B,)
    token = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)                      # (B,)
    for lo in range(0, z.shape[-1], chunk):
        part = z[:, lo:lo + chunk].double()                                                  # (B, C)
        score = part - torch.log(-torch.log(uniform_noise(seeds, step, part.shape[1], lo)))  # + Gumbel
        value, index = score.max(dim=-1)                                                     # (B,), (B,)
        better = value > best
        best = torch.where(better, value, best)
        token = torch.where(better, index + lo, token)
    return token


def row_seeds(base: int, prompt_ids: list[int], n: int) -> torch.Tensor:
    """(len(prompt_ids) * n,) int64 seeds, one per completion: prompt ``p`` sample ``j`` → hash(base, p, j)."""
    p = torch.tensor(prompt_ids, dtype=torch.int64).repeat_interleave(n)              # (B,)
    j = torch.arange(n, dtype=torch.int64).repeat(len(prompt_ids))                    # (B,)
    b = torch.full_like(p, base & ((1 << 62) - 1))
    lo = _mix32(_mix32(b & _MASK32) ^ _mix32(p & _MASK32) ^ (_mix32(j) * 3 & _MASK32))
    hi = _mix32(_mix32((b >> 32) & _MASK32) + _mix32((p >> 32) & _MASK32) + 0x2545F491 + j)
    return (hi << 31) ^ lo
