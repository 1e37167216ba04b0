"""First-run friction (issue 16): what a new user meets before any training starts, checked in-process.

--help from the config docstrings, YAML numbers, --resume without --output-dir, unknown task options, mistyped
model paths, unusable output dirs, ``--model tiny`` (the cached warm start and its defaults), ``import rapid``
staying cheap with ``rapid.tasks`` / ``rapid.rewards`` reachable, and warnings standing out in the CLI's log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest

from rapid import RapidConfig
from rapid.cli import build_parser, main, prepare_train, setup_logging
from rapid.cli_config import coerce_field, field_docs, load_config_file
from rapid.models.names import check_output_dir, looks_local, resolve_model_arg

FIELDS = [f.name for f in dataclasses.fields(RapidConfig)]


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return capsys.readouterr().out


def _prepare(*argv: str):
    return prepare_train(build_parser().parse_args(["train", *argv]))


# --- --help -----------------------------------------------------------------------------------------------------------

def test_every_field_has_a_docstring_and_it_is_in_help(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")                 # one line per flag: the docstring is searchable as is
    docs = field_docs()
    assert set(docs) == set(FIELDS), f"fields without a docstring: {sorted(set(FIELDS) - set(docs))}"
    text = " ".join(_train_help(capsys).split())
    for name in FIELDS:
        assert " ".join(docs[name].split()).replace("%%", "%")[:40] in text, name
    assert "--lr FLOAT AdamW learning rate. (default: 1e-05)" in text
    assert "--algo {rapid,grpg,grpo}" in text and "--micro-batch-size INT|none" in text
    assert "--chat-template {auto,on,off}" in text and "--sleep-level {1,2}" in text
    assert " V " not in text
    assert "(default: runs/<task>-<algo>-<date>-<time>)" in text      # what the CLI does, not the library's None
    assert "'tiny'" in text and "warm" in text


# --- config files -----------------------------------------------------------------------------------------------------

def test_yaml_numbers_and_words_get_the_field_type(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\neta: '4'\ngroup_size: 4.0\nnum_rollouts: 1e1\nchat_template: off\nresume: 'yes'\n"
                    "micro_batch_size: none\nsleep_level: '1'\ntask: arithmetic\n")
    data = load_config_file(str(path))
    assert data["lr"] == 1e-4 and isinstance(data["lr"], float)
    assert data["eta"] == 4.0 and data["group_size"] == 4 and isinstance(data["group_size"], int)
    assert data["num_rollouts"] == 10 and isinstance(data["num_rollouts"], int)
    assert data["chat_template"] == "off" and data["resume"] is True
    assert data["micro_batch_size"] is None and data["sleep_level"] == 1 and data["task"] == "arithmetic"
    cfg = RapidConfig.from_dict({k: v for k, v in data.items() if k != "task"} | {"output_dir": "x"})
    assert cfg.lr == 1e-4 and cfg.chat_template == "off"


@pytest.mark.parametrize("text, field", [("lr: abc\n", "lr"), ("group_size: 2.5\n", "group_size"),
                                         ("num_rollouts: ten\n", "num_rollouts"), ("algo: ppo\n", "algo")])
def test_a_wrong_type_names_the_field(tmp_path, capsys, text, field):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--task", "arithmetic", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert field in err and "error" in err


def test_unknown_config_key_suggests_the_field(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"group_sise": 4}))
    with pytest.raises(ValueError, match="unknown field 'group_sise'.*'group_size'"):
        load_config_file(str(path))


def test_coerce_leaves_ambiguous_values_for_the_config_check():
    assert coerce_field("group_size", True, int) is True            # bool is not an int: RapidConfig refuses it
    assert coerce_field("adaptive_h", 1, bool) == 1                   # only words become bools
    assert coerce_field("max_grad_norm", "none", float | None) is None


# --- flags that need each other, task options, paths ------------------------------------------------------------------

def test_resume_without_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "arithmetic", "--model", "tiny", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--output-dir" in err
    assert not (tmp_path / "runs").exists()


def test_unknown_task_arg_lists_the_options(capsys):
    assert main(["train", "--task", "arithmetic", "--model", "tiny", "--task-arg", "level=3"]) == 2
    err = capsys.readouterr().err
    assert "level" in err and "difficulty" in err and "digits" in err


def test_chat_template_flag_reaches_the_config(tmp_path):
    run = _prepare("--task", "arithmetic", "--model", "tiny", "--chat-template", "off",
                   "--output-dir", str(tmp_path / "o"))
    assert run.config.chat_template == "off"
    assert _prepare("--task", "arithmetic", "--model", "tiny", "--output-dir", str(tmp_path / "o")
                    ).config.chat_template == "auto"


@pytest.mark.parametrize("name", ["runs/typo_model", "./x", "/abs/x/y", "~/no-such-rapid-model", "a/b/c"])
def test_missing_local_model_path_fails_at_once(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local(name)
    with pytest.raises(ValueError, match="does not exist") as err:
        resolve_model_arg(name)
    assert name in str(err.value)
    assert main(["train", "--task", "arithmetic", "--model", name, "--output-dir", "o"]) == 2
    assert name in capsys.readouterr().err


def test_model_arg_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_arg("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)  # no network
    assert not looks_local("gpt2") and not looks_local("org/name")      # no folder "org" here: a hub id
    (tmp_path / "run" / "model").mkdir(parents=True)
    with pytest.raises(ValueError, match="without config.json"):
        resolve_model_arg("run")
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="did you mean .*model"):
        resolve_model_arg("run")
    assert resolve_model_arg("run/model") == ("run/model", None)
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model_arg("weights.bin")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_model_arg("")


def test_output_dir_checked_up_front(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "afile")
    with pytest.raises(ValueError, match="not writable"):
        check_output_dir(tmp_path / "afile" / "sub")
    assert check_output_dir(tmp_path / "new" / "dir").is_dir()
    assert list((tmp_path / "new" / "dir").iterdir()) == []          # the probe file is gone
    assert main(["train", "--task", "arithmetic", "--model", "tiny", "--output-dir", str(tmp_path / "afile")]) == 2
    assert "output_dir" in capsys.readouterr().err


# --- --model tiny -----------------------------------------------------------------------------------------------------

def test_tiny_uses_the_warm_start_settings_unless_given(tmp_path):
    out = str(tmp_path / "o")
    run = _prepare("--task", "arithmetic", "--model", "tiny", "--output-dir", out)
    assert run.config.lr == 3e-4
    assert run.config.extra["task_args"] == {"difficulty": 2, "digits": [2, 1]}
    assert {len(r["prompt"].split("+")[1]) for r in run.task.eval} == {2}           # "47+8=": 1 digit + "="
    run = _prepare("--task", "arithmetic", "--model", "tiny", "--lr", "1e-5", "--task-arg", "difficulty=3",
                   "--output-dir", out)
    assert run.config.lr == 1e-5 and run.config.extra["task_args"] == {"difficulty": 3}


def test_tiny_warm_start_is_built_once_with_a_message_then_cached(tmp_path, monkeypatch, caplog):
    import functools

    from rapid import tiny

    monkeypatch.setenv("RAPID_CACHE_DIR", str(tmp_path))
    small = functools.partial(tiny.WarmStartSettings, sft_steps=2, n_train=64, n_eval=8)   # the real one: 200 steps
    monkeypatch.setattr(tiny, "WarmStartSettings", small)
    caplog.set_level(logging.INFO, logger="rapid")
    model, _ = tiny.load_tiny()
    assert "building the warm start" in caplog.text and "sft step" in caplog.text
    assert all(p.grad is None for p in model.parameters()) and not model.training    # as a cache hit returns it
    path = tiny.warm_start_dir(small())
    assert (path / "config.json").is_file() and path.parent == tmp_path / "rapid-demo"
    assert [p.name for p in path.parent.iterdir()] == [small().key()]              # no temporary folder left
    caplog.clear()
    again, _ = tiny.load_tiny()
    assert "building" not in caplog.text and "cached model" in caplog.text
    for a, b in zip(model.parameters(), again.parameters()):
        assert (a == b).all()


def test_load_tiny_reads_the_demo_cache(tmp_path, monkeypatch):
    from rapid.tiny import WarmStartSettings, build_tiny, load_tiny, save_tiny, warm_start_dir

    monkeypatch.setenv("RAPID_CACHE_DIR", str(tmp_path))
    marker, tok = build_tiny(seed=7)                   # stands in for the warm start: load_tiny must not rebuild
    save_tiny(marker, tok, warm_start_dir(WarmStartSettings()))
    model, _ = load_tiny()
    fresh, _ = load_tiny(warm_start=False)
    p_model, p_marker, p_fresh = (next(m.parameters()) for m in (model, marker, fresh))
    assert (p_model == p_marker).all() and not (p_model == p_fresh).all()
    assert resolve_model_arg("tiny")[0].config.vocab_size == marker.config.vocab_size


# --- import rapid, logging --------------------------------------------------------------------------------------------

def test_import_rapid_is_cheap_and_subpackages_are_reachable():
    code = ("import sys, rapid; heavy = [m for m in ('transformers', 'vllm', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy; assert 'arithmetic' in rapid.tasks.list_tasks(); "
            "assert callable(rapid.rewards.math_answer_reward); assert 'tasks' in dir(rapid); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.fixture
def cli_logging():
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_rapid_cli", False)]:
        root.removeHandler(handler)
    logging.getLogger("rapid").setLevel(logging.NOTSET)


def test_cli_logging_shows_rapid_info_and_warnings_loudly(capsys, cli_logging):
    setup_logging()
    setup_logging()                                   # idempotent: one handler, one copy of each line
    logging.getLogger("rapid.trainer").info("rollout done")
    logging.getLogger("some.library").info("chatter")
    logging.getLogger("rapid.trainer").warning("no reward variance")
    err = capsys.readouterr().err
    assert err.count("rollout done") == 1 and "chatter" not in err
    assert "!!! WARNING !!!" in err and err.count("no reward variance") == 1
    setup_logging(-1)
    logging.getLogger("rapid.trainer").info("quiet please")
    assert "quiet please" not in capsys.readouterr().err


def test_eval_of_a_run_uses_its_recorded_task_and_prompt_rendering(tmp_path, monkeypatch, capsys, cli_logging):
    import rapid.cli as cli
    from rapid.tiny import build_tiny, save_tiny

    save_tiny(*build_tiny(), tmp_path / "run" / "model")
    config = {"chat_template": "off", "extra": {"task": "arithmetic", "model": "Org/X-Instruct",
                                                 "task_args": {"n_train": 4, "n_eval": 3, "digits": [1, 1]}}}
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"config": config}) + "\n")
    seen, real = [], cli.chat_template_decision
    monkeypatch.setattr(cli, "chat_template_decision", lambda mode, tok, model: seen.append(mode) or
                        real(mode, tok, model))
    assert main(["eval", "--model", str(tmp_path / "run" / "model")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == "arithmetic" and out["n"] == 3
    assert seen == ["off"]                              # as the run was trained
    assert main(["eval", "--model", str(tmp_path / "run" / "model"), "--task", "arithmetic", "--task-arg",
                 "n_eval=2", "--chat-template", "auto"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2
    assert seen[-1] == "auto"
