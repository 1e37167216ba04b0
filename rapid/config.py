"""The run configuration: one typed dataclass, validated before any expensive work starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Union, get_args, get_origin, get_type_hints

Algo = Literal["rapid", "grpg", "grpo"]
EngineName = Literal["auto", "hf", "vllm"]
KernelBackend = Literal["auto", "triton", "cuda", "cpp", "torch"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class RapidConfig:
    # --- algorithm -----------------------------------------------------------------------------------------------
    algo: Algo = "rapid"
    """rapid: off-policy steps with truncated IS + weighted group baseline; grpg: on-policy group PG (H = 1,
    w ≡ 1); grpo: PPO-clip per-token ratio, std-normalised advantages, token-mean loss."""
    group_size: int = 8
    """K completions sampled per prompt; a group shares the baseline."""
    prompts_per_rollout: int = 64
    """Prompts per generation call (the large inference batch); global: split across ranks under torchrun."""
    prompts_per_step: int = 8
    """Prompts per optimizer step (global); H = prompts_per_rollout / prompts_per_step steps per rollout. Under
    torchrun it must divide by the world size: each rank trains on its share of every mini-batch."""
    micro_batch_size: int | None = None
    """At most this many sequences per forward/backward (gradient accumulation). None: no sequence cap."""
    micro_batch_tokens: int | None = None
    """Token budget (prompt + completion tokens) per forward/backward, and per no-grad pass (recompute, eval).
    A micro-batch may split a group; the update then runs in two phases (DESIGN.md section 3) and still equals the
    whole-step gradient. None: no token cap. Must hold the longest prompt + max_new_tokens."""
    num_rollouts: int = 10
    """Outer iterations (generate once, then H optimizer steps)."""
    eta: float = 2.0
    """Truncation level η of the importance weight."""
    baseline: Literal["loo", "mean"] = "loo"
    """Group baseline: leave-one-out (unbiased without clipping) or the mean over the group."""
    is_level: Literal["sequence", "token", "geometric"] = "sequence"
    """Importance ratio level: sequence product (paper), per-token, or geometric mean (length-independent)."""
    is_clip: Literal["truncate", "mask", "none"] = "truncate"
    """truncate: min(w, η); mask: drop sequences with w > η; none: pure importance sampling."""
    adv_scale: Literal["none", "std"] = "none"
    """Divide advantages by the group's reward std (+1e-6)."""
    grpo_clip_eps: float = 0.2
    """PPO clip ε for algo="grpo"."""
    behavior_logprobs: Literal["auto", "engine", "recompute"] = "auto"
    """log μ from the engine (no extra pass) or recomputed by the trainer before the first step (exact; costs one
    forward of the rollout). auto: engine for rapid (the paper's choice), recompute for grpo (as verl and TRL do)."""
    loss_norm: float | None = None
    """Constant divisor of the sequence log-prob sum; None: max_new_tokens."""
    filter_groups: bool = False
    """Skip groups whose rewards are all equal in the update (DAPO's dynamic sampling, without refilling): they
    cost no forward/backward; the loss keeps the full mini-batch's normalisation, so on-policy (where their
    advantage is exactly 0) the update is unchanged. Counted in rapid/skipped_groups."""
    adaptive_h: bool = False
    """Choose H (steps per rollout) each rollout from the importance weights' ESS / clip fraction and the measured
    phase times; prompts_per_rollout is then the largest rollout (rapid.training.adaptive.AdaptiveH)."""

    # --- optimisation --------------------------------------------------------------------------------------------
    lr: float = 1e-5
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm; None disables it."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule over the run's optimizer steps, after the warm-up (linear / cosine decay to 0)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many optimizer steps."""

    reward_workers: int = 0
    """Processes computing rewards (0: in the trainer's process). Use >= 1 for slow verifiers; the code sandbox
    already runs its programs in parallel."""
    reward_timeout_s: float | None = 60.0
    """Time limit of one reward call (per chunk with reward_workers >= 1), in every mode: a call still running
    then is abandoned and its samples score 0.0 (counted in reward/timeouts). None: no limit."""

    # --- sampling ------------------------------------------------------------------------------------------------
    max_new_tokens: int = 256
    """Completion length limit."""
    max_prompt_tokens: int | None = None
    """Prompts longer than this raise a ValueError before training; None: the model's context minus
    max_new_tokens."""
    temperature: float = 1.0
    """Sampling temperature; the behaviour log-probs are those of the tempered distribution."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: off). The trainer's log π applies the same truncation."""
    top_p: float = 1.0
    """Nucleus sampling (1: off). The trainer's log π applies the same truncation (after top_k), so on-policy
    importance weights stay 1. Only these settings shape sampling: the model's generation_config is ignored."""
    stop: list[str] | None = None
    """Stop strings (both engines): a completion ends after the token that completes one; its text stops before
    it; the behaviour log-probs cover exactly the kept tokens."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Render prompts with the tokenizer's chat template. Rows whose prompt is a list of {"role", "content"}
    messages always are; string prompts are wrapped as one user message when "on", or when "auto" and the model
    is an instruct/chat model (its name says so and the tokenizer has a template)."""

    # --- systems -------------------------------------------------------------------------------------------------
    engine: EngineName = "auto"
    """Generation engine: vllm when importable (auto), else HF generate."""
    kernel_backend: KernelBackend = "auto"
    """rapid_kernels backend for the training loss."""
    dtype: DType = "auto"
    """Compute dtype of the forward/backward and of the engine (auto: bfloat16 on CUDA; on CPU bfloat16 only where
    the CPU has AVX512-BF16 / AMX and a timed GEMM is >= 1.2x faster than fp32, else float32 — rapid.precision;
    RAPID_CPU_BF16=0|1 overrides).
    Parameters and optimizer state stay float32 (the master copy) whatever it is; float16 adds a loss scaler."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun (world size > 1): DDP replicas, or FSDP2 fully_shard (parameters, gradients
    and optimizer state sharded across ranks; bf16 gathers, fp32 master shards) for models that do not fit."""
    dist_timeout_s: float = 1800.0
    """Collective timeout under torch.distributed: a crashed or hung rank makes the others fail with an error
    naming it after this long instead of hanging forever."""
    overlap: bool = False
    """Generate rollout r+1 while training on rollout r (DESIGN.md section 6): the engine runs in its own process
    and gets the weights once per rollout — on CPU with engine_threads cores (shared memory), on CUDA on a GPU of
    its own (the trainer's GPU index + trainer processes per node; NCCL broadcast). Rollout r+1's behaviour policy
    is the weights before rollout r's update, corrected by the importance weights. Needs behaviour log-probs from
    the engine (recompute would use the wrong weights). Refused with one GPU per trainer (sleep/wake colocation
    cannot overlap)."""
    engine_threads: int | None = None
    """Cores for the engine process with overlap=True (None: half of this process's cores); the trainer keeps the
    rest."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~30 % more compute)."""
    max_num_seqs: int | None = 256
    """Sequences per engine call: HF generates the rollout (and evaluation) in chunks of this many, vLLM gets it
    as its max_num_seqs. None: no cap (HF: the whole rollout in one batch)."""
    gpu_memory_utilization: float = 0.35
    """vLLM: fraction of GPU memory for weights + KV cache while awake (the trainer uses the rest)."""
    max_model_len: int | None = None
    """vLLM: context length; None: prompt limit + max_new_tokens."""
    enforce_eager: bool = False
    """vLLM: disable CUDA graphs (faster start, slower decode)."""
    sleep_level: Literal[1, 2] = 2
    """vLLM sleep level: 2 discards weights (re-pushed each rollout), 1 keeps a CPU copy."""

    # --- bookkeeping ---------------------------------------------------------------------------------------------
    seed: int = 0
    """Seed of torch, python and the engine's sampler."""
    output_dir: str | None = None
    """Where metrics.jsonl, profile.json and checkpoints go; None: no files."""
    save_every: int = 0
    """Checkpoint every this many rollouts (0: only at the end and on interrupt)."""
    resume: bool = False
    """Continue from the newest intact checkpoint in output_dir (exactly where it stopped, even mid-rollout)."""
    allow_config_change: bool = False
    """Let resume continue with settings that change the maths (algo, batch sizes, lr, sampling, ...); without it
    such a change is refused. Bookkeeping fields (num_rollouts, eval/save cadence, logging) may always change."""
    eval_every: int = 0
    """Evaluate on the eval dataset every this many rollouts (0: only before and after)."""
    eval_samples: int = 0
    """Besides the greedy eval/reward, sample this many completions per eval prompt (the training distribution)
    and log eval/mean@n and the unbiased eval/pass@k (Chen et al. 2021) for k = 1, 2, 4, ... ≤ n; a sample
    passes when its reward is >= 1. 0: greedy only."""
    log_completions: int = 0
    """Write up to this many prompt / completion / reward rows per rollout to output_dir/completions.jsonl, and
    every eval generation to output_dir/eval_completions.jsonl. 0: off."""
    tensorboard: bool = False
    """Also log metrics to TensorBoard under output_dir."""
    wandb: bool = False
    """Also log metrics to Weights & Biases (needs the wandb package and a login)."""
    keep_checkpoints: int = 2
    """How many of the most recent checkpoints to keep (older ones are deleted after a successful save)."""
    max_train_seconds: float | None = None
    """Stop after this much training wall-clock (eval and checkpoint time excluded); None: run all rollouts."""
    progress_bar: bool = True
    """Show a tqdm progress bar with live reward and throughput."""
    extra: dict = field(default_factory=dict)
    """Free-form settings recorded with the run (task name, notes)."""

    def __post_init__(self) -> None:
        _check_types(self)
        positive_ints = ("group_size", "prompts_per_rollout", "prompts_per_step", "num_rollouts", "max_new_tokens")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_rollout % self.prompts_per_step:
            raise ValueError(f"prompts_per_rollout ({self.prompts_per_rollout}) must be divisible by "
                             f"prompts_per_step ({self.prompts_per_step})")
        if self.algo == "grpg" and self.prompts_per_step != self.prompts_per_rollout:
            raise ValueError(f"algo='grpg' is on-policy (one step per rollout): prompts_per_step "
                             f"({self.prompts_per_step}) must equal prompts_per_rollout ({self.prompts_per_rollout})")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group's baseline needs another sample; with one the "
                             f"advantage is zero by construction), got {self.group_size}")
        for name in ("micro_batch_size", "micro_batch_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < self.max_new_tokens + 1:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) must hold at least one prompt token "
                             f"plus max_new_tokens ({self.max_new_tokens})")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.stop is not None and (not isinstance(self.stop, list) or not all(
                isinstance(x, str) and x for x in self.stop)):
            raise ValueError(f"stop must be a list of non-empty strings or None, got {self.stop!r}")
        for name in ("eval_samples", "log_completions"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.engine_threads is not None and self.engine_threads < 1:
            raise ValueError(f"engine_threads must be >= 1 or None, got {self.engine_threads}")
        if self.overlap and self.behavior_source == "recompute":
            raise ValueError("overlap=True needs behavior_logprobs='engine': a trainer-side recompute would score "
                             "rollout r+1 with weights that already took rollout r's steps (algo='grpo' defaults to "
                             "recompute; set behavior_logprobs='engine' explicitly)")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        for name in ("eta", "lr", "temperature"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.grpo_clip_eps < 1:
            raise ValueError(f"grpo_clip_eps must be in (0, 1), got {self.grpo_clip_eps}")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1), got {self.gpu_memory_utilization}")
        if self.loss_norm is not None and (not math.isfinite(self.loss_norm) or self.loss_norm <= 0):
            raise ValueError(f"loss_norm must be finite and > 0, got {self.loss_norm}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            raise ValueError(f"max_train_seconds must be > 0 or None, got {self.max_train_seconds}")
        if self.reward_workers < 0:
            raise ValueError(f"reward_workers must be >= 0, got {self.reward_workers}")
        if self.reward_timeout_s is not None and not self.reward_timeout_s > 0:
            raise ValueError(f"reward_timeout_s must be > 0 or None, got {self.reward_timeout_s}")
        if self.save_every < 0 or self.eval_every < 0:
            raise ValueError("save_every and eval_every must be >= 0")
        if self.resume and not self.output_dir:
            raise ValueError("resume=True needs output_dir (where the checkpoints are)")

    @property
    def steps_per_rollout(self) -> int:
        """H: optimizer steps per rollout."""
        return self.prompts_per_rollout // self.prompts_per_step

    @property
    def behavior_source(self) -> str:
        """Where log μ comes from after resolving ``behavior_logprobs="auto"``."""
        if self.behavior_logprobs != "auto":
            return self.behavior_logprobs
        return "recompute" if self.algo == "grpo" else "engine"

    @property
    def effective_loss_norm(self) -> float:
        return float(self.loss_norm if self.loss_norm is not None else self.max_new_tokens)

    def maths_changes(self, saved: dict) -> list[str]:
        """Fields whose value differs from ``saved`` (a checkpoint's config) and that change what is computed."""
        return sorted(name for name, value in self.to_dict().items()
                      if name not in RESUMABLE_FIELDS and name in saved and saved[name] != value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RapidConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)


# Fields a resumed run may change freely: how long, how often it logs / saves / evaluates, where things go, and
# systems settings whose results are exact either way (micro-batching, engine batch caps, kernels).
RESUMABLE_FIELDS = frozenset({
    "num_rollouts", "output_dir", "resume", "allow_config_change", "save_every", "eval_every", "eval_samples",
    "tensorboard", "wandb", "keep_checkpoints", "max_train_seconds", "progress_bar", "reward_workers",
    "reward_timeout_s", "micro_batch_size", "micro_batch_tokens", "max_num_seqs", "kernel_backend",
    "gradient_checkpointing", "gpu_memory_utilization", "enforce_eager", "log_completions", "extra", "parallel",
    "dist_timeout_s", "engine", "overlap", "engine_threads",
})


def _check_types(cfg: RapidConfig) -> None:
    """Literal choices and basic types, each error naming the field."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if not _matches(value, hint):
            raise ValueError(f"{f.name} must be {_describe(hint)}, got {value!r}")


def _matches(value: object, hint: object) -> bool:
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return any(_matches(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: object) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is not None and get_args(hint):
        return " or ".join(_describe(h) for h in get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
