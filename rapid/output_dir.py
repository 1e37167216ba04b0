"""The run's output directory (``output_dir``): whether it already holds a run, whether its last checkpoint may be
resumed with this config, and the final model written into it.

    output_dir/metrics.jsonl          one JSON line per rollout (rapid.observe.loggers)
    output_dir/checkpoints/rollout-*  resumable checkpoints (rapid.checkpoint)
    output_dir/model                  the final HF model (LoRA: merged); output_dir/adapter: the LoRA adapter alone
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import RapidConfig
from .engines.weights import merged_copy


def holds_a_run(out_dir: Path) -> bool:
    root = out_dir / "checkpoints"
    return (out_dir / "metrics.jsonl").exists() or (root.is_dir() and any(root.iterdir()))


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
        full = merged_copy(model) if lora else model
    full.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
