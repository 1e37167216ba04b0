"""The update's forward + backward on the real model: shared-prompt vs packed vs padded, achieved GFLOP/s.

    python -m benchmarks.real.update [--threads 2] [--groups 4] [--repeats 3] [--backend cpp|torch] [--dtype bfloat16]

One micro-batch as the demo's update step sees it: ``--groups`` chat prompts (one-digit "What is a + b?" through
SmolLM2's ChatML template, which adds its default system prompt: ~40 tokens) x K = 8 completions of
``--completion-tokens`` tokens (default 16, what a rollout's answers average: "3 + 4 = 7" plus <|im_end|>), the
RAPID loss through the fused lm_head kernel, then backward. Each forward path (rapid.loss.forward: ``shared`` — each
prompt once, its KV cache repeated for the completions; ``packed`` — one row, block-diagonal mask; ``padded``) is
timed best of --repeats after a warm-up. GFLOP/s counts the useful work only: 6 x parameters x (prompt + completion)
tokens of the packed sequences, so a path that skips work shows as a higher rate. Prints one JSON line per path.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--completion-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--paths", default="shared,packed,padded")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype (fp32 master weights either way, as the trainer runs it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rapid
    from rapid.loss import forward
    from rapid.training.buffer import RolloutBuffer
    from rapid.demo import real_task
    from rapid.engines.base import Rollout
    from rapid.models.smollm2 import smollm2_dir
    from rapid.training.policy import PolicyLoss

    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    rows = real_task(0).train[:args.groups]
    prompt_ids = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for r in rows]
    gen = torch.Generator().manual_seed(0)
    k, c = args.group_size, args.completion_tokens
    completions = [torch.randint(100, 20000, (c,), generator=gen).tolist() for _ in range(args.groups * k)]
    rollout = Rollout(prompts=[r["prompt"] for r in rows], prompt_ids=prompt_ids, completion_ids=completions,
                      logprobs=[torch.full((c,), -1.0) for _ in completions], completions=[""] * len(completions),
                      n=k, finished=[True] * len(completions), stats={})
    rewards = [float(i % 2) for i in range(len(completions))]
    mb = RolloutBuffer(rollout, rewards, k).pack(list(range(len(completions))), torch.device("cpu"))
    cfg = rapid.RapidConfig(group_size=k, kernel_backend=args.backend)
    loss_module = PolicyLoss(model, cfg, getattr(torch, args.dtype))
    tokens = sum(len(prompt_ids[i // k]) + c for i in range(len(completions)))
    params = sum(p.numel() for p in model.parameters())
    flops = 6 * params * tokens
    choices = {"shared": (True, True), "packed": (False, True), "padded": (False, False)}
    for name in args.paths.split(","):
        shared, packed = choices[name]
        loss_module.parts.shared, loss_module.parts.packed = shared, packed
        original = forward.packing_pays
        forward.packing_pays = (lambda *a: True) if packed else (lambda *a: False)
        try:
            def step():
                model.zero_grad(set_to_none=True)
                loss_module(mb, "loss").loss.backward()

            step()
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                step()
                best = min(best, time.perf_counter() - t)
        finally:
            forward.packing_pays = original
        print(json.dumps({"bench": "real_update", "path": name, "backend": args.backend, "threads": args.threads,
                          "sequences": len(completions), "prompt_tokens_mean": round(
                              sum(map(len, prompt_ids)) / len(prompt_ids), 1), "completion_tokens": c,
                          "tokens": tokens, "seconds": round(best, 3), "tokens_per_s": round(tokens / best, 1),
                          "useful_gflops": round(flops / best / 1e9, 1), "load_1m": os.getloadavg()[0],
                          "date": time.strftime("%Y-%m-%d %H:%M")}), flush=True)


if __name__ == "__main__":
    main()
