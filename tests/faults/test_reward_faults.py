"""Rewards can't hang or kill a run: a call past reward_timeout_s is abandoned and scored 0; a reward that raises
on the start-up probe is a warning, not an abort."""

import logging
import time

import rapid
from rapid.tiny import build_tiny

ROWS = [{"prompt": f"{i}="} for i in range(32)]
CONFIG = dict(group_size=4, prompts_per_rollout=8, prompts_per_step=4, num_rollouts=2, max_new_tokens=4,
              progress_bar=False, seed=0)


def test_a_hanging_reward_times_out_and_the_run_goes_on():
    calls = {"n": 0}

    def hangs_once(prompts, completions, **_):
        calls["n"] += 1
        if calls["n"] == 2:                              # the first rollout (after the probe)
            time.sleep(60)
        return [1.0] * len(completions)

    model, tok = build_tiny(seed=0)
    start = time.monotonic()
    history = rapid.train(model, ROWS, hangs_once, rapid.RapidConfig(**CONFIG, reward_timeout_s=1.0),
                          tokenizer=tok).history
    assert time.monotonic() - start < 40
    assert history[0]["reward/timeouts"] == 32 and history[0]["reward/mean"] == 0.0
    assert history[1]["reward/timeouts"] == 0 and history[1]["reward/mean"] == 1.0


def test_a_reward_raising_on_the_probe_is_a_warning(caplog):
    calls = {"n": 0}

    def raises_first(prompts, completions, **_):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("not ready yet")
        return [0.5] * len(completions)

    model, tok = build_tiny(seed=0)
    with caplog.at_level(logging.WARNING):
        history = rapid.train(model, ROWS, raises_first, rapid.RapidConfig(**CONFIG), tokenizer=tok).history
    assert len(history) == 2 and history[0]["reward/mean"] == 0.5
    assert any("not ready yet" in r.getMessage() or "not ready yet" in (r.exc_text or "") or
               "raised on the start-up probe" in r.getMessage() for r in caplog.records)
