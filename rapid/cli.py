"""``rapid`` command line: train, eval, profile.

    rapid train --task arithmetic --model tiny --num-rollouts 20 --lr 1e-3
    rapid train --config run.yaml --eta 4            # flags override the file
    rapid eval --model runs/x/model --task arithmetic
    rapid profile runs/x

Every ``RapidConfig`` field is a ``--kebab-case`` flag (booleans: ``--flag`` / ``--no-flag``; optional values
accept ``none``). A config file (YAML or JSON) holds the same fields, plus optional ``model``, ``task`` and
``task_args``. ``rapid train`` exits with status 130 when interrupted (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

from .config import RapidConfig

SPECIAL = ("model", "task", "task_args")


def _parse_value(hint: object):
    """An argparse ``type=`` for a config field annotation."""
    args = [a for a in get_args(hint) if a is not type(None)]
    optional = len(args) < len(get_args(hint))
    base = args[0] if get_origin(hint) in (Union,) or str(get_origin(hint)) == "<class 'types.UnionType'>" else hint

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
        return base(text)

    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = get_type_hints(RapidConfig)
    group = parser.add_argument_group("RapidConfig fields (see rapid/config.py for each one's meaning)")
    for f in dataclasses.fields(RapidConfig):
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, dest=f.name, type=_parse_value(hints[f.name]), default=None, metavar="V")


def load_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of fields")
    return data


def _task_args(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--task-arg must be KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def resolve_model(name: str):
    """``tiny`` builds the tiny Qwen2 model and char tokenizer; anything else is an HF id or local path."""
    if name == "tiny":
        from .tiny import build_tiny

        return build_tiny()
    return name, None


def get_task(name: str, **kwargs):
    try:
        from .tasks import get_task as registry_get_task
    except ImportError as err:
        raise ValueError(f"--task {name}: rapid.tasks.get_task is not available ({err})") from err
    return registry_get_task(name, **kwargs)


def cmd_train(args: argparse.Namespace) -> int:
    values = load_config_file(args.config) if args.config else {}
    special = {k: values.pop(k) for k in SPECIAL if k in values}
    for f in dataclasses.fields(RapidConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    model_name = args.model or special.get("model")
    task_name = args.task or special.get("task")
    if not model_name or not task_name:
        raise ValueError("rapid train needs --model and --task (or model/task in the config file)")
    task = get_task(task_name, **{**special.get("task_args", {}), **_task_args(args.task_arg)})
    values.setdefault("max_new_tokens", task.max_new_tokens)
    values.setdefault("output_dir", f"runs/{task_name}-{values.get('algo', 'rapid')}-{time.strftime('%Y%m%d-%H%M%S')}")
    values.setdefault("extra", {}).update(task=task_name, model=model_name)
    config = RapidConfig.from_dict(values)
    model, tokenizer = resolve_model(model_name)

    from .trainer import train

    result = train(model, task.train, task.reward_fn, config, tokenizer=tokenizer, eval_dataset=task.eval)
    last = next((h for h in reversed(result.history) if "reward/mean" in h), {})
    evals = [h["eval/reward"] for h in result.history if "eval/reward" in h]
    summary = {"output_dir": result.output_dir, "rollouts": last.get("rollout"), "reward/mean": last.get("reward/mean"),
               "eval/reward_first": evals[0] if evals else None, "eval/reward_last": evals[-1] if evals else None,
               "interrupted": result.interrupted}
    print(json.dumps(summary))
    return 130 if result.interrupted else 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from . import data
    from .engines.hf import HFEngine
    from .model_utils import load_tokenizer
    from .trainer import evaluate_rewards

    model, tokenizer = resolve_model(args.model)
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = load_tokenizer(args.model if tokenizer is None else model, tokenizer)
    task = get_task(args.task, **_task_args(args.task_arg))
    rows = task.eval[: args.limit] if args.limit else task.eval
    config = RapidConfig(max_new_tokens=args.max_new_tokens or task.max_new_tokens)
    texts = data.render_prompts(rows, tokenizer, data.wants_chat_template(config.chat_template, tokenizer, args.model))
    with torch.no_grad():
        engine = HFEngine(model, tokenizer, max_num_seqs=config.max_num_seqs)
        metrics = evaluate_rewards(engine, model, rows, texts, task.reward_fn, config)
    print(json.dumps({"model": args.model, "task": args.task, "n": len(rows), **metrics}))
    return 0


def cmd_profile(argv: list[str]) -> int:
    from . import profiling

    if not hasattr(profiling, "main"):
        print("rapid profile: this install's rapid.profiling has no report entry point", file=sys.stderr)
        return 2
    return int(profiling.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rapid", description="Fast RL fine-tuning of small LMs (RAPID).")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a model on a task")
    tr.add_argument("--config", help="YAML or JSON file of RapidConfig fields (+ model, task, task_args)")
    tr.add_argument("--model", help="HF id, local path, or 'tiny'")
    tr.add_argument("--task", help="built-in task name (rapid.tasks.list_tasks())")
    tr.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="task option, e.g. difficulty=3")
    add_config_flags(tr)
    ev = sub.add_parser("eval", help="greedy accuracy of a model on a task's eval split")
    ev.add_argument("--model", required=True)
    ev.add_argument("--task", required=True)
    ev.add_argument("--task-arg", action="append", metavar="KEY=VALUE")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N eval rows")
    ev.add_argument("--max-new-tokens", type=int, default=None)
    sub.add_parser("profile", help="report of a run's profile (rapid.profiling)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv and argv[0] == "profile":
        return cmd_profile(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return cmd_train(args) if args.command == "train" else cmd_eval(args)
    except ValueError as err:
        print(f"rapid {args.command}: error: {err}", file=sys.stderr)
        return 2
