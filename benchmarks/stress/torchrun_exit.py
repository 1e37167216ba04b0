"""Stress: do 2-rank torchrun jobs of a user-style script exit cleanly after ``rapid.train``? (not a timed test)

    python benchmarks/stress/torchrun_exit.py [--runs 20] [--variants user,rapid] [--timeout 180]

Each run is ``torchrun --standalone --nproc-per-node 2 benchmarks/stress/torchrun_exit.py --worker VARIANT``
(gloo, CPU, 1 thread per rank). The worker is what a user would write:

- ``user``: the script calls ``init_process_group("gloo")`` itself, ``rapid.train`` on the tiny model for 1 rollout,
  ``all_gather_object`` of a result, ``destroy_process_group()``, prints, and falls off the end of the script (the
  returned ``TrainResult`` lives until interpreter shutdown, as a module global);
- ``rapid``: no process group before ``rapid.train`` (rapid creates it from torchrun's environment and destroys it),
  then prints and exits the same way.

A run fails when torchrun exits non-zero (a rank aborted, e.g. ``terminate called without an active exception`` /
SIGABRT, or raised) or does not finish within ``--timeout`` (a hang at exit; killed, exit code reported as
"timeout"). Runs alternate between the variants so drifting machine load hits both. Prints, per failure, its
notable lines (the abort message, torchrun's exit codes) and the tail of its output, then one summary line and one
JSON line: N, failures, exit codes, seconds per variant, and in how many runs the process group's threads were
still alive at the end of the script (the deterministic precondition of the abort). Exits 1 when any run failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [{"prompt": f"{i}+{i}="} for i in range(8)]
NOTABLE = re.compile(r"terminate called|Fatal Python error|Traceback|Error\b|exitcode|Signal \d+|rank \d: reward")


def _reward(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def worker(variant: str) -> None:
    """One rank of one job (run by torchrun). Leaves through the interpreter's normal shutdown, never os._exit."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    group_threads = _watch_group_threads(dist)
    if variant == "user":
        dist.init_process_group("gloo")
    import rapid
    from rapid.tiny import build_tiny

    model, tok = build_tiny(seed=0)
    cfg = rapid.RapidConfig(group_size=2, prompts_per_rollout=4, prompts_per_step=2, num_rollouts=1,
                            max_new_tokens=4, lr=1e-5, seed=0, progress_bar=False, kernel_backend="torch")
    global RESULT                      # the user keeps the result (and its model) to the end of the script
    RESULT = rapid.train(model, PROMPTS, _reward, cfg, tokenizer=tok)
    mean = RESULT.history[-1]["reward/mean"]
    if variant == "user":
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, float(sum(p.sum().item() for p in RESULT.model.parameters())))
        dist.destroy_process_group()
        print(f"rank {os.environ.get('RANK')}: reward/mean {mean:.3f}, weight sums {gathered}", flush=True)
    else:
        print(f"rank {os.environ.get('RANK')}: reward/mean {mean:.3f}", flush=True)
    alive = group_threads & _os_threads()
    print(f"rank {os.environ.get('RANK')}: group threads alive at exit {len(alive)}/{len(group_threads)}", flush=True)


def _os_threads() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _watch_group_threads(dist) -> set[int]:
    """The OS threads ``init_process_group`` starts (gloo's workers and its loop), whoever calls it: a diagnostic.
    Still alive at the end of the script, the group outlived ``destroy_process_group`` into interpreter shutdown,
    where the abort can happen (it needs a worker busy at that moment, so most such runs still exit 0)."""
    started: set[int] = set()
    original = dist.init_process_group

    def init_process_group(*args, **kwargs):
        before = _os_threads()
        original(*args, **kwargs)
        started.update(_os_threads() - before)
    dist.init_process_group = init_process_group
    return started


def group_alive_at_exit(out: str) -> bool:
    """Whether a rank reported its group's threads alive at the end of the script (see _watch_group_threads)."""
    return any(int(m.group(1)) > 0 for m in re.finditer(r"group threads alive at exit (\d+)/\d+", out))


def run_job(variant: str, timeout: float) -> tuple[str, float, str]:
    """One torchrun job: (exit code or "timeout", seconds, combined output)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), "--worker", variant]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: str = str(proc.returncode)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)          # torchrun and both ranks (their own session)
        out, _ = proc.communicate()
        code = "timeout"
    return code, time.monotonic() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=("user", "rapid"), help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=20, help="jobs per variant (default 20)")
    parser.add_argument("--variants", default="user,rapid", help="comma-separated: user, rapid (default both)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a job counts as hung")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in ("user", "rapid") for v in variants):
        parser.error(f"--variants must name user and/or rapid, got {args.variants!r}")
    codes: dict[str, collections.Counter] = {v: collections.Counter() for v in variants}
    seconds: dict[str, float] = dict.fromkeys(variants, 0.0)
    at_risk: dict[str, int] = dict.fromkeys(variants, 0)
    for i in range(args.runs):
        for variant in variants:
            code, took, out = run_job(variant, args.timeout)
            codes[variant][code] += 1
            seconds[variant] += took
            at_risk[variant] += group_alive_at_exit(out)
            if code != "0":
                lines = out.splitlines()
                notable = [line for line in lines[:-12] if NOTABLE.search(line)]
                tail = "\n".join(notable[-12:] + ["..."] + lines[-12:])
                print(f"--- run {i + 1} variant {variant}: exit {code} after {took:.1f} s; output:\n{tail}\n---",
                      flush=True)
    summary = {v: {"runs": args.runs, "failures": sum(n for c, n in codes[v].items() if c != "0"),
                   "exit_codes": dict(sorted(codes[v].items())), "group_alive_at_exit": at_risk[v],
                   "seconds": round(seconds[v], 1)}
               for v in variants}
    print("torchrun_exit: " + "; ".join(
        f"{v}: {s['failures']}/{s['runs']} failed, exit codes {s['exit_codes']}, group threads alive at exit in "
        f"{s['group_alive_at_exit']}, {s['seconds']:.0f} s" for v, s in summary.items()))
    print(json.dumps({"benchmark": "torchrun_exit", "nproc_per_node": 2, "variants": summary}))
    return 1 if any(s["failures"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
