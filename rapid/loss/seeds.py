"""Every seed the run derives from ``config.seed``, and the RNG state a checkpoint saves: one place, because exact
resume depends on each formula giving the same value in the resumed run (change one and resumed runs diverge).

The per-completion seeds an engine samples with (``hash(seed, prompt key, j)``) are ``sampling.row_seeds``: they
are the counter-based RNG of the sampler itself, which the HF and vLLM engines share.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """torch (CPU and CUDA), numpy and python's ``random``: LoRA init, dropout and anything a user hooks in."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def rollout_seed(seed: int, rollout: int) -> int:
    """Base seed of training rollout ``rollout``'s sampling (``SamplingConfig.seed``)."""
    return seed * 1_000_003 + rollout


def eval_seed(seed: int) -> int:
    """Base seed of the sampled evaluation (the same at every evaluation, so evaluations compare)."""
    return seed * 1_000_003 - 1


def prompt_order_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s permutation of the prompts."""
    return seed * 1_000_003 + epoch


def minibatch_seed(seed: int, rollout: int) -> int:
    """Seed of the shuffle that cuts rollout ``rollout``'s groups into H mini-batches."""
    return seed * 7_919 + rollout


def completion_log_seed(seed: int, rollout: int) -> int:
    """Seed of the choice of rollout ``rollout``'s completions written to completions.jsonl."""
    return seed + rollout


def rank_seed(rank0_rng: dict, rank: int) -> int:
    """A seed for a rank that has no saved RNG: a hash of rank 0's saved torch state and the rank (deterministic)."""
    digest = hashlib.sha256(rank0_rng["torch"].numpy().tobytes() + f"rank{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def rng_state() -> dict:
    """This process's RNG states: torch CPU, CUDA (current device, when initialised), python, numpy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
