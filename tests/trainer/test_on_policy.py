"""On-policy (staleness 0) every importance weight is 1, whatever the sampling settings, the model's
generation_config, the precision or the micro-batching: the trainer's log π is the distribution the engine sampled.
"""

import pytest
import torch

import rapid

from rapid.testing import PROMPTS, digits_reward, hostile, small_config

SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_p=0.8),
    dict(temperature=0.7, top_k=20, top_p=0.9),
]


def _first_rollout(model, tok, **overrides):
    cfg = small_config(num_rollouts=1, prompts_per_rollout=4, prompts_per_step=4, max_new_tokens=6, **overrides)
    return rapid.train(model, PROMPTS, digits_reward, cfg, tokenizer=tok).history[0]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_on_policy_weights_are_one_under_each_sampling_setting(tiny, setting):
    model, tok = tiny
    h = _first_rollout(hostile(model), tok, **setting)
    assert h["rapid/log_w_abs_mean"] < 2e-5, h["rapid/log_w_abs_mean"]
    assert abs(h["rapid/w_mean"] - 1) < 1e-4 and h["rapid/clip_frac"] == 0
    assert h["rapid/engine_logprob_diff"] < 2e-6


def test_on_policy_weights_are_one_in_bf16_with_split_groups(tiny):
    """bf16 compute (engine and trainer both autocast) and a token budget that splits groups (two phases)."""
    model, tok = tiny
    h = _first_rollout(hostile(model), tok, dtype="bfloat16", micro_batch_tokens=12, top_p=0.9)
    assert h["rapid/split_groups"] == 1.0
    assert h["rapid/log_w_abs_mean"] < 0.05                  # bf16 incremental decode vs a full forward
    assert abs(h["rapid/w_mean"] - 1) < 0.05


def test_generation_config_does_not_shape_sampling(tiny):
    """Same seed, same weights: the rollout with a hostile generation_config equals the one without."""
    from rapid.engines.base import SamplingConfig
    from rapid.engines.hf import HFEngine
    from rapid.tiny import build_tiny

    model, tok = tiny
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.9, top_p=0.95, seed=3)
    clean = HFEngine(model, tok).generate(["1+2=", "30+4="], 4, sampling)
    other = hostile(build_tiny(seed=0)[0])
    dirty = HFEngine(other, tok).generate(["1+2=", "30+4="], 4, sampling)
    assert clean.completion_ids == dirty.completion_ids
    assert other.generation_config.repetition_penalty == 1.5          # the user's config is left as it was


def test_engine_chunking_does_not_change_the_rollout(tiny):
    from rapid.engines.base import SamplingConfig
    from rapid.engines.hf import HFEngine

    model, tok = tiny
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=30, seed=5, prompt_keys=(10, 11, 12))
    whole = HFEngine(model, tok, max_num_seqs=None).generate(["1=", "22=", "333="], 4, sampling)
    chunked = HFEngine(model, tok, max_num_seqs=5).generate(["1=", "22=", "333="], 4, sampling)
    assert whole.completion_ids == chunked.completion_ids
    for a, b in zip(whole.logprobs, chunked.logprobs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # a prompt's completions depend on its key, not its position in the call
    alone = HFEngine(model, tok).generate(["22="], 4, SamplingConfig(**{**sampling.__dict__, "prompt_keys": (11,)}))
    assert alone.completion_ids == whole.completion_ids[4:8]
