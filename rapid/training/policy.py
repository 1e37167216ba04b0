"""The policy being trained: fp32 master weights, the compute dtype, the optimizer, the LR schedule, clipping.

``Policy`` owns everything an update touches (DESIGN.md section 3); the trainer never reaches around it into the
model's layers. ``PolicyLoss`` *is* the loss module — hidden states → fused kernel → loss, inside ``forward`` — so
a data-parallel wrapper's hooks (DDP, FSDP2) see the whole computation.

Precision (DESIGN.md section 1): trainable parameters and AdamW's state are float32 whatever ``dtype`` says; the
forward/backward runs in ``dtype`` under ``torch.autocast`` (bf16 by default on CUDA; bf16 works on CPU too), and the
fused kernels get the hidden states and the lm_head weight cast to it. An AdamW step on bf16 parameters would be
lost whenever it is smaller than bf16's resolution (~0.4 % of the weight) — at RL learning rates almost always.
float16 adds a dynamic loss scaler (``torch.amp.GradScaler``): a step whose gradients overflow is skipped.
Memory: fp32 master (4 bytes/param) + gradient (4) + Adam's two moments (8) ≈ 16 bytes per trainable parameter.
"""

from __future__ import annotations

import contextlib
import math

import torch

import rapid_kernels

from ..loss import algorithms, sampling
from ..loss.algorithms import LossResult
from ..config import RapidConfig
from ..distributed import Dist
from ..parallel import full_tensor, no_sync, parallelize
from ..loss.forward import check_packing, check_sharing, completion_hidden, model_parts
from ..precision import auto_dtype


def resolve_dtype(cfg: RapidConfig, device: torch.device) -> torch.dtype:
    """The compute dtype: ``auto`` is bfloat16 on CUDA; on CPU bfloat16 only where measured faster (rapid.precision)."""
    if cfg.dtype == "auto":
        return auto_dtype(device)
    return getattr(torch, cfg.dtype)


def lr_lambda(cfg: RapidConfig, total_steps: int):
    """Multiplier of ``lr`` at optimizer step s: linear warm-up, then constant / linear / cosine decay to 0."""
    warmup, total = cfg.warmup_steps, max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.lr_scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class PolicyLoss(torch.nn.Module):
    """forward(micro_batch, mode) on the causal LM ``model``:

    - ``"loss"``: the micro-batch's policy loss (normalised within it) and diagnostics, as a ``LossResult``;
    - ``"logprobs"``: the (N,) float32 token log-probs log π(y_t) of the processed distribution;
    - ``"coef"``: Σ_t g_t · log π(y_t) for fixed per-token coefficients ``grad`` (the two-phase update).
    """

    def __init__(self, model: torch.nn.Module, cfg: RapidConfig, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.parts = model_parts(model)

    def autocast(self):
        device = self.parts.weight.device
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.compute_dtype)

    def forward(self, mb, mode: str = "loss", grad: torch.Tensor | None = None):
        cfg, parts = self.cfg, self.parts
        device = parts.weight.device
        with self.autocast():
            hidden = completion_hidden(parts, mb.prompt_ids, mb.completion_ids, device)           # (N, D)
        hidden = hidden.to(self.compute_dtype)
        targets = mb.batch.targets
        if parts.logits_path:
            lp = self._logits_path_logprobs(hidden, targets)
            if mode == "loss":
                return algorithms.loss_from_logprobs(cfg, mb.batch, lp)
        else:
            weight = parts.weight.to(self.compute_dtype)                                         # (V, D)
            bias = parts.bias.to(self.compute_dtype) if parts.bias is not None else None
            threshold = None
            if sampling.truncates(cfg.top_k, cfg.top_p):
                threshold = sampling.thresholds(hidden.detach(), weight.detach(), bias, cfg.temperature, cfg.top_k,
                                                cfg.top_p, parts.softcap)                      # (N,)
            if mode == "loss":
                return algorithms.loss_from_hidden(cfg, mb.batch, hidden, weight, bias, threshold, parts.softcap)
            lp = rapid_kernels.linear_token_logprobs(hidden, weight, targets, cfg.temperature, bias,
                                                     backend=cfg.kernel_backend,
                                                     **algorithms.kernel_kwargs(threshold, parts.softcap))
        if mode == "logprobs":
            return lp
        if mode == "coef":
            return LossResult(loss=(lp * grad).sum(), count=mb.batch.num_seqs, token_logprobs=lp.detach(), stats={})
        raise ValueError(f"mode must be 'loss', 'logprobs' or 'coef', got {mode!r}")

    def _logits_path_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg, parts = self.cfg, self.parts
        logits = parts.lm_head(hidden)                                                           # (N, V)
        threshold = None
        if sampling.truncates(cfg.top_k, cfg.top_p):
            kept = sampling.truncate(logits.detach().float() / cfg.temperature, cfg.top_k, cfg.top_p)
            threshold = kept.masked_fill(torch.isinf(kept), float("inf")).amin(dim=-1)           # (N,)
        return rapid_kernels.token_logprobs(logits, targets, cfg.temperature, backend=cfg.kernel_backend,
                                            **algorithms.kernel_kwargs(threshold, None))


class Policy:
    """Master weights + compute dtype + AdamW + LR schedule + clipping (+ loss scaler for float16).

    ``policy(mb, mode)`` runs the loss module; ``backward(loss)`` and ``step()`` make one optimizer step from the
    accumulated gradients; ``accumulating(last)`` is the context for all but the last micro-batch of a step.
    """

    def __init__(self, model: torch.nn.Module, cfg: RapidConfig, device: torch.device, total_steps: int,
                 dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.dist = dist if dist is not None else Dist()
        # rank 0's decision on every rank: a timed bf16-vs-fp32 probe could come out differently under load
        self.compute_dtype = self.dist.broadcast_object(resolve_dtype(cfg, device))
        _to_master(model, self.compute_dtype)
        self.model = model
        self.loss_module = PolicyLoss(model.to(device), cfg, self.compute_dtype)
        parts = self.loss_module.parts
        parts.packed = check_packing(parts.base, device, parts.weight.shape[0])
        # the prompt once per group (its K/V cache shared by the completions); HF turns the cache off under
        # gradient checkpointing, so that path keeps the packed forward
        parts.shared = not cfg.gradient_checkpointing and check_sharing(parts.base, device, parts.weight.shape[0])
        # the one place parallelism is applied (DDP / FSDP2 under torchrun; unwrapped at world size 1), before the
        # optimizer is built: FSDP2 replaces the parameters with sharded ones
        self.module: torch.nn.Module = parallelize(self.loss_module, cfg.parallel, self.compute_dtype, device,
                                                   self.dist)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))
        self.scaler = torch.amp.GradScaler(device.type) if self.compute_dtype == torch.float16 else None
        self.optimizer.zero_grad(set_to_none=True)   # gradients left on the model by the caller must not leak in

    def __call__(self, mb, mode: str = "loss", grad: torch.Tensor | None = None):
        return self.module(mb, mode, grad)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def accumulating(self, last: bool):
        """Gradient accumulation: no gradient synchronisation before the last micro-batch (a wrapper's no_sync)."""
        return no_sync(self.module, enabled=not last)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> torch.Tensor:
        """Clip, step, advance the schedule, clear gradients; returns the pre-clip gradient norm (a tensor)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm or math.inf))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def release(self) -> None:
        """Drop the data-parallel wrapper and the optimizer before the process group goes away: a DDP reducer that
        outlives its gloo group joins the group's threads in its destructor while holding the GIL and can deadlock
        (pytorch/pytorch#56297); the caller keeps the bare model."""
        import gc

        self.module = self.loss_module
        self.params = []
        self.optimizer = None
        gc.collect()

    def state_dict(self) -> dict:
        """What a checkpoint needs beyond model and optimizer: the schedule and the loss scaler."""
        return {"scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])


@torch.no_grad()
def _to_master(model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Trainable parameters to float32 (the master copy); frozen ones (a LoRA base) to the compute dtype."""
    for p in model.parameters():
        want = torch.float32 if p.requires_grad else compute_dtype
        if p.dtype != want and p.is_floating_point():
            p.data = p.data.to(want)
