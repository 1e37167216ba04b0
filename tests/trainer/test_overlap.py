"""overlap=True: rollout r+1 is generated in the engine process while the trainer updates on rollout r."""

import os
import signal

import pytest
import torch

import rapid
from rapid.training import loop as trainer   # the run loop (rapid.train builds it): update and the engine process
from rapid.engines.base import SamplingConfig
from rapid.engines.hf import HFEngine
from rapid.tiny import build_tiny

from rapid.testing import PROMPTS, digits_reward, small_config

OVERLAP = dict(overlap=True, engine_threads=1, num_rollouts=3)


def _record_updates(monkeypatch):
    """Wrap trainer.update: the weights before each rollout's update, its buffer and plan, and its gradients."""
    from rapid.training.policy import Policy

    calls = []
    original_update, original_step = trainer.update, Policy.step

    def update(policy, buffer, plan, start=0, on_step=None):
        import copy

        calls.append({"before": {k: v.clone() for k, v in policy.model.state_dict().items()}, "buffer": buffer,
                      "plan": plan, "grads": [], "optimizer": copy.deepcopy(policy.optimizer.state_dict()),
                      "policy": copy.deepcopy(policy.state_dict())})
        return original_update(policy, buffer, plan, start, on_step)

    def step(self):
        calls[-1]["grads"].append({n: p.grad.clone() for n, p in self.model.named_parameters()})
        return original_step(self)

    monkeypatch.setattr(trainer, "update", update)
    monkeypatch.setattr(Policy, "step", step)
    return calls


def test_overlap_generates_from_the_previous_weights_and_updates_identically(monkeypatch):
    calls = _record_updates(monkeypatch)
    model, tok = build_tiny(seed=0)
    cfg = small_config(**OVERLAP)
    history = rapid.train(model, PROMPTS, digits_reward, cfg, tokenizer=tok).history
    assert [h["rapid/staleness"] for h in history] == [0.5, 2.5, 2.5]          # H = 2: one rollout staler
    assert history[0]["rapid/engine_logprob_diff"] < 1e-5      # the engine process samples the trainer's π: w = 1
    assert all(h["perf/overlap_frac"] > 0 for h in history[:-1])

    # rollout 2 was sampled from exactly the weights before rollout 1's update (version check, by the tokens)
    reference = build_tiny(seed=0)[0]
    reference.load_state_dict(calls[1]["before"])
    rollout = calls[2]["buffer"].rollout
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1_000_003 + 2,
                              prompt_keys=tuple(range(16, 24)))
    again = HFEngine(reference, tok).generate(rollout.prompts, cfg.group_size, sampling)
    assert again.completion_ids == rollout.completion_ids
    for a, b in zip(again.logprobs, rollout.logprobs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    # the update from a given rollout is the sequential trainer's update on it, bit for bit
    from rapid.training.policy import Policy
    from rapid.training.update import update

    offline = build_tiny(seed=0)[0]
    offline.load_state_dict(calls[2]["before"])
    monkeypatch.undo()
    seq_calls = _record_updates(monkeypatch)
    seq_calls.append({"grads": []})
    policy = Policy(offline, small_config(num_rollouts=3), torch.device("cpu"), total_steps=6)
    policy.optimizer.load_state_dict(calls[2]["optimizer"])          # AdamW's moments and the schedule as they were
    policy.load_state_dict(calls[2]["policy"])
    update(policy, calls[2]["buffer"], calls[2]["plan"])
    assert len(calls[2]["grads"]) == len(seq_calls[-1]["grads"]) == 2
    for ga, gb in zip(calls[2]["grads"], seq_calls[-1]["grads"]):
        for name in ga:
            assert torch.equal(ga[name], gb[name]), name


def test_broadcast_weight_transport_trains_exactly_like_shared_memory(monkeypatch):
    """The CUDA overlap path's weight transport (a process group of its own; gloo here, NCCL on GPUs) in the
    whole loop: on-policy w = 1 and the same weights, bit for bit, as the shared-memory transport."""
    from rapid.engines.process import client as remote

    model, tok = build_tiny(seed=0)
    shm = rapid.train(model, PROMPTS, digits_reward, small_config(**OVERLAP), tokenizer=tok)
    monkeypatch.setattr(remote, "DEFAULT_TRANSPORT", "broadcast")
    sends = []
    original = remote.WeightChannel.send
    monkeypatch.setattr(remote.WeightChannel, "send", lambda self, *a: sends.append(1) or original(self, *a))
    model, tok = build_tiny(seed=0)
    broadcast = rapid.train(model, PROMPTS, digits_reward, small_config(**OVERLAP), tokenizer=tok)
    assert len(sends) == 1 + 3                                   # version 0, then one sync per rollout
    assert broadcast.history[0]["rapid/engine_logprob_diff"] < 1e-5
    assert [h["reward/mean"] for h in broadcast.history] == [h["reward/mean"] for h in shm.history]
    for (name, a), b in zip(shm.model.state_dict().items(), broadcast.model.state_dict().values()):
        assert torch.equal(a, b), name


def _engine_pids(monkeypatch):
    from rapid.engines.process import client as remote

    pids = []
    original = remote.ProcessEngine.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pids.append(self.pid)

    monkeypatch.setattr(remote.ProcessEngine, "__init__", init)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:                 # a zombie is dead too
        return f.read().split()[2] != "Z"


def test_engine_process_never_outlives_the_run(monkeypatch):
    pids = _engine_pids(monkeypatch)
    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(**OVERLAP), tokenizer=tok)
    assert len(pids) == 1 and not _alive(pids[0])

    def broken(*args, **kwargs):
        raise RuntimeError("update failed")

    monkeypatch.setattr(trainer, "update", broken)
    model, tok = build_tiny(seed=0)
    with pytest.raises(RuntimeError, match="update failed"):
        rapid.train(model, PROMPTS, digits_reward, small_config(**OVERLAP), tokenizer=tok)
    assert len(pids) == 2 and not _alive(pids[1])


def test_resume_mid_run_with_overlap_is_exact(tmp_path):
    base = dict(**{**OVERLAP, "num_rollouts": 4}, prompts_per_step=2, save_every=1)
    model, tok = build_tiny(seed=0)
    full = rapid.train(model, PROMPTS, digits_reward, small_config(**base), tokenizer=tok).model

    calls = {"n": 0}

    def interrupting(prompts, completions, **kw):
        calls["n"] += 1
        if calls["n"] == 3:                                   # the probe, rollout 0, then rollout 1 arrives
            os.kill(os.getpid(), signal.SIGINT)
        return digits_reward(prompts, completions, **kw)

    out = str(tmp_path / "run")
    model, tok = build_tiny(seed=0)
    first = rapid.train(model, PROMPTS, interrupting, small_config(**base, output_dir=out), tokenizer=tok)
    assert first.interrupted
    model, tok = build_tiny(seed=0)
    resumed = rapid.train(model, PROMPTS, digits_reward, small_config(**base, output_dir=out, resume=True),
                          tokenizer=tok)
    assert [h["rollout"] for h in resumed.history if "reward/mean" in h] == [1, 2, 3, 4]
    for (name, a), b in zip(full.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_overlap_refusals():
    with pytest.raises(ValueError, match="overlap=True needs behavior_logprobs='engine'"):
        small_config(overlap=True, algo="grpo")
    small_config(overlap=True, algo="grpo", behavior_logprobs="engine")
    with pytest.raises(ValueError, match="overlap=True .* one GPU"):
        trainer.start_engine_process(small_config(overlap=True), None, None, None, torch.float32,
                                     torch.device("cuda"))


def test_overlap_on_cuda_puts_each_engine_on_a_gpu_of_its_own(monkeypatch):
    from rapid.engines.process import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.engine_gpu(torch.device("cuda", 0)) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")                 # torchrun, 2 ranks: GPUs 0, 1 train; 2, 3 generate
    assert [launch.engine_gpu(torch.device("cuda", i)) for i in (0, 1)] == [torch.device("cuda", 2),
                                                                              torch.device("cuda", 3)]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="4 GPU\\(s\\) for 4 trainer process"):
        launch.engine_gpu(torch.device("cuda", 0))
