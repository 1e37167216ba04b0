"""Issue 16's first-run frictions that live in rapid.train: the no-signal warning, resume refusing a config that
changes the maths, a new run refusing an output_dir that holds one, the config row keeping its types, a failed
start never overwriting an earlier run's profile."""

import json
import logging

import pytest

import rapid
from rapid.tiny import build_tiny

from rapid.testing import PROMPTS, digits_reward, small_config


def test_no_learning_signal_is_warned_loudly(tiny, caplog):
    model, tok = tiny
    with caplog.at_level(logging.WARNING):
        rapid.train(model, PROMPTS, lambda p, c, **_: [0.0] * len(c), small_config(num_rollouts=3), tokenizer=tok)
    warned = [r.getMessage() for r in caplog.records if "NO LEARNING SIGNAL" in r.getMessage()]
    assert len(warned) == 1 and "same reward" in warned[0]


def test_no_warning_when_rewards_vary(tiny, caplog):
    model, tok = tiny
    with caplog.at_level(logging.WARNING):
        rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=3), tokenizer=tok)
    assert not any("NO LEARNING SIGNAL" in r.getMessage() for r in caplog.records)


def test_no_signal_after_learning_warns_only_for_a_long_stall():
    """Small rollouts of a model that already learns often carry no signal (the demo's GRPG: 2 groups per call);
    that is warned once a stretch spans STALL_GROUPS groups, not every few rollouts."""
    from rapid.training.metrics import SignalWatch

    log = logging.getLogger("test-signal-watch")
    records = []
    log.warning = lambda *args: records.append(args)
    watch = SignalWatch(log, history=[])
    watch.update(False, 2, 0.5)                                  # a rollout with signal
    for _ in range(SignalWatch.STALL_GROUPS // 2 - 1):
        watch.update(True, 2, 1.0)
    assert records == []
    watch.update(True, 2, 1.0)                                   # the stretch reaches STALL_GROUPS groups
    for _ in range(50):
        watch.update(True, 2, 1.0)
    assert len(records) == 1 and "after earlier rollouts had signal" in records[0][1]
    assert SignalWatch(log, history=[{"reward/std": 0.3}]).seen and not SignalWatch(log, [{"reward/std": 0}]).seen


def test_resume_refuses_a_config_that_changes_the_maths(tmp_path):
    out = str(tmp_path / "run")
    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=1, output_dir=out), tokenizer=tok)
    model, tok = build_tiny(seed=0)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's .* in eta, lr"):
        rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=2, output_dir=out, resume=True, lr=1e-2,
                                                               eta=3.0), tokenizer=tok)
    history = rapid.train(model, PROMPTS, digits_reward,
                          small_config(num_rollouts=2, output_dir=out, resume=True), tokenizer=tok).history
    assert [h["rollout"] for h in history if "reward/mean" in h] == [1, 2]   # num_rollouts may change
    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=3, output_dir=out, resume=True, lr=1e-2,
                                                            allow_config_change=True), tokenizer=tok)


def test_a_new_run_refuses_an_output_dir_that_holds_one(tmp_path):
    out = str(tmp_path / "run")
    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=1, output_dir=out), tokenizer=tok)
    profile = (tmp_path / "run" / "profile.json").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=1, output_dir=out), tokenizer=tok)
    assert (tmp_path / "run" / "profile.json").read_text() == profile        # the earlier run's artefacts intact


def test_config_row_keeps_ints_and_bools(tmp_path):
    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=1, output_dir=str(tmp_path)), tokenizer=tok)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert first["group_size"] == 4 and isinstance(first["group_size"], int)
    assert first["progress_bar"] is False and isinstance(first["lr"], float)


def test_a_failed_resume_leaves_the_profile_of_the_run_it_resumed(tmp_path, monkeypatch):
    from rapid.engines.hf import HFEngine

    out = str(tmp_path / "run")
    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=1, output_dir=out), tokenizer=tok)
    profile = (tmp_path / "run" / "profile.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("engine died")                 # after the profiler started, before a rollout completed

    monkeypatch.setattr(HFEngine, "generate", broken)
    with pytest.raises(RuntimeError, match="engine died"):
        rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=2, output_dir=out, resume=True),
                    tokenizer=tok)
    assert (tmp_path / "run" / "profile.json").read_text() == profile


@pytest.mark.parametrize("budget", [None, 30.0])
def test_progress_bar_counts_rollouts_or_the_time_budget(tiny, capsys, budget):
    """A run bounded by rollouts shows rollouts done; one bounded by max_train_seconds shows trained seconds."""
    model, tok = tiny
    cfg = small_config(num_rollouts=2, progress_bar=True, max_train_seconds=budget)
    rapid.train(model, PROMPTS, digits_reward, cfg, tokenizer=tok)
    err = capsys.readouterr().err
    assert "rapid[rapid]" in err
    if budget is None:
        assert "2/2" in err and "s trained" not in err
    else:
        assert "/30 s trained" in err and "rollout=2" in err
