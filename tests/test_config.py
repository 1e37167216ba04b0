"""RapidConfig: every bad field raises a ValueError naming it, at construction."""

import pytest

from rapid.config import RapidConfig

BAD = [
    ("algo", dict(algo="ppo")),
    ("group_size", dict(group_size=1)),                                             # LOO needs K >= 2
    ("group_size", dict(group_size=1, baseline="mean")),                            # zero advantage by construction
    ("prompts_per_rollout", dict(prompts_per_rollout=10, prompts_per_step=4)),       # not divisible
    ("prompts_per_step", dict(algo="grpg", prompts_per_rollout=16, prompts_per_step=8)),  # grpg is on-policy
    ("micro_batch_size", dict(micro_batch_size=0)),
    ("micro_batch_tokens", dict(micro_batch_tokens=100, max_new_tokens=256)),      # cannot hold one sequence
    ("max_num_seqs", dict(max_num_seqs=0)),
    ("top_k", dict(top_k=-1)),
    ("lr_scheduler", dict(lr_scheduler="step")),
    ("warmup_steps", dict(warmup_steps=-1)),
    ("chat_template", dict(chat_template="yes")),
    ("eta", dict(eta=0)),
    ("eta", dict(eta=float("nan"))),
    ("lr", dict(lr=-1e-5)),
    ("temperature", dict(temperature=0.0)),
    ("top_p", dict(top_p=1.5)),
    ("baseline", dict(baseline="median")),
    ("is_level", dict(is_level="seq")),
    ("is_clip", dict(is_clip="clamp")),
    ("adv_scale", dict(adv_scale="z")),
    ("behavior_logprobs", dict(behavior_logprobs="trainer")),
    ("engine", dict(engine="sglang")),
    ("kernel_backend", dict(kernel_backend="numba")),
    ("max_new_tokens", dict(max_new_tokens=0)),
    ("num_rollouts", dict(num_rollouts=0)),
    ("group_size", dict(group_size="8")),                                           # type
    ("resume", dict(resume=True)),                                                  # needs output_dir
    ("gpu_memory_utilization", dict(gpu_memory_utilization=1.5)),
    ("sleep_level", dict(sleep_level=3)),
]


@pytest.mark.parametrize("field,kwargs", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        RapidConfig(**kwargs)


def test_defaults_and_derived_values():
    cfg = RapidConfig()
    assert cfg.steps_per_rollout == 8 and cfg.effective_loss_norm == 256.0
    assert RapidConfig(loss_norm=1.0).effective_loss_norm == 1.0
    assert RapidConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config field"):
        RapidConfig.from_dict({"etaa": 2.0})
