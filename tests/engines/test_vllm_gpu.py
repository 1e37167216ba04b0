"""VLLMEngine on one GPU: sleep frees memory the trainer can use; a level-2 wake + sync reproduces the trainer.

Run with ``pytest -m gpu tests/engines/test_vllm_gpu.py`` on a CUDA machine with vLLM (0.20 on the GPU stack).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

# The gpu marker deselects these under `make test` (-m "not gpu"); tests/conftest.py skips them without CUDA.
pytestmark = [pytest.mark.gpu, pytest.mark.vllm]

if os.environ.get("RAPID_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

from rapid.config import RapidConfig
from rapid.engines.base import SamplingConfig
from rapid.engines.base import EngineError
from rapid.engines.vllm import VLLMEngine
from rapid.tiny import build_tiny

GiB = 1 << 30
PROMPTS = ["12+34=", "hello", "the cat sat on"]


def sharpened_tiny(num_layers: int = 2):
    """fp32 tiny Qwen2 with a scaled embedding: larger logit margins, so greedy argmax has no near-ties that
    kernel-level rounding differences between vLLM and HF could flip."""
    model, tok = build_tiny(num_layers=num_layers, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    return model.to("cuda").eval(), tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = sharpened_tiny()
    cfg = RapidConfig(max_new_tokens=24, max_model_len=128, seed=0, gpu_memory_utilization=0.3,
                      enforce_eager=True, sleep_level=2)
    engine = VLLMEngine(model, tok, cfg, tmp_path_factory.mktemp("vllm-gpu"))
    yield engine, model, tok
    engine.close()


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def hf_greedy(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([tok(prompt)["input_ids"]], device="cuda")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_sleep_frees_memory_for_training(setup):
    engine, model, tok = setup
    engine.wake()
    engine.sync_weights(model)
    engine.generate(PROMPTS, n=2, sampling=SamplingConfig(max_new_tokens=8, seed=0))
    awake = free_bytes()
    engine.sleep()
    asleep = free_bytes()
    freed = asleep - awake
    # gpu_memory_utilization=0.3 reserves ~30 % of the card for weights + KV cache; nearly all of it returns
    assert freed > 0.5 * 0.3 * torch.cuda.mem_get_info()[1], f"sleep freed only {freed / GiB:.2f} GiB"

    # the trainer can now use that memory: a block the size of what was freed, and a training step
    block = torch.empty(int(0.8 * freed), dtype=torch.uint8, device="cuda")
    student = copy.deepcopy(model).train()
    ids = torch.tensor([tok("12+34=46")["input_ids"]], device="cuda")
    student(ids, labels=ids).loss.backward()
    del block, student
    torch.cuda.empty_cache()

    timings = engine.pop_timings()
    assert timings["timing_s/sleep"] > 0


def test_level2_wake_and_sync_reproduce_trainer_greedy(setup):
    engine, model, tok = setup
    engine.sleep()
    engine.wake()
    with pytest.raises(EngineError, match="level-2"):
        engine.generate(PROMPTS, n=1, sampling=SamplingConfig(max_new_tokens=4, temperature=0.0))

    # train a copy a little so the synced weights differ from the ones vLLM started with
    student = copy.deepcopy(model).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    ids = torch.tensor([tok("12+34=46 and 5+6=11")["input_ids"]], device="cuda")
    student(ids, labels=ids).loss.backward()
    opt.step()
    student.eval()

    engine.sync_weights(student)
    greedy = SamplingConfig(max_new_tokens=24, temperature=0.0)      # vLLM: temperature 0 = greedy
    rollout = engine.generate(PROMPTS, n=1, sampling=greedy)
    for prompt, got in zip(PROMPTS, rollout.completion_ids):
        assert got == hf_greedy(student, tok, prompt, 24), prompt
    engine.sleep()


def test_level1_keeps_weights(setup):
    engine, model, tok = setup
    engine.wake()
    engine.sync_weights(model)
    engine.config = dataclasses.replace(engine.config, sleep_level=1)   # one LLM per process: reuse it
    try:
        engine.sleep()
        engine.wake()                                   # level 1: the CPU copy comes back, no sync needed
        greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
        rollout = engine.generate(PROMPTS[:1], n=1, sampling=greedy)
        assert rollout.completion_ids[0] == hf_greedy(model, tok, PROMPTS[0], 16)
        engine.sleep()
    finally:
        engine.config = dataclasses.replace(engine.config, sleep_level=2)
