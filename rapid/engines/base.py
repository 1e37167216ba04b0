"""The generation-engine contract (DESIGN.md section 3) shared by HFEngine and VLLMEngine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


class EngineError(RuntimeError):
    """The generation engine failed; the message says what to change, ``__cause__`` holds the backend's error."""


@dataclass(frozen=True)
class SamplingConfig:
    """What an engine needs to sample one rollout."""

    max_new_tokens: int
    temperature: float = 1.0           # 0: greedy (evaluation only)
    top_k: int = 0                     # 0: off
    top_p: float = 1.0
    seed: int | None = None            # base of the per-completion seeds (None: random)
    stop: tuple[str, ...] | None = None  # stop strings: the completion ends after the token completing one
    prompt_keys: tuple[int, ...] | None = None
    """A stable identity per prompt (its position in the global rollout): completion j of the prompt with key p is
    drawn with seed hash(seed, p, j), whatever the batch, chunking, rank or process that generates it."""


@dataclass
class Rollout:
    """prompts × n completions from one engine call, grouped: completion i belongs to prompt i // n.

    Completions are ragged: ``completion_ids[i]`` holds the sampled tokens (EOS included when it was sampled) and
    ``logprobs[i]`` the behaviour log-probs of exactly those tokens under the *processed* (temperature / top-k /
    top-p) sampling distribution, in float32.
    """

    prompts: list[str]
    prompt_ids: list[list[int]]            # one per prompt
    completion_ids: list[list[int]]        # len(prompts) * n
    logprobs: list[torch.Tensor]           # len(prompts) * n, each (len(completion_ids[i]),) float32
    completions: list[str]                 # decoded text (special tokens skipped)
    n: int                                 # group size
    finished: list[bool] = field(default_factory=list)   # True when EOS / a stop token ended the completion
    stats: dict[str, float] = field(default_factory=dict)  # engine-side timings / counters

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


@runtime_checkable
class Engine(Protocol):
    """A generation engine that shares the device with the trainer."""

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig) -> Rollout:
        """Sample n completions per prompt in one call."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights."""

    def sleep(self) -> None:
        """Free the engine's device memory for training (no-op where unsupported)."""

    def wake(self) -> None:
        """Re-acquire device memory before generating (no-op where unsupported)."""

    def close(self) -> None:
        """Release everything (end of run)."""
