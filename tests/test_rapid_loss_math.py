"""The RAPID estimator pinned down by hand-computed cases and statistical invariants (DESIGN.md section 1).

Everything here is checked against numbers worked out on paper or against closed-form expectations, never against
the code under test itself.
"""

import math

import pytest
import torch

import rapid_kernels
from rapid_kernels import reference

F64 = torch.float64


def _pair(log_w1: float, log_w2: float, len1: int = 2, len2: int = 3):
    """A group of two sequences whose per-token log-ratios sum to log_w1, log_w2 (split evenly over tokens)."""
    torch.manual_seed(0)
    n = len1 + len2
    lp = torch.randn(n, dtype=F64) - 2.0                                           # (N,) log π
    ratio_tok = torch.cat([torch.full((len1,), log_w1 / len1), torch.full((len2,), log_w2 / len2)]).to(F64)
    behavior = lp - ratio_tok                                                      # (N,) log μ
    cu = torch.tensor([0, len1, n])
    return lp.requires_grad_(), behavior, cu


# ------------------------------------------------------------------------------------------------ hand-computed
def test_group_of_two_truncate_loo_by_hand():
    # w = (3, 0.5), η = 2 → w̄ = (2, 0.5). R = (1, 0). LOO: b1 = w̄2 R2 = 0, b2 = w̄1 R1 = 2 → A = (1, −2).
    lp, behavior, cu = _pair(math.log(3.0), math.log(0.5))
    out = rapid_kernels.rapid_loss(lp, behavior, torch.tensor([1.0, 0.0], dtype=F64), cu, group_size=2, eta=2.0)
    assert torch.allclose(out.seq_logratio, torch.tensor([math.log(3.0), math.log(0.5)], dtype=F64))
    assert torch.allclose(out.weights, torch.tensor([2.0, 0.5], dtype=F64))
    assert torch.allclose(out.baselines, torch.tensor([0.0, 2.0], dtype=F64))
    assert torch.allclose(out.advantages, torch.tensor([1.0, -2.0], dtype=F64))
    assert out.clip_fraction.item() == pytest.approx(0.5)
    s1, s2 = lp[:2].sum().item(), lp[2:].sum().item()
    # L = −(1/S)(w̄1 A1 Σlp1 + w̄2 A2 Σlp2) = −(1/2)(2·Σlp1 − 1·Σlp2)
    assert out.loss.item() == pytest.approx(-(2.0 * s1 - 1.0 * s2) / 2.0)
    out.loss.backward()
    # dL/dlp_t = −w̄_s A_s / S: −1 for the tokens of sequence 1, +0.5 for sequence 2.
    assert torch.allclose(lp.grad, torch.tensor([-1.0, -1.0, 0.5, 0.5, 0.5], dtype=F64))


def test_group_of_two_mean_baseline_mask_none_and_loss_norm_by_hand():
    lp, behavior, cu = _pair(math.log(3.0), math.log(0.5))
    r = torch.tensor([1.0, 0.0], dtype=F64)
    mean = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=2.0, baseline="mean")
    assert torch.allclose(mean.baselines, torch.tensor([1.0, 1.0], dtype=F64))    # (2·1 + 0.5·0) / 2
    assert torch.allclose(mean.advantages, torch.tensor([0.0, -1.0], dtype=F64))
    masked = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=2.0, is_clip="mask")
    assert torch.allclose(masked.weights, torch.tensor([0.0, 0.5], dtype=F64))    # w1 = 3 > η is dropped
    assert masked.clip_fraction.item() == pytest.approx(0.5)
    pure = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=2.0, is_clip="none")
    assert torch.allclose(pure.weights, torch.tensor([3.0, 0.5], dtype=F64))
    assert pure.clip_fraction.item() == 0.0
    normed = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=2.0, loss_norm=4.0)
    plain = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=2.0)
    assert normed.loss.item() == pytest.approx(plain.loss.item() / 4.0)


def test_geometric_level_and_std_scaling_by_hand():
    # Sequence 1: 2 tokens, log w = log 3 → geometric log w = log(3)/2; sequence 2: 3 tokens, log w = −3 → −1.
    lp, behavior, cu = _pair(math.log(3.0), -3.0)
    r = torch.tensor([2.0, 0.0], dtype=F64)
    out = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, eta=2.0, is_level="geometric", adv_scale="std")
    w = torch.tensor([math.sqrt(3.0), math.exp(-1.0)], dtype=F64)                  # both below η
    assert torch.allclose(out.weights, w)
    std = torch.tensor([2.0, 0.0], dtype=F64).std()                               # unbiased: sqrt(2)
    expected_adv = torch.tensor([2.0 - 0.0, 0.0 - w[0].item() * 2.0], dtype=F64) / (std + 1e-6)
    assert torch.allclose(out.advantages, expected_adv)


def test_token_level_uses_per_token_truncated_ratios():
    # One token per sequence with log-ratios (log 3, log 0.5, 0, 0): token and sequence level coincide...
    lp = torch.tensor([-1.0, -2.0, -0.5, -0.7], dtype=F64, requires_grad=True)
    behavior = lp.detach() - torch.tensor([math.log(3.0), math.log(0.5), 0.0, 0.0], dtype=F64)
    cu = torch.tensor([0, 1, 2, 3, 4])
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    tok = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, is_level="token")
    seq = rapid_kernels.rapid_loss(lp, behavior, r, cu, 2, is_level="sequence")
    assert tok.loss.item() == pytest.approx(seq.loss.item())
    # ...but with two tokens of log-ratio (log 3, −log 3) the sequence ratio is 1 while token ratios are (2, 1/3).
    lp2 = torch.tensor([-1.0, -2.0, -0.5, -0.7], dtype=F64, requires_grad=True)
    behavior2 = lp2.detach() - torch.tensor([math.log(3.0), -math.log(3.0), 0.0, 0.0], dtype=F64)
    cu2 = torch.tensor([0, 2, 4])
    r2 = torch.tensor([1.0, 0.0], dtype=F64)
    out = rapid_kernels.rapid_loss(lp2, behavior2, r2, cu2, 2, is_level="token")
    out.loss.backward()
    a1 = 1.0 - 1.0 * 0.0                                                           # seq weights are (1, 1): A1 = 1
    assert torch.allclose(lp2.grad[:2], torch.tensor([-2.0 * a1 / 2, -(1 / 3) * a1 / 2], dtype=F64))


# --------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("is_level", ["sequence", "token", "geometric"])
@pytest.mark.parametrize("is_clip", ["truncate", "mask", "none"])
@pytest.mark.parametrize("baseline,adv_scale", [("loo", "none"), ("mean", "std")])
def test_surrogate_gradcheck(is_level, is_clip, baseline, adv_scale):
    """gradcheck of the surrogate: the weights are stop-gradient, so the numerical check must hold the log-ratio
    fixed — behaviour log-probs move with the perturbed input (log μ = x − c)."""
    torch.manual_seed(1)
    n, cu = 13, torch.tensor([0, 3, 4, 8, 10, 13, 13])
    lp = (torch.randn(n, dtype=F64) - 1).requires_grad_()
    offset = 0.6 * torch.randn(n, dtype=F64)                                       # fixed log π − log μ
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.2], dtype=F64)

    def loss_fn(x):
        return rapid_kernels.rapid_loss(x, x.detach() - offset, rewards, cu, 3, eta=1.5, baseline=baseline,
                                        loss_norm=3.0, is_level=is_level, is_clip=is_clip, adv_scale=adv_scale).loss

    assert torch.autograd.gradcheck(loss_fn, (lp,))


def test_gradient_is_minus_weight_times_advantage_over_S_norm():
    torch.manual_seed(2)
    cu = torch.tensor([0, 4, 5, 9, 12])
    lp = (torch.randn(12, dtype=F64) - 1).requires_grad_()
    behavior = lp.detach() + 0.5 * torch.randn(12, dtype=F64)
    out = rapid_kernels.rapid_loss(lp, behavior, torch.tensor([0.3, 1.0, 0.0, 0.7], dtype=F64), cu, 2,
                                   loss_norm=7.0)
    out.loss.backward()
    coef = -(out.weights * out.advantages) / (4 * 7.0)
    assert torch.allclose(lp.grad, coef.repeat_interleave(cu.diff()))


# -------------------------------------------------------------------------------------------------- invariants
def test_on_policy_weights_are_one_and_clip_fraction_counts_exactly():
    torch.manual_seed(3)
    lp = torch.randn(20, dtype=F64)
    cu = torch.tensor([0, 5, 10, 15, 20])
    out = rapid_kernels.rapid_loss(lp, lp.clone(), torch.rand(4, dtype=F64), cu, 2)
    assert torch.equal(out.weights, torch.ones(4, dtype=F64))
    assert out.clip_fraction.item() == 0.0
    # Sequences with log w above log η, and one exactly at it (not clipped: min(w, η) leaves it unchanged).
    log_w = torch.tensor([math.log(2.0), 1.5, -0.2, 3.0, math.log(2.0) + 1e-9, -4.0], dtype=F64)
    lp1 = torch.zeros(6, dtype=F64)
    out = rapid_kernels.rapid_loss(lp1, lp1 - log_w, torch.zeros(6, dtype=F64), torch.arange(7), 2, eta=2.0)
    assert out.clip_fraction.item() == pytest.approx(3 / 6)
    assert torch.allclose(out.weights, torch.exp(torch.clamp(log_w, max=math.log(2.0))))


def _categorical_pg(baseline: str, k: int, groups: int, theta, theta_mu, rewards, is_clip="none"):
    """Monte Carlo estimate of −∇L for a one-token categorical policy π = softmax(θ), samples from μ."""
    gen = torch.Generator().manual_seed(7)
    mu = torch.softmax(theta_mu, 0)
    y = torch.multinomial(mu, groups * k, replacement=True, generator=gen)         # (S,)
    th = theta.clone().requires_grad_()
    lp = torch.log_softmax(th, 0)[y]                                               # (S,) one token per sequence
    behavior = torch.log(mu)[y]
    out = rapid_kernels.rapid_loss(lp, behavior, rewards[y], torch.arange(groups * k + 1), k, eta=1e6,
                                   baseline=baseline, is_clip=is_clip)
    (-out.loss).backward()
    return th.grad


def test_loo_baseline_is_unbiased_off_policy_monte_carlo():
    theta = torch.tensor([0.5, -0.3, 0.0, 1.0], dtype=F64)
    theta_mu = torch.tensor([0.2, 0.1, -0.4, 0.6], dtype=F64)                      # μ ≠ π
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.6], dtype=F64)
    pi = torch.softmax(theta, 0)
    true_grad = pi * (rewards - (pi * rewards).sum())                              # ∇θ E_π[R]
    est = _categorical_pg("loo", 4, 100_000, theta, theta_mu, rewards)
    assert torch.allclose(est, true_grad, atol=4e-3), (est, true_grad)
    # The un-weighted (on-policy) estimator applied to off-policy data is biased: the test can fail.
    on_policy_est = _categorical_pg("loo", 4, 100_000, theta_mu, theta_mu, rewards)
    assert (on_policy_est - true_grad).abs().max() > 2e-2


def test_mean_baseline_shrinks_gradient_by_k_minus_1_over_k_on_policy():
    theta = torch.tensor([0.5, -0.3, 0.0, 1.0], dtype=F64)
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.6], dtype=F64)
    pi = torch.softmax(theta, 0)
    true_grad = pi * (rewards - (pi * rewards).sum())
    est = _categorical_pg("mean", 2, 200_000, theta, theta, rewards)
    assert torch.allclose(est, 0.5 * true_grad, atol=3e-3), (est, true_grad)


def test_truncation_bounds_weights_and_is_log_space_safe():
    lp = torch.zeros(4, dtype=F64)
    huge = torch.tensor([500.0, -500.0, 90.0, 0.0], dtype=F64)                     # exp(500) overflows in linear space
    out = rapid_kernels.rapid_loss(lp, lp - huge, torch.ones(4, dtype=F64), torch.arange(5), 2, eta=2.0)
    assert torch.isfinite(out.loss) and torch.all(out.weights <= 2.0)
    none = rapid_kernels.rapid_loss(lp, lp - huge, torch.ones(4, dtype=F64), torch.arange(5), 2, is_clip="none")
    assert torch.isfinite(none.weights).all() and none.weights.max().item() == pytest.approx(math.exp(80.0))
    assert none.clip_fraction.item() == pytest.approx(2 / 4)                       # 500 and 90 exceed the cap


def test_float32_inputs_give_float32_outputs():
    lp = torch.randn(6, requires_grad=True)
    out = reference.rapid_loss(lp, lp.detach(), torch.ones(2), torch.tensor([0, 3, 6]), 2)
    assert out.loss.dtype == torch.float32 and out.weights.dtype == torch.float32
