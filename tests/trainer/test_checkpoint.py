"""Checkpoints at world size 1: an interrupted run resumes exactly; saves are atomic, verified by a manifest, and a
damaged newest checkpoint falls back to the previous intact one. (World-size changes: tests/distributed.)"""

import contextlib
import hashlib
import json
import os
import signal

import pytest
import torch

import rapid
from rapid import checkpoint
from rapid.tiny import build_tiny

from rapid.testing import PROMPTS, sevens_reward, small_config

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
        if str(path).endswith("trainer_state.pt"):
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


def test_a_failing_clean_up_does_not_mask_the_error(tmp_path, tiny, monkeypatch, caplog):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def failing_dcp_save(*args, **kwargs):
        raise OSError("no space left on device")

    def failing_rmtree(path, onerror=None, **kwargs):
        onerror(os.rmdir, str(path), (PermissionError, PermissionError("read-only"), None))

    monkeypatch.setattr(checkpoint.dcp, "save", failing_dcp_save)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", failing_rmtree)
    with pytest.raises(OSError, match="no space left on device"):
        checkpoint.save_checkpoint(tmp_path, 1, model, opt, {"rollout": 1}, {})
    assert "could not remove" in caplog.text and "read-only" in caplog.text
    assert checkpoint.list_checkpoints(tmp_path) == []                 # the temp dir is never listed


def _damage(path, how):
    if how == "truncated":
        shard = next((path / "model_optim").glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:100])
    elif how == "deleted":
        (path / "trainer_state.pt").unlink()
    elif how == "no manifest":
        (path / checkpoint.MANIFEST).unlink()
    elif how == "corrupt":                                              # same size, one byte flipped
        data = bytearray((path / "trainer_state.pt").read_bytes())
        data[-1] ^= 0xFF
        (path / "trainer_state.pt").write_bytes(bytes(data))


@pytest.mark.parametrize("how,reason", [("truncated", "truncated or changed file model_optim/"),
                                        ("deleted", "missing file trainer_state.pt"),
                                        ("no manifest", "missing MANIFEST.json"),
                                        ("corrupt", "corrupt file trainer_state.pt")])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, tiny, caplog, how, reason):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = checkpoint.save_checkpoint(tmp_path, 1, model, opt, {"rollout": 1}, {}, keep=3)
    newest = checkpoint.save_checkpoint(tmp_path, 2, model, opt, {"rollout": 2}, {}, keep=3)
    assert checkpoint.verify_checkpoint(newest) is None
    _damage(newest, how)
    assert checkpoint.verify_checkpoint(newest).startswith(reason)
    assert checkpoint.latest_intact_checkpoint(tmp_path) == first
    assert f"skipping checkpoint {newest}: {reason}" in caplog.text
    with pytest.raises(checkpoint.CheckpointError, match="not an intact checkpoint") if how != "corrupt" else \
            contextlib.nullcontext():                                   # loading checks sizes only, not hashes
        checkpoint.load_checkpoint(newest, model, opt)


def test_checkpoint_holds_a_manifest_of_every_file(tmp_path, tiny):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = checkpoint.save_checkpoint(tmp_path, 5, model, opt, {"rollout": 5}, {"lr": 1e-3})
    manifest = json.loads((path / checkpoint.MANIFEST).read_text())
    on_disk = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    assert sorted(manifest["files"]) == on_disk
    for rel, info in manifest["files"].items():
        data = (path / rel).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads((path / "config.json").read_text()) == {"lr": 1e-3}


class _LossModule(torch.nn.Module):
    """The shape of the trainer's Policy: the HF model inside a loss module (names gain a ``model.`` prefix)."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def test_loss_module_and_bare_model_share_checkpoints_with_scheduler(tmp_path):
    trained, _ = build_tiny(num_layers=2, seed=0)
    wrapper = _LossModule(trained)
    opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trained(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    sched.step()
    path = checkpoint.save_checkpoint(tmp_path, 1, wrapper, opt, {"rollout": 1}, {}, scheduler=sched)
    bare, _ = build_tiny(num_layers=2, seed=1)
    opt2 = torch.optim.AdamW(bare.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    checkpoint.load_checkpoint(path, bare, opt2, scheduler=sched2)
    for (name, a), b in zip(bare.named_parameters(), trained.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
        torch.testing.assert_close(opt2.state[a]["exp_avg"], opt.state[b]["exp_avg"], atol=0, rtol=0, msg=name)
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_peft_checkpoint_holds_only_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    base, _ = build_tiny(num_layers=2, seed=0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    path = checkpoint.save_checkpoint(tmp_path, 1, model, opt, {"rollout": 1}, {})
    stored = checkpoint.stored_model_keys(path)
    assert stored and all(".lora_A." in k or ".lora_B." in k for k in stored)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fresh = peft.get_peft_model(build_tiny(num_layers=2, seed=0)[0],
                                peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    checkpoint.load_checkpoint(path, fresh, torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad]))
    for name, p in fresh.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, trained[name], atol=0, rtol=0, msg=name)


def test_keeps_only_the_last_n(tmp_path, tiny):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for r in range(1, 5):
        checkpoint.save_checkpoint(tmp_path, r, model, opt, {"rollout": r}, {}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["rollout-000003", "rollout-000004"]


def test_bad_arguments_are_named(tmp_path, tiny):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="rollout"):
        checkpoint.save_checkpoint(tmp_path, -1, model, opt, {}, {})
    with pytest.raises(ValueError, match="trainer_state"):
        checkpoint.save_checkpoint(tmp_path, 1, model, opt, None, {})
