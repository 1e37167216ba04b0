"""Where a small rapid_loss call's time goes on CPU: validation, the public dispatch, the custom op, the reference.

    python benchmarks/kernels/rapid_loss_overhead.py [--n 4096] [--s 32] [--threads 2]

Mean µs per call over 300 calls after 20 warm-up calls; forward only. Prints a table and one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import rapid_kernels as rk
from rapid_kernels import _validate, reference


def per_call_us(fn, reps: int = 300, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--s", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lp = torch.randn(args.n, requires_grad=True)                                  # (N,)
    behavior = torch.randn(args.n)                                                # (N,)
    rewards = torch.rand(args.s)                                                  # (S,)
    cu = torch.linspace(0, args.n, args.s + 1).long()                             # (S+1,)
    opts = (2.0, "loo", 1.0, "sequence", "truncate", "none")
    rows = {
        "validation": lambda: _validate.check_rapid_loss(lp, behavior, rewards, cu, 8, *opts),
        "public backend=torch": lambda: rk.rapid_loss(lp, behavior, rewards, cu, 8, backend="torch"),
        "reference directly": lambda: reference.rapid_loss(lp, behavior, rewards, cu, 8),
    }
    if "cpp" in rk.available_backends("cpu"):
        from rapid_kernels import _cpp_ops

        rows["public backend=cpp"] = lambda: rk.rapid_loss(lp, behavior, rewards, cu, 8, backend="cpp")
        rows["custom op directly"] = lambda: _cpp_ops.rapid_loss(lp, behavior, rewards, cu, 8, *opts)
    result = {name: round(per_call_us(fn), 1) for name, fn in rows.items()}
    for name, us in result.items():
        print(f"{name:24s} {us:8.1f} us")
    print(json.dumps({"n": args.n, "s": args.s, "threads": args.threads, "us_per_call": result}))


if __name__ == "__main__":
    main()
