"""compute_rewards: errors and timeouts become None and are counted; the run always continues."""

import math
import os
import time

import pytest

from rapid.rewards import close_pools, combine, compute_rewards, math_reward


def length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def picky_reward(prompts, completions, **columns):
    """Raises on 'boom', sleeps on 'slow', kills its own process on 'die', NaN on 'nan', None on 'skip'."""
    out = []
    for c in completions:
        if c == "boom":
            raise RuntimeError("verifier crashed")
        if c == "slow":
            time.sleep(30)
        if c == "die":
            os._exit(3)
        out.append({"nan": math.nan, "skip": None}.get(c, 1.0))
    return out


def short_reward(prompts, completions, **columns):
    return [1.0] * max(0, len(completions) - 1)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    close_pools()


def test_inline_errors_are_isolated_per_sample():
    completions = ["a", "boom", "b", "nan", "skip"]
    rewards, stats = compute_rewards(picky_reward, ["p"] * 5, completions, {})
    assert rewards == [1.0, None, 1.0, None, None]
    assert stats["reward/errors"] == 2.0 and stats["reward/none"] == 1.0 and stats["reward/timeouts"] == 0.0
    assert stats["reward/mean"] == 1.0


def test_wrong_length_is_an_error():
    rewards, stats = compute_rewards(short_reward, ["p"] * 3, ["a", "b", "c"], {})
    assert rewards == [None, None, None] and stats["reward/errors"] == 3.0


def test_pool_timeout_crash_and_exception_never_kill_the_run():
    completions = ["a", "slow", "boom", "die", "b", "c"]
    start = time.monotonic()
    rewards, stats = compute_rewards(picky_reward, ["p"] * 6, completions, {}, num_workers=2, timeout_s=3.0,
                                     chunk_size=1)
    assert time.monotonic() - start < 20
    assert rewards == [1.0, None, None, None, 1.0, 1.0]
    assert stats["reward/errors"] == 3.0 and stats["reward/timeouts"] == 1.0
    again, _ = compute_rewards(length_reward, ["p"] * 2, ["xy", "z"], {}, num_workers=2)  # the pool recovered
    assert again == [2.0, 1.0]


def test_pool_chunk_failure_is_retried_per_sample():
    rewards, stats = compute_rewards(picky_reward, ["p"] * 4, ["a", "boom", "b", "c"], {}, num_workers=2)
    assert rewards == [1.0, None, 1.0, 1.0] and stats["reward/errors"] == 1.0


def test_combine_weights_columns_and_none():
    fn = combine([(math_reward, 2.0), (length_reward, 0.5)])
    rewards, stats = compute_rewards(fn, ["p", "q"], ["#### 4", "#### 5"], {"answer": ["4", "6"]}, num_workers=2)
    assert rewards == [2.0 + 0.5 * 6, 0.5 * 6]
    both = combine([(picky_reward, 1.0), (length_reward, 1.0)])
    assert both(["p", "q"], ["a", "skip"]) == [2.0, None]
    with pytest.raises(ValueError):
        combine([])
    with pytest.raises(ValueError):
        combine([(length_reward, math.inf)])


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="same length"):
        compute_rewards(length_reward, ["p"], ["a", "b"], {})
    with pytest.raises(ValueError, match="same length"):
        compute_rewards(length_reward, ["p"], ["a"], {"answer": []})
    with pytest.raises(ValueError, match="module level"):
        compute_rewards(lambda p, c, **k: [1.0] * len(c), ["p"], ["a"], {}, num_workers=1)


def sleepy_reward(prompts, completions, **columns):
    """Sleeps 30 s on 'slow' (a reward that hangs), else 1.0."""
    if "slow" in completions:
        time.sleep(30)
    return [1.0] * len(completions)


def exiting_reward(prompts, completions, **columns):
    raise SystemExit(0)


def test_inline_timeout_abandons_the_call():
    start = time.monotonic()
    rewards, stats = compute_rewards(sleepy_reward, ["p"] * 3, ["a", "slow", "b"], {}, timeout_s=1.0)
    assert time.monotonic() - start < 5
    assert rewards == [None, None, None]  # one call for the whole batch in-process: the whole call timed out
    assert stats["reward/timeouts"] == 3.0 and stats["reward/errors"] == 3.0 and stats["reward/interrupted"] == 0.0
    fine, stats = compute_rewards(sleepy_reward, ["p"] * 2, ["a", "b"], {}, timeout_s=1.0)
    assert fine == [1.0, 1.0] and stats["reward/timeouts"] == 0.0


def test_watchdog_threads_are_reused_until_a_call_overruns():
    """In-process calls reuse one watchdog thread; a call past its limit keeps its thread (abandoned, it exits when
    the call returns) and the next call gets another; concurrent callers never share one."""
    import threading

    from rapid.rewards.runner import call_with_watchdog

    ident = threading.get_ident
    first = call_with_watchdog(ident, 5.0)[1]
    assert call_with_watchdog(ident, 5.0)[1] == first != threading.main_thread().ident
    release = threading.Event()
    stuck = {}

    def overrun():
        stuck["thread"] = threading.current_thread()
        release.wait(10)

    assert call_with_watchdog(overrun, 0.2) == ("timeout", None)
    after = call_with_watchdog(ident, 5.0)[1]
    assert after != stuck["thread"].ident
    release.set()
    stuck["thread"].join(5)
    assert not stuck["thread"].is_alive()                 # the abandoned thread left once its call returned
    seen, barrier = [], threading.Barrier(2)

    def concurrent():
        seen.append(call_with_watchdog(lambda: (barrier.wait(3), ident())[1], 6.0))

    callers = [threading.Thread(target=concurrent) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(10)
    # both ran at once (on one shared thread the first would wait at the barrier for the second, in vain)
    assert [status for status, _ in seen] == ["ok", "ok"] and len({value for _, value in seen}) == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_should_stop_interrupts_a_stuck_reward_within_seconds(num_workers):
    asked_at = time.monotonic() + 1.0
    start = time.monotonic()
    rewards, stats = compute_rewards(sleepy_reward, ["p"] * 4, ["a", "slow", "b", "c"], {}, num_workers=num_workers,
                                     chunk_size=1 if num_workers else None, timeout_s=None,
                                     should_stop=lambda: time.monotonic() >= asked_at)
    assert time.monotonic() - start < 4, "the stop request was not honoured within seconds"
    assert rewards[1] is None and stats["reward/interrupted"] >= 1.0
    assert stats["reward/interrupted"] + sum(r is not None for r in rewards) == 4
    if num_workers:  # the other chunks finished before the stop: what was scored is kept
        assert rewards[0] == rewards[2] == rewards[3] == 1.0


def test_system_exit_in_a_reward_is_an_error_in_every_mode():
    for workers in (0, 1):
        rewards, stats = compute_rewards(exiting_reward, ["p"], ["a"], {}, num_workers=workers, timeout_s=10)
        assert rewards == [None] and stats["reward/errors"] == 1.0


SCRIPT = '''
import json, os, sys
sys.path.insert(0, {helper_dir!r})
with open({marker!r}, "a") as f:          # top-level code: must run once, in the parent only (no __main__ guard)
    f.write(f"{{os.getpid()}}\\n")
from rapid.rewards import compute_rewards
from helper_rewards import length_reward

def local_reward(prompts, completions, **columns):
    return [2.0] * len(completions)

a, _ = compute_rewards(length_reward, ["p"] * 3, ["x", "yy", "zzz"], {{}}, num_workers=2, timeout_s=60)
b, _ = compute_rewards(local_reward, ["p"] * 2, ["x", "y"], {{}}, num_workers=2, timeout_s=60)
print(json.dumps([a, b]))
'''


def test_workers_never_re_execute_an_unguarded_script(tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "helper_rewards.py").write_text(
        "def length_reward(prompts, completions, **columns):\n    return [float(len(c)) for c in completions]\n")
    marker = tmp_path / "ran.txt"
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(helper_dir=str(tmp_path), marker=str(marker)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[1.0, 2.0, 3.0], [2.0, 2.0]]
    assert len(marker.read_text().split()) == 1, "a worker re-ran the user's script"
    assert "defined in the script being run" in out.stderr  # the __main__ function ran in-process, with a warning


def raising_reward(prompts, completions, **columns):
    raise KeyError("no such column in my verifier")


def wrong_length_reward(prompts, completions, **columns):
    return [1.0]


def text_reward(prompts, completions, **columns):
    return ["good"] * len(completions)


def test_probe_reward_warns_on_exceptions_and_hangs_and_fails_fast_on_bugs(caplog):
    from rapid.rewards import probe_reward

    rows = [{"prompt": "p1", "answer": "1"}, {"prompt": "p2", "answer": "2"}, {"prompt": "p3", "answer": "3"}]
    assert probe_reward(math_reward, rows, timeout_s=30) == "ok"
    with caplog.at_level("WARNING", logger="rapid.rewards.runner"):
        assert probe_reward(raising_reward, rows, timeout_s=30) == "error"
    assert "raising_reward" in caplog.text and "Traceback" in caplog.text and "KeyError" in caplog.text
    start = time.monotonic()
    assert probe_reward(sleepy_reward, [{"prompt": "slow"}] * 2, timeout_s=1.0) == "ok"  # completions are empty
    slow_rows = [{"prompt": "p", "hang": True}] * 2
    assert probe_reward(lambda p, c, hang: time.sleep(30), slow_rows, timeout_s=1.0) == "timeout"
    assert time.monotonic() - start < 6
    with pytest.raises(ValueError, match="wrong_length_reward.*returned 1 rewards for 2"):
        probe_reward(wrong_length_reward, rows, timeout_s=30)
    with pytest.raises(ValueError, match="text_reward.*non-number"):
        probe_reward(text_reward, rows, timeout_s=30)
    assert probe_reward(lambda p, c: time.sleep(30), [{"prompt": "p"}], timeout_s=None,
                        should_stop=lambda: True) == "stopped"


def test_a_real_signal_handler_flag_stops_a_stuck_reward():
    """The trainer's SIGINT/SIGTERM handlers set a flag; here SIGUSR1 stands in for them (same path)."""
    import signal
    import threading

    flag = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: flag.set())
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        start = time.monotonic()
        rewards, stats = compute_rewards(sleepy_reward, ["p"] * 2, ["slow", "a"], {}, timeout_s=60.0,
                                         should_stop=flag.is_set)
        assert time.monotonic() - start < 4 and flag.is_set()
        assert rewards == [None, None] and stats["reward/interrupted"] == 2.0 and stats["reward/timeouts"] == 0.0
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
