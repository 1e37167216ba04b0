"""GPU tier for data parallelism (`pytest -m gpu`, 2+ GPUs, vLLM installed): NCCL, one colocated vLLM engine per
rank (tensor parallel 1, sleep/wake on its own GPU), DDP and FSDP2. Never run yet: no multi-GPU machine has been
lent to this project (benchmarks/RESULTS.md says so); written so that such a machine runs it with no change.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from .launch import run_ranks

pytestmark = pytest.mark.gpu

PROMPTS = [{"prompt": f"{i}+{i}="} for i in range(64)]


def _needs_two_gpus():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    pytest.importorskip("vllm")


def _train(log_dir: str, overrides: dict):
    import rapid
    from rapid.parallel import full_tensor
    from rapid.tiny import build_tiny

    rank = int(os.environ.get("RANK", 0))
    path = os.path.join(log_dir, f"rewards-{rank}.jsonl")

    def reward(prompts, completions, **_):
        if not (len(completions) == 2 and not any(completions)):            # not the start-up probe
            with open(path, "a") as f:
                for p, c in zip(prompts, completions):
                    f.write(json.dumps([p, c]) + "\n")
        return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

    model, tok = build_tiny(seed=0)
    base = dict(group_size=4, prompts_per_rollout=16, prompts_per_step=4, num_rollouts=2, max_new_tokens=16,
                lr=1e-5, engine="vllm", gpu_memory_utilization=0.2, progress_bar=False, seed=0)
    cfg = rapid.RapidConfig(**{**base, **overrides})
    result = rapid.train(model, PROMPTS, reward, cfg, tokenizer=tok)
    weights = {n: full_tensor(p).detach().float().cpu() for n, p in result.model.named_parameters()}
    return weights, result.history


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gpu_ranks_train_once_per_completion_and_agree(tmp_path, parallel):
    _needs_two_gpus()
    results = run_ranks(_train, 2, tmp_path, str(tmp_path), {"parallel": parallel}, timeout=900)
    (w0, history), (w1, _) = [r.unwrap() for r in results]
    scored = [json.loads(x) for n in os.listdir(tmp_path) if n.startswith("rewards-")
              for x in open(tmp_path / n)]
    assert len(scored) == 2 * 16 * 4                                  # 2 rollouts x 16 prompts x K, each once
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name                   # every rank holds the same weights
    assert abs(history[0]["rapid/w_mean"] - 1) < 0.05                  # on-policy on the first step (bf16)


def test_two_gpu_checkpoint_resumes_on_one(tmp_path):
    _needs_two_gpus()
    out = str(tmp_path / "run")
    [r.unwrap() for r in run_ranks(_train, 2, tmp_path, str(tmp_path),
                                   {"output_dir": out, "save_every": 1, "num_rollouts": 1}, timeout=900)]
    (weights, history), = [r.unwrap() for r in run_ranks(_train, 1, tmp_path, str(tmp_path),
                                                          {"output_dir": out, "resume": True}, timeout=900)]
    assert [h["rollout"] for h in history if "reward/mean" in h] == [1, 2]
