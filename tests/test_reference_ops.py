"""The eager reference of token_logprobs / linear_token_logprobs / fused_rapid_loss, and the public dispatch."""

import math

import pytest
import torch

import rapid_kernels
from rapid_kernels import reference

F64 = torch.float64


def test_token_logprobs_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    out = rapid_kernels.token_logprobs(logits, torch.tensor([1, 0]), backend="torch")
    assert torch.allclose(out, torch.tensor([math.log(3 / 4), math.log(1 / 2)]))
    # T = 2: probabilities ∝ (1, √3).
    hot = rapid_kernels.token_logprobs(logits[:1], torch.tensor([1]), temperature=2.0, backend="torch")
    assert hot.item() == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_token_logprobs_low_precision_inputs_give_float32(dtype):
    torch.manual_seed(0)
    logits = torch.randn(41, 4231) * 4
    targets = torch.randint(0, 4231, (41,))
    out = rapid_kernels.token_logprobs(logits.to(dtype), targets, backend="torch")
    ref = torch.log_softmax(logits.to(dtype).double(), 1).gather(1, targets[:, None]).squeeze(1)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-4


def test_token_logprobs_backward_matches_closed_form():
    torch.manual_seed(1)
    logits = torch.randn(7, 11, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    g = torch.randn(7, dtype=F64)
    rapid_kernels.token_logprobs(logits, targets, temperature=0.7).backward(g)
    soft = torch.softmax(logits.detach() / 0.7, 1)
    onehot = torch.nn.functional.one_hot(targets, 11).to(F64)
    assert torch.allclose(logits.grad, g[:, None] * (onehot - soft) / 0.7)


@pytest.mark.parametrize("chunk", [5, 8, 9, 23, 1000])   # below, at and just past the vocab (V = 23) boundary
def test_linear_token_logprobs_chunked_equals_dense(chunk):
    torch.manual_seed(2)
    h = torch.randn(9, 6, dtype=F64, requires_grad=True)
    w = torch.randn(23, 6, dtype=F64, requires_grad=True)
    b = torch.randn(23, dtype=F64, requires_grad=True)
    t = torch.tensor([0, 22, 7, 8, 15, 16, 3, 22, 1])
    out = reference.linear_token_logprobs(h, w, t, 0.8, b, chunk=chunk)
    dense = torch.log_softmax((h @ w.T + b) / 0.8, 1).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(out, dense)
    g = torch.randn(9, dtype=F64)
    grads = torch.autograd.grad(out, (h, w, b), g)
    dense_grads = torch.autograd.grad(dense, (h, w, b), g)
    for a, e in zip(grads, dense_grads):
        assert torch.allclose(a, e)


def test_linear_token_logprobs_gradcheck_float64():
    torch.manual_seed(3)
    h = torch.randn(5, 4, dtype=F64, requires_grad=True)
    w = torch.randn(13, 4, dtype=F64, requires_grad=True)
    b = torch.randn(13, dtype=F64, requires_grad=True)
    t = torch.tensor([0, 12, 5, 6, 7])
    assert torch.autograd.gradcheck(lambda h, w, b: reference.linear_token_logprobs(h, w, t, 1.3, b, chunk=6),
                                    (h, w, b))


def test_linear_token_logprobs_non_contiguous_and_no_bias():
    torch.manual_seed(4)
    h = torch.randn(6, 41, dtype=F64).T                                            # (41, 6) non-contiguous
    w = torch.randn(6, 4231, dtype=F64).T                                          # (4231, 6) non-contiguous
    t = torch.randint(0, 4231, (41,))
    out = rapid_kernels.linear_token_logprobs(h, w, t)
    dense = torch.log_softmax(h @ w.T, 1).gather(1, t[:, None]).squeeze(1)
    assert not h.is_contiguous() and torch.allclose(out, dense)


def test_fused_rapid_loss_equals_composition():
    torch.manual_seed(5)
    h = torch.randn(12, 8, dtype=F64, requires_grad=True)
    w = torch.randn(50, 8, dtype=F64, requires_grad=True)
    t = torch.randint(0, 50, (12,))
    behavior = torch.randn(12, dtype=F64) - 4
    cu, r = torch.tensor([0, 2, 5, 9, 12]), torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    fused = rapid_kernels.fused_rapid_loss(h, w, t, behavior, r, cu, 2, eta=1.5, temperature=0.9)
    lp = rapid_kernels.linear_token_logprobs(h, w, t, 0.9)
    composed = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=1.5)
    for name in ("loss", "seq_logratio", "weights", "baselines", "advantages", "clip_fraction"):
        assert torch.allclose(getattr(fused, name), getattr(composed, name)), name
    g_fused = torch.autograd.grad(fused.loss, (h, w))
    g_comp = torch.autograd.grad(composed.loss, (h, w))
    assert all(torch.allclose(a, b) for a, b in zip(g_fused, g_comp))


def test_dispatch_basics():
    assert rapid_kernels.available_backends()[-1] == "torch"
    assert "torch" in rapid_kernels.available_backends("cpu")
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match="backend"):
        rapid_kernels.token_logprobs(x, torch.tensor([0, 1, 2]), backend="cuda")  # CPU tensors, CUDA backend
    with pytest.raises(ValueError, match="backend"):
        rapid_kernels.token_logprobs(x, torch.tensor([0, 1, 2]), backend="numpy")
    # float64 always runs the reference, whatever the backend asked for.
    for name in rapid_kernels.available_backends("cpu"):
        out = rapid_kernels.token_logprobs(x.double(), torch.tensor([0, 1, 2]), backend=name)
        assert out.dtype == F64


# ----------------------------------------------------------------------------- soft-cap, threshold, entropy
def _processing_inputs(seed=6):
    torch.manual_seed(seed)
    h = torch.randn(9, 6, dtype=F64, requires_grad=True)
    w = torch.randn(23, 6, dtype=F64, requires_grad=True)
    b = torch.randn(23, dtype=F64, requires_grad=True)
    t = torch.tensor([0, 22, 7, 8, 15, 16, 3, 22, 1])
    z = reference.process_logits((h @ w.T + b).detach(), 0.8, 2.5)
    thr = (z.median(dim=1).values + 0.013).float()                     # keeps about half of each row
    thr[0] = float("-inf")
    return h, w, b, t, thr


@pytest.mark.parametrize("chunk", [5, 23])
def test_processed_linear_equals_dense_formula(chunk):
    """softcap·tanh(l/softcap)/T, then the softmax over {z ≥ τ} ∪ {target}: the chunked op == the formula."""
    h, w, b, t, thr = _processing_inputs()
    lp, ent = reference.linear_token_logprobs(h, w, t, 0.8, b, chunk, softcap=2.5, threshold=thr, return_entropy=True)
    z = 2.5 * torch.tanh((h @ w.T + b) / 2.5) / 0.8
    keep = z >= thr.double()[:, None]
    keep[torch.arange(9), t] = True
    logp = torch.log_softmax(z.masked_fill(~keep, float("-inf")), dim=1)
    dense = logp.gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(lp, dense)
    p = logp.exp()
    assert torch.allclose(ent, -(p * torch.where(keep, logp, 0.0)).sum(1))
    assert not ent.requires_grad
    grads = torch.autograd.grad(lp.sum(), (h, w, b))
    dense_grads = torch.autograd.grad(dense.sum(), (h, w, b))
    assert all(torch.allclose(a, e) for a, e in zip(grads, dense_grads))


def test_processed_gradcheck_float64():
    h, w, b, t, thr = _processing_inputs(seed=7)
    assert torch.autograd.gradcheck(
        lambda h, w, b: reference.linear_token_logprobs(h, w, t, 1.3, b, 6, softcap=3.0, threshold=thr), (h, w, b))
    logits = (h @ w.T + b).detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: reference.token_logprobs(x, t, 0.9, softcap=2.0, threshold=thr), (logits,))


def test_target_below_threshold_is_kept_and_others_get_zero_gradient():
    h, w, b, t, thr = _processing_inputs(seed=8)
    logits = (h @ w.T + b).detach()
    t = logits.argmin(dim=1)                                          # every target at the bottom of its row
    x = logits.clone().requires_grad_()
    lp = rapid_kernels.token_logprobs(x, t, threshold=thr, backend="torch")
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    keep = logits >= thr.double()[:, None]
    keep[torch.arange(9), t] = True
    assert torch.all(x.grad[~keep] == 0) and torch.all(x.grad[keep] != 0)


def test_token_and_linear_agree_on_processing():
    h, w, b, t, thr = _processing_inputs(seed=9)
    kw = dict(softcap=1.7, threshold=thr, return_entropy=True)
    a = rapid_kernels.linear_token_logprobs(h, w, t, 0.6, b, backend="torch", **kw)
    c = rapid_kernels.token_logprobs(h @ w.T + b, t, 0.6, backend="torch", **kw)
    assert torch.allclose(a[0], c[0]) and torch.allclose(a[1], c[1])
