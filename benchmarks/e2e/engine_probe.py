"""Why is generation slower in overlap's engine process? Times one rollout of the mid geometry three ways, 1 thread:

    python benchmarks/e2e/engine_probe.py [--repeats 3]

- ``inprocess``: HFEngine on the trainer's own model (what sequential rapid does);
- ``shared_views``: the same, after pointing every parameter at a slice of one memfd-backed buffer
  (``torch.from_file(shared=True)``), the layout the engine process uses — isolates the memory mapping;
- ``process``: ProcessEngine (the overlap engine: its own process, parameters as views of the shared buffer), with
  the parent idle while it generates.
Modes alternate over --repeats; the first call of each is warm-up. Prints one JSON line (median seconds per rollout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setups import mid_setup  # noqa: E402


def shared_views(model: torch.nn.Module) -> torch.nn.Module:
    """Point every parameter at a slice of one shared file-backed buffer (memfd when available)."""
    params = dict(model.named_parameters())
    numel = sum(p.numel() + 16 for p in params.values())
    fd = os.memfd_create("probe") if hasattr(os, "memfd_create") else None
    path = f"/proc/self/fd/{fd}" if fd is not None else tempfile.mkstemp()[1]
    os.truncate(path, numel * 4)
    flat = torch.from_file(path, shared=True, size=numel, dtype=torch.float32)      # (numel,)
    offset = 0
    with torch.no_grad():
        for p in params.values():
            n = p.numel()
            flat[offset:offset + n].copy_(p.reshape(-1))
            p.data = flat[offset:offset + n].view(p.shape)
            offset += math.ceil((n + 15) / 16) * 16
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from rapid.config import RapidConfig
    from rapid.engines import SamplingConfig
    from rapid.engines.hf import HFEngine
    from rapid.engines.process.client import ProcessEngine

    model, tok, task = mid_setup(0)
    cfg = RapidConfig(engine="hf", max_new_tokens=48, group_size=8)
    prompts = [row["prompt"] for row in task.train[:args.prompts]]
    views_model, _, _ = mid_setup(0)
    engines = {"inprocess": HFEngine(model, tok), "shared_views": HFEngine(shared_views(views_model), tok),
               "process": ProcessEngine(model, tok, cfg, threads=1)}
    times: dict[str, list[float]] = {k: [] for k in engines}
    cpu: dict[str, list[float]] = {"process": []}
    for rep in range(args.repeats + 1):
        for name, engine in engines.items():
            start = time.perf_counter()
            rollout = engine.generate(prompts, 8, SamplingConfig(max_new_tokens=48, seed=rep))
            if rep:
                times[name].append(time.perf_counter() - start)
                if name == "process":
                    cpu["process"].append(rollout.stats.get("engine/cpu_s"))
    engines["process"].close()
    out = {"benchmark": "engine_probe", "threads": 1, "loadavg": os.getloadavg()[0], "torch": torch.__version__,
           **{f"{k}_s": statistics.median(v) for k, v in times.items()}, "runs": times,
           "process_engine_cpu_s": cpu["process"]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
