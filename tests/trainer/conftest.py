"""Fixtures for the trainer tests: a tiny model, one thread (the CPU is shared), gradient capture. The prompts,
rewards and small config they share with benchmarks/checks are in ``rapid.testing``."""

import pytest
import torch

from rapid.tiny import build_tiny

torch.set_num_threads(1)


@pytest.fixture
def tiny():
    return build_tiny(num_layers=2, seed=0)


def capture_step_grads(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Patch Policy.step to record every optimizer step's accumulated gradients (before clipping / AdamW).

    Comparing gradients, not weights after AdamW, is what "the same update" means at fp32 noise: Adam's first
    step is ≈ lr · sign(g), which turns a 1e-9 gradient difference on a near-zero entry into a difference of lr.
    """
    from rapid.training.policy import Policy

    steps: list[dict[str, torch.Tensor]] = []
    original = Policy.step

    def step(self):
        steps.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None})
        return original(self)

    monkeypatch.setattr(Policy, "step", step)
    return steps


def assert_same_grads(a: list[dict], b: list[dict], rtol: float = 3e-4) -> None:
    """Every step's gradients equal to ``rtol`` of that tensor's largest entry (fp32 noise, not a wrong sum).

    fp32 summation order differs by CPU: the cpp fused loss vs the eager reference reached 1.06e-4 on an AVX2-only
    EPYC (2026-12-08) and stayed under 1e-4 on AVX-512 boxes; a wrong sum or a missing term is >= 1e-2."""
    assert len(a) == len(b) and a
    for ga, gb in zip(a, b):
        assert ga.keys() == gb.keys()
        for name in ga:
            scale = ga[name].abs().max().item() + 1e-12
            err = (ga[name] - gb[name]).abs().max().item()
            assert err <= rtol * scale, (name, err, scale)
