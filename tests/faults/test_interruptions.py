"""Survive every interruption exactly: SIGKILL or SIGINT at random points, then resume, gives the uninterrupted
run's weights bit for bit and a metrics.jsonl with each rollout once; a damaged newest checkpoint falls back to the
previous intact one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _start(out: Path, resume: bool = False, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, "-m", "tests.faults.worker", str(out)] + (["--resume"] if resume else []) + list(extra)
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode in (0, 130), err[-3000:]
    return proc.returncode


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("full")
    assert _finish(_start(out)) == 0
    return torch.load(out / "final.pt")


def _interrupt(out: Path, sig: int, delay: float) -> None:
    proc = _start(out)
    deadline = time.monotonic() + 120
    while not (out / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it started training"
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.communicate(timeout=120)


def _metrics_rollouts(out: Path) -> list[int]:
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["rollout"] for r in rows if "reward/mean" in r]


@pytest.mark.parametrize("sig, seed", [(signal.SIGKILL, 0), (signal.SIGKILL, 1), (signal.SIGINT, 2),
                                       (signal.SIGINT, 3)])
def test_interrupt_anywhere_then_resume_is_exact(uninterrupted, tmp_path, sig, seed):
    delay = random.Random(seed).uniform(0.0, 1.2)          # the run trains for ~2 s after it starts
    _interrupt(tmp_path, sig, delay)
    if sig == signal.SIGINT:
        assert not (tmp_path / "final.pt").exists()            # it stopped early (saved, not finished)
    for _ in range(3):                                           # resume until it completes
        if _finish(_start(tmp_path, resume=True)) == 0:
            break
    final = torch.load(tmp_path / "final.pt")
    for name, value in uninterrupted.items():
        assert torch.equal(value, final[name]), name
    assert _metrics_rollouts(tmp_path) == [1, 2, 3, 4, 5]        # each rollout once, in order


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path, damage):
    assert _finish(_start(tmp_path)) == 0                        # a finished run: checkpoints 4 and 5 kept
    (tmp_path / "final.pt").unlink()
    root = tmp_path / "run" / "checkpoints"
    checkpoints = sorted(p for p in root.iterdir() if p.name.startswith("rollout-"))
    assert [p.name for p in checkpoints] == ["rollout-000004", "rollout-000005"]
    newest = checkpoints[-1]
    victim = max((p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 1000),
                 key=lambda p: p.stat().st_size)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.unlink()
    proc = _start(tmp_path, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"skipping checkpoint {newest}" in err
    final = torch.load(tmp_path / "final.pt")
    for name, value in uninterrupted.items():
        assert torch.equal(value, final[name]), name
    assert _metrics_rollouts(tmp_path) == [1, 2, 3, 4, 5]


def test_sigterm_stops_a_run_stuck_in_a_deaf_reward_within_seconds(uninterrupted, tmp_path):
    proc = _start(tmp_path, False, "--hang-at", "3")
    deadline = time.monotonic() + 120
    while not (tmp_path / "hanging").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert time.monotonic() - sent < 10                          # the stuck call was abandoned, not waited for
    assert _finish(_start(tmp_path, resume=True)) == 0           # the half-scored rollout is regenerated
    final = torch.load(tmp_path / "final.pt")
    for name, value in uninterrupted.items():
        assert torch.equal(value, final[name]), name
    assert _metrics_rollouts(tmp_path) == [1, 2, 3, 4, 5]
