"""Small, fast settings for checking the trainer on a tiny model: the prompts, rewards and config the test suite
and the benchmark checks (``benchmarks/checks``) share. Not used by training itself.

    model, tok = rapid.tiny.build_tiny(seed=0)
    rapid.train(model, PROMPTS, digits_reward, small_config(num_rollouts=1), tokenizer=tok)
"""

from __future__ import annotations

from .config import RapidConfig

PROMPTS = [{"prompt": f"{i}="} for i in range(32)]


def sevens_reward(prompts, completions, **_):
    """A reward a random tiny model learns in seconds: the fraction of '7's in a 4-character completion."""
    return [c.count("7") / 4 for c in completions]


def digits_reward(prompts, completions, **_):
    """A dense reward (most groups have non-zero variance from the first rollout): the fraction of digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def small_config(**overrides) -> RapidConfig:
    """2 rollouts of 8 prompts × 4 samples, 4 new tokens, 2 steps per rollout: seconds on one CPU thread."""
    base = dict(group_size=4, prompts_per_rollout=8, prompts_per_step=4, num_rollouts=2, max_new_tokens=4,
                lr=3e-3, progress_bar=False, seed=0)
    return RapidConfig(**{**base, **overrides})


def hostile(model):
    """Everything a hub model's generation_config may carry that would reshape sampling behind the trainer."""
    g = model.generation_config
    g.repetition_penalty = 1.5
    g.no_repeat_ngram_size = 2
    g.min_new_tokens = 3
    g.bad_words_ids = [[5], [6, 7]]
    g.suppress_tokens = [8, 9]
    g.begin_suppress_tokens = [10]
    g.sequence_bias = {(11,): 5.0}
    g.temperature, g.top_k, g.top_p, g.do_sample = 0.3, 3, 0.5, True
    return model
