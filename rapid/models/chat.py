"""Whether string prompts go through the chat template (``RapidConfig.chat_template``), decided from the model.

``"auto"`` looks at the tokenizer and the model, never at a path's spelling (a local copy of an instruct model may
be called anything):

- no chat template → plain text;
- the template ends an assistant turn with one of the model's end-of-sequence tokens (the tokenizer's EOS or an
  ``eos_token_id`` of the model's ``generation_config``, e.g. ``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``) →
  an instruct/chat model: it was trained to answer in that format and to stop there → the template;
- a template that never emits the model's EOS is a base model's (Qwen2.5-0.5B base ships the ChatML template but
  stops at ``<|endoftext|>``) → plain text.

The decision and its reason are one log line at the start of a run.
"""

from __future__ import annotations

_PROBE_USER, _PROBE_ANSWER = "rapid-probe-question", "rapid-probe-answer"


def generation_config_of(model):
    """The model's ``generation_config``: the attribute of a loaded model, read from a directory / hub id (None when
    it has none)."""
    if not isinstance(model, str):
        return getattr(model, "generation_config", None)
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model)
    except (OSError, ValueError):
        return None


def eos_tokens(tokenizer, model=None) -> list[str]:
    """The end-of-sequence token strings of the tokenizer and of the model's generation_config (``model``: a loaded
    model, or its directory / hub id)."""
    ids: list[int] = []
    gen = generation_config_of(model)
    value = getattr(gen, "eos_token_id", None)
    ids += list(value) if isinstance(value, (list, tuple)) else [value] if value is not None else []
    out = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    for i in ids:
        token = tokenizer.convert_ids_to_tokens(int(i))
        if isinstance(token, str) and token not in out:
            out.append(token)
    return out


def chat_template_decision(mode: str, tokenizer, model=None) -> tuple[bool, str]:
    """(render string prompts with the chat template?, why) for ``mode`` = "auto" | "on" | "off"."""
    template = getattr(tokenizer, "chat_template", None)
    if mode == "off":
        return False, "chat_template='off'"
    if mode == "on":
        if not template:
            raise ValueError("chat_template='on' but the tokenizer has no chat template")
        return True, "chat_template='on'"
    if mode != "auto":
        raise ValueError(f"chat_template must be 'auto', 'on' or 'off', got {mode!r}")
    if not template:
        return False, "auto: the tokenizer has no chat template"
    eos = eos_tokens(tokenizer, model)
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE_USER},
                                              {"role": "assistant", "content": _PROBE_ANSWER}], tokenize=False)
    except Exception as err:              # noqa: BLE001 — a template that cannot render a plain exchange
        return False, f"auto: the chat template cannot render a user/assistant exchange ({type(err).__name__})"
    after = text.split(_PROBE_ANSWER, 1)[1] if _PROBE_ANSWER in text else ""
    ending = next((e for e in eos if e and e in after), None)
    if ending is not None:
        return True, f"auto: the chat template ends assistant turns with the model's EOS {ending!r} (an instruct model)"
    ends = ", ".join(map(repr, eos)) or "none"
    return False, f"auto: the chat template never ends a turn with the model's EOS ({ends}): a base model's template"
