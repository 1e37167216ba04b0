"""Triton linear_token_logprobs vs the float64 reference: outputs and d hidden, d weight, d bias."""

from __future__ import annotations

import pytest
import torch

import rapid_kernels
from rapid_kernels import reference
from rapid_kernels import triton_backend as tb

from .tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LIN = tb._ltlp
SPLIT = LIN.INTERPRET_SPLIT if LIN.INTERPRET else 4096   # vocab entries per forward program (interpreter)
BLOCK_N = LIN.INTERPRET_META["BLOCK_N"]
OP = "linear_token_logprobs"


def _inputs(n, d, vocab, dtype, bias, seed=0):
    torch.manual_seed(seed)
    hidden = torch.randn(n, d, device=DEVICE).to(dtype)                                   # (N, D)
    weight = (torch.randn(vocab, d, device=DEVICE) * 2 / d**0.5).to(dtype)                # (V, D)
    b = torch.randn(vocab, device=DEVICE).to(dtype) if bias else None                     # (V,)
    targets = torch.randint(0, vocab, (n,), device=DEVICE)                                 # (N,)
    return hidden, weight, b, targets


def _check(hidden, weight, bias, targets, temperature, dtype, need=(True, True, True)):
    """backend="triton" forward + backward against the float64 reference on the same rounded inputs."""
    leaves = [hidden, weight, bias]
    leaves = [None if x is None else x.detach().requires_grad_(req) for x, req in zip(leaves, need)]
    out = rapid_kernels.linear_token_logprobs(leaves[0], leaves[1], targets, temperature, leaves[2], backend="triton")
    assert out.dtype == torch.float32 and out.shape == targets.shape
    grad = torch.randn(out.shape, device=out.device)
    out.backward(grad)
    ref_leaves = [None if x is None else x.detach().double().requires_grad_(x.requires_grad) for x in leaves]
    ref = reference.linear_token_logprobs(ref_leaves[0], ref_leaves[1], targets, temperature, ref_leaves[2])
    ref.backward(grad.double())
    assert_close(out, ref, OP, dtype, "out", "log-probs")
    for name, x, r in zip(("d hidden", "d weight", "d bias"), leaves, ref_leaves):
        if x is None or not x.requires_grad:
            assert x is None or x.grad is None
            continue
        assert x.grad.dtype == x.dtype and x.grad.shape == x.shape
        assert_close(x.grad, r.grad, OP, dtype, "grad", name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, d, vocab, bias, temperature", [
    (41, 32, 4231, True, 1.0),                 # odd shapes, the Qwen-like default
    (41, 64, SPLIT + 1, False, 0.7),           # one past a forward vocab split (and a BLOCK_N tile)
    (65, 48, BLOCK_N + 1, True, 1.0),          # one past a row block and a vocab tile, D not a multiple of BLOCK_K
])
def test_matches_reference(dtype, n, d, vocab, bias, temperature):
    hidden, weight, b, targets = _inputs(n, d, vocab, dtype, bias, seed=n + vocab)
    _check(hidden, weight, b, targets, temperature, dtype)


def test_bf16():
    """bf16 hidden / weight / bias (the interpreter upcasts before tl.dot; CUDA uses bf16 tensor cores)."""
    hidden, weight, b, targets = _inputs(41, 32, BLOCK_N + 1, torch.bfloat16, True, seed=14)
    _check(hidden, weight, b, targets, 1.0, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous(dtype):
    """hidden as a transposed view, weight as a column slice of a wider matrix, targets strided."""
    n, d, vocab = 41, 32, 1031
    torch.manual_seed(5)
    hidden = torch.randn(d, n, device=DEVICE).to(dtype).t()                               # (N, D), strides (1, N)
    weight = (torch.randn(vocab, 2 * d, device=DEVICE) / d**0.5).to(dtype)[:, 1::2]       # (V, D), strides (2D, 2)
    targets = torch.randint(0, vocab, (n, 2), device=DEVICE)[:, 1]                          # (N,), stride 2
    assert not (hidden.is_contiguous() or weight.is_contiguous() or targets.is_contiguous())
    _check(hidden, weight, None, targets, 1.1, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_backward_in_vocab_chunks(monkeypatch, dtype):
    """A tiny d-logits budget forces several backward vocab chunks (the last one short): each chunk's d W rows are
    written once, d hidden accumulates over chunks in fp32."""
    monkeypatch.setattr(LIN, "DZ_BUDGET_BYTES", 1)
    monkeypatch.setattr(LIN, "MIN_CHUNK", 64)
    assert LIN.dz_chunk(70, 257, 2) == 64
    hidden, weight, b, targets = _inputs(70, 32, 257, dtype, True, seed=7)
    _check(hidden, weight, b, targets, 1.0, dtype)


def test_split_count_fills_the_gpu():
    """split_cols (the GPU rule; the interpreter uses a fixed split): a small N still launches ~a wave of programs
    on 132 SMs, a large N few splits; splits are aligned and at least 4 tiles wide."""
    for n, lo, hi in ((1, 110, 160), (256, 110, 320), (4096, 132, 600), (16384, 256, 600), (65536, 512, 600)):
        cols = LIN.split_cols(n, 151_936, 132)
        programs = -(-151_936 // cols) * -(-n // 128)
        assert cols % LIN.SPLIT_ALIGN == 0 and cols >= 4 * LIN.SPLIT_ALIGN
        assert lo <= programs <= hi, (n, cols, programs)


def test_partial_gradients():
    """Frozen lm_head (only d hidden), and frozen hidden (only d weight, d bias)."""
    hidden, weight, b, targets = _inputs(41, 32, 300, torch.float32, True, seed=9)
    _check(hidden, weight, b, targets, 1.0, torch.float32, need=(True, False, False))
    _check(hidden, weight, b, targets, 1.0, torch.float32, need=(False, True, True))


def test_matches_token_logprobs_of_materialised_logits():
    """The fused op equals token_logprobs of the explicit logits (same backend)."""
    hidden, weight, b, targets = _inputs(41, 32, 777, torch.float32, True, seed=11)
    targets = targets.to(torch.int32)
    logits = hidden @ weight.T + b                                                          # (N, V)
    fused = rapid_kernels.linear_token_logprobs(hidden, weight, targets, 0.8, b, backend="triton")
    plain = rapid_kernels.token_logprobs(logits, targets, 0.8, backend="triton")
    assert_close(fused, plain.double(), OP, torch.float32)


# ------------------------------------------------------------------------------------------------------ GPU tier
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_qwen_shape_and_memory(dtype):
    """Qwen2.5-0.5B lm_head (D = 896, V = 151 936): matches an fp32 reference and never holds (N, V)."""
    n, d, vocab = 4096, 896, 151_936
    hidden, weight, _, targets = _inputs(n, d, vocab, dtype, False, seed=13)
    hidden.requires_grad_()
    weight.requires_grad_()
    eager_logits_bytes = n * vocab * (hidden.element_size() + 4)        # eager: logits + an fp32 log-softmax
    grad = torch.randn(n, device="cuda")
    # warm-up: compiles and autotunes (the autotuner's L2-flush buffer must not count), then frees the grads
    rapid_kernels.linear_token_logprobs(hidden, weight, targets, 1.0, None, backend="triton").backward(grad)
    hidden.grad = weight.grad = None
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = rapid_kernels.linear_token_logprobs(hidden, weight, targets, 1.0, None, backend="triton")
    torch.cuda.synchronize()
    fwd_extra = torch.cuda.max_memory_allocated() - base
    assert fwd_extra < 4 * 2**20 + 512 * n, f"forward used {fwd_extra / 2**20:.1f} MiB extra"   # (N, splits) LSEs
    out.backward(grad)
    torch.cuda.synchronize()
    grads_bytes = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
    bwd_extra = torch.cuda.max_memory_allocated() - base - grads_bytes
    bound = LIN.DZ_BUDGET_BYTES + 2 * n * d * 4 + 64 * 2**20   # d-logits chunk + fp32 d hidden (+ temp) + slack
    assert bwd_extra < bound, f"backward used {bwd_extra / 2**20:.0f} MiB extra (bound {bound / 2**20:.0f})"
    assert bwd_extra < 0.25 * eager_logits_bytes
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    ref = reference.linear_token_logprobs(h32, w32, targets, 1.0, None)
    ref.backward(grad)
    assert_close(out, ref, OP, dtype, "out", "log-probs")
    assert_close(hidden.grad, h32.grad, OP, dtype, "grad", "d hidden")
    assert_close(weight.grad, w32.grad, OP, dtype, "grad", "d weight")


def test_registered_ops_pass_opcheck():
    """The Triton ops are torch.library ops (triton_op on GPU; custom_op + fake function under the interpreter):
    schema, fake function and autograd registration all check out."""
    torch.manual_seed(6)
    hidden = torch.randn(9, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(33, 8, device=DEVICE, requires_grad=True)
    bias = torch.randn(33, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, 33, (9,), device=DEVICE)
    thr = torch.full((9,), -1.0, device=DEVICE)
    torch.library.opcheck(LIN.linear_token_logprobs_fwd, (hidden, weight, targets, bias, thr, 0.9, 3.0, True))
    torch.library.opcheck(LIN.linear_token_logprobs_fwd, (hidden, weight, targets, None, None, 1.0, 0.0, False))
    logits = torch.randn(9, 33, device=DEVICE, requires_grad=True)
    torch.library.opcheck(tb._tlp.token_logprobs_fwd, (logits, targets, thr, 0.8, 2.0, True))
