"""Data-parallel scaling of ``rapid.train`` under torchrun on CPU (issue 14): samples/s at world size 1 vs N.

    python benchmarks/scaling/bench_world_size.py --sizes 1,2 --repeats 3 --out runs/scaling

Each measurement is ``torchrun --standalone --nproc-per-node N -m benchmarks.scaling.bench_world_size --worker``:
gloo, 1 torch thread per rank, the mid geometry of benchmarks/e2e/setups.py (random Qwen2 hidden 256, 4 layers,
vocab 8192, 48 new tokens, throughput reward), the same *global* batch at every size (``--prompts-per-rollout`` x
K per rollout, ``--prompts-per-step`` prompts per optimizer step; each rank generates and trains on its 1/N share)
and the same number of rollouts. The first rollout is warm-up and excluded. Samples/s is billed from rank 0's
profile timeline (benchmarks/e2e/timeline.py: wall-clock from the end of the first rollout to the end of the last,
which includes every wait for the slower rank; saves excluded); ``time/train_s`` (the slowest rank's step time,
summed) is recorded beside it. Sizes alternate (1, 2, 1, 2, ...) over ``--repeats`` so drifting load from other
processes hits both; the summary takes medians. Writes OUT/scaling.csv and prints one JSON line last.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSV_FIELDS = ("world_size", "repeat", "status", "rollouts_timed", "samples_timed", "billed_s", "samples_per_s",
              "train_s_samples_per_s", "warmup_s", "gen_s", "update_actor_s", "loadavg_start", "loadavg_end",
              "threads_per_rank", "device", "torch", "date", "git_rev", "command")


def worker(args) -> None:
    """One rank of one measurement (run by torchrun); exits the process when done."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks" / "e2e"))
    import rapid
    from setups import mid_setup

    model, tok, task = mid_setup(0)            # identical weights on every rank
    load_start = os.getloadavg()[0]
    cfg = rapid.RapidConfig(
        algo="rapid", group_size=args.group_size, prompts_per_step=args.prompts_per_step,
        prompts_per_rollout=args.prompts_per_rollout, num_rollouts=args.rollouts, max_new_tokens=task.max_new_tokens,
        lr=args.lr, engine="hf", seed=0, output_dir=args.out, progress_bar=False, extra={"benchmark": "scaling"})
    rapid.train(model, task.train, task.reward_fn, cfg, tokenizer=tok)
    if int(os.environ.get("RANK", "0")) == 0:
        write_result(args, load_start)
    # Leave without tearing the model down: 1 run in 3 at world size 2 (2026-12-02), rank 1 deadlocked when the
    # returned model's last reference to the DDP reducer died after train() had closed the process group —
    # ~ProcessGroupGloo joined its worker thread while holding the GIL that thread needed to free a pending
    # allgather's tensor (gdb stack in /work/notes/e2e.md; the upstream class of bug: pytorch/pytorch#56297).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def write_result(args, load_start: float) -> None:
    """Rank 0: samples/s from the metrics and the profile timeline, into OUT/scaling_result.json."""
    import torch

    from rapid.observe.loggers import read_metrics
    from timeline import load_clock

    records = [r for r in read_metrics(args.out) if "rapid/steps" in r]
    clock = load_clock(Path(args.out))
    per_rollout = args.prompts_per_rollout * args.group_size
    ends = [clock(t) for t in clock.rollout_ends[:len(records)]]
    timed = len(records) - 1
    result = {"rollouts_timed": timed, "samples_timed": timed * per_rollout, "billed_s": ends[-1] - ends[0],
              "samples_per_s": timed * per_rollout / (ends[-1] - ends[0]),
              "train_s_samples_per_s": timed * per_rollout / (records[-1]["time/train_s"] - records[0]["time/train_s"]),
              "warmup_s": ends[0], "gen_s": sum(r.get("timing_s/gen", 0.0) for r in records[1:]),
              "update_actor_s": sum(r.get("timing_s/update_actor", 0.0) for r in records[1:]),
              "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0], "torch": torch.__version__,
              "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    Path(args.out, "scaling_result.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_rev() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "rapid", "benchmarks/scaling", "benchmarks/e2e"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return out.strip() + ("+dirty" if dirty else "")


def measure(n: int, rep: int, args, out: Path) -> dict:
    run_dir = out / f"ws{n}_r{rep}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(free_port()),
           "--master-addr", "127.0.0.1", "-m", "benchmarks.scaling.bench_world_size", "--worker", "--out", str(run_dir)]
    cmd += [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in
            ("rollouts", "group-size", "prompts-per-step", "prompts-per-rollout", "lr")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    row = {"world_size": n, "repeat": rep, "threads_per_rank": 1, "command": " ".join(cmd[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"ws{n}_r{rep}.log", "w", encoding="utf-8") as log:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
        result_file = run_dir / "scaling_result.json"
        row["status"] = "ok" if proc.returncode == 0 and result_file.exists() else f"exit {proc.returncode}"
        if result_file.exists():
            row.update(json.loads(result_file.read_text()))
    except subprocess.TimeoutExpired:
        row["status"] = f"timeout {args.timeout}s"
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help="(internal) one rank, launched by torchrun")
    p.add_argument("--sizes", default="1,2", help="world sizes, comma list")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rollouts", type=int, default=6, help="rollouts per run (the first is warm-up)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4, help="global; must divide by every world size")
    p.add_argument("--prompts-per-rollout", type=int, default=16, help="global (H = this / prompts-per-step)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--out", default="runs/scaling")
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
    sizes = [int(x) for x in args.sizes.split(",")]
    bad = [n for n in sizes if args.prompts_per_step % n]
    if bad:
        raise SystemExit(f"--prompts-per-step ({args.prompts_per_step}) must divide by every world size; not {bad}")
    import torch

    from rapid.observe.profiling import device_name

    out, rev, device = Path(args.out), git_rev(), device_name(torch.device("cpu"))
    rows = []
    for rep in range(args.repeats):
        for n in sizes:
            print(f"[scaling] world size {n}, repeat {rep} ...", file=sys.stderr, flush=True)
            rows.append({**measure(n, rep, args, out), "git_rev": rev, "device": device})
            print(f"[scaling] world size {n}: {rows[-1]['status']} samples/s={rows[-1].get('samples_per_s')} "
                  f"load {rows[-1].get('loadavg_start')}->{rows[-1].get('loadavg_end')}", file=sys.stderr, flush=True)
    with open(out / "scaling.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = {"benchmark": "scaling_world_size", "device": device, "cpus": os.cpu_count(), "git_rev": rev,
               "python": platform.python_version(), "torch": torch.__version__, "threads_per_rank": 1,
               "global_batch": {"prompts_per_rollout": args.prompts_per_rollout, "prompts_per_step":
                                args.prompts_per_step, "group_size": args.group_size}, "rollouts": args.rollouts}
    for n in sizes:
        mine = [r["samples_per_s"] for r in rows if r["world_size"] == n and r["status"] == "ok"]
        summary[f"ws{n}_samples_per_s_median"] = statistics.median(mine) if mine else None
        summary[f"ws{n}_samples_per_s"] = mine
    base = summary.get(f"ws{sizes[0]}_samples_per_s_median")
    for n in sizes[1:]:
        med = summary.get(f"ws{n}_samples_per_s_median")
        if base and med:
            summary[f"speedup_ws{n}"] = med / base
            summary[f"efficiency_ws{n}"] = med / base / (n / sizes[0])
        pairs = [(b["samples_per_s"], a["samples_per_s"]) for a in rows for b in rows if a["repeat"] == b["repeat"]
                 and a["world_size"] == n and b["world_size"] == sizes[0] and a["status"] == b["status"] == "ok"]
        if pairs:
            summary[f"speedup_ws{n}_pairwise_median"] = statistics.median(y / x for x, y in pairs)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
