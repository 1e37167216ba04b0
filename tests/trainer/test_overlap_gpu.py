"""GPU tier for overlapped generation (`pytest -m gpu`, 2+ CUDA devices): the trainer on GPU 0, the engine process
on GPU 1, weights broadcast over NCCL. Never run yet: no multi-GPU machine has been lent to this project
(benchmarks/RESULTS.md says so); the same code runs on CPU with gloo in tests/trainer/test_overlap.py and
tests/engines/test_remote.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

import rapid
from rapid.config import RapidConfig
from rapid.engines.base import SamplingConfig
from rapid.engines.process.client import ProcessEngine
from rapid.engines.weights import hf_weights
from rapid.tiny import build_tiny

from rapid.testing import PROMPTS, digits_reward, small_config

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def two_gpus():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices: one trains, the other generates")


def test_nccl_broadcast_delivers_the_trainers_weights_to_the_engine_gpu():
    model, tok = build_tiny(seed=0)
    model = model.to("cuda:0")
    cfg = RapidConfig(engine="hf", max_new_tokens=8, group_size=2, seed=0)
    sampling = SamplingConfig(max_new_tokens=8, seed=5)
    with ProcessEngine(model, tok, cfg, kind="hf", threads=1, device="cuda:1", dtype=torch.float32) as eng:
        assert eng.transport == "broadcast" and eng._channel.backend == "nccl"
        first = eng.generate(["12+34="], 2, sampling)
        changed = copy.deepcopy(model)
        with torch.no_grad():
            for _, weight in hf_weights(changed):
                weight.mul_(1.01)
        assert eng.sync_weights(changed) == 1
        second = eng.generate(["12+34="], 2, sampling)
        assert second.stats["weights_version"] == 1
        assert any(not torch.equal(a, b) for a, b in zip(first.logprobs, second.logprobs) if a.shape == b.shape)


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_overlap_on_two_gpus_is_on_policy_and_trains(engine):
    if engine == "vllm":
        pytest.importorskip("vllm")
    model, tok = build_tiny(seed=0)
    cfg = small_config(overlap=True, engine=engine, num_rollouts=3, dtype="bfloat16")
    result = rapid.train(model, PROMPTS, digits_reward, cfg, tokenizer=tok)
    # the engine GPU samples the trainer's π (bf16 arithmetic aside: 4.5e-4 per token on CPU, RESULTS.md)
    assert result.history[0]["rapid/engine_logprob_diff"] < 1e-2
    assert all(h["perf/overlap_frac"] >= 0 for h in result.history)
    assert next(result.model.parameters()).dtype == torch.float32
