"""The kernel-benchmark harness: time and memory of one (op, shape, dtype, provider) per child process, one CSV.

Method (stated so the numbers can be judged):
- Each (case, provider) runs in fresh Python child processes, one for timing and one for memory, so allocator
  caches, compiled graphs and the resident-set high-water mark of one provider never leak into another's numbers.
- Timing: ``warmup`` untimed calls (compilation, first-touch page faults, autotuning are reported apart: not in
  the timed numbers), then ``repeats`` timed calls, each bracketed by a device synchronise
  (``torch.cuda.synchronize`` on CUDA); we report median, p20 and p80 wall milliseconds. ``bwd`` times
  ``backward`` alone (its forward runs untimed before each repeat); ``fwd+bwd`` times both.
- Peak memory, CUDA: ``torch.cuda.max_memory_allocated`` during one call, minus what was allocated before it
  (inputs, weights): the extra memory the op needs at its peak.
- Peak memory, CPU: the resident-set high-water mark (``VmHWM`` in ``/proc/self/status``) during one call, minus
  the resident set before it, after resetting the mark (``echo 5 > /proc/self/clear_refs``, Linux). The memory
  child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every large freed block to the OS at once:
  without it, blocks freed during warm-up stay resident and are silently reused, hiding the op's real peak. (The
  timing child keeps glibc's defaults, so that setting costs no provider page faults in the timed numbers.) This
  counts every byte the op touches (ATen allocations, MKL/oneDNN scratch, our own buffers), not only tensors.
"""

from __future__ import annotations

import csv
import datetime
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable

import torch

COLUMNS = ["timestamp", "git_rev", "device", "device_name", "torch", "triton", "threads", "op", "provider", "mode",
           "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "cpu_ms", "peak_mem_mb", "warmup_s", "repeats", "note",
           "h100_est_ms", "load_avg"]
MODES = ("fwd", "bwd", "fwd+bwd")
OPS = ("token_logprobs", "linear_token_logprobs", "rapid_loss")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bench_module(op: str):
    return importlib.import_module(f"benchmarks.kernels.bench_{op}")


def rapid_backend(provider: str) -> str | None:
    """The rapid backend a provider name stands for ("rapid" -> "auto", "rapid_cpp" -> "cpp"), else None."""
    if provider == "rapid":
        return "auto"
    return provider.removeprefix("rapid_") if provider.startswith("rapid_") else None


def provider_available(provider: str, device: str) -> str | None:
    """None when the provider can run on device here, else why not (checked in the parent, cheaply)."""
    import rapid_kernels

    backend = rapid_backend(provider)
    if backend == "triton" and device == "cpu":
        return "Triton on CPU is the interpreter: not a benchmark"
    if backend not in (None, "auto") and backend not in rapid_kernels.available_backends(device):
        return f"backend {backend!r} unavailable on {device}"
    if provider == "liger":
        if device != "cuda":
            return "liger runs on CUDA only"
        try:
            importlib.import_module("liger_kernel")
        except ImportError:
            return "liger_kernel not importable"
    return None


# ------------------------------------------------------------------------------------------------ environment
def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    for line in open("/proc/cpuinfo", encoding="utf-8") if os.path.exists("/proc/cpuinfo") else ():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    return platform.processor() or platform.machine()


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """Extra memory at the peak of one call of fn, beyond what was held before it (see module docstring)."""
    import gc

    gc.collect()
    if device == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")                                   # reset VmHWM to the current resident set
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def time_ms(fn: Callable[[], object], device: str, repeats: int, setup: Callable[[], object] | None = None):
    """(median, p20, p80) wall ms of fn over ``repeats`` synchronised calls, and the median process CPU ms (all
    threads; on a shared CPU, wall ≫ CPU / threads shows time lost waiting for cores). setup runs untimed."""
    times, cpu = [], []
    for _ in range(repeats):
        state = setup() if setup is not None else None
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn() if state is None else fn(state)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - cpu_start) * 1e3)
    t = torch.tensor(times, dtype=torch.float64)
    return t.median().item(), t.quantile(0.2).item(), t.quantile(0.8).item(), torch.tensor(cpu).median().item()


def measure_case(op: str, provider: str, shape: dict, dtype: str, device: str, modes: list[str], warmup: int,
                 repeats: int, what: str = "both") -> list[dict]:
    """Run one (op, provider, shape, dtype) in this process; one row per mode. what: "time", "memory" or "both"."""
    mod = bench_module(op)
    torch.manual_seed(0)
    inputs = mod.make_inputs(shape, DTYPES[dtype], device)
    forward = mod.provider(provider, device)           # inputs -> output tensor (or RapidLossOutput)

    def fwd():
        return forward(inputs)

    def fwd_bwd():
        mod.backward(fwd(), inputs)
        mod.zero_grads(inputs)

    t0 = time.perf_counter()
    for _ in range(warmup):
        fwd_bwd()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    rows = []
    timed, sized = what in ("time", "both"), what in ("memory", "both")
    nan4 = (float("nan"),) * 4
    for mode in modes:
        if mode == "fwd":                              # grad mode on: the forward of a training step
            stats = time_ms(fwd, device, repeats) if timed else nan4
            mem = peak_memory_mb(fwd, device) if sized else float("nan")
        elif mode == "bwd":                            # memory of backward alone is not reported (see fwd+bwd)
            stats = time_ms(lambda out: (mod.backward(out, inputs), mod.zero_grads(inputs)), device, repeats,
                            setup=fwd) if timed else nan4
            mem = float("nan")
        else:
            stats = time_ms(fwd_bwd, device, repeats) if timed else nan4
            mem = peak_memory_mb(fwd_bwd, device) if sized else float("nan")
        rows.append(dict(op=op, provider=provider, mode=mode, shape=mod.shape_str(shape), dtype=dtype,
                         median_ms=round(stats[0], 4), p20_ms=round(stats[1], 4), p80_ms=round(stats[2], 4),
                         cpu_ms=round(stats[3], 4),
                         peak_mem_mb=round(mem, 2), warmup_s=round(warmup_s, 3), repeats=repeats,
                         threads=torch.get_num_threads()))
    return rows


# -------------------------------------------------------------------------------------------- child processes
def run_isolated(op: str, provider: str, shape: dict, dtype: str, device: str, modes: list[str], warmup: int,
                 repeats: int, timeout: float = 1800.0) -> list[dict]:
    """measure_case in fresh child processes (timing, then memory; see module docstring); rows or error rows."""
    results = {}
    for what in ("time", "memory"):
        spec = json.dumps(dict(op=op, provider=provider, shape=shape, dtype=dtype, device=device, modes=modes,
                               warmup=warmup, repeats=repeats, what=what))
        env = dict(os.environ)
        if what == "memory" and device == "cpu":
            env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        proc = subprocess.run([sys.executable, "-m", "benchmarks.kernels.harness", spec], capture_output=True,
                              text=True, env=env, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return [dict(op=op, provider=provider, mode=m, shape=bench_module(op).shape_str(shape), dtype=dtype,
                         note=f"failed ({what}): {tail[0][:200]}") for m in modes]
        results[what] = json.loads(lines[-1])["rows"]
    for row, mem_row in zip(results["time"], results["memory"]):
        row["peak_mem_mb"] = mem_row["peak_mem_mb"]
    return results["time"]


def write_rows(path: str, rows: list[dict], device: str) -> None:
    """Append rows (plus the environment columns) to the CSV at path, writing the header when new; a file written
    with an older column list is rewritten once under the current one (missing columns left empty)."""
    env = dict(timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               git_rev=git_revision(), device=device, device_name=device_name(device), torch=torch.__version__,
               triton=triton_version(), load_avg=round(os.getloadavg()[0], 2))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != COLUMNS:
                old_rows = list(reader)
                with open(path, "w", newline="", encoding="utf-8") as out:
                    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(old_rows)
    new = not os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**env, **row})


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    repeats = spec["repeats"] if spec["what"] != "memory" else 0
    warmup = spec["warmup"] if spec["what"] != "memory" else 1
    rows = measure_case(spec["op"], spec["provider"], spec["shape"], spec["dtype"], spec["device"], spec["modes"],
                        warmup, repeats, spec["what"])
    sys.stdout.write(json.dumps(dict(rows=rows)) + "\n")


if __name__ == "__main__":
    _child_main(sys.argv[1])
