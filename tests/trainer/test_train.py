"""End-to-end training on a reward a tiny model learns in seconds; backends and loss paths agree."""

import dataclasses

import pytest
import torch

import rapid
from rapid import trainer

from .conftest import PROMPTS, sevens_reward, small_config


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("algo", ["rapid", "grpg", "grpo"])
def test_mean_reward_rises(tiny, algo):
    """Fails if the gradient sign or the baseline is wrong: the reward would fall or stay flat."""
    model, tok = tiny
    pps = 8 if algo == "grpg" else 4
    cfg = small_config(algo=algo, num_rollouts=12, prompts_per_step=pps, lr=3e-3)
    result = rapid.train(model, PROMPTS, sevens_reward, cfg, tokenizer=tok)
    rewards = [h["reward/mean"] for h in result.history]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.25, rewards
    last = result.history[-1]
    for key in ("timing_s/gen", "timing_s/reward", "timing_s/update_actor", "timing_s/step", "perf/throughput",
                "reward/std", "reward/errors", "response_length/mean", "rapid/staleness", "rapid/w_mean",
                "rapid/ess", "rapid/engine_logprob_diff", "perf/max_memory_allocated_gb"):
        assert key in last, key
    assert last["rapid/staleness"] == (cfg.steps_per_rollout - 1) / 2
    assert last["rapid/engine_logprob_diff"] < 1e-4   # HF engine and trainer share the model and the maths


def _one_rollout(tiny, monkeypatch, logits_path=False, **overrides):
    model, tok = tiny
    if logits_path:
        original = trainer.model_parts
        monkeypatch.setattr(trainer, "model_parts", lambda m: dataclasses.replace(original(m), logits_path=True))
    cfg = small_config(num_rollouts=1, **overrides)
    rapid.train(model, PROMPTS, sevens_reward, cfg, tokenizer=tok)
    return _params(model)


@pytest.mark.parametrize("algo", ["rapid", "grpo"])
def test_fused_reference_and_logits_paths_give_the_same_update(tiny, monkeypatch, algo):
    from rapid.tiny import build_tiny

    before = _params(tiny[0])
    fused = _one_rollout(tiny, monkeypatch, algo=algo, kernel_backend="auto")
    reference = _one_rollout(build_tiny(seed=0), monkeypatch, algo=algo, kernel_backend="torch")
    logits = _one_rollout(build_tiny(seed=0), monkeypatch, logits_path=True, algo=algo, kernel_backend="torch")
    moved = max((fused[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-4
    for k in fused:
        torch.testing.assert_close(fused[k], reference[k], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(fused[k], logits[k], atol=2e-5, rtol=1e-4)


def test_micro_batches_accumulate_to_the_full_step(tiny, monkeypatch):
    from rapid.tiny import build_tiny

    whole = _one_rollout(tiny, monkeypatch, micro_batch_size=None)
    split = _one_rollout(build_tiny(seed=0), monkeypatch, micro_batch_size=4)
    for k in whole:
        torch.testing.assert_close(whole[k], split[k], atol=2e-6, rtol=1e-4)


def test_recompute_behavior_and_adaptive_h(tiny):
    model, tok = tiny
    cfg = small_config(behavior_logprobs="recompute", adaptive_h=True, num_rollouts=2)
    result = rapid.train(model, PROMPTS, sevens_reward, cfg, tokenizer=tok)
    assert all("timing_s/old_log_prob" in h for h in result.history)
    assert result.history[0]["rapid/engine_logprob_diff"] < 1e-4


def test_failed_rewards_count_as_errors(tiny):
    model, tok = tiny

    def flaky(prompts, completions, **_):
        return [None if i % 4 == 0 else 1.0 for i in range(len(completions))]

    result = rapid.train(model, PROMPTS, flaky, small_config(num_rollouts=1), tokenizer=tok)
    assert result.history[0]["reward/errors"] == 8 and result.history[0]["reward/mean"] == 0.75


def test_raising_reward_fn_never_kills_the_run(tiny):
    model, tok = tiny
    calls = {"n": 0}

    def sometimes_raises(prompts, completions, **_):
        calls["n"] += 1
        if calls["n"] > 1:                                  # the first call is the pre-flight probe
            raise RuntimeError("verifier crashed")
        return [1.0] * len(completions)

    result = rapid.train(model, PROMPTS, sometimes_raises, small_config(num_rollouts=2), tokenizer=tok)
    assert len(result.history) == 2
    assert all(h["reward/errors"] == 32 and h["reward/mean"] == 0.0 for h in result.history)  # 8 prompts x K=4
