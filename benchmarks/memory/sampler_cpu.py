"""Extra memory of one HFEngine sampling step, per (row x vocabulary) element, measured on CPU.

    python -m benchmarks.memory.sampler_cpu                          # B in {64, 256}, V in {32768, 151936}

HFEngine samples every step itself (rapid.engines.hf.HFEngine._pick: temperature, optional top-k/top-p, then
rapid.loss.sampling.draw — a softmax, block sums and an inverse CDF with one counter-based uniform per row, so a row's
draw does not depend on the batch), so each decoding step of a batch of B sequences allocates (B, V) temporaries on
top of the (B, V) fp32 logits. That per-step transient, with the
KV cache, is what ``max_num_seqs`` bounds in the HF engine. Each (B, V) runs in a child process with glibc returning
freed blocks at once (``MALLOC_MMAP_THRESHOLD_=65536``), and the peak resident-set growth of one call (after a
warm-up) is divided by B·V. The sampler's operations and dtypes are the same on CUDA, so the per-element figure
carries over as an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RESULT_TAG = "SAMPLER_RESULT "


def child(rows: int, vocab: int, top_p: float) -> float:
    """MB of resident-set growth at the peak of one sampler call on (rows, vocab) fp32 scores."""
    import torch

    from benchmarks.kernels.harness import peak_memory_mb
    from rapid.loss import sampling
    from rapid.engines.base import SamplingConfig
    from rapid.engines.hf import HFEngine

    torch.set_num_threads(1)
    cfg = SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=top_p, seed=0)
    seeds = sampling.row_seeds(0, list(range(rows)), 1)                                     # (B,)
    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))          # (B, V) fp32
    HFEngine._pick(scores, cfg, seeds, 0)                                                  # warm-up
    return peak_memory_mb(lambda: HFEngine._pick(scores, cfg, seeds, 0), "cpu")


def measure(rows: int, vocab: int, top_p: float = 1.0) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    spec = json.dumps([rows, vocab, top_p])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory.sampler_cpu", "--child", spec],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"sampler child {spec} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(lines[-1][len(RESULT_TAG):])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rows", default="64,256")
    ap.add_argument("--vocabs", default="32768,151936")
    ap.add_argument("--top-p", type=float, default=1.0)
    args = ap.parse_args(argv)
    if args.child:
        rows, vocab, top_p = json.loads(args.child)
        print(RESULT_TAG + str(child(rows, vocab, top_p)), flush=True)
        return
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    out = []
    for vocab in (int(v) for v in args.vocabs.split(",")):
        for rows in (int(r) for r in args.rows.split(",")):
            mb = measure(rows, vocab, args.top_p)
            per = mb * 2**20 / (rows * vocab)
            out.append(dict(rows=rows, vocab=vocab, top_p=args.top_p, peak_extra_mb=round(mb, 1),
                            bytes_per_element=round(per, 1)))
            print(f"B={rows:>4} V={vocab:>6} top_p={args.top_p}: +{mb:8.1f} MB at the peak = {per:5.1f} B per "
                  f"(row x vocab) element")
    print(json.dumps({"bench": "sampler_cpu", "results": out}))


if __name__ == "__main__":
    main()
