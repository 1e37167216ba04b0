"""Loading GSM8K, MATH and MBPP/MBPP+ style data into ``Task`` rows, from local files or the Hugging Face hub.

A *source* is a local ``.json`` (a list of records, or ``{"data": [...]}``, or ``{split: [...]}``), ``.jsonl`` or
``.parquet`` file (Parquet needs ``pyarrow``), or else a hub id read with ``datasets.load_dataset`` (imported only
then; without the package, or without network, the error says so).

Rows produced (what the reward functions read as columns):

* GSM8K (``question``, ``answer`` ending in ``#### n``) and MATH (``problem``, ``solution`` with ``\\boxed{}``, or an
  ``answer`` field) → ``{"prompt", "answer"}`` for ``rapid.rewards.math_reward``;
* MBPP / MBPP+ (``text`` or ``prompt``, ``code``, ``test_list``, optional ``test_imports`` / ``test_setup_code``,
  and MBPP+'s ``test``: a program running the plus inputs) → ``{"prompt", "tests", "test_setup", "entry_point"}``
  for ``rapid.rewards.code_reward``. When a record has MBPP+'s ``test`` program, that is the test (all of it must
  pass; ``entry_point`` is the function ``test_list`` calls); else the ``test_list`` asserts (fraction passed).

Prompts go through the tokenizer's chat template when it has one (``add_generation_prompt=True``), else they are the
plain instruction text.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import logging
import os
import random
from typing import Any, Callable

from rapid.rewards.math_answer import extract_boxed, gold_answer

from .base import Task

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_INSTRUCTION = ("{text}\nWrite a Python function that solves this. Your code should pass tests like:\n{tests}\n"
                    "Answer with the code in a ```python block.")


def load_records(source: str, split: str = "train", hub_config: str | None = None) -> list[dict]:
    """Records (dicts) from a local JSON/JSONL/Parquet file or a hub dataset id (see the module doc)."""
    if os.path.exists(source):
        return _load_file(source, split)
    if source.endswith((".json", ".jsonl", ".parquet")) or os.sep in source and not _looks_like_hub_id(source):
        raise FileNotFoundError(f"dataset file not found: {source}")
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"{source!r} is not a local file, and loading it as a Hugging Face hub dataset needs the "
                          f"`datasets` package (pip install datasets); or pass a local .json/.jsonl/.parquet path"
                          ) from exc
    try:
        data = datasets.load_dataset(source, hub_config, split=split)
    except Exception as exc:  # noqa: BLE001 - re-raised with the context a user needs (offline, wrong id/split)
        raise RuntimeError(f"could not load hub dataset {source!r} (config {hub_config!r}, split {split!r}): {exc}. "
                           f"Without network access, pass a local file instead.") from exc
    return [dict(r) for r in data]


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/"))


def _load_file(path: str, split: str) -> list[dict]:
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):
            data = data.get("data", data.get(split))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of records, {{'data': [...]}} or {{{split!r}: [...]}}")
        return data
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading Parquet ({path}) needs pyarrow: pip install pyarrow; or convert the file "
                              f"to .jsonl") from exc
        return pq.read_table(path).to_pylist()
    raise ValueError(f"unsupported dataset file type: {path} (use .json, .jsonl or .parquet)")


def format_prompt(message: str, tokenizer: Any = None, system: str | None = None) -> str:
    """The prompt string: the tokenizer's chat template applied to one user turn when it has one, else ``message``."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return message if system is None else f"{system}\n\n{message}"


def _field(record: dict, *names: str) -> Any:
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise KeyError(f"record has none of the fields {names}: keys are {sorted(record)}")


def gsm8k_rows(records: list[dict], tokenizer: Any = None, template: str = MATH_INSTRUCTION) -> list[dict]:
    """GSM8K records → ``{"prompt", "answer"}`` (the number after ``####``)."""
    return [{"prompt": format_prompt(template.format(problem=_field(r, "question")), tokenizer),
             "answer": gold_answer(_field(r, "answer"))} for r in records]


def math_rows(records: list[dict], tokenizer: Any = None, template: str = MATH_INSTRUCTION) -> list[dict]:
    """MATH records → ``{"prompt", "answer"}`` (the ``answer`` field, else the solution's last ``\\boxed{}``)."""
    rows = []
    for r in records:
        answer = r.get("answer")
        if answer is None:
            solution = _field(r, "solution")
            answer = extract_boxed(solution)
            if answer is None:
                raise ValueError(f"MATH record without an 'answer' field or a \\boxed{{}} in its solution: "
                                 f"{solution[:120]!r}")
        rows.append({"prompt": format_prompt(template.format(problem=_field(r, "problem")), tokenizer),
                     "answer": str(answer)})
    return rows


def called_function(tests: list[str]) -> str | None:
    """The first non-builtin function the asserts call (``assert similar_elements(a, b) == ...`` → its name)."""
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
                return node.func.id
    return None


def mbpp_rows(records: list[dict], tokenizer: Any = None, template: str = CODE_INSTRUCTION,
              shown_tests: int = 1, plus: bool = True) -> list[dict]:
    """MBPP / MBPP+ records → ``{"prompt", "tests", "test_setup", "entry_point"}`` (see the module doc; ``plus``:
    use MBPP+'s ``test`` program when a record has one). The prompt shows the first ``shown_tests`` asserts so the
    model knows the function's name and signature."""
    rows = []
    for r in records:
        asserts = list(_field(r, "test_list"))
        imports = r.get("test_imports") or []
        setup = "\n".join([*(imports if isinstance(imports, list) else [imports]), r.get("test_setup_code") or ""])
        message = template.format(text=_field(r, "text", "prompt"), tests="\n".join(asserts[:shown_tests]))
        program, entry = r.get("test"), r.get("entry_point") or called_function(asserts)
        use_plus = plus and isinstance(program, str) and bool(program.strip()) and entry is not None
        rows.append({"prompt": format_prompt(message, tokenizer), "tests": program if use_plus else asserts,
                     "test_setup": setup.strip(), "entry_point": entry if use_plus else None})
    return rows


def split_rows(rows: list[dict], n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval): ``n_eval`` rows held out after a seeded shuffle."""
    if not 0 <= n_eval < len(rows):
        raise ValueError(f"n_eval must be in [0, {len(rows)}), got {n_eval}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def make_dataset_task(name: str, to_rows: Callable[..., list[dict]], reward_fn: Callable, max_new_tokens: int,
                      path: str, eval_path: str | None = None, n_eval: int | None = None, split: str = "train",
                      eval_split: str = "test", hub_config: str | None = None, tokenizer: Any = None,
                      limit: int | None = None, seed: int = 0) -> Task:
    """A Task from a dataset source. Eval rows come from ``eval_path``, else (for a hub id) ``eval_split``, else
    ``n_eval`` rows (default: a tenth, at least one) held out of ``path``."""
    rows = to_rows(load_records(path, split, hub_config), tokenizer)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{path}: no records")
    if eval_path is None and not os.path.exists(path) and n_eval is None:
        eval_path = path  # a hub id: use its eval split
    if eval_path is not None:
        train, evals = rows, to_rows(load_records(eval_path, eval_split, hub_config), tokenizer)
    else:
        default = max(1, len(rows) // 10) if len(rows) > 1 else 0
        train, evals = split_rows(rows, default if n_eval is None else n_eval, seed)
    logger.info("task %s: %d train / %d eval rows from %s", name, len(train), len(evals), path)
    return Task(name=name, train=train, eval=evals, reward_fn=reward_fn, description=f"{name} from {path}",
                max_new_tokens=max_new_tokens)


def _options(max_new_tokens: int, **extra: Any) -> inspect.Signature:
    """The keyword options of a dataset task: ``make_dataset_task``'s, so ``get_task`` can name them."""
    params = [p for name, p in inspect.signature(make_dataset_task).parameters.items()
              if name not in ("name", "to_rows", "reward_fn", "max_new_tokens")]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
               for k, v in {"max_new_tokens": max_new_tokens, **extra}.items()]
    return inspect.Signature(params)


def make_gsm8k_task(path: str, **kwargs: Any) -> Task:
    """GSM8K (hub: ``path="openai/gsm8k", hub_config="main"``), math-answer reward."""
    from rapid.rewards.math_answer import math_reward

    return make_dataset_task("gsm8k", gsm8k_rows, math_reward, kwargs.pop("max_new_tokens", 512), path, **kwargs)


def make_math_task(path: str, **kwargs: Any) -> Task:
    """MATH / MATH-500 (hub e.g. ``path="HuggingFaceH4/MATH-500", split="test"``), math-answer reward."""
    from rapid.rewards.math_answer import math_reward

    return make_dataset_task("math", math_rows, math_reward, kwargs.pop("max_new_tokens", 1024), path, **kwargs)


def make_mbpp_task(path: str, plus: bool = True, **kwargs: Any) -> Task:
    """MBPP / MBPP+ (hub e.g. ``path="evalplus/mbppplus", split="test"``), sandboxed test reward: MBPP+'s plus test
    program when the records have one (``plus=False``: the base ``test_list`` asserts)."""
    from rapid.rewards.code_tests import code_reward

    def rows(records: list[dict], tokenizer: Any = None) -> list[dict]:
        return mbpp_rows(records, tokenizer, plus=plus)

    return make_dataset_task("mbpp", rows, code_reward, kwargs.pop("max_new_tokens", 512), path, **kwargs)


make_gsm8k_task.__signature__ = _options(512)  # type: ignore[attr-defined]
make_math_task.__signature__ = _options(1024)  # type: ignore[attr-defined]
make_mbpp_task.__signature__ = _options(512, plus=True)  # type: ignore[attr-defined]
