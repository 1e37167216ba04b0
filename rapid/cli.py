"""``rapid`` command line: train, eval, profile.

    rapid train --task arithmetic --model tiny --num-rollouts 20 --output-dir runs/arith
    rapid train --config run.yaml --eta 4            # flags override the file
    rapid eval --model runs/x/model --task arithmetic
    rapid profile runs/x

Every ``RapidConfig`` field is a ``--kebab-case`` flag whose ``--help`` is the field's docstring in rapid/config.py
(booleans: ``--flag`` / ``--no-flag``; optional values accept ``none``). A config file (YAML or JSON) holds the same
fields, plus optional ``model``, ``task`` and ``task_args``; values YAML 1.1 misreads (``1e-4`` as a string, ``off``
as False) are coerced to the field's type. ``--model tiny`` is the demo's warm-started tiny model
(``rapid.tiny.load_tiny``). Input errors exit with status 2 and one line naming the flag or field, before any model
is loaded; ``rapid train`` exits with status 130 when interrupted (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from .cli_config import SPECIAL, add_config_flags, field_docs, load_config_file
from .config import RapidConfig
from .models import BUILTIN_MODELS, chat_template_decision, check_output_dir, resolve_model_arg
from .tasks import get_task

MODEL_HELP = ("HF hub id, local model directory, or 'tiny': a 0.3 M-parameter Qwen2 that make demo warm-started "
              "with supervised 2-digit + 1-digit addition, so RL has a signal to learn from (built on first use in "
              "about 20-60 s on a small CPU, then cached in $RAPID_CACHE_DIR/rapid-demo, default .cache/rapid-demo). "
              "With 'tiny', train uses --lr 3e-4 and, on --task arithmetic, the warm start's problems "
              "(difficulty=2, digits=[2,1]) unless given")
logger = logging.getLogger("rapid.cli")


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


# --- commands -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainRun:
    """Everything ``rapid train`` resolved from its flags and config file, before any model is loaded."""

    config: RapidConfig
    task: object
    model_name: str


def prepare_train(args: argparse.Namespace) -> TrainRun:
    """Flags + config file → a validated RapidConfig and task; every input error is a ValueError raised here,
    before the model is loaded (or the tiny warm start built)."""
    values = load_config_file(args.config) if args.config else {}
    special = {k: values.pop(k) for k in SPECIAL if k in values}
    for f in dataclasses.fields(RapidConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    model_name = args.model or special.get("model")
    task_name = args.task or special.get("task")
    if not model_name or not task_name:
        raise ValueError("rapid train needs --model and --task (or model/task in the config file)")
    if values.get("resume") and not values.get("output_dir"):
        raise ValueError("--resume needs --output-dir: the run directory whose checkpoints to continue from "
                         "(without it a fresh run would start in a new directory)")
    task_args = {**special.get("task_args", {}), **_task_args(args.task_arg)}
    applied = _apply_tiny_defaults(task_name, task_args, values) if model_name == "tiny" else {}
    if model_name not in BUILTIN_MODELS:
        resolve_model_arg(model_name)                 # a mistyped local path fails here, not after hub retries
    task = get_task(task_name, **task_args)
    values.setdefault("max_new_tokens", task.max_new_tokens)
    if getattr(task, "stop", None) and "stop" in {f.name for f in dataclasses.fields(RapidConfig)}:
        values.setdefault("stop", task.stop)
    values.setdefault("output_dir", f"runs/{task_name}-{values.get('algo', 'rapid')}-{time.strftime('%Y%m%d-%H%M%S')}")
    extra = values.setdefault("extra", {})
    if not isinstance(extra, dict):
        raise ValueError(f"extra must be a mapping, got {extra!r}")
    extra.update(task=task_name, task_args=task_args, model=model_name)
    config = RapidConfig.from_dict(values)
    check_output_dir(config.output_dir)
    if applied:
        logger.info("model 'tiny': using %s (the warm start's settings; give them to override)",
                    ", ".join(f"{k}={v}" for k, v in applied.items()))
    return TrainRun(config=config, task=task, model_name=model_name)


def _apply_tiny_defaults(task_name: str, task_args: dict, values: dict) -> dict:
    """``--model tiny``: the demo's lr and, on arithmetic, the warm start's problems, where not given; returns
    what it set."""
    from .tiny import CLI_DEFAULTS, CLI_SMALL_BATCH, warm_start_task_args

    defaults = dict(CLI_DEFAULTS) if task_name == "arithmetic" else {**CLI_DEFAULTS, **CLI_SMALL_BATCH}
    applied = {k: v for k, v in defaults.items() if k not in values}
    if "prompts_per_step" in values and "prompts_per_rollout" not in values:
        applied.pop("prompts_per_rollout", None)       # keep the user's step size; the library default divides
    values.update(applied)
    if task_name == "arithmetic" and not {"difficulty", "digits", "ops"} & set(task_args):
        preset = warm_start_task_args()
        task_args.update(preset)
        applied.update(preset)
    return applied


def cmd_train(args: argparse.Namespace) -> int:
    run = prepare_train(args)
    if run.model_name == "tiny" and run.task.name != "arithmetic":
        logger.warning("model 'tiny' is warm-started on arithmetic only; on task %r it may earn no reward at all",
                       run.task.name)
    model, tokenizer = resolve_model_arg(run.model_name)

    from .trainer import train

    task, config = run.task, run.config
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
    from .models import load_tokenizer
    from .trainer import evaluate_rewards

    task_name, task_args = args.task, _task_args(args.task_arg)
    run = _recorded_run(args.model)
    extra = run.get("extra") if isinstance(run.get("extra"), dict) else {}
    recorded = extra.get("task")
    if isinstance(recorded, str) and (task_name or recorded) == recorded and not task_args:
        task_name, task_args = recorded, dict(extra.get("task_args") or {})
        logger.info("task %s %s: as recorded in the run's metrics.jsonl", task_name, json.dumps(task_args))
    elif args.model == "tiny" and task_name == "arithmetic" and not {"difficulty", "digits", "ops"} & set(task_args):
        from .tiny import warm_start_task_args

        task_args.update(warm_start_task_args())
    if not task_name:
        raise ValueError("rapid eval needs --task (none is recorded with this model)")
    task = get_task(task_name, **task_args)
    model, tokenizer = resolve_model_arg(args.model)
    name = model if isinstance(model, str) else args.model
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = load_tokenizer(name if tokenizer is None else model, tokenizer)
    rows = task.eval[: args.limit] if args.limit else task.eval
    config = RapidConfig(max_new_tokens=args.max_new_tokens or task.max_new_tokens,
                         chat_template=args.chat_template or run.get("chat_template") or "auto")
    # prompts rendered as in training: the run's own setting, decided ("auto") from the saved model and tokenizer
    template, why = chat_template_decision(config.chat_template, tokenizer, model)
    logger.info("chat template for string prompts: %s (%s)", "on" if template else "off", why)
    texts = data.render_prompts(rows, tokenizer, template)
    with torch.no_grad():
        engine = HFEngine(model, tokenizer, max_num_seqs=config.max_num_seqs)
        metrics = evaluate_rewards(engine, model, rows, texts, task.reward_fn, config)
    print(json.dumps({"model": args.model, "task": task_name, "n": len(rows), **metrics}))
    return 0


def _recorded_run(model: str) -> dict:
    """The config ``rapid train`` recorded for ``<run>/model`` (first row of ``<run>/metrics.jsonl``), or {}: a
    model trained on non-default task options is evaluated on the same problems, rendered the same way."""
    metrics = Path(model).expanduser().parent / "metrics.jsonl"
    if model == "tiny" or not metrics.is_file():
        return {}
    with metrics.open() as fh:
        try:
            config = json.loads(fh.readline()).get("config")
        except (json.JSONDecodeError, AttributeError):
            return {}
    return config if isinstance(config, dict) else {}


def cmd_profile(argv: list[str]) -> int:
    from .observe import profiling

    return int(profiling.main(argv) or 0)


# --- logging --------------------------------------------------------------------------------------------------------

class _Formatter(logging.Formatter):
    """INFO as one short line; WARNING and above set apart and marked (in colour on a terminal), so a warning such
    as "no reward variance: nothing is being learnt" is not lost among progress lines."""

    def __init__(self, colour: bool):
        super().__init__("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno < logging.WARNING:
            return text
        head = f"!!! {record.levelname} !!!"
        if self.colour:
            head = f"\033[1;{31 if record.levelno >= logging.ERROR else 33}m{head}\033[0m"
        return f"\n{head} {text}\n"


def setup_logging(verbosity: int = 0) -> None:
    """rapid's own loggers at INFO (DEBUG with -v, WARNING with -q); other libraries only at WARNING (INFO with
    -v), through one stderr handler. Idempotent: calling main() again replaces the handler it installed."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_rapid_cli", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._rapid_cli = True
    colour = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    handler.setFormatter(_Formatter(colour))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    logging.getLogger("rapid").setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rapid", description="Fast RL fine-tuning of small LMs (RAPID).")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_const", const=1, default=0, dest="verbosity",
                      help="debug messages from rapid, info from other libraries")
    loud.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                      help="only warnings and errors")
    tr = sub.add_parser("train", parents=[common], help="train a model on a task",
                        description="Train a model on a built-in task with RAPID (or grpg / grpo).",
                        epilog="example: rapid train --task arithmetic --model tiny --num-rollouts 20 "
                               "--output-dir runs/arith")
    tr.add_argument("--config", help="YAML or JSON file of RapidConfig fields (+ model, task, task_args)")
    tr.add_argument("--model", help=MODEL_HELP)
    tr.add_argument("--task", help="built-in task name (rapid.tasks.list_tasks())")
    tr.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                    help="task option (repeatable), e.g. difficulty=3; the value is read as JSON when it parses")
    add_config_flags(tr)
    ev = sub.add_parser("eval", parents=[common], help="greedy accuracy of a model on a task's eval split")
    ev.add_argument("--model", required=True, help=MODEL_HELP)
    ev.add_argument("--task", help="task name; default: the one recorded with a model that rapid train saved")
    ev.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                    help="task option (repeatable); default: the options recorded with the model, if any")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N eval rows")
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--chat-template", choices=("auto", "on", "off"), default=None,
                    help=field_docs().get("chat_template", "") + " (default: as the run was trained, else auto)")
    sub.add_parser("profile", help="report of a run's profile (rapid.observe.profiling)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "profile":
        setup_logging()
        return cmd_profile(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    try:
        return cmd_train(args) if args.command == "train" else cmd_eval(args)
    except ValueError as err:
        print(f"rapid {args.command}: error: {err}", file=sys.stderr)
        return 2
