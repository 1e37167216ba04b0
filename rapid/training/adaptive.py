"""Adaptive H: how many optimizer steps to take per rollout (the paper leaves H open).

Interface used by the trainer (each rollout generates ``next_h() * prompts_per_step`` prompts):

    controller = AdaptiveH(config)
    h = controller.next_h()            # before generating
    controller.observe_step(step_metrics)   # optional, after each optimizer step (rapid/ess, rapid/clip_frac)
    controller.update(metrics)         # after the rollout: timing_s/*, and rapid/ess, rapid/clip_frac
    if controller.exhausted: break     # only with a step budget (AdaptiveHParams.max_steps)

The rule (``update``), and why
------------------------------
H trades two things. *Speed*: a rollout of H·B prompts costs a roughly fixed part (weight push, sleep/wake, the
engine's per-call latency, the longest completion) plus a per-sample part; a larger H spreads the fixed part over
more samples, so rollout time per sample r(H) falls with H until the engine saturates, while training time per
sample t does not depend on H. *Staleness*: step j of a rollout trains on data sampled j optimizer steps ago, so the
importance weights w = π/μ spread out with j: the per-group effective sample size ESS = (Σw)²/(K Σw²) falls and
more weights hit the truncation η (clip fraction rises). Truncated weights bias the gradient; a low ESS means a few
sequences carry the group: both cost sample efficiency. The *last* step of a rollout is the stalest, so its ESS and
clip fraction tell whether this H was still safe.

After each rollout, with ess / clip the mean over the last ``ceil(H/4)`` steps (``observe_step``; without it the
rollout's ``rapid/ess`` / ``rapid/clip_frac``, which are then treated as last-step values):

1. **Too stale → halve H** if ess < ``ess_low`` or clip > ``clip_high``. Acting at once is cheap (one smaller
   rollout) and keeps bad steps from accumulating. A cooldown of ``cooldown`` rollouts follows before H may grow
   again, so H does not oscillate around the boundary.
2. **Grow → double H** only when all hold:
   a. *quality*: the last step would still be safe at 2H. With per-step observations the within-rollout trend is
      extrapolated linearly H steps further (ess_last − slope·H ≥ ``ess_low``, clip_last + slope·H ≤
      ``clip_high``); without a trend (H = 1, or no ``observe_step``) the stricter ``ess_high`` / ``clip_low`` must
      hold instead;
   b. *speed*: growing can pay: the non-training share of the rollout time, (step − update_actor − old_log_prob −
      reward) / step, is at least ``min_rollout_frac``. Doubling H removes at most half of the fixed part, so when
      generation and syncing are a small share, a larger H buys little time and costs staleness. If 2H was run
      before, its measured *rollout* time per sample (the non-training part: generation, weight push, sleep/wake)
      must also beat H's by ``min_gain`` (a measured answer beats the model);
   c. H < H_max = prompts_per_rollout / prompts_per_step (the rollout buffer was sized for it) and no cooldown.
3. **No gain → halve H** when H/2 was measured and H's rollout time per sample is not at least ``min_gain``
   better: staleness bought nothing (e.g. a generator whose cost per sample does not fall with batch size).
   Rule 2b then keeps H/2 from growing back, so the two measurements settle it. Only the rollout part is compared:
   training time per sample does not depend on H, and including it (an earlier version did) buried the signal
   under the training step's timing noise — on a shared CPU that halved H from 16 to 2 on fresh data (ESS 0.998;
   RESULTS.md, "Demo geometry").
4. Otherwise hold H.

H stays a power-of-two multiple of the start value, so rollouts take few distinct sizes (vLLM/CUDA-graph friendly).
Start: the largest power of two ≤ √H_max (4 for H_max = 16): safe enough on the first, fully on-policy rollout,
two doublings from the top. Thresholds can be overridden through ``config.extra["adaptive_h"]`` (a dict of
``AdaptiveHParams`` fields).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import RapidConfig

TRAIN_PHASES = ("update_actor", "old_log_prob", "reward")


@dataclass
class AdaptiveHParams:
    ess_low: float = 0.6
    """Below this last-step ESS the data is too stale: halve H."""
    ess_high: float = 0.9
    """Without a within-rollout trend, growing needs at least this last-step ESS."""
    clip_high: float = 0.15
    """Above this last-step clip fraction: halve H."""
    clip_low: float = 0.05
    """Without a trend, growing needs at most this clip fraction."""
    min_rollout_frac: float = 0.15
    """Growing needs the non-training share of rollout time to be at least this."""
    min_gain: float = 0.1
    """When 2H was measured, its rollout time per sample must be this much below H's to grow again (and H's
    below H/2's to stay); a margin above timing noise."""
    cooldown: int = 2
    """Rollouts after a decrease during which H may not grow."""
    ema: float = 0.5
    """Weight of the newest measurement in the per-H time-per-sample averages."""
    initial_h: int | None = None
    """Start value; None: the largest power of two <= sqrt(H_max)."""
    max_steps: int | None = None
    """Optional optimizer-step budget of the run (a sample budget / (prompts_per_step * group_size)): next_h()
    never returns more than the steps left (and at least 1), so equal-sample comparisons stay equal."""


class AdaptiveH:
    def __init__(self, config: RapidConfig, params: AdaptiveHParams | None = None) -> None:
        self.config = config
        if params is None:
            params = AdaptiveHParams(**dict(config.extra.get("adaptive_h", {})))
        self.params = params
        self.h_max = config.steps_per_rollout
        start = params.initial_h or 2 ** int(math.floor(math.log2(max(1.0, math.sqrt(self.h_max)))))
        self.h = max(1, min(self.h_max, start))
        self._steps: list[tuple[float | None, float | None]] = []   # (ess, clip) of this rollout's steps
        self._cooldown = 0
        self.time_per_sample: dict[int, float] = {}                # EMA of rollout time / sample, per H
        self.history: list[dict] = []                              # one record per update: inputs and decision
        self.steps_taken = 0

    def next_h(self) -> int:
        if self.params.max_steps is not None:
            return max(1, min(self.h, self.params.max_steps - self.steps_taken))
        return self.h

    @property
    def exhausted(self) -> bool:
        """True once ``max_steps`` (if set) is spent: a trainer honouring a sample budget stops here."""
        return self.params.max_steps is not None and self.steps_taken >= self.params.max_steps

    def observe_step(self, metrics: dict[str, float]) -> None:
        """Record one optimizer step's diagnostics (rapid/ess, rapid/clip_frac) of the current rollout."""
        self._steps.append((_get(metrics, "rapid/ess"), _get(metrics, "rapid/clip_frac")))

    def update(self, metrics: dict[str, float]) -> int:
        """Decide the next rollout's H from this rollout's metrics; returns it (also ``next_h()``)."""
        p, h = self.params, self.h
        ran = self.next_h()
        self.steps_taken += ran
        ess, clip, ess_slope, clip_slope = self._quality(metrics)
        self._steps = []
        speed_ok, rollout_frac = self._speed(metrics, ran)   # per-sample time of what actually ran
        reason = "hold"
        if (ess is not None and ess < p.ess_low) or (clip is not None and clip > p.clip_high):
            new_h, reason = max(1, h // 2), "stale"
            self._cooldown = p.cooldown if new_h < h else self._cooldown
        else:
            if ess_slope is not None or clip_slope is not None:        # extrapolate the trend H steps further
                ess_ok = ess is None or ess + min(ess_slope or 0.0, 0.0) * h >= p.ess_low   # slope < 0: falling
                clip_ok = clip is None or clip + max(clip_slope or 0.0, 0.0) * h <= p.clip_high
            else:
                ess_ok = ess is None or ess >= p.ess_high
                clip_ok = clip is None or clip <= p.clip_low
            quality_ok = ess_ok and clip_ok and (ess is not None or clip is not None)
            new_h = h
            smaller, current = self.time_per_sample.get(h // 2) if h > 1 else None, self.time_per_sample.get(h)
            if smaller is not None and current is not None and current > (1 - p.min_gain) * smaller:
                new_h, reason = h // 2, "no_gain"
            elif self._cooldown > 0:
                reason = "cooldown"
            elif h * 2 > self.h_max:
                reason = "at_max"
            elif not quality_ok:
                reason = "quality"
            elif not speed_ok:
                reason = "speed"
            else:
                new_h, reason = h * 2, "grow"
            self._cooldown = max(0, self._cooldown - 1)
        self.history.append({"h": h, "next_h": new_h, "reason": reason, "ess": ess, "clip_frac": clip,
                             "ess_slope": ess_slope, "rollout_frac": rollout_frac})
        self.h = new_h
        return new_h

    def state(self) -> dict:
        """For logging: ``adaptive/h`` and the last decision."""
        last = self.history[-1] if self.history else {}
        return {"adaptive/h": float(self.h), "adaptive/reason": last.get("reason", "start")}

    def state_dict(self) -> dict:
        """Everything the next decisions depend on, for checkpoints: resume reproduces the uninterrupted H
        sequence (and the step budget already spent)."""
        return {"h": self.h, "steps": list(self._steps), "cooldown": self._cooldown,
                "time_per_sample": dict(self.time_per_sample), "history": list(self.history),
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        self.h = int(state["h"])
        self._steps = [tuple(s) for s in state["steps"]]
        self._cooldown = int(state["cooldown"])
        self.time_per_sample = {int(k): float(v) for k, v in state["time_per_sample"].items()}
        self.history = list(state["history"])
        self.steps_taken = int(state["steps_taken"])

    # --- helpers ---------------------------------------------------------------------------------------------------
    def _quality(self, metrics: dict[str, float]):
        """(ess, clip) averaged over the last ceil(H/4) steps, and their per-step slopes (None when unknown)."""
        steps = [s for s in self._steps if s[0] is not None or s[1] is not None]
        if not steps:
            ess = _get(metrics, "rapid/ess_last", "rapid/ess")
            clip = _get(metrics, "rapid/clip_frac_last", "rapid/clip_frac")
            return ess, clip, None, None
        tail = steps[-max(1, math.ceil(len(steps) / 4)):]
        ess = _mean([s[0] for s in tail])
        clip = _mean([s[1] for s in tail])
        return ess, clip, _slope([s[0] for s in steps]), _slope([s[1] for s in steps])

    def _speed(self, metrics: dict[str, float], h: int) -> tuple[bool, float | None]:
        step = _get(metrics, "timing_s/step")
        if not step or step <= 0:
            return True, None                       # no timings: judge on quality alone
        train = sum(_get(metrics, f"timing_s/{k}") or 0.0 for k in TRAIN_PHASES)
        rollout_frac = max(0.0, step - train) / step
        # Only the H-dependent part: generation, weight push, sleep/wake (training per sample is H-independent).
        per_sample = max(0.0, step - train) / (h * self.config.prompts_per_step * self.config.group_size)
        old = self.time_per_sample.get(h)
        a = self.params.ema
        self.time_per_sample[h] = per_sample if old is None else a * per_sample + (1 - a) * old
        ok = rollout_frac >= self.params.min_rollout_frac
        bigger = self.time_per_sample.get(2 * h)
        if ok and bigger is not None:
            ok = bigger <= (1 - self.params.min_gain) * self.time_per_sample[h]
        return ok, rollout_frac


def _get(metrics: dict[str, float], *keys: str) -> float | None:
    for key in keys:
        value = metrics.get(key)
        if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _slope(values: list[float | None]) -> float | None:
    """Least-squares change per step of a series (index = step in rollout), signed; None with < 2 points."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(i for i, _ in pts) / n
    my = sum(v for _, v in pts) / n
    var = sum((i - mx) ** 2 for i, _ in pts)
    return sum((i - mx) * (v - my) for i, v in pts) / var
