"""Run the kernel benchmarks and append the results to one CSV.

    python -m benchmarks.kernels.run --device cpu                                # every op, every provider
    python -m benchmarks.kernels.run --device cpu --ops linear_token_logprobs \\
        --providers rapid_cpp,torch_eager --modes fwd+bwd --shapes N=1024xD=128xV=4096
    python -m benchmarks.kernels.run --device cuda --out benchmarks/kernels/results_h100.csv

Each (case, provider) runs in its own child process (see ``harness``); providers unavailable here are listed and
skipped. The last line printed is one JSON summary. ``python -m benchmarks.kernels.plot`` draws the CSV.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from benchmarks.kernels import harness
from rapid_kernels import cost_model

log = logging.getLogger("benchmarks.kernels")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ops", default=",".join(harness.OPS), help="comma-separated ops")
    p.add_argument("--providers", default="", help="comma-separated providers (default: every one of the op)")
    p.add_argument("--modes", default=",".join(harness.MODES), help="comma-separated of fwd, bwd, fwd+bwd")
    p.add_argument("--shapes", default="", help="comma-separated shape strings to keep (as written in the CSV)")
    p.add_argument("--dtype", default="", help="override the cases' dtype (float32, bfloat16, float16)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=0, help="timed calls per mode (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--out", default="benchmarks/kernels/results.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repeats = args.repeats or (5 if args.device == "cpu" else 20)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(harness.MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}")
    summary = []
    for op in [o for o in args.ops.split(",") if o]:
        mod = harness.bench_module(op)
        providers = [x for x in args.providers.split(",") if x] or list(mod.PROVIDERS)
        for case in mod.cases(args.device):
            shape = mod.shape_str(case["shape"])
            if args.shapes and shape not in args.shapes.split(","):
                continue
            dtype = args.dtype or case["dtype"]
            for provider in providers:
                reason = harness.provider_available(provider, args.device)
                if reason is not None:
                    log.info("skip %s %s: %s", op, provider, reason)
                    continue
                rows = harness.run_isolated(op, provider, case["shape"], dtype, args.device, modes, args.warmup,
                                            repeats)
                # the analytic H100 estimate of the same design, in bf16 (an ESTIMATE: rapid_kernels/cost_model)
                est = cost_model.estimate_ms(op, provider, case["shape"], "bfloat16")
                for row in rows:
                    row["h100_est_ms"] = "" if est is None or row["mode"] != "fwd+bwd" else est
                harness.write_rows(args.out, rows, args.device)
                for row in rows:
                    log.info("%-22s %-14s %-8s %-26s %-9s median %9.3f ms (cpu %9.1f ms)  peak %9.1f MB  %s  "
                             "[H100 estimate, bf16 fwd+bwd: %s ms]", op, provider, row["mode"], shape, dtype,
                             row.get("median_ms", float("nan")), row.get("cpu_ms", float("nan")),
                             row.get("peak_mem_mb", float("nan")), row.get("note", ""), row.get("h100_est_ms") or "-")
                summary += rows
    sys.stdout.write(json.dumps(dict(out=args.out, rows=len(summary), device=harness.device_name(args.device))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
