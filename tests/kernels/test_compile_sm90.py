"""CPU tier: every Triton kernel compiles for Hopper (sm_90) with the venv's Triton, no GPU needed.

Runs ``python -m benchmarks.gpu.compile_sm90`` (every kernel × dtype × variant × launchable autotune config, through
Triton's bundled ptxas) in a fresh process without ``TRITON_INTERPRET`` and a fresh kernel cache, and checks its
JSON verdict: nothing failed, nothing spilled, shared memory within H100's 227 KiB, and every 16-bit GEMM kernel
lowered to wgmma. The same tier passes under Triton 3.6 (the GPU image's version; see the notes of issue 13).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_triton_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.compile_sm90", "--jobs", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed"] == [] and summary["spills"] == 0
    assert summary["kernels"] >= 40
    assert 0 < summary["max_shared_bytes"] <= 232_448
    assert summary["gemm_16bit_kernels"] >= 16
    assert summary["wgmma_16bit_gemm_kernels"] == summary["gemm_16bit_kernels"]
