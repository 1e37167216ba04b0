"""Loading the policy: model id / path / instance → (model, tokenizer) on the training device, LoRA when asked."""

from __future__ import annotations

import importlib.util
import logging

import torch

from ..config import RapidConfig

logger = logging.getLogger(__name__)

def training_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def attn_implementation(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(model: object, tokenizer):
    """The tokenizer given, else the one attached to / stored with the model; left padding, a pad token."""
    if tokenizer is None:
        if isinstance(model, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
        else:
            tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("tokenizer is required when model is an instance without one attached")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad_token nor an eos_token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def context_length(model: object) -> int | None:
    """The model's maximum positions (config only; nothing is loaded for an id/path beyond config.json)."""
    if isinstance(model, str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    else:
        config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "max_position_embeddings", None)


def load_model(model: object, cfg: RapidConfig, device: torch.device) -> torch.nn.Module:
    """The policy on ``device`` with float32 parameters (the master copy; training.policy computes in cfg.dtype)."""
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32,
                                                     attn_implementation=attn_implementation(device))
    elif not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be an HF id, a local path or a PreTrainedModel, got {type(model).__name__}")
    model = model.to(device=device, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model


def apply_peft(model: torch.nn.Module, peft_config) -> torch.nn.Module:
    try:
        from peft import get_peft_model
    except ImportError as err:
        raise ValueError("peft_config was given but peft is not installed (pip install peft)") from err
    model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA via peft: %d trainable parameters", trainable)
    return model
