"""Whether bf16 compute pays on this CPU: decided at run time by measuring, never by assumption.

On a CPU with AVX512-BF16 or AMX, oneDNN runs bf16 GEMMs natively (one review box: ~2.4x its fp32 sgemm); without
them bf16 is converted in software and runs slower than fp32 (another box: ~4x slower). ``dtype="auto"`` on CPU
therefore reads the CPU's flags and, only where they promise native bf16, times one GEMM of a small model's MLP shape
(tokens x hidden @ hidden x 4·hidden) in both dtypes; bf16 is chosen when it is at least ``MIN_SPEEDUP`` faster. The
decision is measured once per process and logged in one line per run. ``RAPID_CPU_BF16=1`` / ``=0`` overrides it
(the test tier pins fp32 this way).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch

logger = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEEDUP = 1.2                  # bf16 must beat fp32 by this much to be worth its rounding
PROBE_SHAPE = (512, 576, 1536)     # M tokens x K hidden @ K x N: SmolLM2-135M's gate/up projection


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gemm_gflops(dtype: torch.dtype, shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 10) -> float:
    """Best-of-``repeats`` GFLOP/s of one (M, K) @ (K, N) matmul in ``dtype`` on the CPU, after two warm-up calls
    (oneDNN builds its AMX / AVX-512 kernels on first use). Best-of, not mean: another process sharing the cores
    slows some calls, never speeds one up."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


@functools.cache
def cpu_bf16_decision() -> tuple[bool, str]:
    """(compute in bf16 on this CPU?, why) — the override, the flags, then a measured GEMM where they allow it."""
    forced = os.environ.get("RAPID_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1", f"RAPID_CPU_BF16={forced}"
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    if not native:
        return False, "no avx512_bf16 / amx_bf16 CPU flag: bf16 would be emulated, slower than fp32"
    fp32, bf16 = gemm_gflops(torch.float32), gemm_gflops(torch.bfloat16)
    speedup = bf16 / fp32
    measured = f"{'/'.join(native)}; bf16 GEMM {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s ({speedup:.2f}x)"
    if speedup >= MIN_SPEEDUP:
        return True, measured
    return False, f"{measured} < {MIN_SPEEDUP}x"


@functools.cache
def cpu_gemm_peak(dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, what it is): this CPU's measured GEMM rate in ``dtype`` at ``PROBE_SHAPE`` with the current torch
    threads — the peak the profiler's CPU MFU column is a fraction of (a dense GEMM is the best a layer can do)."""
    m, k, n = PROBE_SHAPE
    rate = gemm_gflops(dtype, PROBE_SHAPE) * 1e9
    return rate, f"measured {str(dtype).removeprefix('torch.')} GEMM {m}x{k}x{n}, {torch.get_num_threads()} threads"


def auto_dtype(device: torch.device) -> torch.dtype:
    """``dtype="auto"``: bf16 on CUDA; on CPU bf16 only where measured faster (``cpu_bf16_decision``), logged."""
    if device.type == "cuda":
        return torch.bfloat16
    use_bf16, why = cpu_bf16_decision()
    logger.info("compute dtype auto on CPU: %s (%s)", "bfloat16" if use_bf16 else "float32", why)
    return torch.bfloat16 if use_bf16 else torch.float32
