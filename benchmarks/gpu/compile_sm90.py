"""sm_90 compile tier: every Triton kernel of rapid_kernels, compiled for Hopper on a machine without a GPU.

    python -m benchmarks.gpu.compile_sm90                 # every kernel x dtype x variant x launchable config
    python -m benchmarks.gpu.compile_sm90 --variants full # only the soft-cap + threshold + entropy variants

Triton compiles for ``GPUTarget("cuda", 90, 32)`` without a driver, and its bundled ptxas needs no GPU, so this
proves on a CPU machine what a Hopper run would hit at first launch: that each kernel compiles in bf16, fp16 and
fp32 with each autotune config it can launch, that the 16-bit ``tl.dot`` kernels (the linear op's forward and
backward) lower to ``wgmma`` (Hopper's warpgroup MMA, not the Ampere ``mma.sync`` fallback), that shared memory
fits (≤ 232 448 bytes = 227 KiB per block on H100), and that nothing spills (``ptxas -v`` on the kernel's PTX).
Each kernel compiles in two variants, plain and full-featured (bias, soft-cap, threshold, entropy: the most
registers), with the configs the launcher offers for that variant; arguments are specialized the way a real launch
specializes them (``_specialize``). The rapid_loss kernels read fp32 log-probs whatever the model dtype, so they
compile once.

Prints a table, then one JSON line last: ``kernels`` (units compiled), ``failed``, ``wgmma_16bit_gemm_kernels``,
``gemm_16bit_kernels``, ``max_shared_bytes``, ``spills``, ``triton``. Exits non-zero on any failure, shared memory
over the limit, a spill, or a 16-bit GEMM kernel without wgmma. Works with Triton 3.6 (the GPU image) and the
venv's Triton.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)   # must be unset before the kernel modules are imported

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

MAX_SHARED = 232_448
TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def _module(name: str):
    return importlib.import_module(f"rapid_kernels._{name}")          # the Triton files: _token_logprobs.py, ...


def _jit(kernel):
    """The JITFunction behind an autotuned kernel."""
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


FLOAT_ARGS = ("inv_t", "softcap", "log_eta", "log_w_cap", "scale", "inv_num_seqs")


def _specialize(fn, types: dict[str, str], ints: dict[str, int], constexprs: dict):
    """(signature, attrs, constexprs) exactly as Triton's launcher derives them from real arguments: pointers 16-byte
    aligned (torch allocations are), ints from an example launch (``ints``) through Triton's own specialization —
    multiples of 16 get ``tt.divisibility=16``, a value of 1 (a unit stride) becomes a constexpr. Without this the
    kernel is compiled for unaligned scalar loads and reports register pressure no real launch has."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    sig, attrs, consts = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            kind, spec = native_specialize_impl(BaseBackend, ints[name], False, True, True)
            if kind == "constexpr":
                sig[name], consts[name] = "constexpr", spec
            else:
                sig[name] = kind
                if spec and "D" in spec:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs, consts


# Example integer arguments of a real launch: Qwen2.5-0.5B's lm_head (D = 896, V = 151 936), N = 16 384 packed
# tokens, contiguous tensors, 4096-column backward chunks, 3 forward splits; the epilogue with K = 8, S = 2048.
N, V, D, CHUNK = 16384, 151936, 896, 4096
INTS = {
    "token_logprobs_fwd": dict(V=V, stride_n=V, stride_v=1),
    "token_logprobs_bwd": dict(V=V, stride_n=V, stride_v=1, stride_dn=V),
    "linear_fwd": dict(N=N, V=V, D=D, stride_hn=D, stride_hd=1, stride_wv=D, stride_wd=1, split_cols=50688,
                       n_splits=3),
    "linear_bwd": dict(N=N, v0=CHUNK, v_end=2 * CHUNK, D=D, stride_hn=D, stride_hd=1, stride_wv=D, stride_wd=1,
                       stride_dz=CHUNK),
    "rapid_loss_fwd": dict(G=256, K=8),
    "rapid_loss_bwd": dict(K=8),
}


def units(variants: str) -> list[dict]:
    """Every (kernel, dtype, config, variant) to compile."""
    tlp, ltlp, loss = _module("token_logprobs"), _module("linear_token_logprobs"), _module("rapid_loss")
    flag_sets = [dict(HAS_SOFTCAP=True, HAS_THRESHOLD=True)]
    if variants == "all":
        flag_sets.append(dict(HAS_SOFTCAP=False, HAS_THRESHOLD=False))
    out = []
    for dt in DTYPES:
        f32 = "*fp32"
        for flags in flag_sets:
            full = flags["HAS_SOFTCAP"]
            # token_logprobs: one row per program, fixed BLOCK_V / num_warps (no autotune)
            row = dict(BLOCK_V=tlp.BLOCK_V, **flags)
            out.append(dict(name="token_logprobs_fwd", fn=tlp._token_logprobs_fwd_kernel, dtype=dt, gemm=False,
                            types={"logits_ptr": f"*{dt}", "targets_ptr": "*i64", "thr_ptr": f32, "out_ptr": f32,
                                   "lse_ptr": f32, "ent_ptr": f32},
                            constexprs=dict(row, ENTROPY=full), options=dict(num_warps=tlp.NUM_WARPS)))
            out.append(dict(name="token_logprobs_bwd", fn=tlp._token_logprobs_bwd_kernel, dtype=dt, gemm=False,
                            types={"logits_ptr": f"*{dt}", "targets_ptr": "*i64", "thr_ptr": f32, "lse_ptr": f32,
                                   "grad_ptr": f32, "dlogits_ptr": f"*{dt}"},
                            constexprs=row, options=dict(num_warps=tlp.NUM_WARPS)))
            # linear_token_logprobs: every autotune config the launcher can pick for this dtype and variant
            bits = 32 if dt == "fp32" else 16
            common = dict(HAS_BIAS=full, UPCAST=False, PRECISION="ieee" if dt == "fp32" else "tf32", **flags)
            lin_types = {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "targets_ptr": "*i64",
                         "thr_ptr": f32}
            for cfg in ltlp.configs(bits, full):
                opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                tag = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                tag += f"/w{cfg.num_warps}s{cfg.num_stages}" + ("+epi" if full else "")
                out.append(dict(name="linear_fwd", fn=_jit(ltlp._FWD[(bits, full)]), dtype=dt, gemm=dt != "fp32",
                                config=tag, types=dict(lin_types, part_lse_ptr=f32, part_ez_ptr=f32, picked_ptr=f32),
                                constexprs=dict(common, ENTROPY=full, **cfg.kwargs), options=opts))
                out.append(dict(name="linear_bwd", fn=_jit(ltlp._BWD[(bits, full)]), dtype=dt, gemm=dt != "fp32",
                                config=tag, types=dict(lin_types, lse_ptr=f32, grad_ptr=f32, dz_ptr=f"*{dt}"),
                                constexprs=dict(common, **cfg.kwargs), options=opts))
    block_k, block_t = loss._blocks(8)
    for clip, loo, std, geo in ((0, True, False, False), (2, False, True, True)):
        const = dict(GEOMETRIC=geo, CLIP=clip, LOO=loo, STD=std, BLOCK_K=block_k, BLOCK_T=block_t)
        out.append(dict(name="rapid_loss_fwd", fn=loss._rapid_loss_fwd_kernel, dtype="fp32", gemm=False,
                        config=f"clip{clip}{'/loo' if loo else ''}{'/std' if std else ''}{'/geo' if geo else ''}",
                        types={n: ("*i64" if n == "cu_ptr" else "*fp32") for n in loss._rapid_loss_fwd_kernel.arg_names
                               if n.endswith("_ptr")}, constexprs=const, options=dict(num_warps=4)))
    out.append(dict(name="rapid_loss_bwd", fn=loss._rapid_loss_bwd_kernel, dtype="fp32", gemm=False,
                    types={"coef_ptr": "*fp32", "cu_ptr": "*i64", "grad_ptr": "*fp32", "dlp_ptr": "*fp32"},
                    constexprs=dict(BLOCK_K=block_k, BLOCK_T=block_t), options=dict(num_warps=4)))
    return out


def _ptxas() -> str:
    """The ptxas Triton itself uses for sm_90 (bundled with the wheel; no GPU needed)."""
    from triton.backends.nvidia import compiler as nv

    for call in (lambda: nv.get_ptxas(90).path, lambda: nv.get_ptxas().path, lambda: nv.get_ptxas(90)[0]):
        try:
            path = call()
        except (AttributeError, TypeError, IndexError):
            continue
        if path and os.path.exists(path):
            return path
    return str(Path(nv.__file__).with_name("bin") / "ptxas")


def _spills(ptx: str, ptxas: str) -> tuple[int, int]:
    """(spill store bytes, registers) from ``ptxas -v`` on the kernel's PTX, for its own target."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w", encoding="utf-8") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, check=True)
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", proc.stderr))
    regs = max((int(x) for x in re.findall(r"Used (\d+) registers", proc.stderr)), default=0)
    return spills, regs


def compile_unit(unit: dict) -> dict:
    fn = unit["fn"]
    sig, attrs, consts = _specialize(fn, unit["types"], INTS[unit["name"]], unit["constexprs"])
    t0 = time.perf_counter()
    row = dict(kernel=unit["name"], dtype=unit["dtype"], config=unit.get("config", "-"), gemm=unit["gemm"])
    try:
        compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=TARGET, options=unit["options"])
        ptx = compiled.asm["ptx"]
        spills, regs = _spills(ptx, _ptxas())
        row.update(ok=True, shared=int(compiled.metadata.shared), wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
                   mma_sync=len(re.findall(r"\bmma\.sync", ptx)), spills=spills, regs=regs)
    except Exception as exc:  # noqa: BLE001 (report every failure, keep compiling the rest)
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", choices=("full", "all"), default="all")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    args = p.parse_args(argv)
    todo = units(args.variants)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:   # ptxas runs in subprocesses
        rows = list(pool.map(compile_unit, todo))
    print(f"{'kernel':<20} {'dtype':<5} {'config':<20} {'ok':<3} {'shared':>7} {'regs':>4} {'spill':>5} "
          f"{'wgmma':>5} {'mma':>4} {'s':>5}")
    for r in rows:
        print(f"{r['kernel']:<20} {r['dtype']:<5} {r['config']:<20} {'yes' if r['ok'] else 'NO':<3} "
              f"{r.get('shared', 0):>7} {r.get('regs', 0):>4} {r.get('spills', 0):>5} {r.get('wgmma', 0):>5} "
              f"{r.get('mma_sync', 0):>4} {r['seconds']:>5}" + (f"  {r['error']}" if not r["ok"] else ""))
    ok = [r for r in rows if r["ok"]]
    gemm16 = [r for r in ok if r["gemm"]]
    summary = dict(
        kernels=len(ok),
        failed=[f"{r['kernel']}/{r['dtype']}/{r['config']}: {r['error']}" for r in rows if not r["ok"]],
        wgmma_16bit_gemm_kernels=sum(1 for r in gemm16 if r["wgmma"] > 0), gemm_16bit_kernels=len(gemm16),
        max_shared_bytes=max((r["shared"] for r in ok), default=0), spills=sum(r["spills"] for r in ok),
        max_registers=max((r["regs"] for r in ok), default=0), triton=triton.__version__, target="sm_90")
    print(json.dumps(summary))
    bad = (summary["failed"] or summary["spills"] or summary["max_shared_bytes"] > MAX_SHARED
           or summary["wgmma_16bit_gemm_kernels"] != summary["gemm_16bit_kernels"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
