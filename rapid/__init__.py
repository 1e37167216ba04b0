"""rapid: fast RL fine-tuning of small language models with RAPID (arXiv 2510.03515).

    import rapid
    result = rapid.train(model, dataset, reward_fn, config=rapid.RapidConfig(...))

Heavy modules (transformers, the engines) are imported on first use, so ``import rapid`` stays cheap.
"""

from __future__ import annotations

from .config import RapidConfig

__all__ = ["RapidConfig", "TrainResult", "train"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("train", "TrainResult"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'rapid' has no attribute {name!r}")
