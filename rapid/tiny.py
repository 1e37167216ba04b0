"""A tiny Qwen2-architecture model and a char-level tokenizer, built locally (no hub access needed).

Used by tests, the demo and ``--model tiny``. ``save_tiny`` writes an ordinary HF model directory (config.json,
model.safetensors, tokenizer files) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` and vLLM load.

    model, tok = build_tiny()                # random weights: reward 0 on every task, nothing to learn from
    model, tok = load_tiny()                 # the demo's warm start: right on part of the arithmetic problems
    save_tiny(model, tok, "/tmp/tiny")

``load_tiny`` (what ``--model tiny`` and ``rapid.train("tiny", ...)`` use) starts from the warm start that ``make demo``
builds: a short supervised phase on 2-digit + 1-digit addition, cached under ``$RAPID_CACHE_DIR/rapid-demo/<hash>``
(``RAPID_CACHE_DIR`` defaults to ``.cache`` in the working directory). A freshly initialised model never produces a
right answer, so every group has reward variance 0 and RL has no signal; the warm start gives it one.

The attention shape (hidden 128, 4 heads → head_dim 32, 2 KV heads) is the smallest vLLM's CPU attention accepts
(head_dim >= 32) while keeping grouped-query attention, as in Qwen2.5. torch and transformers are imported inside
the functions that build models, so the settings and cache paths here cost nothing to import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

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
    import torch
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


@dataclass(frozen=True)
class WarmStartSettings:
    """The supervised warm start shared by ``make demo``, ``--model tiny`` and the benchmarks (same key, one cache)."""

    difficulty: int = 2
    digits: tuple[int, int] = (2, 1)
    n_train: int = 4000          # capped by the problem space: 800 train problems after the 200 held out
    n_eval: int = 200
    num_layers: int = 2
    sft_steps: int = 200         # seed 0: 32.5 % held-out accuracy (other seeds land at 8-22 %: see RESULTS.md)
    sft_batch: int = 64
    sft_lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def warm_start_dir(settings: WarmStartSettings) -> Path:
    """Where the warm start for ``settings`` is cached: ``$RAPID_CACHE_DIR/rapid-demo/<key>`` (default ``.cache``)."""
    return Path(os.environ.get("RAPID_CACHE_DIR") or ".cache") / "rapid-demo" / settings.key()


def warm_start_task(settings: WarmStartSettings):
    """The arithmetic task the warm start is trained on (and the demo evaluates on)."""
    from .tasks.arithmetic import make_arithmetic_task

    return make_arithmetic_task(settings.difficulty, settings.n_train, settings.n_eval, settings.seed,
                                digits=settings.digits)


def sft_warm_start(settings: WarmStartSettings, task, log: Callable[[str], object] = print):
    """Supervised next-token training on "a+b=" → "c<eos>" (loss on the answer tokens only), cached on disk.

    Returns ``(model, tokenizer, seconds spent training)`` (0.0 when the cache had it). The carry is learnt
    abruptly, so the accuracy a fixed step count lands at depends on the seed (200 steps: 32.5 % held-out for seed
    0, 8 % for seed 1); stopping at a target accuracy was tried and overshoots or lands on unstable models
    (RESULTS.md), so the demo pins the seed instead. The cache entry is written under a temporary name and renamed,
    so a process that finds ``config.json`` there finds a complete model, even with two builds racing.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = warm_start_dir(settings)
    if (path / "config.json").exists():
        log(f"warm start: cached model {path}")
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), 0.0
    start = time.perf_counter()
    model, tok = build_tiny(num_layers=settings.num_layers, seed=settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.sft_lr, weight_decay=0.0)
    rows = task.train
    model.train()
    for step in range(settings.sft_steps):
        idx = torch.randint(0, len(rows), (settings.sft_batch,), generator=gen).tolist()
        seqs, labels = [], []
        for i in idx:
            p = tok(rows[i]["prompt"])["input_ids"]
            a = tok(rows[i]["answer"])["input_ids"] + [tok.eos_token_id]
            seqs.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])             # (B, T)
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])                      # (B, T)
        mask = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()  # (B, T)
        lr_scale = min(1.0, (step + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = settings.sft_lr * lr_scale
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == settings.sft_steps - 1:
            log(f"  sft step {step:4d}  loss {loss.item():.3f}")
    # Leave the model as a cache hit returns it: no gradients (the last step's would be added to the first RL
    # step's by a trainer that does not clear them first: measured, grad norm 0.60 instead of 0.054) and in
    # eval mode, so a first run and every later one start from the same state.
    opt.zero_grad(set_to_none=True)
    model.eval()
    _save_atomically(model, tok, path)
    return model, tok, time.perf_counter() - start


def _save_atomically(model, tokenizer, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tiny(model, tokenizer, tmp)
    try:
        tmp.rename(path)
    except OSError:                      # another process finished first: its copy is identical (same seed)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "config.json").exists():
            raise


CLI_DEFAULTS = {"lr": 3e-4}
"""RapidConfig values ``rapid train --model tiny`` uses when they are not given. RapidConfig's lr (1e-5) suits
0.5B+ models; the tiny model needs the demo's 3e-4 to move within a few rollouts."""
CLI_SMALL_BATCH = {"prompts_per_rollout": 16, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 64}
"""On tasks other than arithmetic (e.g. humaneval, with prompts of up to ~1.4k tokens and 512-token answers),
``--model tiny`` also shrinks the batch and the answers where not given: the tiny model earns no reward there, the
point is to run the real pipeline on a CPU in minutes rather than hours."""


def warm_start_task_args(settings: WarmStartSettings | None = None) -> dict:
    """The arithmetic task options the warm start was trained on (``rapid train --model tiny --task arithmetic``
    uses them unless difficulty, digits or ops is given): the default task (2-digit + 2-digit) is one the tiny model
    gets ~3 % of, too rarely for RL to find a signal."""
    settings = settings or WarmStartSettings()
    return {"difficulty": settings.difficulty, "digits": list(settings.digits)}


TINY_CONTEXT = 2048


def load_tiny(warm_start: bool = True):
    """``(model, tokenizer)`` for the model name ``"tiny"``: the demo's cached warm start, built on first use.

    The first call on a machine trains it (200 supervised steps; 20-60 s on a 2-core CPU) and logs its progress;
    later calls load it from the cache in well under a second. ``warm_start=False`` returns a freshly initialised
    model instead (reward 0 on every task: useful for tests, not for learning).
    """
    if not warm_start:
        return build_tiny(max_position_embeddings=TINY_CONTEXT)
    settings = WarmStartSettings()
    path = warm_start_dir(settings)
    if not (path / "config.json").exists():
        logger.info("model 'tiny': building the warm start once (supervised arithmetic, %d steps, about 20-60 s "
                       "on a small CPU); cached in %s", settings.sft_steps, path)
    model, tok, seconds = sft_warm_start(settings, warm_start_task(settings), log=logger.info)
    if seconds:
        logger.info("model 'tiny': warm start built in %.1f s", seconds)
    # RoPE has no learned position table, so a longer context costs nothing and lets the tiny model read real
    # benchmark prompts (HumanEval's are up to ~1.4k characters = tokens for this char-level tokenizer).
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, TINY_CONTEXT)
    return model, tok
