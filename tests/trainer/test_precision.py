"""Precision: fp32 master weights and AdamW state whatever the compute dtype; bf16 steps at RL learning rates land."""

import pytest
import torch

import rapid
from rapid.training.policy import lr_lambda

from rapid.testing import PROMPTS, digits_reward, sevens_reward, small_config


def _moved_fraction(before: dict, model) -> float:
    changed = sum((p.detach() != before[n]).sum().item() for n, p in model.named_parameters())
    return changed / sum(p.numel() for p in model.parameters())


def test_bf16_compute_at_lr_1e_6_moves_most_master_weights(tiny):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = rapid.train(model, PROMPTS, digits_reward, small_config(dtype="bfloat16", lr=1e-6, num_rollouts=1),
                         tokenizer=tok)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())          # the master copy
    assert _moved_fraction(before, result.model) > 0.5

    # The failure this guards against: the same AdamW step applied to bf16 parameters in place is lost.
    bf16 = {n: b.to(torch.bfloat16) for n, b in before.items()}
    for name, p in result.model.named_parameters():
        step = (p.detach() - before[name]).to(torch.bfloat16)
        bf16[name] = bf16[name] + step
    lost = sum((bf16[n] == before[n].to(torch.bfloat16)).sum().item() for n in bf16)
    assert lost / sum(b.numel() for b in bf16.values()) > 0.9


def test_optimizer_state_is_fp32_and_engine_computes_in_bf16(tiny, monkeypatch):
    from rapid.engines.hf import HFEngine

    seen = []
    original = HFEngine.generate

    def spy(self, prompts, n, sampling):
        seen.append(self.dtype)
        return original(self, prompts, n, sampling)

    monkeypatch.setattr(HFEngine, "generate", spy)
    model, tok = tiny
    model.to(torch.bfloat16)                                    # a user's bf16 model becomes an fp32 master
    result = rapid.train(model, PROMPTS, digits_reward, small_config(dtype="bfloat16", num_rollouts=1),
                         tokenizer=tok)
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_fp16_trains_with_a_loss_scaler(tiny, monkeypatch):
    from rapid.training.policy import Policy

    scalers = []
    original = Policy.step

    def spy(self):
        scalers.append(self.scaler)
        return original(self)

    monkeypatch.setattr(Policy, "step", spy)
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = rapid.train(model, PROMPTS, digits_reward, small_config(dtype="float16", lr=1e-4, num_rollouts=1),
                         tokenizer=tok)
    assert scalers and all(isinstance(s, torch.amp.GradScaler) for s in scalers)
    assert _moved_fraction(before, result.model) > 0.5


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466]),
])
def test_lr_schedules_after_warmup(schedule, expected):
    factor = lr_lambda(small_config(lr_scheduler=schedule, warmup_steps=2), total_steps=6)
    assert [factor(s) for s in range(6)] == pytest.approx(expected, abs=1e-6)


def test_lr_schedule_reaches_the_optimizer(tiny):
    model, tok = tiny
    cfg = small_config(lr=1e-3, lr_scheduler="linear", warmup_steps=1, num_rollouts=2)     # 4 steps in all
    result = rapid.train(model, PROMPTS, digits_reward, cfg, tokenizer=tok)
    lrs = [h["actor/lr"] for h in result.history]                  # mean lr of each rollout's 2 steps
    assert lrs[0] > lrs[1] > 0


def test_rapid_learns_in_bf16_on_cpu(tiny):
    """The short learning check for bf16 compute on CPU (what dtype="auto" picks where it is measured faster):
    fp32 masters, bf16 autocast and a bf16 engine still raise the reward as fp32 does (test_train)."""
    model, tok = tiny
    cfg = small_config(algo="rapid", num_rollouts=12, prompts_per_step=4, lr=3e-3, dtype="bfloat16")
    result = rapid.train(model, PROMPTS, sevens_reward, cfg, tokenizer=tok)
    rewards = [h["reward/mean"] for h in result.history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.25, rewards
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
