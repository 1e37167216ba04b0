"""Every bad input raises a ValueError naming the field, before any generation starts."""

import pytest

import rapid
from rapid.engines.hf import HFEngine

from rapid.testing import PROMPTS, sevens_reward, small_config


@pytest.fixture(autouse=True)
def no_generation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generation started before validation finished")

    monkeypatch.setattr(HFEngine, "generate", fail)


def _expect(match, tiny, dataset=PROMPTS, reward_fn=sevens_reward, **kwargs):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        rapid.train(model, dataset, reward_fn, kwargs.pop("config", small_config()), tokenizer=tok, **kwargs)


def test_empty_dataset(tiny):
    _expect("dataset is empty", tiny, dataset=[])


def test_missing_prompt_column(tiny):
    _expect("'prompt' column", tiny, dataset=[{"question": "1+1="}])


def test_non_string_prompt(tiny):
    _expect(r"\['prompt'\] must be a non-empty string", tiny, dataset=[{"prompt": 3}])


def test_inconsistent_columns(tiny):
    _expect(r"dataset\[1\] has columns", tiny, dataset=[{"prompt": "a", "answer": "1"}, {"prompt": "b"}])


def test_unknown_column(tiny):
    def reward(prompts, completions, answer):
        return [0.0] * len(prompts)

    _expect("unknown column.*'extra'", tiny, dataset=[{"prompt": "a", "answer": "1", "extra": 2}], reward_fn=reward)


def test_reward_needs_missing_column(tiny):
    def reward(prompts, completions, answer):
        return [0.0] * len(prompts)

    _expect("requires column.*answer", tiny, dataset=[{"prompt": "a"}], reward_fn=reward)


def test_reward_wrong_length(tiny):
    _expect("reward function '<lambda>' returned 1 rewards for 2 completions", tiny, reward_fn=lambda p, c, **k: [1.0])


def test_reward_non_numbers(tiny):
    _expect("reward function '<lambda>' returned a non-number", tiny, reward_fn=lambda p, c, **k: ["good"] * len(p))


def test_reward_not_callable(tiny):
    _expect("reward_fn must be callable", tiny, reward_fn="exact_match")


def test_prompt_longer_than_context(tiny):
    _expect(r"dataset\[1\]\['prompt'\] is 600 tokens", tiny, dataset=[{"prompt": "1"}, {"prompt": "7" * 600}])
    _expect("max_prompt_tokens", tiny, dataset=[{"prompt": "1234"}], config=small_config(max_prompt_tokens=3))


def test_token_budget_must_hold_the_longest_sequence(tiny):
    _expect(r"micro_batch_tokens \(8\) is smaller than the longest prompt \(5 tokens\)", tiny,
            dataset=[{"prompt": "1"}, {"prompt": "12345"}], config=small_config(micro_batch_tokens=8))


def test_prompt_may_be_chat_messages_but_not_anything(tiny):
    _expect(r"dataset\[0\]\['prompt'\] must be a non-empty string or a list of", tiny,
            dataset=[{"prompt": [{"role": "user"}]}])


def test_bad_eval_dataset(tiny):
    _expect("eval_dataset is empty", tiny, eval_dataset=[])


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompts_per_rollout=10, prompts_per_step=4), "prompts_per_rollout"),
    (dict(group_size=1), "group_size"),
    (dict(micro_batch_tokens=4), "micro_batch_tokens"),
    (dict(algo="ppo"), "algo"),
    (dict(eta=0.0), "eta"),
    (dict(algo="grpg", prompts_per_rollout=8, prompts_per_step=4), "prompts_per_step"),
    (dict(resume=True), "resume"),
])
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        small_config(**kwargs)


def test_config_must_be_a_config(tiny):
    _expect("config must be a RapidConfig", tiny, config={"lr": 1.0})
