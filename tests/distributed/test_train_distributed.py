"""rapid.train on 2 gloo ranks (torchrun's environment, 1 thread each) against one process on the same data.

- The union of the ranks' completions is the single process's rollout (sampling is keyed by the prompt's global
  position, so it does not depend on the world size), and nothing is generated or scored twice.
- Every optimizer step's gradient equals the single process's (fp32 noise), for DDP and FSDP2, and every rank
  ends with the same weights.
- A run saved at world size 2 resumes at world size 1 (and 1 → 2) and continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from .launch import run_ranks

PROMPTS = [{"prompt": f"{i}="} for i in range(32)]
BASE = dict(group_size=4, prompts_per_rollout=8, prompts_per_step=4, num_rollouts=2, max_new_tokens=4, lr=1e-6,
            progress_bar=False, seed=0, kernel_backend="torch")


def _reward_log(path):
    def reward(prompts, completions, **_):
        probe = len(completions) == 2 and not any(completions)       # the start-up probe, not a rollout
        with open(path, "a") as f:
            for p, c in zip(prompts, completions):
                if not probe:
                    f.write(json.dumps([p, c]) + "\n")
        return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
    return reward


def _train(log_dir: str, overrides: dict):
    """One rank (or the single process): train, return per-step full gradients, final weights, history."""
    import rapid
    from rapid.parallel import full_tensor
    from rapid.training.policy import Policy
    from rapid.tiny import build_tiny

    steps = []
    original = Policy.step

    def step(self):
        steps.append({n.removeprefix("module.").removeprefix("model."): full_tensor(p.grad).detach().clone()
                      for n, p in self.module.named_parameters() if p.grad is not None})
        return original(self)

    Policy.step = step
    rank = int(os.environ.get("RANK", 0))
    model, tok = build_tiny(seed=0)
    cfg = rapid.RapidConfig(**{**BASE, **overrides})
    result = rapid.train(model, PROMPTS, _reward_log(os.path.join(log_dir, f"rewards-{rank}.jsonl")), cfg,
                         tokenizer=tok)
    weights = {n.removeprefix("model."): full_tensor(p).detach().clone()
               for n, p in result.model.named_parameters()}
    return steps, weights, result.history


def _scored(log_dir: str) -> list:
    out = []
    for name in sorted(os.listdir(log_dir)):
        if name.startswith("rewards-"):
            out += [tuple(json.loads(line)) for line in open(os.path.join(log_dir, name))]
    return out


def _same_grads(a: list[dict], b: list[dict], rtol: float = 2e-4) -> None:
    assert len(a) == len(b) and a
    for ga, gb in zip(a, b):
        for name in ga:
            scale = ga[name].abs().max().item() + 1e-12
            assert (ga[name] - gb[name]).abs().max().item() <= rtol * scale, name


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("single")
    steps, weights, history = run_ranks(_train, 1, log_dir, str(log_dir), {}, timeout=240)[0].unwrap()
    return steps, weights, history, _scored(str(log_dir))


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(single, tmp_path, parallel):
    steps1, weights1, history1, scored1 = single
    results = run_ranks(_train, 2, tmp_path, str(tmp_path), {"parallel": parallel}, timeout=300)
    (steps_a, weights_a, history_a), (steps_b, weights_b, _) = [r.unwrap() for r in results]
    scored2 = _scored(str(tmp_path))
    assert len(scored2) == len(scored1) == len(set(scored1))       # nothing generated or scored twice
    assert sorted(scored2) == sorted(scored1)                        # the same completions, split across ranks
    _same_grads(steps1, steps_a)
    for name in weights_a:                                           # every rank holds identical weights
        assert torch.equal(weights_a[name], weights_b[name]), name
        assert (weights_a[name] - weights1[name]).abs().max() <= 2 * BASE["lr"], name
    assert [h["reward/mean"] for h in history_a] == pytest.approx([h["reward/mean"] for h in history1])
    # on-policy at world size 2: before the first update the trainer's log π is the engine's log μ (w = 1)
    assert history_a[0]["rapid/engine_logprob_diff"] < 1e-5


def _wrappers_alive_when_the_group_closes(_):
    """How many DDP wrappers are alive when rapid.train closes its process group."""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    import rapid
    from rapid.distributed import Dist
    from rapid.tiny import build_tiny

    seen = []
    original = Dist.close

    def close(self):
        gc.collect()
        seen.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        return original(self)

    Dist.close = close
    model, tok = build_tiny(seed=0)
    result = rapid.train(model, PROMPTS, _reward_log(os.devnull), rapid.RapidConfig(**BASE), tokenizer=tok)
    return seen, type(result.model).__name__


def test_no_ddp_wrapper_outlives_the_process_group(tmp_path):
    """A DDP reducer destroyed after its gloo group joins the group's threads holding the GIL and can deadlock at
    exit (seen 1 in 3 runs of the scaling benchmark; pytorch/pytorch#56297): train() releases it first."""
    for r in run_ranks(_wrappers_alive_when_the_group_closes, 2, tmp_path, None, timeout=240):
        assert r.unwrap() == ([0], "Qwen2ForCausalLM")


def _train_saved(log_dir: str, out_dir: str, num_rollouts: int, resume: bool):
    return _train(log_dir, {"output_dir": out_dir, "num_rollouts": num_rollouts, "resume": resume, "save_every": 1})


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_at_another_world_size(single, tmp_path, first, second):
    steps1, weights1, history1, scored1 = single
    out = str(tmp_path / "run")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    [r.unwrap() for r in run_ranks(_train_saved, first, tmp_path / "a", str(tmp_path / "a"), out, 1, False,
                                   timeout=300)]
    results = run_ranks(_train_saved, second, tmp_path / "b", str(tmp_path / "b"), out, 2, True, timeout=300)
    steps2, weights2, history2 = results[0].unwrap()
    # the resumed rollout is the uninterrupted run's second rollout: same completions, same gradients
    half = len(scored1) // 2
    assert sorted(_scored(str(tmp_path / "b"))) == sorted(scored1[half:])
    _same_grads(steps1[len(steps1) - len(steps2):], steps2)
    for name in weights2:
        assert (weights2[name] - weights1[name]).abs().max() <= 2 * BASE["lr"], name
    assert [h["rollout"] for h in history2 if "reward/mean" in h] == [1, 2]


def _bad_world(_):
    import rapid
    from rapid.tiny import build_tiny

    model, tok = build_tiny(seed=0)
    rapid.train(model, PROMPTS, _reward_log(os.devnull), rapid.RapidConfig(**{**BASE, "prompts_per_step": 3,
                                                                              "prompts_per_rollout": 9}),
                tokenizer=tok)


def _mismatched_config(_):
    import rapid
    from rapid.tiny import build_tiny

    model, tok = build_tiny(seed=0)
    lr = 1e-6 if int(os.environ["RANK"]) == 0 else 2e-6
    rapid.train(model, PROMPTS, _reward_log(os.devnull), rapid.RapidConfig(**{**BASE, "lr": lr}), tokenizer=tok)


def test_bad_world_size_and_mismatched_configs_fail_before_generation(tmp_path):
    for fn, match in ((_bad_world, "prompts_per_step (3) must be divisible by the world size (2)"),
                      (_mismatched_config, "lr")):
        for r in run_ranks(fn, 2, tmp_path, None, timeout=180):
            assert r.error is not None and r.error.startswith("ValueError") and match in r.error, r.error


def _crashing_rank(out_dir: str):
    import rapid
    from rapid.engines.hf import HFEngine
    from rapid.tiny import build_tiny

    rank = int(os.environ["RANK"])
    original = HFEngine.generate
    calls = {"n": 0}

    def generate(self, *args, **kwargs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 2:
            os._exit(3)                                   # rank 1 dies in its second rollout
        return original(self, *args, **kwargs)

    HFEngine.generate = generate
    model, tok = build_tiny(seed=0)
    cfg = rapid.RapidConfig(**{**BASE, "num_rollouts": 3, "output_dir": out_dir, "save_every": 1,
                               "dist_timeout_s": 8.0})
    rapid.train(model, PROMPTS, _reward_log(os.devnull), cfg, tokenizer=tok)


def test_a_crashed_rank_fails_the_others_with_its_name_and_keeps_the_checkpoint(tmp_path):
    from rapid import checkpoint

    results = run_ranks(_crashing_rank, 2, tmp_path, str(tmp_path / "run"), timeout=240)
    assert results[1].exitcode == 3
    assert results[0].error is not None and "rank" in results[0].error and "1" in results[0].error, results[0].error
    last = checkpoint.latest_intact_checkpoint(tmp_path / "run" / "checkpoints")
    assert last is not None and last.name.endswith("000001")


def _train_fsdp(out_dir: str, lora: bool = True):
    import peft

    import rapid
    from rapid.tiny import build_tiny

    model, tok = build_tiny(seed=0)
    adapter = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    cfg = rapid.RapidConfig(**{**BASE, "parallel": "fsdp", "lr": 1e-2, "output_dir": out_dir})
    reward = lambda prompts, completions, **_: [sum(ch.isdigit() for ch in c) / max(len(c), 1)  # noqa: E731
                                                for c in completions]
    result = rapid.train(model, PROMPTS, reward, cfg, tokenizer=tok, peft_config=adapter if lora else None)
    return {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()}


def test_fsdp2_lora_saves_the_merged_model_beside_the_adapter(tmp_path):
    """FSDP2 + LoRA: output_dir/model is the full merged model (base + the trained adapter), as without FSDP2."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from rapid.tiny import build_tiny

    out = tmp_path / "run"
    returned = [r.unwrap() for r in run_ranks(_train_fsdp, 2, tmp_path, str(out), timeout=300)]
    saved = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    base = build_tiny(seed=0)[0]
    untrained = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = peft.PeftModel.from_pretrained(base, out / "adapter").merge_and_unload().state_dict()
    assert saved.keys() == adapted.keys() == returned[0].keys()
    for name in saved:
        torch.testing.assert_close(saved[name], adapted[name], atol=1e-6, rtol=0, msg=name)
        assert torch.equal(saved[name], returned[0][name]) and torch.equal(returned[0][name], returned[1][name])
    assert any(not torch.equal(saved[k], untrained[k]) for k in saved if "q_proj" in k)   # the adapter trained


def test_fsdp2_saves_the_full_model_the_ranks_return(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    returned = [r.unwrap() for r in run_ranks(_train_fsdp, 2, tmp_path, str(out), False, timeout=300)]
    saved = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert saved.keys() == returned[0].keys()
    for name in saved:
        assert torch.equal(saved[name], returned[0][name]) and torch.equal(returned[0][name], returned[1][name]), name
