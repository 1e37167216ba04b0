"""The HF model under its wrappers, and its weights under HF names: the one place that knows how DDP, FSDP2,
torch.compile, activation checkpointing and peft wrap a transformers model.

- ``unwrap``: the module under DDP / torch.compile (peft kept: checkpoints store the peft model's names).
- ``hf_model``: the transformers model itself, under peft too (its ``config``, its parameters).
- ``hf_name``: a parameter name without the wrappers' prefixes.
- ``hf_weights``: the weights an engine loads — LoRA merged on the fly, FSDP2 shards gathered one at a time.
- ``merged_copy``: a plain HF copy of the model (LoRA merged), for an engine or the final ``output_dir/model``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from ..parallel import full_tensor

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_checkpoint_wrapped_module.")   # DDP, compile, activation ckpt


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP / torch.compile wrappers (a peft model stays a peft model)."""
    while type(model).__name__ in ("DistributedDataParallel", "OptimizedModule"):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under peft / DDP / torch.compile wrappers."""
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model) if not hasattr(model, "config") else model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hf_name(name: str) -> str:
    """``name`` without the prefixes DDP / torch.compile / activation checkpointing add, leading or nested."""
    for wrapper in WRAPPER_PREFIXES:
        name = name.removeprefix(wrapper)
    return name.replace("._orig_mod.", ".").replace("._checkpoint_wrapped_module.", ".")


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with LoRA adapters merged (plain HF names); a plain model is copied as is."""
    replica = copy.deepcopy(model)
    return replica.merge_and_unload() if hasattr(replica, "merge_and_unload") else replica


def _is_lora(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def hf_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights as HF-named ``(name, tensor)`` pairs, the form vLLM's ``load_weights`` takes.

    - peft LoRA layers yield ``base + Σ active deltas`` (peft's ``get_delta_weight``), computed on the fly: the
      trainer's model is never merged or mutated; adapters already merged or disabled add nothing.
    - peft ``modules_to_save`` yield the active trained copy under the original name.
    - tied embeddings yield ``embed_tokens`` only (vLLM ties ``lm_head`` to it itself).
    - ``dtype`` casts each tensor (the engine's dtype); one tensor is materialised at a time.
    """
    base = hf_model(model)
    tied = bool(getattr(getattr(base, "config", None), "tie_word_embeddings", False))
    skip: list[str] = []
    for mod_name, module in base.named_modules():
        if any(mod_name.startswith(p) for p in skip):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if _is_lora(module) or _is_modules_to_save(module):
            skip.append(prefix)
        # no_grad only around the maths, never around a yield: a generator suspended (or abandoned by a failing
        # consumer) inside ``with torch.no_grad()`` would leave grad mode off in the caller's thread
        with torch.no_grad():
            params = _module_tensors(module)
        for pname, tensor in params:
            tensor = full_tensor(tensor)             # an FSDP2 shard is gathered here, one tensor at a time
            name = hf_name(prefix + pname)
            if tied and name == "lm_head.weight":
                continue
            tensor = tensor.detach()
            yield name, tensor.to(dtype) if dtype is not None else tensor


def _is_modules_to_save(module: torch.nn.Module) -> bool:
    return hasattr(module, "original_module") and hasattr(module, "modules_to_save")


def _module_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors a module contributes under its own name: merged LoRA weights, the active modules_to_save copy,
    or its direct parameters."""
    if _is_lora(module):
        layer = module.base_layer
        weight = layer.weight
        if not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
            adapters = set(module.lora_A) | set(getattr(module, "lora_embedding_A", {}))   # embeddings' names
            for name in module.active_adapters:
                if name in adapters:
                    weight = weight + module.get_delta_weight(name).to(weight.dtype)
        bias = getattr(layer, "bias", None)
        return [("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    if _is_modules_to_save(module):
        adapter = getattr(module, "active_adapter", None)
        adapter = adapter[0] if isinstance(adapter, (list, tuple)) else adapter
        active = (module.modules_to_save[adapter] if adapter in module.modules_to_save
                  and not getattr(module, "disable_adapters", False) else module.original_module)
        return list(active.named_parameters())
    return list(module.named_parameters(recurse=False))
