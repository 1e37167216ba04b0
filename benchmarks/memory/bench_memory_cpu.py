"""Peak CPU memory of one ``rapid.train`` rollout as the rollout grows 8x, with fixed budgets and without them.

    python -m benchmarks.memory.bench_memory_cpu                       # 8 children, ~15-25 min on a busy 2-core box
    python -m benchmarks.memory.bench_memory_cpu --report-only         # table + plot again from the CSV

What grows with the rollout, and what the budgets cap (issue 12, "Memory at real scale"):
- generation: without ``max_num_seqs`` the HF engine runs the whole rollout (prompts x K sequences) as one
  ``generate`` batch: KV cache, the (B, V) logits of each step and the sampler's (B, V) noise all scale with it;
- the recompute pass (``behavior_logprobs="recompute"``): without ``micro_batch_tokens`` / a sequence cap it
  forwards the entire rollout at once;
- the update: ``prompts_per_step`` is fixed here, so a step's tokens do not grow with the rollout, but without
  ``micro_batch_tokens`` a whole step is one forward/backward.

Method: every configuration runs in its own child process (``--child``; one thread: OMP_NUM_THREADS=1), one after
another, so the resident-set high-water mark (which counts every byte: torch CPU tensors, oneDNN scratch, Python
objects) is that configuration's peak: ``ru_maxrss`` up to the call of ``rapid.train``, then ``VmHWM`` per phase
(generation = ``collect_rollout``, ``recompute_behavior``, ``update``, and the gaps between them; the mark is reset
at every boundary, so the maximum over the phases is the call's peak). The child also records the resident set just
before ``rapid.train`` (model, tokenizer, imports), so increment = peak - before is what the rollout added.
tracemalloc is not used: it does not see torch's CPU tensor storage, which is where the memory goes; the Python-side
rollout (token-id lists) is a few MB.

``--malloc fixed`` (default) runs the children with ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``, as
the kernel harness does: every block >= 64 KiB is its own mapping and goes back to the OS when freed, so the
high-water mark is the live peak. With glibc's defaults (``--malloc default``) the mmap threshold rises to the
size of each freed block (up to 32 MiB), after which the sampler's (B, V) temporaries come from the heap and stay
resident: the same configuration then peaks anywhere from ~1.1 to ~1.5 GB here (measured), which hides the
effect of the budgets. Both are recorded in RESULTS.md.

Model: a Qwen2 (``rapid.tiny.tiny_config``) with 4 layers, hidden 256, 4 heads (head_dim 64), 2 KV heads,
intermediate 1024 and a vocabulary of 32 768: the char tokenizer of ``rapid.tiny`` padded with added tokens
(``<r0>``, ...). Vocabulary / hidden = 128 sits between Qwen2.5-1.5B's 99 and 0.5B's 170, so the (B, V) tensors of
generation weigh as they do at real scale. Random weights: EOS is sampled with probability ~1/V per step, so every
completion runs to ``max_new_tokens`` and every configuration does the same work per sequence.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

MODEL = dict(num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=1024)
COLUMNS = ["timestamp", "git_rev", "device_name", "torch", "transformers", "threads", "malloc", "budgets",
           "prompts_per_rollout", "sequences", "group_size", "prompts_per_step", "max_new_tokens", "max_num_seqs",
           "micro_batch_tokens", "vocab", "params", "rss_before_train_mb", "peak_rss_mb", "increment_mb",
           "setup_peak_mb", "gen_peak_mb", "recompute_peak_mb", "update_peak_mb", "other_peak_mb", "gen_s",
           "recompute_s", "update_s", "train_wall_s", "split_groups", "load1_start",
           "load1_end"]
RESULT_TAG = "MEMORY_RESULT "
PHASE_COLUMNS = ("gen_peak_mb", "recompute_peak_mb", "update_peak_mb")


# ------------------------------------------------------------------------------------------------------- child
def build_model(vocab: int, seed: int = 0):
    """The benchmark model (module docstring) and its char tokenizer padded to ``vocab`` ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from rapid.tiny import build_tokenizer, tiny_config

    tok = build_tokenizer()
    if vocab < len(tok):
        raise ValueError(f"vocab must be >= {len(tok)} (the char tokenizer), got {vocab}")
    tok.add_tokens([f"<r{i}>" for i in range(vocab - len(tok))])
    config = tiny_config(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **MODEL)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model, tok


def prompt_rows(n: int) -> list[dict]:
    """``n`` prompts of identical length (22 characters = 22 tokens), so rollouts differ only in size."""
    return [{"prompt": f"Q: what is {10 + i % 90} + {10 + (7 * i) % 90}? A:"} for i in range(n)]


def parity_reward(prompts, completions, **_) -> list[float]:
    """Any cheap reward with variance inside a group (the values do not matter for memory)."""
    return [float(len(c) % 2) for c in completions]


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # Linux: kilobytes


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")                                  # VmHWM := VmRSS (Linux >= 4.0)


class PhasePeaks:
    """VmHWM of each phase of ``rapid.train`` (collect_rollout, recompute_behavior, update) and of the gaps between
    them: the high-water mark is reset at every boundary, so the intervals tile the call and their maximum is the
    call's peak (what ``ru_maxrss`` reports without the resets, which make ``ru_maxrss`` itself unusable)."""

    PHASES: ClassVar[dict[str, str]] = {"collect_rollout": "gen", "recompute_behavior": "recompute",
                                        "update": "update"}

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}

    def _close(self, name: str) -> None:
        self.peaks[name] = max(self.peaks.get(name, 0.0), _status_mb("VmHWM"))
        _reset_hwm()

    def install(self, module) -> None:
        for fn_name, phase in self.PHASES.items():
            setattr(module, fn_name, self._wrap(getattr(module, fn_name), phase))

    def _wrap(self, fn, phase: str):
        def wrapped(*args, **kwargs):
            self._close("other")
            try:
                return fn(*args, **kwargs)
            finally:
                self._close(phase)
        return wrapped


def child(spec: dict) -> dict:
    """One configuration in this process: build, then one rollout of ``rapid.train``; returns the measurements."""
    import torch

    import rapid
    import rapid.training.loop

    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    model, tok = build_model(spec["vocab"], spec["seed"])
    params = sum(p.numel() for p in model.parameters())
    cfg = rapid.RapidConfig(
        algo="rapid", group_size=spec["group_size"], prompts_per_rollout=spec["prompts_per_rollout"],
        prompts_per_step=spec["prompts_per_step"], num_rollouts=1, max_new_tokens=spec["max_new_tokens"],
        behavior_logprobs="recompute", max_num_seqs=spec["max_num_seqs"],
        micro_batch_tokens=spec["micro_batch_tokens"], micro_batch_size=None, lr=1e-4, dtype="float32",
        engine="hf", progress_bar=False, seed=spec["seed"])
    rows = prompt_rows(spec["prompts_per_rollout"])
    phases = PhasePeaks()
    phases.install(rapid.training.loop)               # the run loop looks these names up in its module at call time
    gc.collect()
    before, setup_peak = _rss_mb(), _maxrss_mb()
    _reset_hwm()
    t0 = time.perf_counter()
    result = rapid.train(model, rows, parity_reward, cfg, tokenizer=tok)
    wall = time.perf_counter() - t0
    phases._close("other")
    peak = max(setup_peak, *phases.peaks.values())
    h = result.history[0]
    return dict(params=params, rss_before_train_mb=round(before, 1), peak_rss_mb=round(peak, 1),
                increment_mb=round(peak - before, 1), setup_peak_mb=round(setup_peak, 1),
                **{f"{k}_peak_mb": round(v, 1) for k, v in phases.peaks.items()},
                gen_s=round(h["timing_s/gen"], 2), recompute_s=round(h.get("timing_s/old_log_prob", 0.0), 2),
                update_s=round(h["timing_s/update_actor"], 2), train_wall_s=round(wall, 2),
                split_groups=h.get("rapid/split_groups", 0.0), threads=torch.get_num_threads(),
                load1_start=round(load_start, 2), load1_end=round(os.getloadavg()[0], 2),
                mean_response_length=h["response_length/mean"])


# ------------------------------------------------------------------------------------------------------ parent
def run_child(spec: dict, timeout: float, malloc: str = "fixed") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if malloc == "fixed":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory.bench_memory_cpu", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def environment() -> dict:
    import torch
    import transformers

    from benchmarks.kernels.harness import git_revision
    from rapid.observe.profiling import device_name

    return dict(timestamp=datetime.datetime.now().isoformat(timespec="seconds"), git_rev=git_revision(),
                device_name=f"{device_name(torch.device('cpu'))} ({os.cpu_count()} cpus)", torch=torch.__version__,
                transformers=transformers.__version__)


def specs(args) -> list[dict]:
    out = []
    for budgets in (True, False):
        for p in args.sizes:
            out.append(dict(budgets=budgets, prompts_per_rollout=p, group_size=args.group_size,
                            prompts_per_step=args.prompts_per_step, max_new_tokens=args.max_new_tokens,
                            max_num_seqs=args.max_num_seqs if budgets else None,
                            micro_batch_tokens=args.micro_batch_tokens if budgets else None, vocab=args.vocab,
                            seed=args.seed))
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["budgets"] = r["budgets"] in ("True", "true", "1")
        for key in ("prompts_per_rollout", "sequences"):
            r[key] = int(r[key])
        for key in ("rss_before_train_mb", "peak_rss_mb", "increment_mb", "gen_s", "recompute_s", "update_s",
                    *PHASE_COLUMNS):
            r[key] = float(r[key]) if r.get(key) not in (None, "") else None     # older CSVs lack phase peaks
    return rows


def summary(rows: list[dict]) -> dict:
    """Flatness with budgets (spread of the peak, MB and % of the smallest) and growth without them."""
    out = {}
    for budgets, name in ((True, "with_budgets"), (False, "without_budgets")):
        sub = sorted((r for r in rows if r["budgets"] == budgets), key=lambda r: r["sequences"])
        if not sub:
            continue
        peaks = [r["peak_rss_mb"] for r in sub]
        incs = [r["increment_mb"] for r in sub]
        out[name] = dict(sequences=[r["sequences"] for r in sub], peak_rss_mb=peaks, increment_mb=incs,
                         peak_spread_mb=round(max(peaks) - min(peaks), 1),
                         peak_spread_pct=round(100 * (max(peaks) - min(peaks)) / min(peaks), 1),
                         increment_spread_mb=round(max(incs) - min(incs), 1),
                         peak_growth_x=round(peaks[-1] / peaks[0], 2),
                         increment_growth_x=round(incs[-1] / incs[0], 2) if incs[0] > 0 else None)
    return out


def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(rows: list[dict]) -> str:
    head = (f"{'budgets':>8} {'prompts':>7} {'seqs':>5} {'before MB':>9} {'peak MB':>8} {'incr MB':>8} "
            f"{'gen pk':>7} {'recomp pk':>9} {'upd pk':>7} {'gen s':>7} {'recomp s':>8} {'update s':>8} {'load1':>5}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (not r["budgets"], r["sequences"])):
        lines.append(f"{'yes' if r['budgets'] else 'no':>8} {r['prompts_per_rollout']:>7} {r['sequences']:>5} "
                     f"{r['rss_before_train_mb']:>9.0f} {r['peak_rss_mb']:>8.0f} {r['increment_mb']:>8.0f} "
                     f"{_mb(r.get('gen_peak_mb')):>7} {_mb(r.get('recompute_peak_mb')):>9} "
                     f"{_mb(r.get('update_peak_mb')):>7} {r['gen_s']:>7.1f} {r['recompute_s']:>8.1f} "
                     f"{r['update_s']:>8.1f} {r['load1_end']:>5}")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_phases = all(r.get("gen_peak_mb") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if with_phases else 1, figsize=(13 if with_phases else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    ticks = sorted({r["sequences"] for r in rows})
    for budgets, marker, color in ((True, "o", "C0"), (False, "s", "C3")):
        sub = sorted((r for r in rows if r["budgets"] == budgets), key=lambda r: r["sequences"])
        if not sub:
            continue
        r0 = sub[0]
        label = (f"budgets: max_num_seqs={r0['max_num_seqs']}, micro_batch_tokens={r0['micro_batch_tokens']}"
                 if budgets else "no budgets (None, None)")
        xs = [r["sequences"] for r in sub]
        ax.plot(xs, [r["peak_rss_mb"] for r in sub], marker + "-", color=color, label=f"peak RSS, {label}")
        ax.plot(xs, [r["increment_mb"] for r in sub], marker + "--", color=color, alpha=0.5,
                label=f"peak - RSS before train, {label}")
        if with_phases:
            for key, style in (("gen_peak_mb", "-"), ("recompute_peak_mb", ":"), ("update_peak_mb", "--")):
                axes[0][1].plot(xs, [r[key] for r in sub], marker + style, color=color,
                                label=f"{key.removesuffix('_peak_mb')}, {'budgets' if budgets else 'no budgets'}")
    for a in axes[0]:
        a.set_xscale("log", base=2)
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.set_xlabel("rollout size (sequences = prompts_per_rollout x group_size)")
        a.set_ylabel("MB")
        a.set_ylim(bottom=0)
    if with_phases:
        axes[0][1].set_title("peak RSS of each phase of the rollout", fontsize=10)
        axes[0][1].legend(fontsize=7)
    r0 = rows[0]
    ax.set_title(f"rapid.train, one rollout, CPU peak RSS (V={r0['vocab']}, {int(r0['params']) / 1e6:.1f} M params, "
                 f"malloc {r0.get('malloc') or 'default'})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="8,16,32,64", help="prompts_per_rollout values (comma-separated)")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-num-seqs", type=int, default=64, help="budget: sequences per engine call")
    ap.add_argument("--micro-batch-tokens", type=int, default=512,
                    help="budget: tokens per forward/backward (default < one group of 8 x 70: two-phase update)")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                    help="glibc settings of the children (module docstring)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    ap.add_argument("--csv", type=Path, default=Path("benchmarks/results/memory_cpu.csv"))
    ap.add_argument("--png", type=Path, default=Path("benchmarks/results/memory_cpu.png"))
    ap.add_argument("--report-only", action="store_true", help="rebuild table, plot and JSON from --csv")
    args = ap.parse_args(argv)
    if args.child:
        print(RESULT_TAG + json.dumps(child(json.loads(args.child))), flush=True)
        return
    args.sizes = [int(s) for s in args.sizes.split(",")]
    for name in ("group_size", "prompts_per_step", "max_new_tokens", "max_num_seqs", "micro_batch_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(p < 1 or p % args.prompts_per_step for p in args.sizes):
        raise ValueError(f"--sizes must be positive multiples of --prompts-per-step ({args.prompts_per_step})")
    if args.report_only:
        rows = read_csv(args.csv)
    else:
        env = environment()
        rows = []
        for spec in specs(args):
            print(f"running budgets={spec['budgets']} prompts_per_rollout={spec['prompts_per_rollout']} ...",
                  file=sys.stderr, flush=True)
            res = run_child(spec, args.timeout, args.malloc)
            rows.append({**env, **spec, **res, "malloc": args.malloc,
                         "sequences": spec["prompts_per_rollout"] * spec["group_size"]})
            print(f"  peak {res['peak_rss_mb']:.0f} MB (before train {res['rss_before_train_mb']:.0f} MB), "
                  f"{res['train_wall_s']:.0f} s", file=sys.stderr, flush=True)
            write_csv(rows, args.csv)                 # after every child: a crash keeps what was measured
    plot(rows, args.png)
    print(table(rows))
    print(json.dumps({"bench": "memory_cpu", "device": rows[0]["device_name"], "python": platform.python_version(),
                      "malloc": rows[0].get("malloc") or "default",
                      "csv": str(args.csv), "png": str(args.png), **summary(rows)}))


if __name__ == "__main__":
    main()
