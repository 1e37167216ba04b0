"""CLI smoke: `rapid train` / `rapid eval` in a subprocess, flags generated from RapidConfig.

``--model tiny`` reads the demo's warm start from ``$RAPID_CACHE_DIR``; here a freshly initialised tiny model is
saved there in its place, so the test does not spend the 20-60 s of building the real one.
"""

import json
import os
import subprocess
import sys

import pytest

from rapid.cli import build_parser
from rapid.tiny import WarmStartSettings, build_tiny, save_tiny, warm_start_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rapid-cache")
    old = os.environ.get("RAPID_CACHE_DIR")
    os.environ["RAPID_CACHE_DIR"] = str(path)          # warm_start_dir reads it
    try:
        save_tiny(*build_tiny(seed=3), warm_start_dir(WarmStartSettings()))
    finally:
        os.environ.pop("RAPID_CACHE_DIR") if old is None else os.environ.update(RAPID_CACHE_DIR=old)
    return path


def _run(*args, cwd, cache=None):
    env = {**ENV, **({"RAPID_CACHE_DIR": str(cache)} if cache else {})}
    return subprocess.run([sys.executable, "-m", "rapid", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_train_then_eval_tiny_arithmetic(tmp_path, cache_dir):
    config = tmp_path / "run.yaml"
    config.write_text("group_size: 4\nprompts_per_step: 4\nlr: 1e-4\ntask_args: {n_train: 40, n_eval: 8}\n")
    out = tmp_path / "run"
    proc = _run("train", "--config", str(config), "--task", "arithmetic", "--model", "tiny", "--num-rollouts", "1",
                "--prompts-per-rollout", "8", "--output-dir", str(out), "--no-progress-bar", "--chat-template", "off",
                cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm start: cached model" in proc.stderr and "building" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rollouts"] == 1 and summary["eval/reward_last"] is not None
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config_row = records[0]["config"]
    assert config_row["lr"] == 1e-4 and config_row["chat_template"] == "off"          # YAML 1e-4, flag "off"
    assert config_row["extra"]["task_args"] == {"n_train": 40, "n_eval": 8, "difficulty": 2, "digits": [2, 1]}
    assert any("timing_s/gen" in r for r in records)
    assert (out / "model" / "config.json").exists()
    proc = _run("eval", "--model", str(out / "model"), cwd=tmp_path)          # task + options from the run
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 8 and result["task"] == "arithmetic"


def test_bad_flag_value_is_a_clear_error(tmp_path):
    proc = _run("train", "--task", "arithmetic", "--model", "tiny", "--group-size", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "group_size" in proc.stderr
    assert not (tmp_path / ".cache").exists()          # refused before the warm start was looked for


def test_flags_cover_every_config_field():
    args = build_parser().parse_args(["train", "--eta", "4", "--no-progress-bar", "--micro-batch-size", "none",
                                      "--algo", "grpo", "--sleep-level", "1", "--chat-template", "on"])
    assert args.eta == 4.0 and args.progress_bar is False and args.micro_batch_size is None
    assert args.algo == "grpo" and args.sleep_level == 1 and args.chat_template == "on"
