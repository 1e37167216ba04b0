"""The C++/OpenMP backend (``backend="cpp"``): ``csrc/cpu`` kernels on CPU tensors, via ``rapid_kernels._C``.

Module shape as ``_dispatch`` expects. ``backend="auto"`` picks it first for CPU tensors once the extension is
built (``make install``, or ``pip install --no-build-isolation -e .``). ``is_level="token"`` and float64 inputs
go to the reference (``TOKEN_LEVEL = False``; the dispatcher routes float64 itself).
"""

from __future__ import annotations

from . import _cpp_ops  # raises ImportError without the compiled extension: _dispatch reports it

DEVICE_TYPES: tuple[str, ...] = ("cpu",)
TOKEN_LEVEL = False


def available() -> str | None:
    """None when usable here; else why not."""
    if not _cpp_ops.has_ops():
        return "rapid_kernels._C is stale (missing ops): rebuild with `make install`"
    return None


token_logprobs = _cpp_ops.token_logprobs
rapid_loss = _cpp_ops.rapid_loss


def linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy):
    return _cpp_ops.linear_token_logprobs(hidden, weight, targets, temperature, bias, softcap, threshold, want_entropy,
                                          _cpp_ops.CPU_VOCAB_CHUNK)
