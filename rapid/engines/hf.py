"""HFEngine: batched sampling with transformers ``generate`` on the trainer's own model object (zero copy).

The behaviour distribution must be exactly the one the trainer's log π describes (DESIGN.md section 1), so rapid
does the sampling itself and lets ``generate`` only run the model and the KV cache:

- ``generate`` runs in greedy mode with one logits processor, ``_Sampler``, last in the list. It turns the raw
  scores into the processed distribution (temperature, top-k, top-p: ``rapid.sampling.truncate``), draws one token
  per row with ``rapid.sampling.sample`` (counter-based noise: a row's draw does not depend on the batch), records
  its log-prob, and hands back scores whose argmax is that token. After ``generate`` the returned tokens are
  checked against the recorded draws, so nothing after the sampler can have changed them unnoticed.
- The model's ``generation_config`` (Qwen2.5-Instruct ships ``repetition_penalty=1.05``; others set n-gram blocks,
  min lengths, bad words, forced tokens) is swapped for a pristine one during the call: transformers fills every
  unset field of the config we pass from it, which would shape sampling behind the trainer's back.
- Sequences are generated ``max_num_seqs`` at a time (a 512 × 16 rollout is never one ``generate`` batch); with
  the batch-invariant sampler the result does not depend on the chunking.
- ``dtype``: with fp32 master weights and a 16-bit compute dtype, generation runs under ``torch.autocast`` — the
  engine sees the weights cast to its dtype, as the training forward does.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .. import sampling as smp
from .base import Rollout, SamplingConfig

logger = logging.getLogger(__name__)


class _Sampler(LogitsProcessor):
    """Samples each step itself and records log μ(sampled token) of the processed distribution.

    Stop strings: after each draw the tail of every running row is decoded; a row whose text now contains a stop
    string keeps ``cut[b]`` tokens and is sent EOS next (so ``generate`` stops computing it; the forced EOS is
    cut off again afterwards).
    """

    def __init__(self, sampling: SamplingConfig, seeds: torch.Tensor, tokenizer=None, eos_id: int = 0) -> None:
        self.sampling = sampling
        self.seeds = seeds                      # (B,) int64 per-row seeds
        self.tokens: list[torch.Tensor] = []    # per step (B,) int64
        self.logprobs: list[torch.Tensor] = []  # per step (B,) fp32
        self.stop = list(sampling.stop or ())
        self.tokenizer, self.eos_id = tokenizer, eos_id
        self.cut: list[int | None] = [None] * len(seeds)     # kept length of rows ended by a stop string
        self._window = max((len(x) for x in self.stop), default=0) + 4

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        self._check_stops()
        raw = scores.float()                                                          # (B, V)
        if s.temperature == 0:                                                        # greedy (evaluation)
            z = raw
            token = torch.argmax(z, dim=-1)                                           # (B,)
        else:
            z = smp.truncate(raw / s.temperature, s.top_k, s.top_p)                   # (B, V)
            token = smp.sample(z, self.seeds.to(z.device), len(self.tokens))          # (B,)
        if self.stop:
            done = [b for b, c in enumerate(self.cut) if c is not None]
            if done:
                token[done] = self.eos_id                                             # stopped rows: end them
        logp = torch.log_softmax(z, dim=-1).gather(1, token[:, None]).squeeze(1)      # (B,)
        self.tokens.append(token)
        self.logprobs.append(logp)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, token[:, None], 0.0)                                # argmax = the draw

    def _check_stops(self) -> None:
        if not self.stop or not self.tokens:
            return
        tail = torch.stack(self.tokens[-self._window:], 1).tolist()                   # (B, ≤ window)
        for b, row in enumerate(tail):
            if self.cut[b] is None:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                if any(x in text for x in self.stop):
                    self.cut[b] = len(self.tokens)


class HFEngine:
    """Engine protocol on top of ``model.generate``; the model is the trainer's, so sync_weights is a no-op.

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
        flat = [ids for ids in prompt_ids for _ in range(n)]                 # completion i ↔ prompt i // n
        chunk = self.max_num_seqs or len(flat)
        was_training = self.model.training
        self.model.eval()
        completion_ids: list[list[int]] = []
        logprobs: list[torch.Tensor] = []
        finished: list[bool] = []
        try:
            with self._autocast(), _pristine_generation_config(self.model):
                for lo in range(0, len(flat), chunk):
                    ids, lps, fin = self._generate_chunk(flat[lo:lo + chunk], sampling, seeds[lo:lo + chunk])
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

    def _generate_chunk(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seeds: torch.Tensor):
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=self.device)  # (B, P)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids],
                                      device=self.device)                                              # (B, P)
        sampler = _Sampler(sampling, seeds, self.tokenizer, self.eos_ids[0])
        gen_config = GenerationConfig(do_sample=False, max_new_tokens=sampling.max_new_tokens, pad_token_id=pad,
                                      eos_token_id=self.eos_ids, bos_token_id=self.tokenizer.bos_token_id)
        sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                        generation_config=gen_config,
                                        logits_processor=LogitsProcessorList([sampler]))           # (B, P+T)
        sampler._check_stops()                      # a stop string completed by the last drawn token
        new_tokens = sequences[:, width:].cpu()                                                     # (B, T)
        steps = new_tokens.shape[1]
        drawn = torch.stack(sampler.tokens[:steps], 1).cpu() if steps else new_tokens             # (B, T)
        token_lp = torch.stack(sampler.logprobs[:steps], 1).float().cpu() if steps else new_tokens.float()
        ids_out, lps_out, fin_out = [], [], []
        eos = set(self.eos_ids)
        for row, drawn_row, lp_row, cut in zip(new_tokens.tolist(), drawn.tolist(), token_lp, sampler.cut):
            end = next((i + 1 for i, t in enumerate(row) if t in eos), None)   # keep EOS, drop what follows
            if cut is not None and (end is None or cut < end):
                end = cut                                                      # ended by a stop string
            length = end if end is not None else len(row)
            if row[:length] != drawn_row[:length]:
                raise RuntimeError("transformers generate returned tokens the rapid sampler did not draw: a logits "
                                   "processor after it changed the distribution (behaviour log-probs would be wrong)")
            ids_out.append(row[:length])
            lps_out.append(lp_row[:length].contiguous())
            fin_out.append(end is not None)
        return ids_out, lps_out, fin_out


def _before_stop(text: str, stop) -> str:
    """The completion's text up to (not including) the first stop string, as vLLM returns it."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy ``source``'s weights into the plain HF model ``target`` by HF name: FSDP2 shards gathered one tensor at
    a time, LoRA deltas merged (``rapid.engines.vllm.hf_weights``). Collective under FSDP2: every rank calls it."""
    from .vllm import hf_weights

    own = dict(target.named_parameters())
    with torch.no_grad():
        for name, tensor in hf_weights(source):
            if name not in own:
                raise ValueError(f"copy_weights: the target model has no parameter {name!r}")
            own[name].copy_(tensor)


@contextlib.contextmanager
def _pristine_generation_config(model: torch.nn.Module):
    """Swap every ``generation_config`` reachable from ``model`` (peft wrapper, base model) for a pristine one."""
    owners, seen = [], set()
    for candidate in (model, getattr(model, "base_model", None), getattr(model, "model", None),
                      model.get_base_model() if hasattr(model, "get_base_model") else None):
        if candidate is not None and id(candidate) not in seen and hasattr(candidate, "generation_config"):
            seen.add(id(candidate))
            owners.append((candidate, candidate.generation_config))
    try:
        for owner, _ in owners:
            owner.generation_config = GenerationConfig()
        yield
    finally:
        for owner, original in owners:
            owner.generation_config = original


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
