"""Verifiable rewards: the reward API, math answers, code tests in a sandbox.

A reward function is ``reward_fn(prompts, completions, **columns) -> list[float | None]``; the trainer runs it
through ``compute_rewards`` (process pool, timeouts, errors counted as ``reward/errors``, None → 0.0 in the loss).

    from rapid.rewards import combine, compute_rewards, math_reward
    rewards, stats = compute_rewards(combine([(math_reward, 1.0)]), prompts, completions, {"answer": answers})
"""

from __future__ import annotations

from .code_tests import code_reward, code_tests_reward, extract_program
from .math_answer import answers_equal, extract_answer, gold_answer, math_answer_reward, math_reward, normalize_answer
from .runner import RewardFn, WeightedReward, close_pools, combine, compute_rewards
from .sandbox import SandboxLimits, SandboxResult, run_sandboxed

__all__ = [
    "RewardFn", "SandboxLimits", "SandboxResult", "WeightedReward", "answers_equal", "close_pools", "code_reward",
    "code_tests_reward", "combine", "compute_rewards", "extract_answer", "extract_program", "gold_answer",
    "math_answer_reward", "math_reward", "normalize_answer", "run_sandboxed",
]
