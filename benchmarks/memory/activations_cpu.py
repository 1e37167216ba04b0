"""Measure on CPU what ``rapid.memory_plan``'s activation formula predicts: bytes per token per Qwen2 decoder layer.

    python -m benchmarks.memory.activations_cpu                 # saved bytes at both real shapes (+ peak, 1.5B)
    python -m benchmarks.memory.activations_cpu --no-peak       # saved bytes only (~1 min)

Two measurements of a Qwen2 decoder stack (transformers' own ``Qwen2Model``, random weights, fp32 master
parameters, ``torch.autocast("cpu", bfloat16)``, sdpa attention, one packed sequence):

1. **saved bytes**: every tensor autograd keeps for backward (``torch.autograd.graph.saved_tensors_hooks``),
   counted once per storage, parameters excluded. Run at L = 1, 2 layers and T = T1, T2 tokens, the differences
   give bytes per token per layer (the L and T slope), per token outside the layers, and the token-independent part
   (the bf16 weight copies autocast caches). This is exactly the quantity the formula counts.
2. **peak** (optional): the resident-set high-water mark of one forward + backward (``VmHWM`` after
   ``clear_refs``, glibc returning freed blocks at once, as the kernel harness does), with and without gradient
   checkpointing, same slopes. It adds the backward's transient gradients, which the formula only estimates.
   CPU kernels (oneDNN, sdpa's CPU flash kernel) are not CUDA's: the peak is indicative, the saved bytes are exact.
   With gradient checkpointing the peak sits at the end of the forward (autocast's cache still holds every layer's
   bf16 weights) until T is large enough for the backward's recompute to dominate: use long sequences there
   (e.g. ``--peak-models 0.5b --peak-layers 2,4 --peak-tokens 2048,4096 --peak-ckpt on``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rapid import memory_plan as plan
from rapid.memory_plan import qwen2_stack, saved_bytes, slopes

RESULT_TAG = "ACTIVATIONS_RESULT "


# --------------------------------------------------------------------------------------- peak (child process)
def peak_child(spec: dict) -> float:
    """MB of resident-set growth at the peak of one forward + backward (after a warm-up; gradients allocated)."""
    import torch

    from benchmarks.kernels.harness import peak_memory_mb

    torch.set_num_threads(1)
    s = plan.MODELS[spec["model"]]
    model = qwen2_stack(s, spec["layers"], spec["ckpt"])
    ids = torch.randint(0, 1024, (1, spec["tokens"]), generator=torch.Generator().manual_seed(0))  # (1, T)
    pos = torch.arange(spec["tokens"])[None]                                                        # (1, T)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state        # (1, T, D)
        out.float().sum().backward()

    step()
    model.zero_grad(set_to_none=False)
    return peak_memory_mb(step, "cpu")


def peak_bytes(model: str, layers: int, tokens: int, ckpt: bool) -> float:
    spec = json.dumps(dict(model=model, layers=layers, tokens=tokens, ckpt=ckpt))
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory.activations_cpu", "--child", spec],
                          capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peak child {spec} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(lines[-1][len(RESULT_TAG):]) * 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="1.5b,0.5b")
    ap.add_argument("--tokens", default="64,128", help="T1,T2 for the saved-bytes slopes")
    ap.add_argument("--peak-tokens", default="256,512", help="T1,T2 for the peak slopes")
    ap.add_argument("--peak-models", default="1.5b")
    ap.add_argument("--peak-layers", default="1,2", help="two depths for the peak slopes")
    ap.add_argument("--peak-ckpt", default="off,on", help="gradient checkpointing settings for the peak")
    ap.add_argument("--no-peak", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        print(RESULT_TAG + str(peak_child(json.loads(args.child))), flush=True)
        return
    import torch

    torch.set_num_threads(1)
    t1, t2 = (int(t) for t in args.tokens.split(","))
    result: dict = {"bench": "activations_cpu", "torch": torch.__version__, "models": {}}
    for name in args.models.split(","):
        s = plan.MODELS[name]
        got = slopes(lambda n, t, s=s: saved_bytes(s, n, t), t1, t2)
        want = dict(per_layer_per_token=plan.layer_activation_bytes(s),
                    outside_per_token=plan.outside_activation_bytes(s) - (2 * s.hidden + 12),   # no lm_head here
                    constant_bf16_weights=2 * plan.linear_weight_count(s) // s.layers)
        print(f"{s.name} saved for backward (bf16 autocast, sdpa): per layer per token "
              f"{got['per_layer_per_token']:,.0f} B "
              f"(formula {want['per_layer_per_token']:,}), outside per token {got['outside_per_token']:,.0f} B "
              f"(formula {want['outside_per_token']:,}), per-layer constant {got['constant']:,.0f} B "
              f"(bf16 weight copies {want['constant_bf16_weights']:,})")
        entry = {"saved": got, "formula": want}
        if name in args.peak_models.split(",") and not args.no_peak:
            p1, p2 = (int(t) for t in args.peak_tokens.split(","))
            d1, d2 = (int(n) for n in args.peak_layers.split(","))
            for ckpt in (m == "on" for m in args.peak_ckpt.split(",")):
                pk = slopes(lambda n, t, name=name, ckpt=ckpt: peak_bytes(name, n, t, ckpt), p1, p2, d1, d2)
                key = "peak_ckpt" if ckpt else "peak_no_ckpt"
                entry[key] = pk
                layer_formula = 4 * s.hidden if ckpt else plan.layer_activation_bytes(s)
                print(f"  fwd+bwd peak growth, gradient checkpointing {'on' if ckpt else 'off'}, L = {d1}, {d2}, "
                      f"T = {p1}, {p2}: per layer per token {pk['per_layer_per_token']:,.0f} B (formula "
                      f"{layer_formula:,}), outside per token {pk['outside_per_token']:,.0f} B, per layer "
                      f"{pk['constant'] / 2**20:,.1f} MiB")
        result["models"][s.name] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
