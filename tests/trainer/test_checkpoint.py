"""Checkpoints: an interrupted run resumes to exactly the state of an uninterrupted one; saves are atomic."""

import os
import signal

import pytest
import torch

import rapid
from rapid import checkpoint
from rapid.tiny import build_tiny

from .conftest import PROMPTS, sevens_reward, small_config

COMPARED = ("reward/mean", "reward/std", "response_length/mean", "rapid/w_mean", "actor/loss")


def test_interrupt_then_resume_matches_uninterrupted_run(tmp_path):
    cfg = dict(num_rollouts=4, prompts_per_rollout=4, prompts_per_step=4)   # H = 1: a signal lands between rollouts
    full = _train(_model(), sevens_reward,
                       small_config(output_dir=str(tmp_path / "full"), **cfg))

    calls = {"n": 0}

    def interrupting_reward(prompts, completions, **kw):
        calls["n"] += 1
        if calls["n"] == 3:                     # call 1 is the up-front probe; call 3 is rollout 2
            os.kill(os.getpid(), signal.SIGINT)
        return sevens_reward(prompts, completions)

    run_dir = str(tmp_path / "resumed")
    first = _train(_model(), interrupting_reward,
                        small_config(output_dir=run_dir, **cfg))
    assert first.interrupted and len(first.history) == 2
    assert [p.name for p in checkpoint.list_checkpoints(f"{run_dir}/checkpoints")] == ["rollout-000002"]

    resumed = _train(_model(seed=123), sevens_reward,
                          small_config(output_dir=run_dir, resume=True, **cfg))
    assert not resumed.interrupted and [h["rollout"] for h in resumed.history] == [1, 2, 3, 4]
    for got, want in zip(resumed.history[2:], full.history[2:]):
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
    for (name, a), b in zip(resumed.model.named_parameters(), full.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def _train(model_tok, reward_fn, config):
    model, tok = model_tok
    return rapid.train(model, PROMPTS, reward_fn, config, tokenizer=tok)


def _model(seed=0):
    model, tok = build_tiny(seed=seed)
    return model, tok


def test_checkpoint_roundtrip_restores_optimizer_and_rng(tmp_path, tiny):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    torch.manual_seed(42)
    path = checkpoint.save_checkpoint(tmp_path, 3, model, opt, {"rollout": 3}, {"lr": 1e-3})
    expected_draw = torch.rand(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = checkpoint.load_checkpoint(path, model, opt2)
    assert state["rollout"] == 3
    torch.testing.assert_close(torch.rand(3), expected_draw)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, tiny, monkeypatch):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    good = checkpoint.save_checkpoint(tmp_path, 1, model, opt, {"rollout": 1}, {})
    original_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise OSError("disk full")
        return original_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(tmp_path, 2, model, opt, {"rollout": 2}, {})
    monkeypatch.undo()
    assert checkpoint.latest_checkpoint(tmp_path) == good
    assert sorted(os.listdir(tmp_path)) == ["rollout-000001"]          # no temp dir left behind
    state = checkpoint.load_checkpoint(good, model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert state["rollout"] == 1


def test_keeps_only_the_last_n(tmp_path, tiny):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for r in range(1, 5):
        checkpoint.save_checkpoint(tmp_path, r, model, opt, {"rollout": r}, {}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["rollout-000003", "rollout-000004"]
