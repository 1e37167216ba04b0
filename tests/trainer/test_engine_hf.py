"""HFEngine: completions end at EOS, and the recorded log-probs are those of the processed distribution."""

import torch

from rapid.engines.base import SamplingConfig
from rapid.engines.hf import HFEngine
from rapid.loss.forward import completion_hidden, model_parts


def _trainer_logprobs(model, rollout, temperature):
    parts = model_parts(model)
    prompts = [rollout.prompt_ids[i // rollout.n] for i in range(len(rollout.completion_ids))]
    with torch.no_grad():
        hidden = completion_hidden(parts, prompts, rollout.completion_ids, torch.device("cpu"))     # (N, D)
        logits = model.lm_head(hidden) / temperature                                               # (N, V)
    return logits.log_softmax(-1), torch.tensor([t for c in rollout.completion_ids for t in c])


def test_logprobs_equal_tempered_trainer_logprobs(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    rollout = engine.generate(["12+7=", "3+4=", "99+1="], 3, SamplingConfig(max_new_tokens=6, temperature=0.7, seed=1))
    logp, targets = _trainer_logprobs(model, rollout, 0.7)
    expected = logp.gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(torch.cat(rollout.logprobs), expected, atol=1e-5, rtol=0)
    # and not those of the untempered distribution
    logp1, _ = _trainer_logprobs(model, rollout, 1.0)
    assert (torch.cat(rollout.logprobs) - logp1.gather(1, targets[:, None]).squeeze(1)).abs().max() > 1e-2


def test_top_p_logprobs_are_of_the_truncated_distribution(tiny):
    model, tok = tiny
    rollout = HFEngine(model, tok).generate(["1+1="], 8, SamplingConfig(max_new_tokens=3, top_p=0.5, seed=2))
    logp, targets = _trainer_logprobs(model, rollout, 1.0)
    probs = logp.exp()                                                                           # (N, V)
    sorted_p, order = probs.sort(-1, descending=True)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < 0.5     # smallest prefix with mass >= top_p
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    truncated = torch.where(keep, probs, torch.zeros_like(probs))
    expected = (truncated / truncated.sum(-1, keepdim=True)).gather(1, targets[:, None]).squeeze(1).log()
    torch.testing.assert_close(torch.cat(rollout.logprobs), expected, atol=1e-4, rtol=0)


def test_eos_included_and_nothing_after():
    from rapid.tiny import build_tiny

    model, tok = build_tiny(tie_word_embeddings=False)
    with torch.no_grad():   # point the EOS row at the prompt's last hidden state: EOS likely, not certain
        hidden = model.model(torch.tensor([tok("5+5=")["input_ids"]])).last_hidden_state[0, -1]     # (D,)
        model.lm_head.weight[tok.eos_token_id] = 4.0 * hidden / hidden.norm() ** 2 + \
            model.lm_head.weight[tok.eos_token_id]
    rollout = HFEngine(model, tok).generate(["5+5="] * 4, 4, SamplingConfig(max_new_tokens=8, seed=0))
    assert any(rollout.finished) and not all(len(c) == 8 for c in rollout.completion_ids)
    for ids, lp, fin in zip(rollout.completion_ids, rollout.logprobs, rollout.finished):
        assert len(lp) == len(ids) and lp.dtype == torch.float32 and torch.isfinite(lp).all()
        assert (ids[-1] == tok.eos_token_id) == fin
        assert tok.eos_token_id not in ids[:-1]


def test_seeded_sampling_is_reproducible_and_greedy_works(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    a = engine.generate(["1+2="], 4, SamplingConfig(max_new_tokens=5, seed=7))
    b = engine.generate(["1+2="], 4, SamplingConfig(max_new_tokens=5, seed=7))
    assert a.completion_ids == b.completion_ids
    g1 = engine.generate(["1+2=", "3+3="], 1, SamplingConfig(max_new_tokens=5, temperature=0.0))
    g2 = engine.generate(["1+2=", "3+3="], 1, SamplingConfig(max_new_tokens=5, temperature=0.0, seed=3))
    assert g1.completion_ids == g2.completion_ids


def _eos_prone():
    """A tiny model whose EOS is likely (not certain) after "5+5=": rows finish at different steps."""
    from rapid.tiny import build_tiny

    model, tok = build_tiny(tie_word_embeddings=False, seed=0)
    with torch.no_grad():
        hidden = model.model(torch.tensor([tok("5+5=")["input_ids"]])).last_hidden_state[0, -1]     # (D,)
        model.lm_head.weight[tok.eos_token_id] += 1.0 * hidden / hidden.norm() ** 2
    return model, tok


def test_greedy_equals_transformers_greedy_generate():
    """The own decode loop (shared prefill, repeated cache, finished rows dropped) is the model's greedy decode."""
    from transformers import GenerationConfig

    model, tok = _eos_prone()
    prompts = ["5+5=", "12+7=", "300+45=", "1+1="]                 # different lengths: left padding in the prefill
    ours = HFEngine(model, tok).generate(prompts, 2, SamplingConfig(max_new_tokens=7, temperature=0.0))
    assert any(ours.finished) and not all(ours.finished)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             generation_config=GenerationConfig(do_sample=False, max_new_tokens=7,
                                                                eos_token_id=tok.eos_token_id,
                                                                pad_token_id=tok.pad_token_id))
        expected = out[0, ids.shape[1]:].tolist()
        expected = expected[:expected.index(tok.eos_token_id) + 1] if tok.eos_token_id in expected else expected
        assert ours.completion_ids[2 * i] == ours.completion_ids[2 * i + 1] == expected


def test_dropping_finished_rows_and_sharing_the_prefill_do_not_change_the_rollout(monkeypatch):
    import rapid.engines.hf as hf

    model, tok = _eos_prone()
    prompts, sampling = ["5+5=", "7+1=", "5+5="], SamplingConfig(max_new_tokens=8, temperature=1.0, seed=9)
    shared = HFEngine(model, tok).generate(prompts, 6, sampling)
    assert 0 < sum(shared.finished) < len(shared.finished)
    monkeypatch.setattr(hf, "COMPACT_FRACTION", 0)                         # never drop a finished row
    kept = HFEngine(model, tok).generate(prompts, 6, sampling)
    one_by_one = HFEngine(model, tok, max_num_seqs=1).generate(prompts, 6, sampling)   # a prefill per sequence
    for other in (kept, one_by_one):
        assert other.completion_ids == shared.completion_ids and other.finished == shared.finished
        for a, b in zip(other.logprobs, shared.logprobs):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=0)
