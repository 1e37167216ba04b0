"""Where a run's time goes: per-phase timers, a utilisation sampler, tokens/s, MFU and peak memory.

The trainer wraps each phase in ``profiler.phase(name)`` (verl's names, DESIGN.md section 3) and counts the tokens a
phase processed with ``add_tokens``; ``end_rollout()`` returns that rollout's metrics; ``close()`` stops the sampler
and, when ``output_dir`` was given, writes ``profile.json``, ``profile_timeline.png`` and logs a summary table.

    prof = Profiler("cuda", output_dir="runs/x", num_params=model.num_parameters())
    prof.start_rollout()
    with prof.phase("gen"):
        ...                                  # generation
    prof.add_tokens("gen", n_generated)
    metrics = prof.end_rollout()             # timing_s/*, perf/throughput, perf/mfu/actor, ...
    prof.close()                             # profile.json + PNG + table

Overlapped generation (``overlap=True``): generation runs in another process, so it is a second *lane*. The trainer
reports each generation with ``add_interval("gen", "gen", start, end)`` (``time.monotonic()`` seconds, a clock
shared by all processes on the machine; ``end=None`` marks one still running, counted busy until the closed
interval arrives) and wraps its own waiting for the engine in the idle phase ``gen_wait``. ``end_rollout`` then adds
``perf/overlap_frac``: the fraction of the rollout's wall-clock in which the trainer (any phase but ``gen_wait``)
and another lane were both busy; profile.json has the run-wide ``overlap`` and the PNG a row per lane.

Measurement rules:
- On CUDA the device is synchronised at phase boundaries, so queued kernels land in the phase that launched them.
- A daemon thread samples every ``sample_interval_s`` seconds: GPU utilisation and used memory through NVML
  (``pynvml`` from nvidia-ml-py, imported lazily) on CUDA; otherwise this process's CPU utilisation (percent of
  all cores) and RSS, from os.times() and /proc/self/statm on Linux (psutil elsewhere). Each sample is
  attributed to ``current_phase`` at that instant (the innermost running phase). The thread times its own
  work; ``profile.json`` reports that busy time as a fraction of wall time (``sampler.overhead_frac``; the
  design budget is < 1 %).
- FLOPs: 6·P per token for training (forward + backward), 2·P per token for forward-only phases (generation, old
  log-probs, eval), P = parameter count; attention FLOPs are ignored (small at these context lengths). MFU is
  against the nominal dense bf16 peak of the device (``PEAK_FLOPS``); CPUs have no entry, so MFU is omitted there
  unless ``peak_flops`` is passed (e.g. a measured matmul peak).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections import defaultdict
from typing import Iterator

import torch

from .profile_report import TRAIN_LANE, lane_overlap, lanes_section
from .usage import UsageSampler

logger = logging.getLogger(__name__)

PHASES = ("gen", "reward", "old_log_prob", "update_actor", "update_weights", "sleep", "wake", "eval", "save",
          "gen_wait")

# FLOPs per token per parameter: 6 for forward + backward, 2 for forward only.
FLOPS_PER_TOKEN_PARAM = {"update_actor": 6.0, "old_log_prob": 2.0, "gen": 2.0, "eval": 2.0}

# Dense bf16 tensor-core peak, FLOP/s: (nominal from the datasheet, measured matmul on this project's machines).
PEAK_FLOPS = {
    "H200": (989e12, 800e12),
    "H100": (989e12, 800e12),   # SXM; DESIGN.md: ~800 TFLOP/s measured
    "A100": (312e12, 280e12),
    "L40S": (362e12, None),
    "A10G": (70e12, None),
}

_GIB = 1024 ** 3


def peak_flops_for(device_name: str) -> tuple[float | None, float | None]:
    """(nominal, measured) bf16 peak FLOP/s for a device name, or (None, None) when unknown (CPUs)."""
    upper = device_name.upper()
    for key, peaks in PEAK_FLOPS.items():
        if key in upper:
            return peaks
    return None, None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo, or the device type."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return device.type


class Profiler:
    """Phase timers + background utilisation sampler; see the module docstring.

    Args:
        device: the training device; CUDA enables synchronisation at phase boundaries and NVML sampling.
        enabled: False makes every call a no-op (no sync, no thread).
        output_dir: where ``close()`` writes profile.json and the timeline PNG; None: nothing is written.
        num_params: model parameter count for FLOP/MFU estimates (also settable later via ``set_num_params``).
        sample_interval_s: sampler period; 0 disables the sampler.
        peak_flops: override the device's peak FLOP/s for MFU (CPU: e.g. a measured matmul rate).
        peak_source: what ``peak_flops`` is, for the report (e.g. "measured bfloat16 GEMM").
    """

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True, output_dir: str | None = None,
                 num_params: int | None = None, sample_interval_s: float = 0.1,
                 peak_flops: float | None = None, peak_source: str | None = None) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.output_dir = output_dir
        self.num_params = num_params
        self.device_name = device_name(self.device) if enabled else self.device.type
        nominal, measured = peak_flops_for(self.device_name) if self.device.type == "cuda" else (None, None)
        self.peak_flops = peak_flops if peak_flops is not None else nominal
        self.peak_flops_measured = measured
        self.peak_source = peak_source if peak_flops is not None else ("nominal bf16" if nominal else None)
        self.t0 = time.perf_counter()
        self.current_phase: str | None = None
        self.events: list[tuple[str, float, float]] = []   # (phase, start, end) in perf_counter seconds
        self.lanes: dict[str, list[tuple[str, float, float]]] = {}   # other processes' intervals, same clock
        self._open: dict[str, tuple[str, float]] = {}                 # lane -> (phase, start) still running
        self._lane_of: dict[str, str] = {}                            # phase -> lane, for phases of other lanes
        self._mono_minus_perf = time.monotonic() - time.perf_counter()
        self.rollouts: list[dict[str, float]] = []
        self._times: dict[str, float] = defaultdict(float)
        self._tokens: dict[str, int] = defaultdict(int)
        self._total_times: dict[str, float] = defaultdict(float)
        self._total_tokens: dict[str, int] = defaultdict(int)
        self._counts: dict[str, int] = defaultdict(int)
        self._rollout_start = self.t0
        self._rollout_sample = 0
        self._closed = False
        self.summary: str | None = None
        self._sampler: UsageSampler | None = None
        if enabled and sample_interval_s > 0:
            self._sampler = UsageSampler(self, sample_interval_s)
            self._sampler.start()

    # --- the trainer's interface -----------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        outer, self.current_phase = self.current_phase, name
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            end = time.perf_counter()
            self._times[name] += end - start
            self._total_times[name] += end - start
            self._counts[name] += 1
            self.events.append((name, start, end))
            self.current_phase = outer

    def add_tokens(self, phase: str, n: int) -> None:
        """Count tokens processed in a phase (for tokens/s and FLOPs per phase)."""
        self._tokens[phase] += int(n)
        self._total_tokens[phase] += int(n)

    def add_interval(self, lane: str, phase: str, start: float, end: float | None = None) -> None:
        """Record that ``lane`` (another process, e.g. the generation engine) ran ``phase`` over [start, end].

        Times are ``time.monotonic()`` seconds (the clock ``ProcessEngine`` stamps ``gen_start`` / ``gen_end``
        with). ``end=None``: still running; the lane counts as busy from ``start`` until a closed interval arrives
        on that lane. A closed interval also counts in ``timing_s/<phase>`` and the phase table, like a phase.
        """
        if not self.enabled:
            return
        if lane == TRAIN_LANE:
            raise ValueError(f"lane {TRAIN_LANE!r} is the trainer's own; use profiler.phase() for it")
        start -= self._mono_minus_perf
        if end is None:
            self._open[lane] = (phase, start)
            return
        end -= self._mono_minus_perf
        if end < start:
            raise ValueError(f"interval ends before it starts: start={start}, end={end}")
        self._open.pop(lane, None)
        self.lanes.setdefault(lane, []).append((phase, start, end))
        self._lane_of[phase] = lane
        self._times[phase] += end - start
        self._total_times[phase] += end - start
        self._counts[phase] += 1

    def set_num_params(self, n: int) -> None:
        self.num_params = int(n)

    def start_rollout(self) -> None:
        self._times.clear()
        self._tokens.clear()
        self._rollout_start = time.perf_counter()
        if self._sampler is not None:
            self._rollout_sample = len(self._sampler.t)

    def end_rollout(self) -> dict[str, float]:
        """This rollout's metrics: timing_s/<phase>, timing_s/step, perf/tokens_per_s/<phase>, perf/throughput,
        perf/mfu/actor and perf/mfu/gen (when the peak is known), perf/max_memory_allocated_gb, perf/util_mean,
        and perf/overlap_frac once another lane reported an interval."""
        now = time.perf_counter()
        step = now - self._rollout_start
        metrics = {f"timing_s/{k}": v for k, v in self._times.items()}
        if self.lanes or self._open:
            others = [e for events in self.lanes.values() for e in events if e[2] > self._rollout_start]
            others += [(phase, start, now) for phase, start in self._open.values()]
            mine = [e for e in self.events if e[2] > self._rollout_start]
            metrics["perf/overlap_frac"] = lane_overlap(mine, others, self._rollout_start, now)["frac"]
        metrics["timing_s/step"] = step
        for phase, n in self._tokens.items():
            if self._times.get(phase):
                metrics[f"perf/tokens_per_s/{phase}"] = n / self._times[phase]
        total_tokens = self._tokens.get("gen") or max(self._tokens.values(), default=0)
        if step > 0 and total_tokens:
            metrics["perf/throughput"] = total_tokens / step
        for phase, key in (("update_actor", "perf/mfu/actor"), ("gen", "perf/mfu/gen")):
            mfu = self._mfu(phase, self._tokens.get(phase, 0), self._times.get(phase, 0.0))
            if mfu is not None:
                metrics[key] = mfu
        metrics["perf/max_memory_allocated_gb"] = self.peak_memory_gb()
        if self._sampler is not None:
            recent = self._sampler.util[self._rollout_sample:]
            if recent:
                metrics["perf/util_mean"] = sum(recent) / len(recent)
        if self.enabled:
            self.rollouts.append(dict(metrics))
        return metrics

    def close(self) -> str | None:
        """Stop the sampler; with an output_dir write profile.json + PNG timeline and log the summary table.

        Returns the summary table (also when no output_dir was given). Idempotent."""
        if self._closed or not self.enabled:
            return self.summary
        self._closed = True
        if self._sampler is not None:
            self._sampler.stop()
        from . import profile_report  # noqa: PLC0415 (matplotlib only when reporting)

        profile = self.to_dict()
        self.summary = profile_report.summary_table(profile)
        if self.output_dir:
            profile_report.write_report(profile, self.output_dir)
        logger.info("profile summary\n%s", self.summary)
        return self.summary

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- derived numbers -----------------------------------------------------------------------------------------
    def _flops(self, phase: str, tokens: int) -> float | None:
        per = FLOPS_PER_TOKEN_PARAM.get(phase)
        if per is None or not self.num_params or not tokens:
            return None
        return per * self.num_params * tokens

    def _mfu(self, phase: str, tokens: int, seconds: float, peak: float | None = None) -> float | None:
        peak = peak if peak is not None else self.peak_flops
        flops = self._flops(phase, tokens)
        if flops is None or not peak or seconds <= 0:
            return None
        return flops / seconds / peak

    def peak_memory_gb(self) -> float:
        """CUDA: torch's peak allocated memory; CPU: this process's peak RSS (GiB)."""
        if self.device.type == "cuda" and torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(self.device) / _GIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB   # Linux reports KiB

    def to_dict(self) -> dict:
        """The profile.json document (schema ``rapid.profile/1``, see profile_report)."""
        now = time.perf_counter()
        wall = now - self.t0
        s = self._sampler
        samples = {"t": [], "phase": [], "util": [], "mem_gb": []}
        if s is not None:
            samples = {"t": list(s.t), "phase": list(s.phase), "util": list(s.util), "mem_gb": list(s.mem_gb)}
        phases = {}
        for name in sorted(self._total_times, key=lambda k: -self._total_times[k]):
            secs, tokens = self._total_times[name], self._total_tokens.get(name, 0)
            in_phase = [i for i, p in enumerate(samples["phase"]) if p == name]
            phases[name] = {
                "time_s": secs,
                "frac_of_wall": secs / wall if wall > 0 else 0.0,
                "count": self._counts[name],
                "tokens": tokens,
                "tokens_per_s": tokens / secs if secs > 0 and tokens else None,
                "flops": self._flops(name, tokens),
                "mfu": self._mfu(name, tokens, secs),
                "mfu_vs_measured_peak": self._mfu(name, tokens, secs, self.peak_flops_measured),
                "util_mean": sum(samples["util"][i] for i in in_phase) / len(in_phase) if in_phase else None,
                "mem_peak_gb": max(samples["mem_gb"][i] for i in in_phase) if in_phase else None,
                "samples": len(in_phase),
                "lane": self._lane_of.get(name, TRAIN_LANE),
            }
        extra = {} if not (self.lanes or self._open) else lanes_section(
            self.events, self.lanes, self._open, self.t0, now)
        return {
            "schema": "rapid.profile/1",
            "device": {"type": self.device.type, "name": self.device_name, "peak_flops": self.peak_flops,
                       "peak_flops_measured": self.peak_flops_measured, "peak_source": self.peak_source,
                       "cpu_count": os.cpu_count()},
            "num_params": self.num_params,
            "wall_s": wall,
            "peak_memory_gb": self.peak_memory_gb(),
            "phases": phases,
            "rollouts": self.rollouts,
            "events": [[name, a - self.t0, b - self.t0] for name, a, b in self.events],
            "samples": samples,
            "sampler": {
                "source": s.source if s is not None else "none",
                "interval_s": s.interval if s is not None else None,
                "n": len(samples["t"]),
                "busy_s": s.busy_s if s is not None else 0.0,
                "overhead_frac": (s.busy_s / wall) if s is not None and wall > 0 else 0.0,
                "util_unit": "percent of GPU" if s is not None and s.source == "nvml" else "percent of all CPUs",
            },
            **extra,
        }


def close_profiler(profiler) -> str | None:
    """Write the profile only when this session completed a rollout: a run that failed at once must not
    overwrite the profile of the run it tried to resume."""
    if not profiler.rollouts:
        profiler.output_dir = None
    return profiler.close()


def main(argv: list[str] | None = None) -> int:
    """``rapid profile RUN_DIR``: regenerate the PNG timeline and the summary table from RUN_DIR/profile.json."""
    from . import profile_report  # noqa: PLC0415

    return profile_report.main(argv)
