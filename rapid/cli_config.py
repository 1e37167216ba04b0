"""RapidConfig on the command line and in config files: one flag per field, its help the field's docstring.

``field_docs`` reads each field's docstring (the string literal after it in rapid/config.py, the one place a field
is documented) so ``rapid train --help`` says what every flag means and its default. ``load_config_file`` reads YAML
or JSON and coerces values that YAML 1.1 misreads (``lr: 1e-4`` is a string there, ``chat_template: off`` False).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

from .config import RapidConfig

__all__ = ["SPECIAL", "add_config_flags", "coerce_field", "field_docs", "load_config_file"]

SPECIAL = ("model", "task", "task_args")
"""Config-file keys that are not RapidConfig fields."""
# What the CLI puts in place of a field's library default when the flag is not given.
CLI_DEFAULTS = {"output_dir": "runs/<task>-<algo>-<date>-<time>", "max_new_tokens": "the task's"}


# --- RapidConfig fields as flags ------------------------------------------------------------------------------------

def _is_union(hint: object) -> bool:
    return get_origin(hint) is Union or get_origin(hint) is types.UnionType


def _split_optional(hint: object) -> tuple[object, bool]:
    """``int | None`` → (int, True); anything else → (hint, False)."""
    if _is_union(hint):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(hint))
    return hint, False


@functools.cache
def field_docs() -> dict[str, str]:
    """Each RapidConfig field's docstring (the string literal right after it in rapid/config.py), one line each."""
    tree = ast.parse(inspect.getsource(RapidConfig))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _metavar(hint: object) -> str:
    base, optional = _split_optional(hint)
    if get_origin(base) is Literal:
        text = "{" + ",".join(str(c) for c in get_args(base)) + "}"
    else:
        text = "JSON-LIST" if get_origin(base) is list else {int: "INT", float: "FLOAT", str: "PATH",
                                                              dict: "JSON"}.get(base, "VALUE")
    return text + ("|none" if optional else "")


def _default_text(f: dataclasses.Field) -> str:
    if f.name in CLI_DEFAULTS:
        return CLI_DEFAULTS[f.name]
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        return "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _parse_value(hint: object):
    """An argparse ``type=`` for a config field annotation."""
    base, optional = _split_optional(hint)

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if get_origin(base) is Literal:
            for choice in get_args(base):
                if str(choice) == text:
                    return choice
            raise argparse.ArgumentTypeError(f"choose from {', '.join(map(str, get_args(base)))}")
        if base is dict:
            return json.loads(text)
        if get_origin(base) is list:                 # --stop '["\n\n", "###"]' (JSON) or one string
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return [text]
            return value if isinstance(value, list) else [str(value)]
        return base(text)

    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per RapidConfig field, its help the field's docstring and default."""
    hints = get_type_hints(RapidConfig)
    docs = field_docs()
    group = parser.add_argument_group("RapidConfig fields (flags override the --config file)")
    for f in dataclasses.fields(RapidConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f"{docs.get(f.name, '')} (default: {_default_text(f)})".strip().replace("%", "%%")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=f.name, type=_parse_value(hints[f.name]), default=None,
                               metavar=_metavar(hints[f.name]), help=text)


# --- config files ---------------------------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_field(name: str, value: object, hint: object) -> object:
    """A config-file value as the field's type where the reading is unambiguous: YAML 1.1 reads ``1e-4`` as a
    string and ``off`` as False. Numbers from numeric strings, whole floats to ints, "true"/"false" to bools,
    True/False to "on"/"off" (chat_template); ValueError naming the field when a number field gets a non-number.
    Anything else is returned as is for RapidConfig's own check (which names the field too)."""
    base, optional = _split_optional(hint)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    if get_origin(base) is Literal:
        choices = get_args(base)
        if isinstance(value, bool):
            if {"on", "off"} <= set(choices):
                return "on" if value else "off"
            return value
        return next((c for c in choices if str(c) == str(value).strip()), value)
    if isinstance(value, bool) or base not in (int, float, bool) or not isinstance(value, (str, int, float)):
        return value
    if base is bool:
        word = str(value).strip().lower()
        return True if word in _TRUE else False if word in _FALSE else value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if base is int else 'a number'}, got {value!r}") from None
    if base is float:
        return number
    return int(number) if number.is_integer() else value


def load_config_file(path: str) -> dict:
    """The mapping in a YAML or JSON file; RapidConfig fields coerced to their types (``coerce_field``)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"--config {path}: {err.strerror or err}") from err
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path}: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of fields")
    hints = get_type_hints(RapidConfig)
    names = [f.name for f in dataclasses.fields(RapidConfig)]
    for key in list(data):
        if key in SPECIAL:
            continue
        if key not in hints:
            close = difflib.get_close_matches(str(key), names + list(SPECIAL), n=1)
            raise ValueError(f"config file {path}: unknown field {key!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))
        try:
            data[key] = coerce_field(key, data[key], hints[key])
        except ValueError as err:
            raise ValueError(f"config file {path}: {err}") from None
    if not isinstance(data.get("task_args", {}), dict):
        raise ValueError(f"config file {path}: task_args must be a mapping, got {data['task_args']!r}")
    return data
