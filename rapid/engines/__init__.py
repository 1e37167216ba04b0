"""Generation engines: HF ``generate`` (the CPU/embedded default) and colocated vLLM."""

from .base import Engine, Rollout, SamplingConfig

__all__ = ["Engine", "Rollout", "SamplingConfig"]
