"""vLLM engine: on-policy, the trainer's log π equals the engine's log μ for every accepted sampling setting,
with a model whose generation_config.json would reshape sampling if vLLM consulted it (w = 1 per sequence)."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("RAPID_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (make test sets RAPID_REQUIRE_VLLM=1: a missing vLLM must fail, not skip)
else:
    pytest.importorskip("vllm")

from rapid.training.buffer import RolloutBuffer
from rapid.config import RapidConfig
from rapid.engines.vllm import VLLMEngine
from rapid.training.policy import PolicyLoss
from rapid.training.rollout import rollout_sampling
from rapid.tiny import build_tiny, save_tiny

pytestmark = pytest.mark.vllm

SETTINGS = [dict(temperature=1.0), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8),
            dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=0.9, stop=["a", "5"])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = build_tiny(seed=0)
    g = model.generation_config
    g.repetition_penalty, g.no_repeat_ngram_size, g.min_new_tokens = 1.5, 2, 3
    g.temperature, g.top_k, g.top_p, g.do_sample = 0.3, 3, 0.5, True
    path = save_tiny(model, tok, tmp_path_factory.mktemp("hostile") / "model")
    assert "repetition_penalty" in (path / "generation_config.json").read_text()
    engine = VLLMEngine(str(path), tok, RapidConfig(max_new_tokens=8, max_model_len=64, seed=0, group_size=4,
                                                    dtype="float32"))
    yield model.eval(), tok, engine
    engine.close()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_vllm_on_policy_weights_are_one(setup, setting):
    model, tok, engine = setup
    cfg = RapidConfig(max_new_tokens=8, group_size=4, seed=1, kernel_backend="torch", **setting)
    rollout = engine.generate(["1+1=", "23+4=", "hello"], cfg.group_size, rollout_sampling(cfg, 0, 0, 3))
    buffer = RolloutBuffer(rollout, [0.0] * len(rollout.completion_ids), cfg.group_size)
    mb = buffer.pack(list(range(len(rollout.completion_ids))), torch.device("cpu"))
    with torch.no_grad():
        trainer_lp = PolicyLoss(model, cfg, torch.float32)(mb, "logprobs")                        # (N,)
    engine_lp = mb.batch.behavior_logprobs                                                         # (N,)
    assert torch.isfinite(trainer_lp).all()
    assert (trainer_lp - engine_lp).abs().max() < 1e-4
    cu = mb.batch.cu_seqlens.tolist()
    log_w = torch.stack([(trainer_lp - engine_lp)[a:b].sum() for a, b in zip(cu[:-1], cu[1:])])    # (S,)
    assert log_w.abs().max() < 5e-4
    if "stop" in setting:                                         # text cut before the stop, tokens through it
        assert not any(x in t for t in rollout.completions for x in setting["stop"])
        text = lambda ids: tok.decode(ids, skip_special_tokens=True)    # noqa: E731
        ended = [ids for ids in rollout.completion_ids if any(x in text(ids) for x in setting["stop"])]
        assert ended and all(not any(x in text(ids[:-1]) for x in setting["stop"]) for ids in ended)
    if setting.get("top_k") or setting.get("top_p", 1.0) < 1:     # the truncated distribution, not the full one
        full = PolicyLoss(model, RapidConfig(max_new_tokens=8, group_size=4, kernel_backend="torch",
                                             temperature=setting.get("temperature", 1.0)), torch.float32)
        with torch.no_grad():
            assert (full(mb, "logprobs") - engine_lp).abs().max() > 1e-2
