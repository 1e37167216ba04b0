"""Analytic cost model of rapid's kernels on an H100: FLOPs and bytes moved per op and design, and the time each
design should take. These are ESTIMATES (a roofline with stated efficiencies), not measurements; they put the
expected H100 time of every design on record next to each CPU measurement (``benchmarks.kernels.run`` prints them)
until a GPU run replaces them with numbers.

    python -m rapid_kernels.cost_model                      # Qwen2.5-0.5B / 1.5B lm_head shapes
    python -m rapid_kernels.cost_model --n 4096,16384 --d 896 --v 151936

Model: each kernel costs max(FLOP / (peak · efficiency), bytes / bandwidth) plus a launch overhead; a design is the
sum of its kernels. GEMM bytes count each operand read once and each output written once (ideal tiling with L2
reuse); read-modify-writes of fp32 / bf16 accumulators are counted in full, as they are what sets the old designs'
cost. Peaks are DESIGN.md section 2's H100 SXM numbers (~3.0 TB/s copy, ~800 TFLOP/s bf16 dense,
measured); tf32 and fp32 peaks scale from the spec sheet. Efficiencies (fraction of the measured GEMM peak):
cuBLAS on a well-shaped GEMM 0.9; a Triton GEMM with an in-register softmax epilogue 0.75 (new design: 128×256 wgmma
tiles, split count from N) or 0.6 (old design: BLOCK_N = 128 and a fixed split, the 55–70 % of cuBLAS read off the
code in issue 13); a GEMM whose K is one 128-row chunk (Liger's d W) 0.5. Treat every number as ±30 %.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

BANDWIDTH = 3.0e12                       # B/s, H100 SXM copy bandwidth (DESIGN.md section 2, measured)
PEAK = {"bfloat16": 800e12, "float16": 800e12, "float32": 400e12}   # FLOP/s dense (fp32 inputs run tf32-class)
LAUNCH_S = 4e-6                          # per kernel launch
EFF = dict(peak=1.0, cublas=0.9, fused_new=0.75, fused_old=0.6, thin_k=0.5)
ITEM = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class Kernel:
    name: str
    flops: float = 0.0
    bytes: float = 0.0
    eff: str = "cublas"

    def seconds(self, dtype: str) -> float:
        compute = self.flops / (PEAK[dtype] * EFF[self.eff]) if self.flops else 0.0
        return max(compute, self.bytes / BANDWIDTH) + LAUNCH_S


@dataclass
class Design:
    name: str
    kernels: list[Kernel] = field(default_factory=list)

    def add(self, name: str, flops: float = 0.0, bytes_: float = 0.0, eff: str = "cublas", times: int = 1) -> None:
        for _ in range(times):
            self.kernels.append(Kernel(name, flops, bytes_, eff))

    def totals(self, dtype: str) -> dict:
        return dict(design=self.name, tflop=sum(k.flops for k in self.kernels) / 1e12,
                    gbytes=sum(k.bytes for k in self.kernels) / 1e9, launches=len(self.kernels),
                    ms=sum(k.seconds(dtype) for k in self.kernels) * 1e3)


# ----------------------------------------------------------------------------------- linear_token_logprobs
def linear_designs(n: int, d: int, v: int, dtype: str = "bfloat16") -> list[Design]:
    """fwd+bwd (d hidden and d weight) of lm_head + per-token log-prob, by design."""
    e, gemm = ITEM[dtype], 2.0 * n * d * v
    floor = Design("floor: 3 GEMMs at measured peak")
    floor_ms = 3 * gemm / PEAK[dtype] * 1e3
    floor.add("3 GEMMs", 3 * gemm, 0.0, "peak")

    eager = Design("torch eager (logits in memory)")
    nv = n * v
    eager.add("logits = h @ Wᵀ", gemm, e * (n * d + v * d + nv))
    eager.add("logits.float()", 0, (e + 4) * nv)
    eager.add("log_softmax", 0, 8 * nv)
    eager.add("gather + its backward (zeros, scatter)", 0, 4 * nv)
    eager.add("log_softmax backward", 0, 12 * nv)
    eager.add("grad .to(dtype)", 0, (4 + e) * nv)
    eager.add("d hidden = dz @ W", gemm, e * (nv + v * d + n * d))
    eager.add("d W = dzᵀ @ h", gemm, e * (nv + n * d + v * d))

    old = Design("rapid triton, row-chunked bwd (before issue 13)")
    old.add("fwd fused GEMM + LSE", gemm, e * (n * d + v * d) + 4 * n * math.ceil(v / 4096), "fused_old")
    rows = max(128, (128 * 2**20) // (v * e) // 128 * 128)
    chunks = math.ceil(n / rows)
    for _ in range(chunks):
        r = min(rows, n)
        old.add("recompute tile + dz", 2.0 * r * d * v, e * (r * v + v * d), "fused_old")
        old.add("d hidden chunk", 2.0 * r * d * v, e * (r * v + v * d + r * d))
        slabs = math.ceil(v / 16384)
        old.add("d W slab GEMM + fp32 RMW", 2.0 * r * d * v / slabs, (e * (r * v + r * d) + (e + 8) * v * d) / slabs,
                times=slabs)

    new = Design("rapid triton, vocab-chunked bwd (issue 13)")
    new.add("fwd fused GEMM + LSE (+ row dot)", gemm + 2.0 * n * d, e * (n * d + v * d + 2 * n * d) + 8 * n * 3,
            "fused_new")
    cols = min(v, max(256, (256 * 2**20) // (n * e) // 256 * 256))
    for _ in range(math.ceil(v / cols)):
        c = min(cols, v)
        new.add("recompute tile + dz (all rows)", 2.0 * n * d * c, e * (n * c + c * d + n * d), "fused_new")
        new.add("d W[chunk] = dzᵀ H (written once)", 2.0 * n * d * c, e * (n * c + n * d + c * d))
        new.add("d H += dz @ W[chunk] (fp32)", 2.0 * n * d * c, e * (n * c + c * d) + 8 * n * d)
    new.add("d H .to(dtype)", 0, (4 + e) * n * d)

    liger = Design("Liger fused linear CE (row-chunked, grad in fwd)")
    rows = 2 ** math.ceil(math.log2(max(1, math.ceil(n / math.ceil(v / d)))))
    for _ in range(math.ceil(n / rows)):
        r = min(rows, n)
        liger.add("logits chunk GEMM", 2.0 * r * d * v, e * (r * d + v * d + r * v))
        liger.add("CE kernel in place", 0, 2 * e * r * v)
        liger.add("grad_input = dz @ W", 2.0 * r * d * v, e * (r * v + v * d + r * d))
        liger.add("grad_weight += dzᵀ h (RMW)", 2.0 * r * d * v, e * (r * v + r * d + 2 * v * d), "thin_k")
    for design in (floor, eager, old, new, liger):
        design.floor_ms = floor_ms  # type: ignore[attr-defined]
    return [floor, eager, old, new, liger]


# -------------------------------------------------------------------------------------------- token_logprobs
def token_designs(n: int, v: int, dtype: str = "bfloat16") -> list[Design]:
    e, nv = ITEM[dtype], n * v
    floor = Design("floor: read logits twice, write d logits once")
    floor.add("fwd read", 0, e * nv)
    floor.add("bwd read + write", 0, 2 * e * nv)
    eager = Design("torch eager")
    eager.add("float()", 0, (e + 4) * nv)
    eager.add("log_softmax", 0, 8 * nv)
    eager.add("gather backward", 0, 4 * nv)
    eager.add("log_softmax backward", 0, 12 * nv)
    eager.add("to(dtype)", 0, (4 + e) * nv)
    rapid = Design("rapid (one pass each way)")
    rapid.add("fwd: online LSE", 0, e * nv)
    rapid.add("bwd: softmax from saved LSE", 0, 2 * e * nv)
    return [floor, eager, rapid]


# ------------------------------------------------------------------------------------------------- rapid_loss
def loss_designs(n: int, s: int) -> list[Design]:
    eager = Design("torch eager epilogue (~20 small kernels)")
    eager.add("elementwise / index_add / gather", 0, 16 * n / 20 + 16 * s, times=20)
    rapid = Design("rapid (one launch fwd, one bwd)")
    rapid.add("fwd", 0, 8 * n + 16 * s)
    rapid.add("bwd", 0, 4 * n + 4 * s)
    return [eager, rapid]


def estimate_ms(op: str, provider: str, shape: dict, dtype: str = "bfloat16") -> float | None:
    """H100 fwd+bwd estimate of the design a benchmark provider stands for (None when the model has no entry)."""
    design = {"torch_eager": 1, "torch_compile": 1, "liger": 4}.get(provider, None)
    if op == "linear_token_logprobs":
        designs = linear_designs(shape["N"], shape["D"], shape["V"], dtype)
        index = 3 if provider.startswith("rapid") else design
    elif op == "token_logprobs":
        designs = token_designs(shape["N"], shape["V"], dtype)
        index = 2 if provider.startswith("rapid") else design
    elif op == "rapid_loss":
        designs = loss_designs(shape["N"], shape["S"])
        index = 1 if provider.startswith("rapid") else (0 if design is not None else None)
    else:
        return None
    if index is None or index >= len(designs):
        return None
    return round(designs[index].totals(dtype)["ms"], 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="4096,16384")
    p.add_argument("--d", default="896,1536", help="hidden sizes (Qwen2.5-0.5B: 896, 1.5B: 1536)")
    p.add_argument("--v", type=int, default=151936)
    p.add_argument("--dtype", default="bfloat16", choices=tuple(ITEM))
    args = p.parse_args(argv)
    rows = []
    print("ESTIMATES (analytic roofline, H100 SXM, not measured): linear_token_logprobs fwd+bwd")
    print(f"{'N':>6} {'D':>5} {'design':<52} {'TFLOP':>7} {'GB':>7} {'launch':>6} {'est ms':>8} {'x floor':>7}")
    for d in (int(x) for x in args.d.split(",")):
        for n in (int(x) for x in args.n.split(",")):
            for design in linear_designs(n, d, args.v, args.dtype):
                t = design.totals(args.dtype)
                ratio = t["ms"] / design.floor_ms  # type: ignore[attr-defined]
                print(f"{n:>6} {d:>5} {t['design']:<52} {t['tflop']:>7.2f} {t['gbytes']:>7.2f} {t['launches']:>6} "
                      f"{t['ms']:>8.2f} {ratio:>7.2f}")
                rows.append(dict(op="linear_token_logprobs", N=n, D=d, V=args.v, ratio_to_floor=round(ratio, 3),
                                 **{k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()}))
    print("token_logprobs fwd+bwd")
    for n in (int(x) for x in args.n.split(",")):
        for design in token_designs(n, args.v, args.dtype):
            t = design.totals(args.dtype)
            print(f"{n:>6} {'-':>5} {t['design']:<52} {t['tflop']:>7.2f} {t['gbytes']:>7.2f} {t['launches']:>6} "
                  f"{t['ms']:>8.2f}")
            rows.append(dict(op="token_logprobs", N=n, V=args.v, **{k: round(v, 3) if isinstance(v, float) else v
                                                                     for k, v in t.items()}))
    sys.stdout.write(json.dumps(dict(estimates=True, device="H100 SXM (model)", dtype=args.dtype, rows=rows)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
