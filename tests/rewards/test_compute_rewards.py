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
