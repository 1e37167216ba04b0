"""ESTIMATED H100-80GB memory plan for full fine-tuning of Qwen2.5-1.5B / 0.5B with rapid next to colocated vLLM.

    python -m rapid.memory_plan                                   # both models, default budgets
    python -m rapid.memory_plan --gpu-memory-utilization 0.3 --micro-batch-tokens 8192,16384

Nothing here is measured on a GPU: it is a cost model (every output is labelled ESTIMATE). The activation formula
was checked on CPU against the bytes autograd really saves (``python -m benchmarks.memory.activations_cpu``: exact
at the real layer shapes, see RESULTS.md) and ``tests/test_memory_plan.py`` pins the arithmetic.

Where the bytes go (P = parameters; h hidden, q = heads·head_dim, kv = kv_heads·head_dim, i intermediate, L layers,
V vocabulary; the compute dtype is bf16 under ``torch.autocast``, master weights fp32 — rapid.training.policy):
- persistent: fp32 master 4P + fp32 gradients 4P (from the first backward to ``optimizer.step``; freed by
  ``zero_grad(set_to_none=True)``) + AdamW's two fp32 moments 8P = **16 bytes/param**;
- bf16 compute copies, 2 bytes per linear-layer weight: autocast casts each weight once per forward (its cache) and
  every matmul keeps its bf16 weight for backward; the tied lm_head gets its own ``weight.to(bf16)`` (2·V·h). The
  embedding lookup and the norms stay fp32;
- activations saved for backward, per token and decoder layer (bf16 compute, fp32 residual stream — under autocast
  the embedding output, the residual adds and Qwen2RMSNorm stay fp32):
    2 RMSNorms:        2 × (4h input + 4h normalised + 4 rsqrt)           = 16h + 8
    q/k/v inputs:      each projection saves its own bf16 cast of the normed input (autocast caches only leaf
                       weights, not activations)                          = 6h
    attention:         q, k, v after RoPE + output (bf16) + log-sum-exp (fp32 per head) = 4q + 4kv + 4·heads
    MLP:               gate/up input casts 4h + gate output 2i + SiLU output 2i + up output 2i + product 2i = 4h + 8i
  → A_layer = 26h + 4q + 4kv + 8i + 4·heads + 8 bytes (Qwen2.5-1.5B: 118 840 B/token/layer; 0.5B: 66 368).
  Outside the layers: input ids 8 + final norm 8h + 4 + RoPE cos/sin 8·head_dim + the bf16 completion hidden states,
  LSE and targets the fused loss keeps (2h + 12).
  The formula is the standard way to count (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", 34·h per layer for GPT with dropout); it is re-derived because Qwen2 differs: SwiGLU with
  i ≈ 5.8h, GQA, no dropout, and fp32 norms + residual under autocast (the largest single difference: 16h).
  Attention is flash-attention-2 varlen over packed sequences (DESIGN §3): no T² term. sdpa with a packed
  block-diagonal mask would add a T² bool mask.
- gradient checkpointing (HF ``gradient_checkpointing_enable``, one checkpoint per decoder layer): the layer inputs
  stay (fp32, 4h per layer per token) and one layer's activations are recomputed at a time: L·4h + A_layer.
- backward working set (ESTIMATE, not derived exactly): the fp32 residual gradient (2 × 4h) and the MLP's bf16
  intermediate gradients (4 × 2i) per token, once: 8h + 8i. A margin: on CPU (activations_cpu) the peak exceeded
  the saved bytes by ~0 without checkpointing and by ~15 KB/token (0.5B shape; 8h + 8i = 46 KB) with it.
- with checkpointing the bf16 copies are an upper bound: autocast's cache is dropped when the forward's autocast
  region ends, so during the backward only the lm_head's and one layer's copies are alive (1.5B: 2.4 GiB less).
- fused lm_head (rapid_kernels, no [N, V] logits): its backward returns d W in bf16 (2·V·h), which autograd
  converts to fp32 (4·V·h) for the fp32 master gradient: 6·V·h at once; plus a d-logits chunk (Triton:
  ``DZ_BUDGET_BYTES``, read from the kernel module; CUDA backend: a 256 MiB fp32 tile + its 128 MiB bf16 d z; the
  larger is used) and d hidden (fp32 accumulator, then bf16: 6h per token).
- AdamW step (foreach): about one fp32 temporary per parameter (``_foreach_sqrt`` of the second moment): 4P.
- vLLM (colocated, ``enable_sleep_mode=True``): awake it holds ``gpu_memory_utilization`` × GPU memory (weights bf16
  2P, activations / CUDA graphs, the rest KV cache at 2·L·kv·2 bytes per token); asleep at level 2 the weights and
  KV cache are freed and only what its sleep allocator does not own stays (CUDA graph pool, workspaces: assumed).
  Training runs while vLLM sleeps; generation runs while the trainer holds master + Adam (gradients were freed) —
  provided the trainer's cached-but-free blocks go back to the driver first (``torch.cuda.empty_cache()``).
- HF engine instead of vLLM (the GPU box without vLLM): generation under autocast keeps the bf16 weight copies (2P),
  and per sequence its KV cache (prompt + completion tokens × 2·L·kv·2 bytes), the per-step (B, V) temporaries of
  rapid's sampler — 12 bytes per (row × vocab) element (V 151 936; 8 at V 32 768) measured by
  ``benchmarks.memory.sampler_cpu`` — plus the
  bf16 logits and their fp32 copy (6 bytes), and the prefill's no-grad working set over its prompt tokens,
  estimated as one layer's live tensors: 12h + 6i bytes per token.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import asdict, dataclass

MiB, GiB = 2**20, 2**30
ESTIMATE = "ESTIMATE (cost model, not measured on a GPU)"
CUDA_TILE_BYTES = 256 * MiB + 128 * MiB  # csrc/cuda/linear_token_logprobs.cu: fp32 logits tile (2^26) + its bf16 d z


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True                 # lm_head shares the embedding matrix
    qkv_bias: bool = True             # Qwen2: q/k/v projections have biases, o/gate/up/down do not

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


QWEN25_0_5B = ModelShape("Qwen2.5-0.5B", hidden=896, layers=24, heads=14, kv_heads=2, head_dim=64,
                         intermediate=4864, vocab=151_936)
QWEN25_1_5B = ModelShape("Qwen2.5-1.5B", hidden=1536, layers=28, heads=12, kv_heads=2, head_dim=128,
                         intermediate=8960, vocab=151_936)
MODELS = {"0.5b": QWEN25_0_5B, "1.5b": QWEN25_1_5B}


@dataclass(frozen=True)
class Assumptions:
    """What the shapes do not determine. Each is a stated guess, not a measurement."""

    gpu_bytes: int = 81_559 * MiB     # H100 80GB as NVML reports it (79.65 GiB)
    cuda_context_bytes: int = 1 * GiB   # CUDA context, cuBLAS workspaces, loaded kernels of the one process
    vllm_overhead_bytes: int = 2 * GiB  # vLLM awake, besides weights and KV cache: profiled activations, CUDA graphs
    vllm_asleep_bytes: int = 1 * GiB    # vLLM at sleep level 2: what its sleep allocator does not own
    safety_fraction: float = 0.05      # headroom for allocator fragmentation, of the GPU's memory


# ------------------------------------------------------------------------------------------------ model counts
def linear_weight_count(s: ModelShape) -> int:
    """Weights of the decoder layers' linear projections (what autocast casts to bf16), biases excluded."""
    per_layer = s.hidden * (s.q_dim + 2 * s.kv_dim) + s.q_dim * s.hidden + 3 * s.hidden * s.intermediate
    return s.layers * per_layer


def param_count(s: ModelShape) -> int:
    """All parameters: embedding (+ untied lm_head), linear weights, q/k/v biases, 2 norms per layer + final norm."""
    biases = s.layers * (s.q_dim + 2 * s.kv_dim) if s.qkv_bias else 0
    norms = (2 * s.layers + 1) * s.hidden
    head = 0 if s.tied else s.vocab * s.hidden
    return s.vocab * s.hidden + head + linear_weight_count(s) + biases + norms


def bf16_copy_bytes(s: ModelShape) -> int:
    """bf16 weights alive from forward to backward: every linear weight (autocast's cache) + the lm_head cast."""
    return 2 * (linear_weight_count(s) + s.vocab * s.hidden)


def layer_activation_bytes(s: ModelShape) -> int:
    """A_layer: bytes saved for backward per token by one decoder layer (module docstring)."""
    h, i = s.hidden, s.intermediate
    norms = 2 * (4 * h + 4 * h + 4)
    qkv_inputs = 3 * 2 * h
    attention = 2 * s.q_dim + 2 * s.kv_dim + 2 * s.kv_dim + 2 * s.q_dim + 4 * s.heads
    mlp = 2 * 2 * h + 4 * 2 * i
    return norms + qkv_inputs + attention + mlp


def outside_activation_bytes(s: ModelShape) -> int:
    """Per token outside the layers: ids, final norm, RoPE cos/sin, and what the fused loss keeps (2h + 12)."""
    return 8 + (8 * s.hidden + 4) + 2 * 4 * s.head_dim + (2 * s.hidden + 12)


def backward_working_bytes(s: ModelShape) -> int:
    """ESTIMATE of the transient gradient tensors per token during one layer's backward: 8h + 8i."""
    return 8 * s.hidden + 8 * s.intermediate


def activation_bytes_per_token(s: ModelShape, gradient_checkpointing: bool) -> int:
    """Peak training bytes per micro-batch token (saved activations + backward working set + d hidden)."""
    layers = s.layers * 4 * s.hidden + layer_activation_bytes(s) if gradient_checkpointing else \
        s.layers * layer_activation_bytes(s)
    return layers + outside_activation_bytes(s) + backward_working_bytes(s) + 6 * s.hidden


def dz_budget_bytes() -> int:
    """The Triton backward's d-logits chunk bound, read from the kernel module so the plan follows the kernel."""
    return int(importlib.import_module("rapid_kernels._linear_token_logprobs").DZ_BUDGET_BYTES)


def lm_head_fixed_bytes(s: ModelShape) -> int:
    """The fused lm_head backward's token-independent transient: d W in bf16 + fp32 (6·V·h) + the chunk buffer."""
    return 6 * s.vocab * s.hidden + max(dz_budget_bytes(), CUDA_TILE_BYTES)


def kv_bytes_per_token(s: ModelShape) -> int:
    """vLLM / HF KV cache in bf16: K and V for every layer."""
    return 2 * s.layers * s.kv_dim * 2


# --------------------------------------------------------------------------------------------------- the plan
def plan(s: ModelShape, micro_batch_tokens: int, gradient_checkpointing: bool = False,
         gpu_memory_utilization: float = 0.35, a: Assumptions = Assumptions()) -> dict:
    """Bytes of every component and the peaks of the two phases (generation: vLLM awake; training: asleep)."""
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}")
    if not 0 < gpu_memory_utilization < 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1), got {gpu_memory_utilization}")
    p = param_count(s)
    vllm_awake = int(gpu_memory_utilization * a.gpu_bytes)
    vllm_weights = 2 * p
    kv_tokens = max(0, vllm_awake - vllm_weights - a.vllm_overhead_bytes) // kv_bytes_per_token(s)
    c = dict(master=4 * p, grads=4 * p, adam=8 * p, bf16_copies=bf16_copy_bytes(s),
             activations=micro_batch_tokens * activation_bytes_per_token(s, gradient_checkpointing),
             lm_head_transient=lm_head_fixed_bytes(s), adamw_step_temp=4 * p, cuda_context=a.cuda_context_bytes,
             vllm_awake=vllm_awake, vllm_asleep=a.vllm_asleep_bytes)
    train_peak = (c["master"] + c["grads"] + c["adam"] + c["bf16_copies"] + c["activations"] + c["lm_head_transient"]
                  + c["cuda_context"] + c["vllm_asleep"])
    step_peak = c["master"] + c["grads"] + c["adam"] + c["adamw_step_temp"] + c["cuda_context"] + c["vllm_asleep"]
    gen_peak = c["master"] + c["adam"] + c["cuda_context"] + c["vllm_awake"]
    usable = int(a.gpu_bytes * (1 - a.safety_fraction))
    return dict(model=s.name, label=ESTIMATE, params=p, micro_batch_tokens=micro_batch_tokens,
                gradient_checkpointing=gradient_checkpointing, gpu_memory_utilization=gpu_memory_utilization,
                components=c, train_peak=train_peak, step_peak=step_peak, gen_peak=gen_peak, usable=usable,
                fits=max(train_peak, step_peak, gen_peak) <= usable, vllm_kv_tokens=kv_tokens,
                bytes_per_token=activation_bytes_per_token(s, gradient_checkpointing))


def max_micro_batch_tokens(s: ModelShape, gradient_checkpointing: bool = False, gpu_memory_utilization: float = 0.35,
                           vllm_asleep: bool = True, a: Assumptions = Assumptions()) -> int:
    """Largest token budget whose training peak fits, with vLLM asleep (level 2, what rapid does) or, for
    comparison, awake (its whole ``gpu_memory_utilization`` share resident during training). 0: nothing fits."""
    base = plan(s, 1, gradient_checkpointing, gpu_memory_utilization, a)
    per_token = base["bytes_per_token"]
    fixed = base["train_peak"] - per_token
    if not vllm_asleep:
        fixed += base["components"]["vllm_awake"] - base["components"]["vllm_asleep"]
    return max(0, (base["usable"] - fixed) // per_token)


def max_gpu_memory_utilization(s: ModelShape, a: Assumptions = Assumptions()) -> float:
    """Largest vLLM share that fits next to the trainer's master weights + Adam while generating."""
    return round((a.gpu_bytes * (1 - a.safety_fraction) - 12 * param_count(s) - a.cuda_context_bytes) / a.gpu_bytes,
                 3)


def max_num_seqs_for(s: ModelShape, gpu_memory_utilization: float, seq_tokens: int,
                     a: Assumptions = Assumptions()) -> int:
    """vLLM: sequences of ``seq_tokens`` (prompt + completion) whose KV cache fits its share at once."""
    return plan(s, 1, False, gpu_memory_utilization, a)["vllm_kv_tokens"] // seq_tokens


HF_STEP_BYTES_PER_ELEMENT = 12 + 2 + 4   # sampler (measured, sampler_cpu) + bf16 logits + their fp32 copy


def hf_engine_max_num_seqs(s: ModelShape, prompt_tokens: int, max_new_tokens: int,
                           a: Assumptions = Assumptions()) -> int:
    """HF engine: sequences per ``generate`` call that fit next to master + Adam + the bf16 weight copies."""
    p = param_count(s)
    free = int(a.gpu_bytes * (1 - a.safety_fraction)) - 12 * p - bf16_copy_bytes(s) - a.cuda_context_bytes
    per_seq = ((prompt_tokens + max_new_tokens) * kv_bytes_per_token(s) + HF_STEP_BYTES_PER_ELEMENT * s.vocab
               + prompt_tokens * (12 * s.hidden + 6 * s.intermediate))
    return max(0, free // per_seq)


# ------------------------------------------------------------------------------------------------------ report
# ---------------------------------------------------------------- checking the formula on CPU (autograd)
def qwen2_config(s: ModelShape, layers: int | None = None, vocab: int | None = None):
    """A transformers ``Qwen2Config`` with the shape ``s`` (optionally fewer layers / a smaller vocabulary)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab or s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                       num_hidden_layers=layers or s.layers, num_attention_heads=s.heads,
                       num_key_value_heads=s.kv_heads, head_dim=s.head_dim, tie_word_embeddings=s.tied,
                       max_position_embeddings=4096, rope_theta=10000.0)


def qwen2_stack(s: ModelShape, layers: int, gradient_checkpointing: bool = False):
    """transformers' ``Qwen2Model`` with shape ``s``, ``layers`` layers, a 1024-token vocabulary, seeded weights."""
    import torch
    from transformers import Qwen2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2Model(qwen2_config(s, layers, vocab=1024))
    model.config._attn_implementation = "sdpa"
    model.train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def saved_bytes(s: ModelShape, layers: int, tokens: int) -> int:
    """Bytes autograd saves for backward in one bf16-autocast forward of ``layers`` layers over ``tokens`` tokens."""
    import torch

    model = qwen2_stack(s, layers)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 1024, (1, tokens), generator=torch.Generator().manual_seed(0))        # (1, T)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, position_ids=torch.arange(tokens)[None], use_cache=False)
    return sum(storages.values())


def slopes(measure, t1: int, t2: int, l1: int = 1, l2: int = 2) -> dict:
    """Per-layer-per-token, outside-per-token and per-layer-constant parts from measure(layers, tokens) at two
    depths and two lengths (bytes = constant·L + (per_layer·L + outside)·T + rest)."""
    m = {(n, t): measure(n, t) for n in (l1, l2) for t in (t1, t2)}
    per_layer = ((m[l2, t2] - m[l1, t2]) - (m[l2, t1] - m[l1, t1])) / ((t2 - t1) * (l2 - l1))
    outside = (m[l1, t2] - m[l1, t1]) / (t2 - t1) - l1 * per_layer
    constant = (m[l2, t1] - m[l1, t1]) / (l2 - l1) - t1 * per_layer
    return dict(per_layer_per_token=per_layer, outside_per_token=outside, constant=constant, raw={
        f"L{n}_T{t}": v for (n, t), v in m.items()})


def _gib(n: float) -> str:
    return f"{n / GiB:7.2f}"


def report(models: list[ModelShape], budgets: list[int], util: float, prompt_tokens: int, max_new_tokens: int,
           a: Assumptions = Assumptions()) -> tuple[str, dict]:
    seq_tokens = prompt_tokens + max_new_tokens
    lines = [f"H100-80GB memory plan — {ESTIMATE}", f"GPU {a.gpu_bytes / GiB:.2f} GiB, usable "
             f"{(1 - a.safety_fraction) * 100:.0f} %, vLLM gpu_memory_utilization {util}, sleep level 2 while "
             f"training; assumptions: {json.dumps({k: v for k, v in asdict(a).items()})}"]
    out: dict = {"label": ESTIMATE, "gpu_memory_utilization": util, "assumptions": asdict(a), "models": {}}
    for s in models:
        p0 = plan(s, budgets[0], False, util, a)
        c = p0["components"]
        lines += ["", f"{s.name}: {p0['params']:,} params (GiB)",
                  f"  fp32 master {_gib(c['master'])} | grads {_gib(c['grads'])} | Adam {_gib(c['adam'])} | "
                  f"= {_gib(c['master'] + c['grads'] + c['adam'])} (16 B/param)",
                  f"  bf16 compute copies {_gib(c['bf16_copies'])} | lm_head bwd transient "
                  f"{_gib(c['lm_head_transient'])} | AdamW step temp {_gib(c['adamw_step_temp'])} | CUDA ctx "
                  f"{_gib(c['cuda_context'])}",
                  f"  vLLM awake {_gib(c['vllm_awake'])} (KV cache {p0['vllm_kv_tokens']:,} tokens at "
                  f"{kv_bytes_per_token(s):,} B/token -> max_num_seqs ≈ {p0['vllm_kv_tokens'] // seq_tokens} at "
                  f"{seq_tokens} tokens/seq) | asleep {_gib(c['vllm_asleep'])}",
                  f"  generation peak (master + Adam + vLLM awake) {_gib(p0['gen_peak'])}; largest "
                  f"gpu_memory_utilization that fits: {max_gpu_memory_utilization(s, a)}",
                  f"  HF engine instead of vLLM: max_num_seqs ≈ "
                  f"{hf_engine_max_num_seqs(s, prompt_tokens, max_new_tokens, a)} at {prompt_tokens} + "
                  f"{max_new_tokens} tokens/seq",
                  f"  activations per token: A_layer {layer_activation_bytes(s):,} B x {s.layers} layers; total "
                  f"{activation_bytes_per_token(s, False):,} B (no ckpt), {activation_bytes_per_token(s, True):,} B "
                  f"(gradient checkpointing)",
                  f"  {'micro_batch_tokens':>18} {'ckpt':>5} {'activations':>11} {'train peak':>10} {'fits':>5}"]
        entry: dict = {"params": p0["params"], "components_no_activations": {k: v for k, v in c.items()
                                                                             if k != "activations"},
                       "bytes_per_token": {"no_ckpt": activation_bytes_per_token(s, False),
                                           "ckpt": activation_bytes_per_token(s, True)},
                       "layer_activation_bytes": layer_activation_bytes(s), "vllm_kv_tokens": p0["vllm_kv_tokens"],
                       "max_gpu_memory_utilization": max_gpu_memory_utilization(s, a),
                       "vllm_max_num_seqs": p0["vllm_kv_tokens"] // seq_tokens,
                       "hf_engine_max_num_seqs": hf_engine_max_num_seqs(s, prompt_tokens, max_new_tokens, a),
                       "budgets": []}
        for ckpt in (False, True):
            for mbt in budgets:
                pl = plan(s, mbt, ckpt, util, a)
                lines.append(f"  {mbt:>18,} {'yes' if ckpt else 'no':>5} {_gib(pl['components']['activations']):>11} "
                             f"{_gib(pl['train_peak']):>10} {'yes' if pl['fits'] else 'NO':>5}")
                entry["budgets"].append({"micro_batch_tokens": mbt, "ckpt": ckpt, "train_peak": pl["train_peak"],
                                         "fits": pl["fits"]})
        entry["max_micro_batch_tokens"] = {
            f"{'ckpt' if ckpt else 'no_ckpt'}_{'asleep' if asleep else 'awake'}":
                max_micro_batch_tokens(s, ckpt, util, asleep, a) for ckpt in (False, True) for asleep in (True, False)}
        m = entry["max_micro_batch_tokens"]
        lines.append(f"  largest micro_batch_tokens: vLLM asleep {m['no_ckpt_asleep']:,} (no ckpt) / "
                     f"{m['ckpt_asleep']:,} (ckpt); vLLM awake during training {m['no_ckpt_awake']:,} / "
                     f"{m['ckpt_awake']:,}")
        out["models"][s.name] = entry
    return "\n".join(lines), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="1.5b,0.5b", help=f"comma-separated, from {sorted(MODELS)}")
    ap.add_argument("--micro-batch-tokens", default="4096,8192,16384,32768,65536")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    ap.add_argument("--prompt-tokens", type=int, default=500, help="prompt length for max_num_seqs sizing")
    ap.add_argument("--max-new-tokens", type=int, default=4096, help="completion length for max_num_seqs sizing")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    budgets = [int(b) for b in args.micro_batch_tokens.split(",")]
    if any(b < 1 for b in budgets) or args.prompt_tokens < 1 or args.max_new_tokens < 1:
        raise ValueError("--micro-batch-tokens, --prompt-tokens and --max-new-tokens must be >= 1")
    text, summary = report([MODELS[m] for m in args.models.split(",")], budgets, args.gpu_memory_utilization,
                           args.prompt_tokens, args.max_new_tokens)
    print(text)
    print(json.dumps({"bench": "memory_plan_h100", **summary}))


if __name__ == "__main__":
    main()
