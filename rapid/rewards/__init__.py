"""Verifiable rewards: the reward API, math answers, code tests in a sandbox, shaping helpers and pass@k.

A reward function is ``reward_fn(prompts, completions, **columns) -> list[float | None]``; the trainer runs it
through ``compute_rewards`` (time limits in every mode, stop requests, optional worker processes; errors counted as
``reward/errors``, None → 0.0 in the loss) after checking it once with ``probe_reward``.

    from rapid.rewards import combine, compute_rewards, format_reward, math_reward
    reward_fn = combine([(math_reward, 1.0), (format_reward(r".*\\\\boxed\\{.+\\}.*"), 0.1)])
    rewards, stats = compute_rewards(reward_fn, prompts, completions, {"answer": answers}, timeout_s=60)
"""

from __future__ import annotations

from .code_tests import CodeReward, assemble_program, code_reward, code_tests_reward, extract_program
from .math_answer import answers_equal, extract_answer, gold_answer, math_answer_reward, math_reward, normalize_answer
from .runner import RewardFn, WeightedReward, check_reward_values, close_pools, combine, compute_rewards, probe_reward
from .sandbox import SandboxLimits, SandboxResult, run_sandboxed, run_stdio
from .shaping import FormatReward, OverlongPenalty, format_reward, overlong_penalty, pass_at_k

__all__ = [
    "CodeReward", "FormatReward", "OverlongPenalty", "RewardFn", "SandboxLimits", "SandboxResult", "WeightedReward",
    "answers_equal", "assemble_program", "check_reward_values", "close_pools", "code_reward", "code_tests_reward",
    "combine", "compute_rewards", "extract_answer", "extract_program", "format_reward", "gold_answer",
    "math_answer_reward", "math_reward", "normalize_answer", "overlong_penalty", "pass_at_k", "probe_reward",
    "run_sandboxed", "run_stdio",
]
