"""rapid / grpg / grpo losses and diagnostics (rapid/loss/algorithms.py)."""

import math

import pytest
import torch

from rapid.loss import algorithms
from rapid.loss.algorithms import PackedBatch
from rapid.config import RapidConfig

F64 = torch.float64


def _batch(n=10, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(n, generator=g, dtype=F64) - 2
    behavior = lp + shift * torch.randn(n, generator=g, dtype=F64)
    cu = torch.tensor([0, 2, 5, 7, n])
    batch = PackedBatch(targets=torch.randint(0, 30, (n,), generator=g), behavior_logprobs=behavior,
                        rewards=torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=F64), cu_seqlens=cu)
    return lp.requires_grad_(), batch


def _cfg(**kw):
    base = dict(group_size=2, prompts_per_rollout=4, prompts_per_step=2, max_new_tokens=8, kernel_backend="torch")
    base.update(kw)
    return RapidConfig(**base)


def test_rapid_equals_grpg_on_policy():
    lp, batch = _batch()                                                            # behavior == current π
    rapid = algorithms.loss_from_logprobs(_cfg(algo="rapid"), batch, lp)
    grpg = algorithms.loss_from_logprobs(_cfg(algo="grpg", prompts_per_step=4), batch, lp)
    assert rapid.loss.item() == pytest.approx(grpg.loss.item())
    g1 = torch.autograd.grad(rapid.loss, lp)[0]
    g2 = torch.autograd.grad(grpg.loss, lp)[0]
    assert torch.allclose(g1, g2)
    assert rapid.stats["rapid/w_mean"].item() == pytest.approx(1.0)
    assert rapid.count == 4


def test_grpg_ignores_behavior_policy_but_rapid_does_not():
    lp, batch = _batch(shift=0.7)
    rapid = algorithms.loss_from_logprobs(_cfg(algo="rapid"), batch, lp)
    grpg = algorithms.loss_from_logprobs(_cfg(algo="grpg", prompts_per_step=4), batch, lp)
    assert grpg.stats["rapid/w_mean"].item() == pytest.approx(1.0)
    assert abs(rapid.loss.item() - grpg.loss.item()) > 1e-3


def test_grpo_by_hand():
    # One group of two single-token sequences, R = (1, 0): A = ±0.5 / (std + 1e-6), std (unbiased) = √0.5.
    lp = torch.tensor([-1.0, -1.0], dtype=F64, requires_grad=True)
    ratio = torch.tensor([1.5, 1.5], dtype=F64)
    batch = PackedBatch(targets=torch.zeros(2, dtype=torch.long), behavior_logprobs=lp.detach() - ratio.log(),
                        rewards=torch.tensor([1.0, 0.0], dtype=F64), cu_seqlens=torch.tensor([0, 1, 2]))
    out = algorithms.grpo_loss(lp, batch, group_size=2, clip_eps=0.2)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    # token 1: A > 0, r = 1.5 > 1.2 → clipped objective 1.2·A (no gradient); token 2: A < 0 → 1.5·(−A) unclipped.
    assert out.loss.item() == pytest.approx(-(1.2 * a + 1.5 * -a) / 2)
    out.loss.backward()
    assert lp.grad[0].item() == 0.0
    assert lp.grad[1].item() == pytest.approx(-(1.5 * -a) / 2)                      # d/dlp of −r·A/N, r = e^{lp−μ}
    assert out.count == 2
    assert out.stats["rapid/clip_frac"].item() == pytest.approx(0.5)


def test_kl_k3_zero_on_policy_and_closed_form():
    lp = torch.randn(5)
    assert algorithms.kl_k3(lp, lp).item() == pytest.approx(0.0, abs=1e-7)
    r = 2.0                                                                         # r log r − (r − 1)
    assert algorithms.kl_k3(torch.tensor([math.log(r)]), torch.tensor([0.0])).item() == pytest.approx(
        r * math.log(r) - (r - 1), rel=1e-5)


def test_effective_sample_size():
    equal = algorithms.weight_stats(torch.ones(8), torch.zeros(8), 4)
    assert equal["rapid/ess"].item() == pytest.approx(1.0)
    one_hot = torch.tensor([3.0, 0, 0, 0, 1, 1, 1, 1])
    stats = algorithms.weight_stats(one_hot, one_hot.log(), 4)
    assert stats["rapid/ess"].item() == pytest.approx((0.25 + 1.0) / 2)            # groups: 1/K and 1
    assert stats["rapid/w_max"].item() == pytest.approx(3.0)


def test_fused_hidden_path_equals_logits_path():
    torch.manual_seed(0)
    h = torch.randn(10, 6, dtype=F64, requires_grad=True)
    w = torch.randn(30, 6, dtype=F64, requires_grad=True)
    _, batch = _batch(shift=0.3)
    for algo, pps in (("rapid", 2), ("grpg", 4), ("grpo", 2)):
        cfg = _cfg(algo=algo, prompts_per_step=pps, temperature=0.8)
        fused = algorithms.loss_from_hidden(cfg, batch, h, w)
        logits = (h @ w.T) / 0.8
        lp = torch.log_softmax(logits, 1).gather(1, batch.targets[:, None]).squeeze(1)
        ref = algorithms.loss_from_logprobs(cfg, batch, lp)
        assert fused.loss.item() == pytest.approx(ref.loss.item(), rel=1e-9), algo
        g_fused = torch.autograd.grad(fused.loss, (h, w))
        g_ref = torch.autograd.grad(ref.loss, (h, w))
        assert all(torch.allclose(a, b) for a, b in zip(g_fused, g_ref)), algo


def test_diagnostics_are_floats():
    lp, batch = _batch(shift=0.5)
    out = algorithms.loss_from_logprobs(_cfg(), batch, lp)
    diag = algorithms.diagnostics(out.stats)
    assert set(diag) >= {"rapid/w_mean", "rapid/w_max", "rapid/ess", "rapid/clip_frac", "rapid/kl_k3"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in diag.values())
    assert diag["rapid/kl_k3"] > 0
