"""CPU tier: ``csrc/`` compiles for Hopper (sm_90) with nvcc, no GPU needed (DESIGN.md section 2, issue 13).

Each CUDA source is compiled to an sm_90 object (device code through ptxas, host code through the C++ compiler)
against the installed torch headers, as ``setup.py`` would with ``RAPID_BUILD_CUDA=1`` — minus the link, which needs
torch's CUDA libraries. The entry points are defined by qualified name (``cuda::token_logprobs_fwd``), so a
definition that drifts from its declaration in ``rapid_ops.h`` fails here; ptxas must report no register spills.
The .cu files include only ``ATen/core/Tensor.h`` and per-operator headers (not ``torch/extension.h``), which keeps
this test to ~1-2 minutes of a loaded 2-core machine. A CPU torch wheel lacks one generated header
(``c10/cuda/impl/cuda_cmake_macros.h``); the test supplies it. Skipped only where nvcc is absent (these CPU machines
have it).
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch.utils import cpp_extension

ROOT = pathlib.Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")


def _includes(shim: pathlib.Path) -> list[str]:
    dirs = [str(shim), *cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    return [f"-I{d}" for d in dirs]


def _command(src: pathlib.Path, out: pathlib.Path, shim: pathlib.Path) -> list[str]:
    defines = ["-DRAPID_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    return [NVCC, "-c", str(src), "-o", str(out), "-std=c++17", "-O3", "--use_fast_math", "-lineinfo",
            "-gencode", "arch=compute_90,code=sm_90", "--expt-relaxed-constexpr", *defines,
            "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__", *_includes(shim), "-Xcompiler", "-fPIC", "-Xptxas", "-v"]


def test_csrc_cuda_compiles_for_sm90(tmp_path):
    shim = tmp_path / "shim"
    (shim / "c10" / "cuda" / "impl").mkdir(parents=True)
    (shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text(
        "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    assert len(sources) >= 3

    def build(src: pathlib.Path) -> tuple[str, subprocess.CompletedProcess]:
        cmd = _command(src, tmp_path / f"{src.stem}.o", shim)
        return src.name, subprocess.run(cmd, capture_output=True, text=True, timeout=900)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(build, sources))
    for name, proc in results:
        assert proc.returncode == 0, f"{name} failed to compile for sm_90:\n{proc.stderr[-4000:]}"
        assert "sm_90" in proc.stderr, f"{name}: no ptxas report for sm_90"   # device code really built
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", proc.stderr)]
        assert spills and not any(spills), f"{name}: register spills {spills}"
