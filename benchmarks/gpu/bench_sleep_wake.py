"""Sleep + wake + in-place weight sync of the colocated vLLM engine, Qwen2.5-0.5B-shaped random model, one GPU.

One cycle is what the trainer pays per rollout besides generation:
    sleep(level) → wake(tags=["weights"]) → sync_weights(model) → wake(tags=["kv_cache"])
Target (issue 6): sleep + wake + sync ≤ 0.5 s in total. Warm-up cycles are excluded and reported apart; every
phase is timed between device synchronisations (VLLMEngine does this on CUDA). The last line printed is JSON.

    python benchmarks/gpu/bench_sleep_wake.py [--level 2] [--cycles 10] [--gpu-memory-utilization 0.35]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time

import torch


def qwen25_05b_shaped(vocab_size: int = 151_936):
    """Qwen2.5-0.5B's shapes (24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4864, tied embeddings), random."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").to("cuda")


def word_tokenizer(vocab_size: int):
    """A whitespace tokenizer covering every id, so whatever the random model samples detokenises."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, choices=(1, 2), default=2)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import vllm

    from rapid.config import RapidConfig
    from rapid.engines.base import SamplingConfig
    from rapid.engines.vllm import VLLMEngine

    model = qwen25_05b_shaped()
    tok = word_tokenizer(model.config.vocab_size)
    cfg = RapidConfig(max_new_tokens=32, max_model_len=1024, seed=0, sleep_level=args.level,
                      gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager)
    prompts = [" ".join(f"w{(7 * i + j) % 5000 + 3}" for j in range(64)) for i in range(16)]
    sampling = SamplingConfig(max_new_tokens=32, temperature=1.0, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        engine = VLLMEngine(model, tok, cfg, workdir)
        cycles = []
        for i in range(args.warmup + args.cycles):
            engine.generate(prompts, n=4, sampling=sampling)       # leaves the KV cache in use, as a rollout does
            with torch.no_grad():                                  # the "training step": weights change
                model.model.norm.weight.add_(1e-3)
            engine.pop_timings()
            free_awake = torch.cuda.mem_get_info()[0]
            engine.sleep()
            free_asleep = torch.cuda.mem_get_info()[0]
            engine.wake()
            engine.sync_weights(model)
            t = engine.pop_timings()
            t0 = time.perf_counter()
            engine._ensure_awake_for_generation()                 # wake_up(tags=["kv_cache"]), synchronised
            kv_wake = time.perf_counter() - t0
            engine.pop_timings()
            row = {"sleep_s": t["timing_s/sleep"], "wake_s": t["timing_s/wake"],
                   "update_weights_s": t["timing_s/update_weights"], "wake_kv_s": kv_wake,
                   "freed_gib": (free_asleep - free_awake) / 2**30}
            row["total_s"] = row["sleep_s"] + row["wake_s"] + row["update_weights_s"]
            row["total_with_kv_s"] = row["total_s"] + kv_wake
            cycles.append(row)
        engine.close()

    warm, timed = cycles[:args.warmup], cycles[args.warmup:]
    med = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"device: {torch.cuda.get_device_name()}  vllm {vllm.__version__}  torch {torch.__version__}  "
          f"sleep level {args.level}  model: Qwen2.5-0.5B-shaped bf16 ({params_m:.0f} M params)")
    print(f"{'phase':<18}{'median s':>10}")
    for k in ("sleep_s", "wake_s", "update_weights_s", "wake_kv_s", "total_s", "total_with_kv_s"):
        print(f"{k:<18}{med[k]:>10.4f}")
    print(f"memory freed by sleep: {med['freed_gib']:.2f} GiB; warm-up totals: "
          + ", ".join(f"{r['total_s']:.3f}" for r in warm))
    print(json.dumps({"bench": "sleep_wake_sync", "device": torch.cuda.get_device_name(), "vllm": vllm.__version__,
                      "torch": torch.__version__, "level": args.level, "cycles": args.cycles, "median": med,
                      "target_total_s": 0.5, "met": med["total_s"] <= 0.5}))


if __name__ == "__main__":
    main()
