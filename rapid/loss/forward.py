"""The training forward: last hidden states at the positions that predict completion tokens, never full logits.

Sequences (prompt + completion) are packed into one row with position ids restarting at 0 per sequence and no
attention mask; transformers (5.x ``masking_utils.find_packed_sequence_indices``) then builds a block-diagonal
causal mask from the position ids, so no padding is computed on. ``check_packing`` verifies this numerically on
the actual model once at start-up; where it does not hold the trainer falls back to right-padded batches with an
attention mask (``padded_hidden``), reading only real positions. Without a varlen attention kernel (flash-attn),
sdpa computes the packed row's attention densely over all pairs; ``packing_pays`` then picks padding for many
short sequences (measured on CPU: 64 arithmetic sequences, padded forward+backward 2x faster than packed).

Shared prompts: a group's K completions continue one prompt, so ``shared_prompt_hidden`` runs each distinct prompt
of a micro-batch once (with gradient) and the completions attend to its keys and values through the KV cache,
repeated per completion (``DynamicCache.reorder_cache``, differentiable), instead of recomputing the prompt K times.
With chat prompts longer than the answers (SmolLM2's template: ~40 prompt tokens, ~15-30 completion tokens, K = 8)
this is about half the tokens of a packed forward; ``sharing_pays`` picks it by the same cost model, and the result
equals the packed forward to fp32 noise, gradients included (tests/trainer/test_forward.py).

The hidden states (N, D) of the positions predicting the N completion tokens go with the lm_head weight to the
fused kernels (rapid.training.policy.PolicyLoss); a soft-capped head is fused too (``softcap``). Only a head
that is not a plain linear layer takes the logits path: lm_head → ``rapid_kernels.token_logprobs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch


logger = logging.getLogger(__name__)


@dataclass
class ModelParts:
    """The pieces of a causal LM the loss needs: the decoder stack and the output head."""

    base: torch.nn.Module            # decoder: input_ids → last hidden states (B, T, D)
    lm_head: torch.nn.Module         # (D → V)
    softcap: float | None = None     # final_logit_softcapping, if the model has one
    packed: bool = True              # packed forward verified (else always right-padded batches)
    shared: bool = False             # shared-prompt forward verified (check_sharing; off under gradient checkpointing)
    varlen: bool = False             # attention kernel skips masked pairs (flash-attn varlen): packing is free
    logits_path: bool = False        # head is not nn.Linear: lm_head + token_logprobs instead of the fused kernel

    @property
    def weight(self) -> torch.Tensor:
        return self.lm_head.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.lm_head, "bias", None)


def model_parts(model: torch.nn.Module) -> ModelParts:
    """Split a (possibly peft-wrapped) causal LM into decoder and head."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model   # peft: LoRA stays injected
    head = causal_lm.get_output_embeddings()
    base = getattr(causal_lm, "model", None)
    if base is None or not isinstance(base, torch.nn.Module):
        base = causal_lm.get_decoder()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    logits_path = not isinstance(head, torch.nn.Linear)
    if logits_path:
        logger.warning("the output head is not a plain linear layer (%s): using the logits path (lm_head + "
                       "token_logprobs), which materialises (N, V) logits", type(head).__name__)
    varlen = getattr(causal_lm.config, "_attn_implementation", None) == "flash_attention_2"
    return ModelParts(base=base, lm_head=head, softcap=softcap, logits_path=logits_path, varlen=varlen)


def _completion_positions(prompt_lens: list[int], completion_lens: list[int], starts: list[int]) -> torch.Tensor:
    """Indices (in the flattened token axis) of the positions whose next token is a completion token."""
    idx = [torch.arange(s + p - 1, s + p + c - 1) for s, p, c in zip(starts, prompt_lens, completion_lens)]
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)


def packed_hidden(base: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                  device: torch.device) -> torch.Tensor:
    """(N, D) hidden states predicting each completion token, from one packed row without padding."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    input_ids = torch.tensor([t for s in seqs for t in s], device=device).unsqueeze(0)              # (1, T)
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs]).to(device).unsqueeze(0)           # (1, T)
    hidden = base(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # (1, T, D)
    starts, offset = [], 0
    for s in seqs:
        starts.append(offset)
        offset += len(s)
    idx = _completion_positions([len(p) for p in prompt_ids], [len(c) for c in completion_ids], starts)
    return hidden[0].index_select(0, idx.to(device))                                                 # (N, D)


def padded_hidden(base: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                  device: torch.device, pad_id: int = 0) -> torch.Tensor:
    """(N, D) as ``packed_hidden``, from right-padded rows with an attention mask (the fallback)."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(s) for s in seqs)
    input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)          # (S, W)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)         # (S, W)
    hidden = base(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state       # (S, W, D)
    starts = [i * width for i in range(len(seqs))]
    idx = _completion_positions([len(p) for p in prompt_ids], [len(c) for c in completion_ids], starts)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx.to(device))                      # (N, D)


def packing_pays(lengths: list[int], hidden_size: int, varlen: bool) -> bool:
    """Pack unless padding is cheaper: without a varlen kernel (flash-attn), sdpa runs the packed row's attention
    densely over all T² pairs and masks most of them, so many short sequences are cheaper padded.

    Cost per layer, in multiply-adds: linear layers ≈ 12·D² per token, attention ≈ 2·D per (query, key) pair.
    """
    if varlen:
        return True
    total, width = sum(lengths), max(lengths)
    packed = 12 * hidden_size**2 * total + 2 * hidden_size * total**2
    padded = 12 * hidden_size**2 * width * len(lengths) + 2 * hidden_size * width**2 * len(lengths)
    return packed <= padded


def shared_prompt_hidden(base: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                         device: torch.device, pad_id: int = 0) -> torch.Tensor:
    """(N, D) as ``packed_hidden``, computing each distinct prompt once: a right-padded prompt forward that fills a
    KV cache, the cache repeated for each sequence of that prompt, then a right-padded completion forward on it."""
    from transformers import DynamicCache

    distinct: dict[tuple[int, ...], int] = {}
    of_seq = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]                       # (S,)
    prompts = list(distinct)
    wp, wc = max(len(p) for p in prompts), max(len(c) for c in completion_ids)
    p_ids = torch.tensor([list(p) + [pad_id] * (wp - len(p)) for p in prompts], device=device)       # (U, Wp)
    p_mask = torch.tensor([[1] * len(p) + [0] * (wp - len(p)) for p in prompts], device=device)      # (U, Wp)
    cache = DynamicCache(config=getattr(base, "config", None))
    prompt_out = base(input_ids=p_ids, attention_mask=p_mask, past_key_values=cache, use_cache=True)
    index = torch.tensor(of_seq, device=device)                                                       # (S,)
    cache = prompt_out.past_key_values
    cache.reorder_cache(index)                                       # each prompt's K/V for its sequences
    c_ids = torch.tensor([c + [pad_id] * (wc - len(c)) for c in completion_ids], device=device)      # (S, Wc)
    c_mask = torch.tensor([[1] * len(c) + [0] * (wc - len(c)) for c in completion_ids], device=device)
    plen = torch.tensor([len(prompt_ids[s]) for s in range(len(of_seq))], device=device)             # (S,)
    position = plen[:, None] + torch.arange(wc, device=device)[None, :]                              # (S, Wc)
    hidden = base(input_ids=c_ids, attention_mask=torch.cat([p_mask[index], c_mask], dim=1), position_ids=position,
                  past_key_values=cache, use_cache=True).last_hidden_state                           # (S, Wc, D)
    last_prompt = prompt_out.last_hidden_state[index, plen - 1]              # (S, D): predicts completion token 0
    rows = [last_prompt[:, None]] if wc == 1 else [last_prompt[:, None], hidden[:, :wc - 1]]
    grid = torch.cat(rows, dim=1)                                            # (S, Wc, D): position t predicts t
    keep = c_mask.bool().reshape(-1)
    return grid.reshape(-1, grid.shape[-1])[keep]                                                     # (N, D)


def sharing_pays(prompt_ids: list[list[int]], completion_ids: list[list[int]], hidden_size: int) -> bool:
    """Whether ``shared_prompt_hidden`` costs less than the packed / padded forward, by ``packing_pays``' model:
    the distinct prompts once (padded) plus the padded completions attending to them."""
    distinct = {tuple(p) for p in prompt_ids}
    if len(distinct) == len(prompt_ids):
        return False
    wp = max(len(p) for p in distinct)
    wc = max(len(c) for c in completion_ids)
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    total, width = sum(lengths), max(lengths)
    linear, pair = 12 * hidden_size**2, 2 * hidden_size
    shared = (linear * wp * len(distinct) + pair * wp * wp * len(distinct)
              + linear * wc * len(prompt_ids) + pair * wc * (wp + wc) * len(prompt_ids))
    best_other = min(linear * total + pair * total**2, linear * width * len(lengths) + pair * width**2 * len(lengths))
    return shared < best_other


def completion_hidden(parts: ModelParts, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      device: torch.device) -> torch.Tensor:
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    if parts.shared and sharing_pays(prompt_ids, completion_ids, parts.weight.shape[1]):
        return shared_prompt_hidden(parts.base, prompt_ids, completion_ids, device)
    if parts.packed and packing_pays(lengths, parts.weight.shape[1], parts.varlen):
        return packed_hidden(parts.base, prompt_ids, completion_ids, device)
    return padded_hidden(parts.base, prompt_ids, completion_ids, device)


@torch.no_grad()
def check_packing(base: torch.nn.Module, device: torch.device, vocab_size: int) -> bool:
    """Does a packed forward equal separate forwards on this model / transformers version? (tiny, once)"""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab_size, (5,), generator=gen).tolist()
    b = torch.randint(0, vocab_size, (7,), generator=gen).tolist()
    was_training = base.training
    base.eval()
    try:
        packed = packed_hidden(base, [a[:2], b[:3]], [a[2:], b[3:]], device)                         # (7, D)
        sep = torch.cat([packed_hidden(base, [p], [c], device) for p, c in ((a[:2], a[2:]), (b[:3], b[3:]))])
    finally:
        base.train(was_training)
    return _agrees(packed, sep, "packed forward differs from unpacked (max err %.3g): falling back to right-padded "
                   "batches")


def _agrees(got: torch.Tensor, want: torch.Tensor, warning: str) -> bool:
    """``got`` equals ``want`` to its dtype's noise (1e-3 of the scale in fp32, 3e-2 in 16-bit); else log."""
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item() + 1e-6
    ok = err <= (1e-3 if want.dtype == torch.float32 else 3e-2) * scale
    if not ok:
        logger.warning(warning, err)
    return ok


@torch.no_grad()
def check_sharing(base: torch.nn.Module, device: torch.device, vocab_size: int) -> bool:
    """Does the shared-prompt forward equal the packed one on this model / transformers version? (tiny, once)"""
    gen = torch.Generator().manual_seed(1)
    p1, p2 = (torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in (4, 2))
    comps = [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in (3, 1, 2)]
    prompts = [p1, p1, p2]
    was_training = base.training
    base.eval()
    try:
        shared = shared_prompt_hidden(base, prompts, comps, device)                                 # (6, D)
        packed = packed_hidden(base, prompts, comps, device)
    except Exception as err:           # noqa: BLE001 — a model whose forward takes no cache / mask this way
        logger.info("shared-prompt forward unavailable on this model (%s): %s", type(err).__name__, err)
        return False
    finally:
        base.train(was_training)
    return _agrees(shared, packed, "shared-prompt forward differs from packed (max err %.3g): not used")
