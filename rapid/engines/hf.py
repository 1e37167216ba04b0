"""HFEngine: batched sampling on the trainer's own model object (zero copy), with rapid's own decode loop.

The behaviour distribution must be exactly the one the trainer's log π describes (DESIGN.md section 1), so the
engine runs the model's forward and KV cache itself and samples with ``rapid.loss.sampling`` — never ``generate``, whose
logits processors and the model's ``generation_config`` (Qwen2.5-Instruct ships ``repetition_penalty=1.05``;
others set n-gram blocks, min lengths, bad words, forced tokens) would reshape sampling behind the trainer's back.

One call, for P prompts × n samples, ``max_num_seqs`` sequences at a time:

1. **Prefill each distinct prompt once** (left-padded, positions from the attention mask, only the last position's
   logits), then repeat its KV cache for its n samples (``DynamicCache.reorder_cache``): a group of 8 pays one
   prompt forward, not 8.
2. **Decode** one token per running row per step: temperature / top-k / top-p (``sampling.truncate``), then
   ``sampling.draw`` — inverse CDF with one counter-based uniform per row and step, so a row's draw does not depend
   on the batch (the rollout is the same for any ``max_num_seqs``) — or argmax when temperature is 0 (evaluation).
   The draw's log-probability is log μ.
3. **Stop** a row at an EOS id (kept), at a stop string (tokens through the one that completed it; the text is cut
   before it, as vLLM does), or at ``max_new_tokens``. Finished rows leave the batch (their cache rows dropped)
   once an eighth of it has finished, so the tail of a rollout does not pay for rows that are done.

``dtype``: with fp32 master weights and a 16-bit compute dtype, generation runs under ``torch.autocast`` — the
engine sees the weights cast to its dtype, as the training forward does.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from transformers import DynamicCache

from ..loss import sampling as smp
from .base import Rollout, SamplingConfig
from .weights import hf_weights

logger = logging.getLogger(__name__)

COMPACT_FRACTION = 8          # drop finished rows from the batch once 1/8 of the running rows have finished


class HFEngine:
    """Engine protocol on the trainer's model; the model is the trainer's, so sync_weights is a no-op.

    ``SamplingConfig.temperature == 0`` means greedy decoding (used for evaluation).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_num_seqs: int | None = 256,
                 dtype: torch.dtype | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad_token (HFEngine pads prompts on the left)")
        if max_num_seqs is not None and max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1 or None, got {max_num_seqs}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.dtype = dtype
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do when the engine generates from the trainer's own model object; with its own copy (FSDP2
        training), copy the trainer's weights in by HF name — gathered one tensor at a time, LoRA merged."""
        if model is not self.model:
            copy_weights(model, self.model)

    def sleep(self) -> None:
        return None

    def wake(self) -> None:
        return None

    def close(self) -> None:
        return None

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig) -> Rollout:
        start = time.perf_counter()
        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        keys = list(sampling.prompt_keys) if sampling.prompt_keys is not None else list(range(len(prompts)))
        if len(keys) != len(prompts):
            raise ValueError(f"sampling.prompt_keys has {len(keys)} entries for {len(prompts)} prompts")
        base = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        seeds = smp.row_seeds(base, keys, n)                                               # (P*n,)
        total = len(prompts) * n                                           # completion i ↔ prompt i // n
        chunk = self.max_num_seqs or total
        was_training = self.model.training
        self.model.eval()
        completion_ids: list[list[int]] = []
        logprobs: list[torch.Tensor] = []
        finished: list[bool] = []
        try:
            with self._autocast():
                for lo in range(0, total, chunk):
                    rows = list(range(lo, min(lo + chunk, total)))
                    ids, lps, fin = self._generate_chunk(prompt_ids, [i // n for i in rows], sampling, seeds[rows])
                    completion_ids += ids
                    logprobs += lps
                    finished += fin
        finally:
            self.model.train(was_training)
        completions = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        if sampling.stop:
            completions = [_before_stop(text, sampling.stop) for text in completions]
        stats = {"gen_seconds": time.perf_counter() - start,
                 "gen_tokens": float(sum(len(c) for c in completion_ids))}
        return Rollout(prompts=list(prompts), prompt_ids=prompt_ids, completion_ids=completion_ids,
                       logprobs=logprobs, completions=completions, n=n, finished=finished, stats=stats)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.dtype is None or self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _generate_chunk(self, prompt_ids: list[list[int]], of_row: list[int], sampling: SamplingConfig,
                        seeds: torch.Tensor) -> tuple[list[list[int]], list[torch.Tensor], list[bool]]:
        """Sample one completion per row; row r continues prompt ``prompt_ids[of_row[r]]`` with seed ``seeds[r]``."""
        device, pad = self.device, self.tokenizer.pad_token_id
        distinct = sorted(set(of_row))
        width = max(len(prompt_ids[p]) for p in distinct)
        ids = torch.tensor([[pad] * (width - len(prompt_ids[p])) + prompt_ids[p] for p in distinct], device=device)
        mask = torch.tensor([[0] * (width - len(prompt_ids[p])) + [1] * len(prompt_ids[p]) for p in distinct],
                            device=device)                                                          # (U, W)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        slot = {p: i for i, p in enumerate(distinct)}
        expand = torch.tensor([slot[p] for p in of_row], device=device)                             # (B,)
        cache = out.past_key_values
        cache.reorder_cache(expand)                                        # each prompt's cache for its n rows
        logits = out.logits[:, -1].float()[expand]                                                  # (B, V)
        mask = mask[expand]                                                                         # (B, W)
        position = mask.sum(-1, keepdim=True)                                                       # (B, 1)
        rows = len(of_row)
        alive = torch.arange(rows)                    # which original row each batch row is
        tokens: list[list[int]] = [[] for _ in range(rows)]
        lps: list[list[float]] = [[] for _ in range(rows)]
        ended = [False] * rows
        eos, stops = set(self.eos_ids), list(sampling.stop or ())
        window = max((len(x) for x in stops), default=0) + 4
        done_in_batch = 0
        for step in range(sampling.max_new_tokens):
            token, logp = self._pick(logits, sampling, seeds[alive], step)                         # (B,), (B,)
            running = []
            for j, (r, t, lp) in enumerate(zip(alive.tolist(), token.tolist(), logp.tolist())):
                if ended[r]:
                    continue
                tokens[r].append(t)
                lps[r].append(lp)
                if t in eos or (stops and _hits_stop(self.tokenizer, tokens[r][-window:], stops)):
                    ended[r] = True
                    done_in_batch += 1
                else:
                    running.append(j)
            if not running or step + 1 == sampling.max_new_tokens:
                break
            if done_in_batch * COMPACT_FRACTION >= len(alive):           # drop finished rows from the batch
                keep = torch.tensor(running, device=device)
                cache.reorder_cache(keep)
                alive, token, mask, position = alive[keep.cpu()], token[keep], mask[keep], position[keep]
                done_in_batch = 0
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)                           # (B, W+t+1)
            out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                             past_key_values=cache, use_cache=True)
            position = position + 1
            logits = out.logits[:, -1].float()                                                      # (B, V)
        return tokens, [torch.tensor(x, dtype=torch.float32) for x in lps], ended

    @staticmethod
    def _pick(logits: torch.Tensor, sampling: SamplingConfig, seeds: torch.Tensor, step: int):
        """(token, log μ(token)) per row of the raw logits (B, V): argmax at temperature 0, else a draw from the
        processed distribution."""
        if sampling.temperature == 0:
            token = logits.argmax(dim=-1)                                                          # (B,)
            return token, torch.log_softmax(logits, dim=-1).gather(1, token[:, None]).squeeze(1)
        z = smp.truncate(logits / sampling.temperature, sampling.top_k, sampling.top_p)           # (B, V)
        return smp.draw(z, seeds.to(z.device), step)


def _hits_stop(tokenizer, tail: list[int], stops: list[str]) -> bool:
    text = tokenizer.decode(tail, skip_special_tokens=True)
    return any(x in text for x in stops)


def _before_stop(text: str, stop) -> str:
    """The completion's text up to (not including) the first stop string, as vLLM returns it."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy ``source``'s weights into the plain HF model ``target`` by HF name: FSDP2 shards gathered one tensor at
    a time, LoRA deltas merged (``rapid.engines.weights.hf_weights``). Collective under FSDP2: every rank calls it."""
    own = dict(target.named_parameters())
    with torch.no_grad():
        for name, tensor in hf_weights(source):
            if name not in own:
                raise ValueError(f"copy_weights: the target model has no parameter {name!r}")
            own[name].copy_(tensor)


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    ids = []
    gen_cfg = getattr(model, "generation_config", None)
    for value in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config defines an eos_token_id")
    return ids
