"""What this machine can do at the real model's shapes: fp32 and bf16 GEMM throughput, and memory bandwidth.

    python -m benchmarks.real.limits [--threads 2] [--tokens 2048] [--repeats 5]

SmolLM2-135M-Instruct's matmuls per token (hidden 576, intermediate 1536, 9 heads / 3 KV heads of 64, vocabulary
49 152, 30 layers): q/o 576x576, k/v 576x192, gate/up 576x1536, down 1536x576, lm_head 576x49152. Each is timed as
(M tokens x K) @ (K x N) with M = --tokens (the training forward's packed tokens; 128 = a decode step of 128 rows),
best of --repeats after a warm-up, through torch.matmul (oneDNN / MKL on CPU) — the same kernels the model runs. The
"model mix" row weights the shapes by how often a forward runs them (30 layers each, lm_head once): the GEMM peak a
forward / backward at this geometry can reach. Bandwidth: a 512 MB fp32 copy (read + write) and a sum (read).
Whether the CPU has AVX512-BF16 / AMX is read from /proc/cpuinfo and printed: bf16 is only fast with them.
Prints one JSON line per measurement and a summary line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from rapid.precision import cpu_flags, gemm_gflops

HIDDEN, INTER, VOCAB, LAYERS, HEAD, KV_HEADS = 576, 1536, 49152, 30, 64, 3
SHAPES = {  # name: (K, N, uses per forward)
    "q/o 576x576": (HIDDEN, HIDDEN, 2 * LAYERS),
    "k/v 576x192": (HIDDEN, KV_HEADS * HEAD, 2 * LAYERS),
    "gate/up 576x1536": (HIDDEN, INTER, 2 * LAYERS),
    "down 1536x576": (INTER, HIDDEN, LAYERS),
    "lm_head 576x49152": (HIDDEN, VOCAB, 1),
}


def best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of (m x k) @ (k x n) in ``dtype`` (the same timing dtype="auto" uses to decide bf16)."""
    return gemm_gflops(dtype, (m, k, n), repeats)


def bandwidth(repeats: int) -> dict:
    x = torch.empty(128 << 20, dtype=torch.float32).uniform_()           # 512 MB
    y = torch.empty_like(x)
    copy = 2 * x.numel() * 4 / best_seconds(lambda: y.copy_(x), repeats) / 1e9
    read = x.numel() * 4 / best_seconds(lambda: x.sum(), repeats) / 1e9
    return {"copy_GBps": round(copy, 1), "read_GBps": round(read, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", default="128,2048", help="M values, comma list")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    summary = {"bench": "real_limits", "host": platform.node(), "threads": args.threads,
               "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "load_1m": os.getloadavg()[0]}
    for m in (int(x) for x in args.tokens.split(",")):
        for dtype in (torch.float32, torch.bfloat16):
            flops_total, seconds_total = 0.0, 0.0
            for name, (k, n, uses) in SHAPES.items():
                rate = gemm(m, k, n, dtype, args.repeats)
                flops = 2 * m * k * n * uses
                flops_total += flops
                seconds_total += flops / (rate * 1e9)
                print(json.dumps({"bench": "real_gemm", "m": m, "shape": name, "dtype": str(dtype)[6:],
                                  "gflops": round(rate, 1)}), flush=True)
            mix = flops_total / seconds_total / 1e9
            summary[f"mix_m{m}_{str(dtype)[6:]}_gflops"] = round(mix, 1)
            print(json.dumps({"bench": "real_gemm", "m": m, "shape": "model mix", "dtype": str(dtype)[6:],
                              "gflops": round(mix, 1)}), flush=True)
    summary.update(bandwidth(args.repeats))
    summary["load_1m_end"] = os.getloadavg()[0]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
