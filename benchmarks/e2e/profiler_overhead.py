"""Overhead of rapid's Profiler on a training step: phase timers alone, and the background sampler at its default
period (0.1 s) and at 10x that rate (0.01 s).

    python benchmarks/e2e/profiler_overhead.py [--steps 4 --rounds 20 --threads 2]

Workload: forward + backward + AdamW step of the tiny Qwen2 model on a (64, 24) token batch, each step inside
``profiler.phase("update_actor")``. Modes are interleaved round by round (ABCD ABCD ...) so drifting load from
other processes hits all of them alike; the median step time per mode is compared with the profiler disabled.
``disabled_again`` repeats the baseline: its difference from ``disabled`` is the noise floor of the machine.
Also reported: the sampler's own measured busy time as a fraction of wall time, and the cost of one sample.
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from rapid.observe.profiling import Profiler, device_name
from rapid.observe.usage import UsageSampler
from rapid.tiny import build_tiny

MODES = {"disabled": dict(enabled=False), "disabled_again": dict(enabled=False),
         "timers_only": dict(sample_interval_s=0),
         "sampler_0.1s": dict(sample_interval_s=0.1), "sampler_0.01s": dict(sample_interval_s=0.01)}


def step_fn(model, opt, ids):
    loss = model(input_ids=ids, labels=ids).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sample_cost_us(n: int = 2000) -> float:
    prof = Profiler("cpu", sample_interval_s=0)
    sampler = UsageSampler(prof, 1.0)
    start = time.perf_counter()
    for _ in range(n):
        sampler._read()
    return (time.perf_counter() - start) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = build_tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(4, len(tok), (64, 24))                                  # (B, T)
    for _ in range(5):                                                          # warm-up, excluded
        step_fn(model, opt, ids)
    times = {m: [] for m in MODES}
    busy = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode, kwargs in MODES.items():
            prof = Profiler("cpu", **kwargs)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                s = time.perf_counter()
                with prof.phase("update_actor"):
                    step_fn(model, opt, ids)
                times[mode].append(time.perf_counter() - s)
            wall = time.perf_counter() - t0
            if prof._sampler is not None:
                busy[mode].append(prof._sampler.busy_s / wall)
            prof.close()
    base = statistics.median(times["disabled"])
    result = {"benchmark": "profiler_overhead", "device": device_name(torch.device("cpu")),
              "threads": args.threads,
              "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
              "steps": args.steps, "rounds": args.rounds, "median_step_s_disabled": base,
              "sample_cost_us": sample_cost_us()}
    for mode in MODES:
        med = statistics.median(times[mode])
        print(f"{mode:>14}: median step {med * 1e3:8.2f} ms  ({100 * (med / base - 1):+6.2f} % vs disabled)"
              + (f"  sampler busy {100 * statistics.fmean(busy[mode]):.4f} % of wall" if busy[mode] else ""))
        result[f"overhead_pct/{mode}"] = 100 * (med / base - 1)
        if busy[mode]:
            result[f"sampler_busy_pct/{mode}"] = 100 * statistics.fmean(busy[mode])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
