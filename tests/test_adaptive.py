"""AdaptiveH on synthetic metric streams: grows when data stays on-policy and generation dominates, shrinks when the
importance weights degrade, holds when training dominates, and settles without oscillating."""

from __future__ import annotations

import math

import pytest

from rapid.training.adaptive import AdaptiveH, AdaptiveHParams
from rapid.config import RapidConfig


def make(h_max: int = 16, **extra) -> AdaptiveH:
    cfg = RapidConfig(prompts_per_rollout=4 * h_max, prompts_per_step=4, group_size=4,
                      extra={"adaptive_h": extra} if extra else {})
    return AdaptiveH(cfg)


def timings(h: int, gen_fixed: float = 2.0, gen_per_step: float = 0.1, train_per_step: float = 0.2) -> dict:
    """A rollout whose generation cost is mostly fixed (large-batch inference is cheap per sample)."""
    gen, train = gen_fixed + gen_per_step * h, train_per_step * h
    return {"timing_s/gen": gen, "timing_s/update_actor": train, "timing_s/reward": 0.0, "timing_s/step": gen + train}


def run_rollout(ctrl: AdaptiveH, ess_at, clip_at=lambda j: 0.0, **timing_kw) -> int:
    h = ctrl.next_h()
    for j in range(h):
        ctrl.observe_step({"rapid/ess": ess_at(j), "rapid/clip_frac": clip_at(j)})
    return ctrl.update(timings(h, **timing_kw))


@pytest.mark.parametrize("h_max, start", [(1, 1), (2, 1), (4, 2), (8, 2), (16, 4), (32, 4), (64, 8)])
def test_start_is_power_of_two_below_sqrt_hmax(h_max, start):
    assert make(h_max).next_h() == start


def test_on_policy_stream_grows_to_hmax_and_stays():
    ctrl = make(16)
    hs = [run_rollout(ctrl, ess_at=lambda j: 0.99) for _ in range(6)]
    assert hs == [8, 16, 16, 16, 16, 16]
    assert ctrl.history[-1]["reason"] == "at_max"


def test_exponential_ess_decay_settles_below_the_threshold_without_visiting_the_stale_h():
    # ESS after j steps = exp(-0.05 j): safe (>= 0.6) up to j = 10, so H = 8 is the largest safe power of two.
    ctrl = make(16)
    hs = [run_rollout(ctrl, ess_at=lambda j: math.exp(-0.05 * j)) for _ in range(8)]
    assert hs[-1] == 8 and set(hs[2:]) == {8}
    assert all(rec["h"] <= 8 for rec in ctrl.history)        # the trend predicted 16 would be stale


def test_collapse_halves_then_cools_down():
    ctrl = make(16, initial_h=16)
    h = run_rollout(ctrl, ess_at=lambda j: 0.9 - 0.05 * j)    # last steps ~0.17: stale
    assert h == 8 and ctrl.history[-1]["reason"] == "stale"
    h = run_rollout(ctrl, ess_at=lambda j: 0.99)              # healthy again, but cooling down
    assert h == 8 and ctrl.history[-1]["reason"] == "cooldown"
    h = run_rollout(ctrl, ess_at=lambda j: 0.99)
    assert h == 8 and ctrl.history[-1]["reason"] == "cooldown"
    assert run_rollout(ctrl, ess_at=lambda j: 0.99) == 16


def test_clip_fraction_climbing_halves_h():
    ctrl = make(16, initial_h=8)
    assert run_rollout(ctrl, ess_at=lambda j: 0.95, clip_at=lambda j: 0.04 * j) == 4   # last steps ~0.26 clipped
    assert ctrl.history[-1]["reason"] == "stale"


def test_training_bound_run_does_not_grow():
    ctrl = make(16)
    # generation is ~5 % of the step: a bigger rollout would save almost nothing and add staleness
    h = run_rollout(ctrl, ess_at=lambda j: 0.99, gen_fixed=0.05, gen_per_step=0.01, train_per_step=1.0)
    assert h == 4 and ctrl.history[-1]["reason"] == "speed"


def test_measured_bigger_h_without_gain_is_not_retried():
    ctrl = make(16, initial_h=8, cooldown=0)
    # generation cost grows linearly with the rollout (no batching gain at all): time per sample is flat in H
    flat = dict(gen_fixed=0.0, gen_per_step=1.0, train_per_step=1.0)
    assert run_rollout(ctrl, ess_at=lambda j: 0.99, **flat) == 16
    assert run_rollout(ctrl, ess_at=lambda j: 0.99 - 0.03 * j, **flat) == 8     # stale at 16
    assert run_rollout(ctrl, ess_at=lambda j: 0.99, **flat) == 8                # 16 measured: no faster
    assert ctrl.history[-1]["reason"] == "speed"


def test_without_per_step_observations_uses_rollout_metrics_and_strict_thresholds():
    ctrl = make(16)
    assert ctrl.update({**timings(4), "rapid/ess": 0.8, "rapid/clip_frac": 0.0}) == 4    # OK, not clearly safe
    assert ctrl.history[-1]["reason"] == "quality"
    assert ctrl.update({**timings(4), "rapid/ess": 0.95, "rapid/clip_frac": 0.01}) == 8
    assert ctrl.update({**timings(8), "rapid/ess": 0.4, "rapid/clip_frac": 0.0}) == 4
    assert ctrl.update({**timings(4), "rapid/ess_last": 0.5, "rapid/ess": 0.9}) == 2     # last-step key wins


def test_missing_or_nonfinite_metrics_hold_h():
    ctrl = make(16)
    assert ctrl.update({}) == 4
    assert ctrl.update({"rapid/ess": float("nan"), "timing_s/step": float("inf")}) == 4
    assert ctrl.history[-1]["reason"] == "quality"


def test_h_never_leaves_its_range_on_a_random_stream():
    import random

    rng = random.Random(0)
    ctrl = make(8)
    for _ in range(200):
        h = run_rollout(ctrl, ess_at=lambda j: rng.uniform(0.2, 1.0), clip_at=lambda j: rng.uniform(0, 0.3))
        assert 1 <= h <= 8 and h & (h - 1) == 0


def test_params_from_config_extra_and_state():
    ctrl = make(16, ess_low=0.3, initial_h=2)
    assert isinstance(ctrl.params, AdaptiveHParams) and ctrl.params.ess_low == 0.3 and ctrl.next_h() == 2
    assert ctrl.state()["adaptive/h"] == 2.0
    with pytest.raises(TypeError):
        make(16, not_a_param=1)


def test_step_budget_caps_h_so_sample_budgets_stay_equal():
    ctrl = make(16, max_steps=20)
    ran = []
    for _ in range(6):
        ran.append(ctrl.next_h())
        run_rollout(ctrl, ess_at=lambda j: 0.99)
    assert ran == [4, 8, 8, 1, 1, 1]          # 4 + 8 + 8 = 20 steps, then the minimum the trainer can take
    assert ctrl.steps_taken == 23 and ctrl.exhausted
    assert not make(16).exhausted


def test_no_speed_gain_from_a_bigger_rollout_shrinks_back_and_settles():
    ctrl = make(16)
    flat = dict(gen_fixed=0.0, gen_per_step=0.5, train_per_step=1.0)    # time per sample independent of H
    hs = [run_rollout(ctrl, ess_at=lambda j: 0.99, **flat) for _ in range(5)]
    assert hs == [8, 4, 4, 4, 4]
    assert [r["reason"] for r in ctrl.history] == ["grow", "no_gain", "speed", "speed", "speed"]


def test_training_time_noise_does_not_shrink_h_when_generation_gains():
    """Regression: the speed rules compare rollout (generation) time per sample only. Training time per sample is
    H-independent but noisy on a shared machine; when it was included, a slow training phase at the larger H read
    as 'no gain' and halved H on fresh data."""
    ctrl = make(16)
    noisy_train = iter([0.2, 0.6, 0.2, 0.7, 0.2, 0.8, 0.2, 0.9])     # per-step training time: 3-4x swings
    hs = []
    for _ in range(8):
        h = ctrl.next_h()
        for _ in range(h):
            ctrl.observe_step({"rapid/ess": 0.99, "rapid/clip_frac": 0.0})
        hs.append(ctrl.update(timings(h, gen_fixed=2.0, gen_per_step=0.05, train_per_step=next(noisy_train))))
    assert hs[-1] == 16 and "no_gain" not in [r["reason"] for r in ctrl.history]
