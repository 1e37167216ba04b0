"""Measure every available backend of every op on this device and record the fastest for ``backend="auto"``.

    python -m benchmarks.kernels.record_dispatch --device cpu                   # writes the user table
    python -m benchmarks.kernels.record_dispatch --device cuda --ship           # into rapid_kernels/dispatch_table.json

``rapid_kernels._dispatch`` reads the user table (``RAPID_DISPATCH_TABLE``, else ``~/.cache/rapid/
dispatch_table.json``) over the one shipped in the package, keyed by ``cuda:<device name>`` / ``cpu:<model name>``.
Each op is timed forward + backward at one representative shape per device (median of ``--repeats`` synchronised
calls after ``--warmup`` untimed ones, in this process), and the record keeps every timing, the shape, dtype, date
and versions, so a choice can always be traced back to its numbers. The last line printed is one JSON summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path

import torch

import rapid_kernels
from benchmarks.kernels import harness
from rapid_kernels import _dispatch

log = logging.getLogger("benchmarks.kernels.record_dispatch")

# op -> (device -> (shape, dtype)); the fused op reuses the linear shape plus an epilogue of S = N / 16 sequences.
SHAPES = {
    "token_logprobs": {"cpu": (dict(N=1024, V=32768), "float32"), "cuda": (dict(N=8192, V=151936), "bfloat16")},
    "linear_token_logprobs": {"cpu": (dict(N=1024, D=256, V=16384), "float32"),
                              "cuda": (dict(N=8192, D=896, V=151936), "bfloat16")},
    "rapid_loss": {"cpu": (dict(N=4096, S=256, K=8), "float32"), "cuda": (dict(N=32768, S=2048, K=8), "float32")},
    "fused_rapid_loss": {"cpu": (dict(N=1024, D=256, V=16384), "float32"),
                         "cuda": (dict(N=8192, D=896, V=151936), "bfloat16")},
}


def _fused_case(shape: dict, dtype: torch.dtype, device: str):
    """Inputs and a per-backend step for fused_rapid_loss (not one of the bench_<op> modules)."""
    lin = harness.bench_module("linear_token_logprobs").make_inputs(shape, dtype, device)
    loss = harness.bench_module("rapid_loss").make_inputs(dict(N=shape["N"], S=shape["N"] // 16, K=8), dtype, device)

    def step(backend: str):
        def run():
            out = rapid_kernels.fused_rapid_loss(lin["hidden"], lin["weight"], lin["targets"], loss["blp"],
                                                 loss["rewards"], loss["cu"], 8, backend=backend)
            out.loss.backward()
            lin["hidden"].grad = lin["weight"].grad = None
        return run
    return step


def measure(op: str, device: str, warmup: int, repeats: int) -> dict:
    shape, dtype_name = SHAPES[op][device]
    dtype = harness.DTYPES[dtype_name]
    timings = {}
    for backend in rapid_kernels.available_backends(device):
        torch.manual_seed(0)
        if op == "fused_rapid_loss":
            run = _fused_case(shape, dtype, device)(backend)
        else:
            mod = harness.bench_module(op)
            inputs = mod.make_inputs(shape, dtype, device)
            forward = mod.provider(f"rapid_{backend}", device)

            def run(mod=mod, inputs=inputs, forward=forward):
                mod.backward(forward(inputs), inputs)
                mod.zero_grads(inputs)
        for _ in range(warmup):
            run()
        median, *_ = harness.time_ms(run, device, repeats)
        timings[backend] = round(median, 3)
        log.info("%-22s %-7s %-30s %s  %10.3f ms", op, backend, harness.bench_module(
            "linear_token_logprobs" if op == "fused_rapid_loss" else op).shape_str(shape), dtype_name, median)
    best = min(timings, key=timings.get)
    return dict(backend=best, timings_ms=timings, shape=harness.bench_module(
        "linear_token_logprobs" if op == "fused_rapid_loss" else op).shape_str(shape), dtype=dtype_name,
        mode="fwd+bwd", threads=torch.get_num_threads(), torch=torch.__version__, triton=harness.triton_version(),
        git_rev=harness.git_revision(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device_name=harness.device_name(device))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ops", default=",".join(SHAPES))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ship", action="store_true", help="write the package's table instead of the user's")
    p.add_argument("--out", default="", help="explicit output path (overrides --ship)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(args.out) if args.out else (_dispatch.SHIPPED_TABLE if args.ship else _dispatch.user_table_path())
    table = json.loads(path.read_text()) if path.exists() else {"version": 1, "records": {}}
    key = _dispatch.device_key(torch.device(args.device))
    records = table["records"].setdefault(key, {})
    for op in [o for o in args.ops.split(",") if o]:
        records[op] = measure(op, args.device, args.warmup, args.repeats)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    summary = {op: rec["backend"] for op, rec in records.items()}
    sys.stdout.write(json.dumps(dict(out=str(path), device_key=key, choice=summary)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
