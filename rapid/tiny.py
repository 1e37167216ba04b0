"""A tiny Qwen2-architecture model and a char-level tokenizer, built locally (no hub access needed).

Used by tests, the demo and ``--model tiny``. ``save_tiny`` writes an ordinary HF model directory (config.json,
model.safetensors, tokenizer files) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` and vLLM load.

    model, tok = build_tiny()
    save_tiny(model, tok, "/tmp/tiny")

The attention shape (hidden 128, 4 heads → head_dim 32, 2 KV heads) is the smallest vLLM's CPU attention accepts
(head_dim >= 32) while keeping grouped-query attention, as in Qwen2.5.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Printable ASCII and newline: enough for arithmetic, short text tasks and code snippets.
DEFAULT_CHARS = "".join(sorted(set(string.printable) - set("\t\r\x0b\x0c")))
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _byte_symbol(ch: str) -> str:
    """GPT-2 byte-level alphabet: printable bytes stand for themselves, the others (space, newline) shift to 256+."""
    b = ord(ch)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in printable:
        return ch
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def build_tokenizer(chars: str = DEFAULT_CHARS):
    """A char-level tokenizer: byte-level BPE with no merges, so every ASCII character is one token.

    It is a ``Qwen2Tokenizer`` (a ``PreTrainedTokenizerFast``) on purpose: ``AutoTokenizer`` rebuilds Qwen2
    tokenizers from vocab + merges whatever tokenizer.json says, so only this form reloads identically (also in
    vLLM). Specials come first (pad = 0, bos = 1, eos = 2, unk = 3).
    """
    from transformers import Qwen2Tokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in dict.fromkeys(chars):
        vocab.setdefault(_byte_symbol(ch), len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                         padding_side="left", clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(vocab_size: int, num_layers: int = 2, hidden_size: int = 128, num_heads: int = 4,
                num_kv_heads: int = 2, intermediate_size: int = 256, max_position_embeddings: int = 512,
                pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2, tie_word_embeddings: bool = True):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, rope_theta=10000.0, torch_dtype="float32",
    )


def build_tiny(num_layers: int = 2, seed: int = 0, chars: str = DEFAULT_CHARS, **config_kwargs):
    """A freshly initialised tiny Qwen2 causal LM and its char tokenizer (deterministic for a given seed)."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(chars)
    config = tiny_config(len(tok), num_layers=num_layers, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model, tok


def save_tiny(model, tokenizer, path: str | Path) -> Path:
    """Write a normal HF model directory loadable by AutoModelForCausalLM/AutoTokenizer and vLLM."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
