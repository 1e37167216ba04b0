"""Dataset and reward-function checks (run before any expensive work) and the seeded prompt order."""

from __future__ import annotations

import inspect
import random
from typing import Callable

from .loss.seeds import prompt_order_seed


def as_rows(dataset: object, name: str = "dataset") -> list[dict]:
    """A list of dicts with a string ``"prompt"`` and the same columns in every row, or a ValueError naming it."""
    if dataset is None:
        raise ValueError(f"{name} is None")
    if hasattr(dataset, "to_list"):                       # datasets.Dataset
        rows = dataset.to_list()
    elif isinstance(dataset, dict):
        raise ValueError(f"{name} must be a sequence of dicts (rows), not a dict of columns")
    else:
        try:
            rows = list(dataset)                          # type: ignore[call-overload]
        except TypeError as err:
            raise ValueError(f"{name} must be a sequence of dicts, got {type(dataset).__name__}") from err
    if not rows:
        raise ValueError(f"{name} is empty")
    keys = None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{name}[{i}] must be a dict, got {type(row).__name__}")
        if "prompt" not in row:
            raise ValueError(f"{name}[{i}] has no 'prompt' column (columns: {sorted(row)})")
        check_prompt(row["prompt"], f"{name}[{i}]['prompt']")
        if keys is None:
            keys = set(row)
        elif set(row) != keys:
            raise ValueError(f"{name}[{i}] has columns {sorted(row)}, but {name}[0] has {sorted(keys)}")
    return rows


def check_prompt(prompt: object, where: str) -> None:
    """A prompt is a non-empty string or a non-empty list of {"role": str, "content": str} chat messages."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError(f"{where} is an empty string")
        return
    if isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return
    raise ValueError(f"{where} must be a non-empty string or a list of {{'role': str, 'content': str}} messages, "
                     f"got {prompt!r:.200}")


def render_prompts(rows: list[dict], tokenizer, template_strings: bool) -> list[str]:
    """The text each row's prompt gives the engine: chat messages (and, when asked, plain strings as one user
    message) go through the tokenizer's chat template with the generation prompt appended."""
    out = []
    for row in rows:
        prompt = row["prompt"]
        if isinstance(prompt, str) and not template_strings:
            out.append(prompt)
            continue
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("a prompt is a list of chat messages but the tokenizer has no chat template")
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def check_columns(rows: list[dict], reward_fn: Callable, name: str = "dataset") -> None:
    """Every non-prompt column must be a parameter of reward_fn (or it takes **kwargs), and vice versa."""
    if not callable(reward_fn):
        raise ValueError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    try:
        params = list(inspect.signature(reward_fn).parameters.values())
    except (TypeError, ValueError):
        return                                            # builtins / C callables: nothing to check
    columns = [k for k in rows[0] if k != "prompt"]
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ValueError("reward_fn must accept (prompts, completions, **columns)")
    unknown = [c for c in columns if c not in named] if not takes_kwargs else []
    if unknown:
        raise ValueError(f"{name} has unknown column(s) {unknown}: reward_fn takes neither them nor **kwargs")
    first_two = {p.name for p in positional[:2]}
    required = [p.name for p in params if p.default is p.empty and p.name not in first_two
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [r for r in required if r not in columns]
    if missing:
        raise ValueError(f"reward_fn requires column(s) {missing} that {name} does not have")


def probe_reward(reward_fn: Callable, rows: list[dict], timeout_s: float | None = None) -> str:
    """Call reward_fn once on two empty completions before any generation (``rapid.rewards.probe_reward``):
    wrong length / non-numbers raise ValueError; an exception or a hang is a warning."""
    from .rewards import probe_reward as rewards_probe

    return rewards_probe(reward_fn, rows, timeout_s)


def check_prompt_lengths(texts: list[str], tokenizer, limit: int | None, name: str = "dataset") -> int:
    """The longest rendered prompt in tokens; ValueError naming the row when it exceeds ``limit``."""
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    worst = max(range(len(texts)), key=lengths.__getitem__)
    if limit is not None and lengths[worst] > limit:
        raise ValueError(f"{name}[{worst}]['prompt'] is {lengths[worst]} tokens, longer than the prompt limit "
                         f"{limit} (max_prompt_tokens, or the model context minus max_new_tokens)")
    return lengths[worst]


class PromptSampler:
    """Epochs of seeded permutations; ``consumed`` (checkpointed) says where the next rollout starts."""

    def __init__(self, rows: list[dict], seed: int, consumed: int = 0) -> None:
        self.rows, self.seed, self.consumed = rows, seed, consumed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            order = list(range(len(self.rows)))
            random.Random(prompt_order_seed(self.seed, epoch)).shuffle(order)
            self._perms = {epoch: order}
        return self._perms[epoch]

    def take_indices(self, n: int) -> list[int]:
        """Row indices of the next ``n`` prompts (their global positions are ``consumed`` ... before the call)."""
        out = [self._perm(i // len(self.rows))[i % len(self.rows)] for i in range(self.consumed, self.consumed + n)]
        self.consumed += n
        return out
