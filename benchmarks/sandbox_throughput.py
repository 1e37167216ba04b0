"""Code-sandbox throughput: sandboxed programs per second on this machine's cores.

Each program is an MBPP-style solution with 3 assert tests, run through ``rapid.rewards.code_tests_reward`` (one
confined subprocess per program: rlimits, network namespace, private uid, cleanup sweep). Half the programs are
correct, a quarter wrong, a quarter crash at import — the mix a policy early in training produces. Warm-up (the
isolation probe and first imports) is run and reported apart. The last line printed is one JSON record.

    .venv/bin/python benchmarks/sandbox_throughput.py --programs 200 --workers 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

from rapid.rewards import code_tests_reward
from rapid.rewards.sandbox import isolation

TESTS = ["assert sum_squares([1, 2, 3]) == 14", "assert sum_squares([]) == 0", "assert sum_squares([-2, 5]) == 29"]
PROGRAMS = [
    "```python\ndef sum_squares(xs):\n    return sum(x * x for x in xs)\n```",
    "def sum_squares(xs):\n    total = 0\n    for x in xs:\n        total += x ** 2\n    return total\n",
    "def sum_squares(xs):\n    return sum(xs) ** 2\n",
    "import nonexistent_module\n",
]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200, help="programs per timed repeat")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sandboxes run at once")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    args = parser.parse_args()

    completions = [PROGRAMS[i % len(PROGRAMS)] for i in range(args.programs)]
    tests = [TESTS] * args.programs
    start = time.perf_counter()
    iso = isolation()
    code_tests_reward(completions[: 2 * args.workers], tests[: 2 * args.workers], num_workers=args.workers)
    warmup_s = time.perf_counter() - start

    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = code_tests_reward(completions, tests, num_workers=args.workers)
        elapsed = time.perf_counter() - start
        rates.append(args.programs / elapsed)
        print(f"{args.programs} programs in {elapsed:.2f} s: {rates[-1]:.1f} programs/s, "
              f"mean score {statistics.fmean(scores):.3f}")
    record = {
        "bench": "sandbox_throughput", "programs_per_s": round(statistics.median(rates), 1),
        "programs_per_s_all": [round(r, 1) for r in rates], "programs": args.programs, "workers": args.workers,
        "cores": os.cpu_count(), "cpu": cpu_model(), "warmup_s": round(warmup_s, 3),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "isolation": iso,
        "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
