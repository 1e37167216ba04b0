"""Real-workload features in the loop: stop strings, sampled evaluation with pass@k, completion logs, and
filter_groups (zero-variance groups skipped without changing the on-policy update)."""

import json

import pytest

import rapid
from rapid.engines.base import SamplingConfig
from rapid.engines.hf import HFEngine
from rapid.tiny import build_tiny

from rapid.testing import PROMPTS, digits_reward, small_config
from .conftest import assert_same_grads, capture_step_grads


def test_hf_stop_strings_cut_tokens_and_text_consistently(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    free = engine.generate(["1+2="], 16, SamplingConfig(max_new_tokens=24, seed=3))
    stops = ("a", "e", "1")
    cut = engine.generate(["1+2="], 16, SamplingConfig(max_new_tokens=24, seed=3, stop=stops))
    stopped = 0
    for ids, full_ids, text, lp, fin in zip(cut.completion_ids, free.completion_ids, cut.completions, cut.logprobs,
                                           cut.finished):
        assert ids == full_ids[:len(ids)]                   # the same draws, cut earlier
        assert lp.shape == (len(ids),)                      # log-probs cover exactly the kept tokens
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert not any(s in text for s in stops)            # the text stops before the stop string
        if any(s in decoded for s in stops):
            stopped += 1
            assert fin and not any(s in tok.decode(ids[:-1], skip_special_tokens=True) for s in stops)
    assert stopped >= 4


def test_stop_strings_keep_on_policy_weights_at_one(tiny):
    model, tok = tiny
    cfg = small_config(num_rollouts=1, prompts_per_rollout=4, prompts_per_step=4, max_new_tokens=12,
                       stop=["a", "5"], temperature=0.8)
    h = rapid.train(model, PROMPTS, digits_reward, cfg, tokenizer=tok).history[0]
    assert h["rapid/log_w_abs_mean"] < 2e-5 and h["response_length/clip_ratio"] < 1.0


def test_sampled_eval_logs_pass_at_k_and_completions(tiny, tmp_path):
    model, tok = tiny

    def exact(prompts, completions, answer, **_):
        return [1.0 if c.startswith(a) else 0.0 for c, a in zip(completions, answer)]

    rows = [{"prompt": f"{i}=", "answer": str(i % 10)} for i in range(16)]
    cfg = small_config(num_rollouts=1, eval_samples=8, log_completions=5, output_dir=str(tmp_path))
    history = rapid.train(model, rows, exact, cfg, tokenizer=tok, eval_dataset=rows[:6]).history
    first = history[0]
    for key in ("eval/reward", "eval/mean@8", "eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/pass@8"):
        assert key in first, key
    assert first["eval/pass@1"] == pytest.approx(first["eval/mean@8"])        # 0/1 rewards: pass@1 = mean@n
    assert first["eval/pass@1"] <= first["eval/pass@2"] <= first["eval/pass@4"] <= first["eval/pass@8"]
    logged = [json.loads(x) for x in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 5 and {"prompt", "completion", "reward", "rollout"} <= set(logged[0])
    evals = [json.loads(x) for x in (tmp_path / "eval_completions.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "greedy" for e in evals) == 2 * 6                  # before and after training
    assert sum(e["kind"] == "sampled" for e in evals) == 2 * 6 * 8


def test_filter_groups_skips_zero_variance_groups_without_changing_the_update(monkeypatch):
    calls = {"n": 0}

    def sparse(prompts, completions, **_):            # half the groups all-zero, the others varied
        calls["n"] += 1
        return [0.0 if i // 4 % 2 == 0 else float(i % 3 == 0) for i in range(len(completions))]

    def run(filter_groups):
        from rapid.training.policy import PolicyLoss

        forwards = {"seqs": 0}
        original = PolicyLoss.forward

        def counting(self, mb, mode="loss", grad=None):
            forwards["seqs"] += mb.batch.num_seqs
            return original(self, mb, mode, grad)

        monkeypatch.setattr(PolicyLoss, "forward", counting)
        grads = capture_step_grads(monkeypatch)
        model, tok = build_tiny(seed=0)
        cfg = small_config(num_rollouts=1, prompts_per_rollout=8, prompts_per_step=8, filter_groups=filter_groups)
        h = rapid.train(model, PROMPTS, sparse, cfg, tokenizer=tok).history[0]
        monkeypatch.undo()
        return grads, forwards["seqs"], h

    full, seqs_full, _ = run(False)
    filtered, seqs_filtered, h = run(True)
    assert h["rapid/skipped_groups"] == 4 and seqs_filtered == seqs_full // 2
    assert_same_grads(full, filtered, rtol=1e-5)
