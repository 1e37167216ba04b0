"""Triton rapid_loss / fused_rapid_loss vs the float64 reference: every output field and d token_logprobs
(d hidden, d weight for the fused op), over every option combination."""

from __future__ import annotations

import itertools

import pytest
import torch

import rapid_kernels
from rapid_kernels import reference
from rapid_kernels import triton_backend as tb

from .tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FIELDS = ("loss", "seq_logratio", "weights", "baselines", "advantages", "clip_fraction", "token_logprobs")
COMBOS = list(itertools.product(("loo", "mean"), ("sequence", "geometric"), ("truncate", "mask", "none"),
                                ("none", "std")))


def _batch(num_seqs: int, max_len: int, noise: float = 0.3, seed: int = 0, empty: bool = True):
    """Packed tokens of num_seqs sequences (some empty), behaviour log-probs near the policy's, rewards."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0 if empty else 1, max_len + 1, (num_seqs,), generator=g)       # (S,)
    cu = torch.zeros(num_seqs + 1, dtype=torch.int64)
    cu[1:] = lengths.cumsum(0)                                                               # (S + 1,)
    n = int(cu[-1])
    lp = -torch.rand(n, generator=g) * 3                                                     # (N,)
    blp = lp + torch.randn(n, generator=g) * noise                                           # (N,)
    rewards = torch.randn(num_seqs, generator=g)                                             # (S,)
    return lp.to(DEVICE), blp.to(DEVICE), rewards.to(DEVICE), cu.to(DEVICE)


def _check(lp, blp, rewards, cu, k, eta, baseline, loss_norm, is_level, is_clip, adv_scale, op="rapid_loss"):
    lp = lp.detach().requires_grad_()
    out = rapid_kernels.rapid_loss(lp, blp, rewards, cu, k, eta, baseline, loss_norm, is_level, is_clip, adv_scale,
                                   backend="triton")
    out.loss.backward()
    lp64 = lp.detach().double().requires_grad_()
    ref = reference.rapid_loss(lp64, blp.double(), rewards.double(), cu, k, eta, baseline, loss_norm, is_level,
                               is_clip, adv_scale)
    ref.loss.backward()
    for name in FIELDS:
        got = getattr(out, name)
        assert got.dtype == torch.float32 and not got.requires_grad or name == "loss", name
        assert_close(got, getattr(ref, name), op, torch.float32, "out", name)
    assert_close(lp.grad, lp64.grad, op, torch.float32, "grad", "d token_logprobs")
    return out


@pytest.mark.parametrize("baseline, is_level, is_clip, adv_scale", COMBOS)
def test_every_option_combination(baseline, is_level, is_clip, adv_scale):
    lp, blp, rewards, cu = _batch(24, 9, noise=0.4, seed=1)
    _check(lp, blp, rewards, cu, 4, 1.5, baseline, 3.0, is_level, is_clip, adv_scale)


@pytest.mark.parametrize("k, num_seqs, max_len, baseline", [
    (2, 6, 5, "loo"), (3, 9, 7, "mean"), (1, 5, 6, "mean"), (16, 32, 4, "loo"), (5, 10, 400, "loo"),
])
def test_group_sizes_and_long_groups(k, num_seqs, max_len, baseline):
    """K = 1 (mean baseline), K not a power of two, K = 16, and groups longer than one token block."""
    lp, blp, rewards, cu = _batch(num_seqs, max_len, seed=k)
    _, block_t = tb._loss._blocks(k)
    assert k != 5 or int(cu[k]) > block_t       # the long case really spans several token blocks
    for adv_scale in ("none", "std"):
        _check(lp, blp, rewards, cu, k, 2.0, baseline, 1.0, "sequence", "truncate", adv_scale)


@pytest.mark.parametrize("is_clip", ["truncate", "mask", "none"])
def test_extreme_ratios_clip_and_cap(is_clip):
    """log w far beyond η and beyond the float-safety cap (80) for pure IS: finite weights, exact clip fractions."""
    lp, blp, rewards, cu = _batch(8, 30, noise=0.1, seed=3, empty=False)
    blp = blp.clone()
    blp[int(cu[1]):int(cu[2])] -= 10.0          # sequence 1: log w ≈ +10 · len  (> 80)
    blp[int(cu[4]):int(cu[5])] += 0.5           # sequence 4: w < 1
    out = _check(lp, blp, rewards, cu, 4, 2.0, "loo", 1.0, "sequence", is_clip, "none")
    assert torch.isfinite(out.weights).all() and out.clip_fraction > 0


def test_non_contiguous_inputs():
    lp, blp, rewards, cu = _batch(12, 8, seed=4)
    n = lp.shape[0]
    lp_view = torch.stack([lp, lp + 1], dim=1)[:, 0]                                           # (N,), stride 2
    blp_view = torch.stack([blp, blp], dim=1)[:, 1]                                          # (N,), stride 2
    rewards_view = torch.stack([rewards, rewards], dim=1)[:, 1]                              # (S,), stride 2
    cu32 = torch.stack([cu, cu], dim=1)[:, 0].to(torch.int32)                                # int32 offsets, strided
    assert not (lp_view.is_contiguous() or blp_view.is_contiguous() or rewards_view.is_contiguous())
    assert lp_view.shape == (n,)
    _check(lp_view, blp_view, rewards_view, cu32, 3, 2.0, "loo", 2.0, "geometric", "truncate", "std")


def test_low_precision_rewards_and_nan_guard():
    lp, blp, rewards, cu = _batch(8, 6, seed=5)
    _check(lp, blp, rewards.half().float(), cu, 4, 2.0, "mean", 1.0, "sequence", "mask", "none")
    out = rapid_kernels.rapid_loss(lp, blp, rewards.to(torch.bfloat16), cu, 4, backend="triton")
    ref = reference.rapid_loss(lp.double(), blp.double(), rewards.to(torch.bfloat16).double(), cu, 4)
    assert_close(out.loss, ref.loss, "rapid_loss", torch.float32)
    with pytest.raises(ValueError, match="rewards"):
        rapid_kernels.rapid_loss(lp, blp, torch.full_like(rewards, float("nan")), cu, 4, backend="triton")


def test_token_level_falls_back_to_reference():
    lp, blp, rewards, cu = _batch(8, 6, seed=6)
    out = rapid_kernels.rapid_loss(lp, blp, rewards, cu, 4, is_level="token", backend="triton")
    ref = reference.rapid_loss(lp, blp, rewards, cu, 4, is_level="token")
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.weights, ref.weights)


def test_loss_scale_of_gradient():
    """The backward applies the incoming gradient (here 3·loss) to the broadcast coefficient."""
    lp, blp, rewards, cu = _batch(8, 6, seed=7)
    lp = lp.requires_grad_()
    out = rapid_kernels.rapid_loss(lp, blp, rewards, cu, 4, backend="triton")
    (3 * out.loss).backward()
    lp64 = lp.detach().double().requires_grad_()
    (3 * reference.rapid_loss(lp64, blp.double(), rewards.double(), cu, 4).loss).backward()
    assert_close(lp.grad, lp64.grad, "rapid_loss", torch.float32, "grad")


def test_diagnostics_are_independent_of_the_graph():
    """Editing a returned diagnostic in place (a trainer normalising weights for logging) leaves backward intact."""
    lp, blp, rewards, cu = _batch(8, 6, seed=12)
    lp = lp.requires_grad_()
    out = rapid_kernels.rapid_loss(lp, blp, rewards, cu, 4, backend="triton")
    out.weights.div_(out.weights.sum())
    out.advantages.zero_()
    out.loss.backward()
    lp64 = lp.detach().double().requires_grad_()
    reference.rapid_loss(lp64, blp.double(), rewards.double(), cu, 4).loss.backward()
    assert_close(lp.grad, lp64.grad, "rapid_loss", torch.float32, "grad")


# -------------------------------------------------------------------------------------------------- fused op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("baseline, is_level, is_clip, adv_scale",
                         [("loo", "sequence", "truncate", "none"), ("mean", "geometric", "mask", "std")])
def test_fused_matches_reference(dtype, baseline, is_level, is_clip, adv_scale):
    torch.manual_seed(8)
    d, vocab, k = 32, 4231, 4
    _, blp, rewards, cu = _batch(8, 9, seed=8, empty=False)
    n = blp.shape[0]
    hidden = torch.randn(n, d, device=DEVICE).to(dtype).requires_grad_()                     # (N, D)
    weight = (torch.randn(vocab, d, device=DEVICE) / d**0.5).to(dtype).requires_grad_()     # (V, D)
    targets = torch.randint(0, vocab, (n,), device=DEVICE)
    blp = blp - 8.0                                                                          # near log(1/V)
    args = (blp, rewards, cu, k, 2.0, baseline, 5.0, is_level, is_clip, adv_scale, 0.9)
    out = rapid_kernels.fused_rapid_loss(hidden, weight, targets, *args, backend="triton")
    out.loss.backward()
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    ref = reference.fused_rapid_loss(h64, w64, targets, *(a.double() if torch.is_tensor(a) and a.is_floating_point()
                                                          else a for a in args))
    ref.loss.backward()
    for name in FIELDS:
        assert_close(getattr(out, name), getattr(ref, name), "fused_rapid_loss", dtype, "out", name)
    assert_close(hidden.grad, h64.grad, "fused_rapid_loss", dtype, "grad", "d hidden")
    assert_close(weight.grad, w64.grad, "fused_rapid_loss", dtype, "grad", "d weight")


# ------------------------------------------------------------------------------------------------------ GPU tier
@pytest.mark.gpu
@pytest.mark.parametrize("baseline, is_level, is_clip, adv_scale", COMBOS[::5])
def test_gpu_large_batch(baseline, is_level, is_clip, adv_scale):
    """S = 2048 sequences of up to 16 tokens, K = 8."""
    lp, blp, rewards, cu = _batch(2048, 16, seed=9)
    _check(lp, blp, rewards, cu, 8, 2.0, baseline, 16.0, is_level, is_clip, adv_scale)


@pytest.mark.gpu
def test_gpu_fused_bf16_qwen_shape():
    torch.manual_seed(10)
    d, vocab, k = 896, 151_936, 8
    _, blp, rewards, cu = _batch(64, 64, seed=10, empty=False)
    n = blp.shape[0]
    hidden = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, d, device="cuda") / d**0.5).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda")
    args = (blp - 12.0, rewards, cu, k, 2.0, "loo", 64.0, "sequence", "truncate", "none", 1.0)
    out = rapid_kernels.fused_rapid_loss(hidden, weight, targets, *args, backend="triton")
    out.loss.backward()
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    ref = reference.fused_rapid_loss(h32, w32, targets, *args)
    ref.loss.backward()
    for name in ("loss", "seq_logratio", "weights", "advantages"):
        assert_close(getattr(out, name), getattr(ref, name), "fused_rapid_loss", torch.bfloat16, "out", name)
    assert_close(hidden.grad, h32.grad, "fused_rapid_loss", torch.bfloat16, "grad", "d hidden")
    assert_close(weight.grad, w32.grad, "fused_rapid_loss", torch.bfloat16, "grad", "d weight")
