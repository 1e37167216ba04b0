"""The CUDA backend (``backend="cuda"``): hand-written ``csrc/cuda`` kernels, the honest rival of the Triton ones.

Same ops and custom-op wrappers as the C++ backend (``_cpp_ops``; ``_C`` sends CUDA tensors to the CUDA kernels).
Available when ``rapid_kernels._C`` was compiled with CUDA (torch with CUDA + nvcc at build time) and a CUDA
device is visible. Never initialises a GPU at import.
"""

from __future__ import annotations

import torch

from . import _C, _cpp_ops  # raises ImportError without the compiled extension: _dispatch reports it

DEVICE_TYPES: tuple[str, ...] = ("cuda",)
TOKEN_LEVEL = False


def available() -> str | None:
    """None when usable here; else why not."""
    if not _cpp_ops.has_ops():
        return "rapid_kernels._C is stale (missing ops): rebuild with `make install`"
    if not _C.built_with_cuda():
        return "rapid_kernels._C was built without CUDA (needs torch with CUDA and nvcc at build time)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


# token_logprobs and rapid_loss are device-generic (``_C`` dispatches on the tensors' device).
token_logprobs = _cpp_ops.token_logprobs
rapid_loss = _cpp_ops.rapid_loss


def linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy):
    return _cpp_ops.linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy,
                                          _cpp_ops.CUDA_VOCAB_CHUNK)
