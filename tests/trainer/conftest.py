"""Shared fixtures for the trainer tests: a tiny model, one thread (the CPU is shared), quiet progress bars."""

import pytest
import torch

import rapid
from rapid.tiny import build_tiny

torch.set_num_threads(1)


@pytest.fixture
def tiny():
    return build_tiny(num_layers=2, seed=0)


def sevens_reward(prompts, completions, **_):
    """A reward a random tiny model learns in seconds: the fraction of '7's in a 4-character completion."""
    return [c.count("7") / 4 for c in completions]


PROMPTS = [{"prompt": f"{i}="} for i in range(32)]


def small_config(**overrides) -> rapid.RapidConfig:
    base = dict(group_size=4, prompts_per_rollout=8, prompts_per_step=4, num_rollouts=2, max_new_tokens=4,
                lr=3e-3, progress_bar=False, seed=0)
    return rapid.RapidConfig(**{**base, **overrides})
