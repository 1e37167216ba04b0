"""GPU tier: the CUDA backend (``backend="cuda"``) against the float64 reference, plus ``opcheck`` on CUDA tensors.

Same checks as the CPU tier (``test_cpp.py``, whose helpers this reuses) at the same odd shapes. Skipped without
a CUDA device or without an extension compiled with CUDA.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import rapid_kernels as rk
from rapid_kernels import reference as ref

from .test_cpp import TOL, _close, _leaf, _loss_inputs

_cpp_ops = pytest.importorskip("rapid_kernels._cpp_ops", reason="rapid_kernels._C not built")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif("cuda" not in rk.available_backends(), reason="cuda backend unavailable")]
DEV = "cuda"


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("n, vocab", [(41, 4231), (3, 151936), (0, 5)])
def test_token_logprobs(dtype, n, vocab):
    torch.manual_seed(0)
    logits = _leaf(torch.randn(n, vocab, device=DEV) * 4, dtype)
    targets = torch.randint(0, vocab, (n,), device=DEV)
    grad = torch.randn(n, device=DEV)
    out = rk.token_logprobs(logits, targets, 0.7, backend="cuda")
    out.backward(grad)
    exp_logits = _leaf(logits.detach(), torch.float64)
    expect = ref.token_logprobs(exp_logits, targets, 0.7)
    expect.backward(grad.double())
    _close(out, expect, 1e-4, "token_logprobs")
    _close(logits.grad, exp_logits.grad, TOL[dtype][1], "d logits")


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("vocab, with_bias", [(4231, False), (4231, True), (_cpp_ops.CUDA_VOCAB_CHUNK + 1, True)])
def test_linear_token_logprobs(dtype, vocab, with_bias):
    torch.manual_seed(1)
    n, dim = 41, 64
    base = torch.randn(n, 2 * dim, device=DEV)[:, ::2]                          # non-contiguous hidden
    hidden = _leaf(base, dtype)
    weight = _leaf(torch.randn(vocab, dim, device=DEV) / dim**0.5 * 3, dtype)
    bias = _leaf(torch.randn(vocab, device=DEV), dtype) if with_bias else None
    targets = torch.randint(0, vocab, (n,), device=DEV, dtype=torch.int32)
    grad = torch.randn(n, device=DEV)
    out = rk.linear_token_logprobs(hidden, weight, targets, 0.8, bias, backend="cuda")
    out.backward(grad)
    leaves = [_leaf(t.detach(), torch.float64) if t is not None else None for t in (hidden, weight, bias)]
    expect = ref.linear_token_logprobs(leaves[0], leaves[1], targets, 0.8, leaves[2])
    expect.backward(grad.double())
    # bf16/fp16 dz is rounded to the GEMM dtype before the backward GEMMs: allow the dtype's rounding.
    atol = 2e-4 if dtype == torch.float32 else 5e-2
    _close(out, expect, 1e-3 if dtype == torch.float32 else 5e-2, "linear_token_logprobs")
    _close(hidden.grad, leaves[0].grad, atol, "d hidden")
    _close(weight.grad, leaves[1].grad, atol, "d weight")
    if with_bias:
        _close(bias.grad, leaves[2].grad, atol, "d bias")


@pytest.mark.parametrize("baseline, is_clip, is_level, adv_scale",
                         list(itertools.product(["loo", "mean"], ["truncate", "mask", "none"],
                                                ["sequence", "geometric"], ["none", "std"])))
def test_rapid_loss(baseline, is_clip, is_level, adv_scale):
    lp, blp, rewards, cu = (t.to(DEV) for t in _loss_inputs())
    got_lp, exp_lp = _leaf(lp, torch.float32), _leaf(lp, torch.float64)
    args = (4, 1.5, baseline, 3.0, is_level, is_clip, adv_scale)
    got = rk.rapid_loss(got_lp, blp, rewards, cu, *args, backend="cuda")
    expect = ref.rapid_loss(exp_lp, blp.double(), rewards.double(), cu, *args)
    got.loss.backward()
    expect.loss.backward()
    for name in ("loss", "seq_logratio", "weights", "baselines", "advantages", "clip_fraction"):
        _close(getattr(got, name), getattr(expect, name), 5e-5, name)
    _close(got_lp.grad, exp_lp.grad, 1e-6, "d token_logprobs")


def test_device_mismatch_raises_value_error():
    """Bad-input rules are device-independent (test_cpp covers them); this is the CUDA-only case."""
    h, w = torch.randn(4, 8, device=DEV), torch.randn(10, 8)
    with pytest.raises(ValueError):
        rk.linear_token_logprobs(h, w, torch.zeros(4, dtype=torch.long, device=DEV), backend="cuda")


def test_opcheck_cuda():
    torch.manual_seed(6)
    logits = torch.randn(9, 33, device=DEV, requires_grad=True)
    targets = torch.randint(0, 33, (9,), device=DEV)
    hidden = torch.randn(9, 8, device=DEV, requires_grad=True)
    weight = torch.randn(33, 8, device=DEV, requires_grad=True)
    torch.library.opcheck(_cpp_ops.token_logprobs_fwd, (logits, targets, 0.8, 3.0, None, True))
    torch.library.opcheck(_cpp_ops.linear_token_logprobs_fwd, (hidden, weight, targets, None, 1.0, 16, 0.0,
                                                               torch.full((9,), -1.0, device=DEV), False))
    lp, blp, rewards, cu = (t.to(DEV) for t in _loss_inputs())
    torch.library.opcheck(_cpp_ops.rapid_loss_fwd, (lp.requires_grad_(), blp, rewards, cu, 4, 2.0, "loo", 1.0,
                                                    "sequence", "truncate", "std"))
