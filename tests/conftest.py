"""Session-wide test setup.

- Without CUDA, the Triton kernels run through the interpreter: ``TRITON_INTERPRET`` is read when ``@triton.jit``
  decorates a kernel, so it is set here, before any test imports ``rapid_kernels.triton_backend``.
- ``RAPID_CPU_BF16=0``: ``dtype="auto"`` stays float32 on CPU whatever the machine (an AMX / AVX512-BF16 CI box
  would otherwise run every default-config test in bf16, and the fp32 tolerances they assert would be bf16 noise);
  exported so the ranks and engine processes tests start inherit it. tests/trainer/test_cpu_dtype.py and the bf16
  tests cover the other side.
- GPU-tier tests (``@pytest.mark.gpu``) are skipped without a CUDA device; ``make test`` deselects them anyway.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["RAPID_CPU_BF16"] = "0"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
