"""Soft-cap, threshold truncation (top-k / top-p) and the entropy output, on every backend this machine runs,
against the float64 reference: outputs, entropy and gradients, plus the exact properties the trainer relies on
(truncated entries get exactly zero gradient, the sampled target is always kept, entropy values worked by hand)."""

from __future__ import annotations

import math

import pytest
import torch

import rapid_kernels as rk
from rapid_kernels import reference as ref

from .tolerances import assert_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU machine the Triton and CUDA cases belong to the GPU tier (run_all.sh runs `-m gpu`); on CPU the Triton
# interpreter and the C++ backend run in the CPU tier.
BACKENDS = [pytest.param(b, id=b, marks=[pytest.mark.gpu] if DEV == "cuda" and b in ("triton", "cuda") else [])
            for b in rk.available_backends(DEV)]
CASES = {  # name: (temperature, softcap, with threshold)
    "softcap": (1.0, 4.0, False),
    "threshold": (0.7, None, True),
    "softcap+threshold": (1.3, 2.5, True),
}


def _threshold(z64: torch.Tensor, keep: int) -> torch.Tensor:
    """Per-row cut in the first clear gap of the sorted processed logits at or after the keep-th: a top-k-like set
    with no value near the cut (16-bit inputs have many ties; float32 noise must not flip an entry). Row 0 gets
    −inf (no truncation)."""
    values = z64.sort(dim=1, descending=True).values                                        # (N, V)
    gap = values[:, :-1] - values[:, 1:]                                                    # (N, V − 1)
    thr = torch.empty(z64.shape[0])
    for i in range(z64.shape[0]):
        k = keep - 1 + int(torch.nonzero(gap[i, keep - 1:] > 1e-3)[0])
        thr[i] = float((values[i, k] + values[i, k + 1]) / 2)
    thr[0] = float("-inf")
    return thr.to(z64.device)


def _logits_case(n, vocab, dtype, case, seed=0):
    torch.manual_seed(seed)
    temperature, softcap, with_thr = CASES[case]
    logits = (torch.randn(n, vocab, device=DEV) * 3).to(dtype)                              # (N, V)
    targets = torch.randint(0, vocab, (n,), device=DEV)
    z64 = ref.process_logits(logits.double(), temperature, softcap)
    thr = _threshold(z64, keep=vocab // 3) if with_thr else None
    return logits, targets, temperature, softcap, thr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_token_logprobs(backend, dtype, case):
    logits, targets, temperature, softcap, thr = _logits_case(13, 4231, dtype, case)
    x = logits.detach().requires_grad_()
    lp, entropy = rk.token_logprobs(x, targets, temperature, softcap=softcap, threshold=thr, return_entropy=True,
                                    backend=backend)
    grad = torch.randn(lp.shape, device=DEV)
    lp.backward(grad)
    x64 = logits.detach().double().requires_grad_()
    lp64, ent64 = ref.token_logprobs(x64, targets, temperature, softcap=softcap, threshold=thr, return_entropy=True)
    lp64.backward(grad.double())
    assert lp.dtype == entropy.dtype == torch.float32 and not entropy.requires_grad
    assert_close(lp, lp64, "token_logprobs", dtype, "out", "log-probs")
    assert_close(entropy, ent64, "token_logprobs", dtype, "entropy", "entropy")
    assert_close(x.grad, x64.grad, "token_logprobs", dtype, "grad", "d logits")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_linear_token_logprobs(backend, dtype, case):
    """V = 4231 spans several vocab chunks / splits on every backend, so kept sets straddle chunk boundaries."""
    torch.manual_seed(1)
    n, d, vocab = 17, 16, 4231
    temperature, softcap, with_thr = CASES[case]
    hidden = torch.randn(n, d, device=DEV).to(dtype)
    weight = (torch.randn(vocab, d, device=DEV) * 2 / d**0.5).to(dtype)
    bias = torch.randn(vocab, device=DEV).to(dtype)
    targets = torch.randint(0, vocab, (n,), device=DEV)
    raw64 = hidden.double() @ weight.double().T + bias.double()
    thr = _threshold(ref.process_logits(raw64, temperature, softcap), keep=50) if with_thr else None
    leaves = [t.detach().requires_grad_() for t in (hidden, weight, bias)]
    lp, entropy = rk.linear_token_logprobs(leaves[0], leaves[1], targets, temperature, leaves[2], softcap=softcap,
                                           threshold=thr, return_entropy=True, backend=backend)
    grad = torch.randn(n, device=DEV)
    lp.backward(grad)
    l64 = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    lp64, ent64 = ref.linear_token_logprobs(l64[0], l64[1], targets, temperature, l64[2], softcap=softcap,
                                            threshold=thr, return_entropy=True)
    lp64.backward(grad.double())
    op = "linear_token_logprobs"
    assert_close(lp, lp64, op, dtype, "out", "log-probs")
    assert_close(entropy, ent64, op, dtype, "entropy", "entropy")
    for name, a, e in zip(("d hidden", "d weight", "d bias"), leaves, l64):
        assert a.grad.dtype == dtype
        assert_close(a.grad, e.grad, op, dtype, "grad", name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_rapid_loss(backend):
    torch.manual_seed(2)
    n, d, vocab = 12, 8, 300
    h = torch.randn(n, d, device=DEV, requires_grad=True)
    w = torch.randn(vocab, d, device=DEV, requires_grad=True)
    t = torch.randint(0, vocab, (n,), device=DEV)
    behavior = torch.randn(n, device=DEV) - 4
    cu, r = torch.tensor([0, 2, 5, 9, 12], device=DEV), torch.tensor([1.0, 0.0, 0.0, 1.0], device=DEV)
    thr = torch.full((n,), -1.5, device=DEV)
    kw = dict(temperature=0.9, softcap=3.0, threshold=thr)
    out = rk.fused_rapid_loss(h, w, t, behavior, r, cu, 2, return_entropy=True, backend=backend, **kw)
    out.loss.backward()
    h64, w64 = (x.detach().double().requires_grad_() for x in (h, w))
    exp = ref.fused_rapid_loss(h64, w64, t, behavior.double(), r.double(), cu, 2, return_entropy=True, **kw)
    exp.loss.backward()
    for name in ("loss", "seq_logratio", "weights", "advantages", "token_logprobs", "entropy"):
        kind = "entropy" if name == "entropy" else "out"
        assert_close(getattr(out, name), getattr(exp, name), "fused_rapid_loss", torch.float32, kind, name)
    assert_close(h.grad, h64.grad, "fused_rapid_loss", torch.float32, "grad", "d hidden")
    assert_close(w.grad, w64.grad, "fused_rapid_loss", torch.float32, "grad", "d weight")
    assert rk.fused_rapid_loss(h, w, t, behavior, r, cu, 2, backend=backend, **kw).entropy is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_entries_get_exactly_zero_gradient(backend):
    logits, targets, temperature, softcap, thr = _logits_case(9, 1031, torch.float32, "softcap+threshold", seed=3)
    targets[1] = logits[1].argmin()                       # a target far below its row's cut: kept all the same
    x = logits.detach().requires_grad_()
    rk.token_logprobs(x, targets, temperature, softcap=softcap, threshold=thr, backend=backend).sum().backward()
    z = ref.process_logits(logits.double(), temperature, softcap)
    kept = (z >= thr.double()[:, None])
    kept[torch.arange(9), targets] = True
    assert torch.all(x.grad[~kept] == 0)                  # exactly zero, not ~1e-38
    assert torch.all(x.grad[kept] != 0)
    assert x.grad[1, targets[1]] > 0                      # the kept target's gradient g·(1 − p) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_always_kept(backend):
    """threshold = +inf keeps only the target: log π = 0, entropy 0, no gradient (to fp32 rounding of the base-2
    log-sum-exp); −inf is no truncation."""
    torch.manual_seed(4)
    logits = torch.randn(5, 300, device=DEV, requires_grad=True)
    targets = torch.randint(0, 300, (5,), device=DEV)
    lp, ent = rk.token_logprobs(logits, targets, threshold=torch.full((5,), float("inf"), device=DEV),
                                return_entropy=True, backend=backend)
    lp.sum().backward()
    assert lp.abs().max() < 1e-6 and ent.abs().max() < 1e-6 and logits.grad.abs().max() < 1e-6
    free = rk.token_logprobs(logits.detach(), targets, threshold=torch.full((5,), -float("inf"), device=DEV),
                             backend=backend)
    assert_close(free, ref.token_logprobs(logits.detach().double(), targets), "token_logprobs", torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_and_softcap_by_hand(backend):
    # row 0: four logits tie at the max, the rest far below a threshold between them -> entropy log 4
    # row 1: no threshold, all equal -> uniform over V = 300 -> entropy log 300
    # row 2: soft-cap 2 squashes logit 100 to 2·tanh(50) = 2 (to fp32), 0 stays 0, −1e4 becomes −2 (298 of them)
    logits = torch.full((3, 300), -20.0, device=DEV)
    logits[0, :4] = 1.0
    logits[1] = 0.5
    logits[2, 1] = 100.0
    logits[2, 2:] = -1e4
    logits[2, 0] = 0.0
    targets = torch.tensor([2, 7, 1], device=DEV)
    thr = torch.tensor([0.0, -float("inf"), -float("inf")], device=DEV)
    lp, ent = rk.token_logprobs(logits[:2], targets[:2], threshold=thr[:2], return_entropy=True, backend=backend)
    assert lp.tolist() == pytest.approx([-math.log(4), -math.log(300)], abs=1e-5)
    assert ent.tolist() == pytest.approx([math.log(4), math.log(300)], abs=1e-5)
    lp_cap = rk.token_logprobs(logits[2:], targets[2:], softcap=2.0, backend=backend)
    assert lp_cap.item() == pytest.approx(2 - math.log(math.exp(2) + 1 + 298 * math.exp(-2)), abs=1e-5)
