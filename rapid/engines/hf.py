"""HFEngine: batched sampling with transformers ``generate`` on the trainer's own model object (zero copy).

The behaviour log-probs must be those of the *processed* distribution (temperature, top-p) the tokens were drawn
from. ``generate`` applies user logits processors *before* its own warpers, so we switch its warpers off
(temperature 1, top_k 0, top_p 1) and pass temperature and top-p ourselves, followed by a recorder that sees the
exact scores ``generate`` samples from. The recorder keeps one step of log-softmax (B, V) and gathers the token
sampled from it on the next call, so memory is O(B·V), not O(B·V·T) as ``output_scores`` would be.
"""

from __future__ import annotations

import logging
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from .base import Rollout, SamplingConfig

logger = logging.getLogger(__name__)


class _LogprobRecorder(LogitsProcessor):
    """Records log p(sampled token) under the scores it is handed (the last processor in the list)."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []        # each (B,) fp32
        self._last: torch.Tensor | None = None     # (B, V) log-softmax of the previous step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._last is not None:                 # input_ids[:, -1] was sampled from the previous step's scores
            self.steps.append(self._last.gather(1, input_ids[:, -1:]).squeeze(1))
        self._last = torch.log_softmax(scores.float(), dim=-1)                        # (B, V)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, T_new) log-probs once generation returned ``sequences`` (prompt + new tokens)."""
        if self._last is not None:
            self.steps.append(self._last.gather(1, sequences[:, -1:]).squeeze(1))
            self._last = None
        return torch.stack(self.steps, dim=1) if self.steps else sequences.new_zeros((sequences.shape[0], 0),
                                                                                      dtype=torch.float32)


class HFEngine:
    """Engine protocol on top of ``model.generate``; the model is the trainer's, so sync_weights is a no-op.

    ``SamplingConfig.temperature == 0`` means greedy decoding (used for evaluation).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_batch_size: int | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad_token (HFEngine pads prompts on the left)")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            raise ValueError("HFEngine generates from the trainer's model object; it cannot sync another model")

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
        flat = [ids for ids in prompt_ids for _ in range(n)]                 # completion i ↔ prompt i // n
        chunk = self.max_batch_size or len(flat)
        was_training = self.model.training
        self.model.eval()
        completion_ids: list[list[int]] = []
        logprobs: list[torch.Tensor] = []
        finished: list[bool] = []
        try:
            rng_devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=rng_devices, enabled=sampling.seed is not None):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                for lo in range(0, len(flat), chunk):
                    ids, lps, fin = self._generate_chunk(flat[lo:lo + chunk], sampling)
                    completion_ids += ids
                    logprobs += lps
                    finished += fin
        finally:
            self.model.train(was_training)
        completions = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        stats = {"gen_seconds": time.perf_counter() - start,
                 "gen_tokens": float(sum(len(c) for c in completion_ids))}
        return Rollout(prompts=list(prompts), prompt_ids=prompt_ids, completion_ids=completion_ids,
                       logprobs=logprobs, completions=completions, n=n, finished=finished, stats=stats)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generate_chunk(self, prompt_ids: list[list[int]], sampling: SamplingConfig):
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=self.device)  # (B, P)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids],
                                      device=self.device)                                              # (B, P)
        recorder = _LogprobRecorder()
        processors = LogitsProcessorList()
        greedy = sampling.temperature == 0          # eval: argmax decoding, log-probs of the raw distribution
        if sampling.temperature not in (0.0, 1.0):
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_p < 1.0 and not greedy:
            processors.append(TopPLogitsWarper(sampling.top_p))
        processors.append(recorder)
        warpers_off = {} if greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        gen_config = GenerationConfig(do_sample=not greedy, max_new_tokens=sampling.max_new_tokens, pad_token_id=pad,
                                      eos_token_id=self.eos_ids, bos_token_id=self.tokenizer.bos_token_id,
                                      **warpers_off)
        sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                        generation_config=gen_config, logits_processor=processors)  # (B, P+T)
        new_tokens = sequences[:, width:]                                                           # (B, T)
        token_lp = recorder.finish(sequences).cpu()                                                 # (B, T)
        ids_out, lps_out, fin_out = [], [], []
        eos = set(self.eos_ids)
        for row, lp_row in zip(new_tokens.tolist(), token_lp):
            end = next((i + 1 for i, t in enumerate(row) if t in eos), None)   # keep EOS, drop what follows
            length = end if end is not None else len(row)
            ids_out.append(row[:length])
            lps_out.append(lp_row[:length].float().contiguous())
            fin_out.append(end is not None)
        return ids_out, lps_out, fin_out


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
