"""Triton token_logprobs vs the float64 reference: outputs and d logits (CPU interpreter tier + GPU tier)."""

from __future__ import annotations

import pytest
import torch

import rapid_kernels
from rapid_kernels import reference
from rapid_kernels import triton_backend as tb

from .tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK_V = tb._tlp.BLOCK_V
OP = "token_logprobs"


def _check(logits: torch.Tensor, targets: torch.Tensor, temperature: float, dtype: torch.dtype) -> None:
    """Forward and backward of backend="triton" against the float64 reference on the same (rounded) inputs."""
    logits = logits.detach().requires_grad_()
    out = rapid_kernels.token_logprobs(logits, targets, temperature, backend="triton")    # (N,)
    assert out.dtype == torch.float32
    grad = torch.randn(out.shape, device=out.device)                                        # (N,)
    out.backward(grad)
    x64 = logits.detach().double().requires_grad_()
    ref = reference.token_logprobs(x64, targets, temperature)                                # (N,)
    ref.backward(grad.double())
    assert_close(out, ref, OP, dtype, "out", "log-probs")
    assert logits.grad.dtype == logits.dtype
    assert_close(logits.grad, x64.grad, OP, dtype, "grad", "d logits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, vocab, temperature", [(41, 4231, 1.0), (41, BLOCK_V + 1, 0.7), (3, 17, 1.3)])
def test_matches_reference(dtype, n, vocab, temperature):
    torch.manual_seed(n + vocab)
    logits = (torch.randn(n, vocab, device=DEVICE) * 4).to(dtype)                           # (N, V)
    targets = torch.randint(0, vocab, (n,), device=DEVICE)
    _check(logits, targets, temperature, dtype)


def test_bf16():
    """bf16 logits (upcast right after each load, so the CPU interpreter runs it too)."""
    torch.manual_seed(12)
    logits = (torch.randn(41, 1031, device=DEVICE) * 4).to(torch.bfloat16)
    _check(logits, torch.randint(0, 1031, (41,), device=DEVICE), 1.0, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous(dtype):
    torch.manual_seed(1)
    n, vocab = 41, 1031
    logits = (torch.randn(vocab, n, device=DEVICE) * 3).to(dtype).t()                       # (N, V), strides (1, N)
    assert not logits.is_contiguous()
    targets = torch.randint(0, vocab, (2 * n,), device=DEVICE)[::2]                           # (N,), stride 2
    _check(logits, targets, 0.9, dtype)


def test_masked_vocab_and_extremes():
    """−inf logits (masked vocabulary, including a whole first tile) and huge values stay exact and finite."""
    torch.manual_seed(2)
    n, vocab = 5, BLOCK_V + 7
    logits = torch.randn(n, vocab, device=DEVICE) * 5
    logits[:, :BLOCK_V] = float("-inf")                                                     # first tile all masked
    logits[1, -1] = 200.0
    logits[2, :] = -200.0
    logits[2, :BLOCK_V] = float("-inf")
    targets = torch.full((n,), vocab - 1, dtype=torch.int32, device=DEVICE)               # int32 targets too
    _check(logits, targets, 1.0, torch.float32)


def test_nan_input_propagates():
    logits = torch.randn(4, 300, device=DEVICE)
    logits[1, 7] = float("nan")
    out = rapid_kernels.token_logprobs(logits, torch.zeros(4, dtype=torch.long, device=DEVICE), backend="triton")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3]]).all()
    with pytest.raises(AssertionError):
        assert_close(out, reference.token_logprobs(logits.nan_to_num(0.0), torch.zeros_like(out).long()), OP,
                     torch.float32)


def test_empty_and_backend_listing():
    assert "triton" in rapid_kernels.available_backends(DEVICE)
    assert callable(rapid_kernels.token_logprobs)  # the op module did not shadow the public function
    out = rapid_kernels.token_logprobs(torch.zeros(0, 10, device=DEVICE), torch.zeros(0, dtype=torch.long,
                                                                                     device=DEVICE), backend="triton")
    assert out.shape == (0,) and out.dtype == torch.float32


def test_bad_input_rejected_before_kernel():
    with pytest.raises(ValueError, match="targets"):
        rapid_kernels.token_logprobs(torch.zeros(3, 10, device=DEVICE), torch.tensor([0, 10, 1], device=DEVICE),
                                     backend="triton")


# ------------------------------------------------------------------------------------------------------ GPU tier
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_qwen_shape(dtype):
    """Qwen2.5 vocabulary; fp32 reference on the GPU (float64 at this size would be slow, fp32 is ample here)."""
    torch.manual_seed(3)
    n, vocab = 2048, 151_936
    logits = (torch.randn(n, vocab, device="cuda") * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda")
    rapid_kernels.token_logprobs(logits, targets, 0.8, backend="triton").sum().backward()   # warm-up: compile
    logits.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = rapid_kernels.token_logprobs(logits, targets, 0.8, backend="triton")
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 64 * n + 2**20                 # a few (N,) vectors, no (N, V)
    grad = torch.randn(n, device="cuda")
    out.backward(grad)
    x = logits.detach().float().requires_grad_()
    ref = reference.token_logprobs(x, targets, 0.8)
    ref.backward(grad)
    assert_close(out, ref, OP, dtype, "out", "log-probs")
    assert_close(logits.grad, x.grad, OP, dtype, "grad", "d logits")


@pytest.mark.gpu
def test_gpu_int64_offsets():
    """N·V > 2^31 elements: the last rows (past the int32 range) are still read and written correctly."""
    torch.manual_seed(4)
    n, vocab = 14_200, 151_936
    assert n * vocab > 2**31
    logits = torch.randn(n, vocab, device="cuda", dtype=torch.bfloat16).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda")
    grad = torch.randn(n, device="cuda")
    out = rapid_kernels.token_logprobs(logits, targets, 1.0, backend="triton")
    out.backward(grad)
    tail = slice(n - 8, n)
    x = logits.detach()[tail].float().requires_grad_()
    ref = reference.token_logprobs(x, targets[tail], 1.0)
    ref.backward(grad[tail])
    assert_close(out[tail], ref, OP, torch.bfloat16, "out", "log-probs (tail)")
    assert_close(logits.grad[tail], x.grad, OP, torch.bfloat16, "grad", "d logits (tail)")
