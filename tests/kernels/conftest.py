"""Kernel-test setup: run the Triton kernels on CPU through the interpreter when there is no CUDA device.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it is set here, before any test module
imports ``rapid_kernels.triton_backend`` (``rapid_kernels`` itself never imports Triton at import time).
GPU-tier tests (``@pytest.mark.gpu``) are skipped without CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
