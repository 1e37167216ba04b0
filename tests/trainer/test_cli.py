"""CLI smoke: `rapid train` / `rapid eval` in a subprocess, flags generated from RapidConfig."""

import json
import os
import subprocess
import sys

from rapid.cli import build_parser

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rapid", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_train_then_eval_tiny_arithmetic(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("group_size: 4\nprompts_per_step: 4\ntask_args: {n_train: 40, n_eval: 8}\n")
    out = tmp_path / "run"
    proc = _run("train", "--config", str(config), "--task", "arithmetic", "--model", "tiny", "--num-rollouts", "1",
                "--prompts-per-rollout", "8", "--output-dir", str(out), "--no-progress-bar", "--lr", "1e-4",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rollouts"] == 1 and summary["eval/reward_last"] is not None
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("timing_s/gen" in r for r in records)
    assert (out / "model" / "config.json").exists()
    proc = _run("eval", "--model", str(out / "model"), "--task", "arithmetic", "--task-arg", "n_eval=8",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n"] == 8


def test_bad_flag_value_is_a_clear_error(tmp_path):
    proc = _run("train", "--task", "arithmetic", "--model", "tiny", "--group-size", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "group_size" in proc.stderr


def test_flags_cover_every_config_field():
    args = build_parser().parse_args(["train", "--eta", "4", "--no-progress-bar", "--micro-batch-size", "none",
                                      "--algo", "grpo", "--sleep-level", "1"])
    assert args.eta == 4.0 and args.progress_bar is False and args.micro_batch_size is None
    assert args.algo == "grpo" and args.sleep_level == 1
