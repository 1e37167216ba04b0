"""Set-up and tear-down pieces of a run that are not the training loop: input checks that need the output
directory, the engine process for overlap, the final model, clean-up that never masks the run's error, seeding."""

from __future__ import annotations

import json
import os
import logging
import random
from pathlib import Path

import numpy as np
import torch

from .config import RapidConfig
from .distributed import main_logger

logger = logging.getLogger(__name__)
log = main_logger(__name__)


class SignalWatch:
    """Warns when rollouts carry no learning signal (every group's samples got one reward, so every advantage is 0).

    Never any signal since the start (a reward that never fires, a model that never succeeds): loudly after
    ``WARN_AFTER`` rollouts, again every 10. After the run has learnt from some rollouts, a stretch without signal is
    mostly a solved or saturated batch — normal for small rollouts (the demo's GRPG scores 2 groups per call) — so
    it is warned once per stretch only when it spans ``STALL_GROUPS`` groups.
    """

    WARN_AFTER = 3
    STALL_GROUPS = 256

    def __init__(self, log, history: list[dict]) -> None:
        self.log = log
        self.seen = any(h.get("reward/std", 0) > 0 for h in history)      # resume: what the run saw before
        self.rollouts = self.groups = 0

    def update(self, no_signal: bool, groups: int, reward_mean: float) -> None:
        if not no_signal:
            self.seen, self.rollouts, self.groups = True, 0, 0
            return
        self.rollouts += 1
        self.groups += groups
        if not self.seen:
            if self.rollouts == self.WARN_AFTER or self.rollouts % 10 == 0:
                self._warn("in each of the first", reward_mean)
        elif self.groups >= self.STALL_GROUPS and self.groups - groups < self.STALL_GROUPS:
            self._warn("after earlier rollouts had signal, in each of the last", reward_mean)

    def _warn(self, where: str, reward_mean: float) -> None:
        self.log.warning(
            "NO LEARNING SIGNAL: %s %d rollouts (%d groups) every group's samples got the same reward (reward/mean "
            "%.3f), so every advantage is zero and the model does not change. Check the reward function on a few "
            "completions (log_completions=8 writes them to completions.jsonl), raise temperature or group_size, or "
            "start from a model that sometimes succeeds (the CLI's --model tiny is warm-started).",
            where, self.rollouts, self.groups, reward_mean)


def check_resume_config(cfg: RapidConfig, last: Path) -> None:
    """Refuse to resume with settings that change the maths, unless allow_config_change."""
    saved_path = last / "config.json"
    if not saved_path.exists():
        return
    changed = cfg.maths_changes(json.loads(saved_path.read_text()))
    if changed and not cfg.allow_config_change:
        raise ValueError(f"resume: the config differs from the checkpoint's ({last.name}) in {', '.join(changed)}, "
                         "which changes the maths of the run; pass allow_config_change=True "
                         "(--allow-config-change) to continue anyway, or use another output_dir")


def save_final_model(policy, tokenizer, out_dir: Path, full=None) -> None:
    """``output_dir/model``: a full HF model directory any tool (``rapid eval``, vLLM) loads, written by rank 0. A
    LoRA run also writes the adapter alone to ``output_dir/adapter``; ``model`` then holds the merged weights.
    Under FSDP2 ``full`` is the unsharded copy the trainer already filled with the whole (LoRA: merged) weights, so
    only a LoRA adapter needs the sharded state gathered."""
    import copy

    model, dist = policy.model, policy.dist
    lora = hasattr(model, "peft_config")
    state = None
    if lora and dist.active and policy.cfg.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        return
    if lora:
        model.save_pretrained(out_dir / "adapter", state_dict=state)
    if full is None:
        full = copy.deepcopy(model).merge_and_unload() if lora else model
    full.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")


def start_engine_process(cfg: RapidConfig, model, tokenizer, workdir, dtype, device):
    """overlap=True: the engine in its own process. CPU: with ``engine_threads`` cores, the trainer keeps the rest.
    CUDA: on a GPU of its own — the trainer's GPU index + the number of trainer processes on this node (one
    engine per rank; a single process trains on GPU i and generates on GPU i + 1) — weights broadcast over NCCL."""
    from .engines import resolve_engine_name
    from .engines.process.client import ProcessEngine, available_cpus

    kind = resolve_engine_name(cfg.engine, device)
    cores = available_cpus()
    threads = cfg.engine_threads or max(1, cores // 2)
    if device.type == "cuda":
        engine_device = engine_gpu(device)
        log.info("overlap: trainer on %s, engine (%s) on cuda:%d, weights broadcast over NCCL", device, kind,
                 engine_device.index)
        return ProcessEngine(model, tokenizer, cfg, kind=kind, threads=threads, workdir=workdir, dtype=dtype,
                             device=engine_device)
    torch.set_num_threads(max(1, cores - threads))
    log.info("overlap: engine process with %d thread(s), trainer with %d", threads, torch.get_num_threads())
    return ProcessEngine(model, tokenizer, cfg, kind=kind, threads=threads, workdir=workdir, dtype=dtype)


def engine_gpu(device: torch.device) -> torch.device:
    """The GPU an overlapped engine gets: the trainer's index + LOCAL_WORLD_SIZE (1 without torchrun); refused
    when the node has too few GPUs — with one GPU per trainer, sleep/wake colocation cannot overlap."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    index = device.index if device.index is not None else (torch.cuda.current_device() if count else 0)
    if index + local >= count:
        raise ValueError(f"overlap=True on CUDA puts each engine on a GPU of its own (GPU {index} trains, GPU "
                         f"{index + local} would generate), but this node has {count} GPU(s) for {local} trainer "
                         f"process(es); with one GPU per trainer, sleep/wake colocation cannot overlap. Set "
                         "overlap=False, or give the node 2 GPUs per trainer process.")
    return torch.device("cuda", index + local)


def holds_a_run(out_dir: Path) -> bool:
    root = out_dir / "checkpoints"
    return (out_dir / "metrics.jsonl").exists() or (root.is_dir() and any(root.iterdir()))


def quietly(fn, what: str) -> None:
    """Clean-up never masks the error that ended the run: its own failure is logged, not raised."""
    try:
        fn()
    except Exception:                     # noqa: BLE001 — any clean-up failure is secondary to the run's outcome
        logger.exception("clean-up failed while %s", what)


def close_profiler(profiler) -> str | None:
    """Write the profile only when this session completed a rollout: a run that failed at once must not
    overwrite the profile of the run it tried to resume."""
    if not profiler.rollouts:
        profiler.output_dir = None
    return profiler.close()


def seed_everything(seed: int) -> None:
    """torch (CPU and CUDA), numpy and python's ``random``: LoRA init, dropout and anything a user hooks in."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def evaluated_at(history: list[dict], rollout: int) -> bool:
    return bool(history) and history[-1].get("rollout") == rollout and any(k.startswith("eval/") for k in history[-1])
