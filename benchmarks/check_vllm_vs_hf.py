"""Why did engine="vllm" e2e runs end below the HF runs? Checks the vLLM engine against HF on the demo model.

    .venv/bin/python benchmarks/check_vllm_vs_hf.py [--samples 16] [--e2e-dir /tmp/bench/e2e_vllm/seed0]

One vLLM engine (~30 s start-up) on the demo's SFT warm start (rapid.demo.sft_warm_start(DemoSettings()), cached
under .cache/rapid-demo/), then, in order:

  H1  greedy eval (temperature 0) through vLLM vs HFEngine on the 200 held-out prompts, per prompt; for every
      differing completion, the fp32 and fp64 logits at the first differing token (near-tie or real mismatch?).
  H2  the CPU pre-pack workaround (_vllm_compat.keep_cpu_linear_weights): every engine tensor equals the synced
      HF tensor (qkv/gate_up merged, biases, tied lm_head), no layer computes from a packed copy, and perturbing
      each HF tensor alone moves the engine's log-probs exactly as it moves the trainer's.
  H3  weight sync after 8 AdamW steps at lr 1e-2 on a copy of the demo model: engine prompt log-probs vs trainer
      log-probs, and greedy completions vs HF on the updated weights.
  H4  sampling: prompt ids (BOS?), EOS / stop handling, max_tokens, decoded text, per-request seeds, and the mean
      reward at temperature 1 from each engine vs the exact expected reward computed from the model's probabilities.
  H5  the benchmark's eval path (rapid.trainer.evaluate_rewards with each engine, as benchmarks/e2e/worker.py runs
      it), and, when the e2e run directories exist, the warm start each vLLM run actually started from.

Prints findings per hypothesis and one JSON line last.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOL = 1e-4          # nats per token, fp32 both sides (tests/engines/test_vllm_engine.py)


def greedy_fp64(model64, prompt_ids: list[int], max_new: int, eos: int) -> list[int]:
    """Unbatched greedy decoding in float64: the reference neither engine's rounding can flip."""
    ids = list(prompt_ids)
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            tok = int(model64(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(tok)
            ids.append(tok)
            if tok == eos:
                break
    return out


def last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def trainer_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=16, help="temperature-1 samples per held-out prompt (H4)")
    p.add_argument("--e2e-dir", default="/tmp/bench/e2e_vllm/seed0", help="vLLM e2e run dirs (H5; optional)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", nargs="*", default=["/tmp/bench/e2e_3s/seed*/*/result.json",
                                                      "/tmp/bench/e2e_vllm/seed*/*/result.json",
                                                      "/tmp/vcheck/seed*/*/result.json",
                                                      "/tmp/vcheck_hf/seed*/*/result.json"],
                   help="e2e result.json globs for the run-to-run spread (H6; optional)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    import rapid
    from rapid.demo import DemoSettings, sft_warm_start
    from rapid.engines.base import SamplingConfig
    from rapid.engines.hf import HFEngine
    from rapid.engines.vllm import VLLMEngine
    from rapid.engines.weights import hf_weights
    from rapid.engines import _vllm_compat as compat
    from rapid.tasks.arithmetic import make_arithmetic_task
    from rapid.trainer import evaluate_rewards

    out: dict = {"benchmark": "check_vllm_vs_hf"}
    settings = DemoSettings()
    task = make_arithmetic_task(settings.difficulty, settings.n_train, settings.n_eval, settings.seed,
                                digits=settings.digits)
    model, tok, _ = sft_warm_start(settings, task, log=lambda m: None)
    model.eval()
    out["warm_start"] = settings.key()
    prompts = [r["prompt"] for r in task.eval]
    answers = [r["answer"] for r in task.eval]
    max_new = task.max_new_tokens
    cfg = rapid.RapidConfig(max_new_tokens=max_new, seed=0, engine="vllm")
    hf = HFEngine(model, tok)
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="check-vllm-")
    eng = VLLMEngine(model, tok, cfg, tmp.name)
    print(f"warm start {settings.key()}; vLLM engine up in {time.perf_counter() - t0:.1f} s "
          f"({eng.dtype}, max_model_len {eng.max_model_len}); {len(prompts)} held-out prompts, "
          f"max_new_tokens {max_new}")

    def acc(completions: list[str]) -> float:
        return sum(task.reward_fn(prompts, completions, answers)) / len(prompts)

    # ---- H1: greedy eval, per prompt ----------------------------------------------------------------------------
    greedy = SamplingConfig(max_new_tokens=max_new, temperature=0.0, seed=0)
    r_hf = hf.generate(prompts, 1, greedy)
    r_vl = eng.generate(prompts, 1, greedy)
    model64 = copy.deepcopy(model).double()
    eos = tok.eos_token_id
    diffs = []
    for i, (a, b) in enumerate(zip(r_hf.completion_ids, r_vl.completion_ids)):
        if a == b:
            continue
        k = next(j for j in range(min(len(a), len(b)) + 1) if j >= min(len(a), len(b)) or a[j] != b[j])
        ctx = r_hf.prompt_ids[i] + a[:k]
        l32, l64 = last_logits(model, ctx).float(), last_logits(model64, ctx)
        ta, tb = (a[k] if k < len(a) else None), (b[k] if k < len(b) else None)
        ref = greedy_fp64(model64, r_hf.prompt_ids[i], max_new, eos)
        diffs.append({"prompt": prompts[i], "pos": k, "hf_tok": ta, "vllm_tok": tb,
                      "logit_gap_fp32": None if None in (ta, tb) else float(l32[ta] - l32[tb]),
                      "logit_gap_fp64": None if None in (ta, tb) else float(l64[ta] - l64[tb]),
                      "fp64_agrees_with": "hf" if ref == a else "vllm" if ref == b else "neither"})
    # how close to a tie is any greedy step? top-1 minus top-2 logit (fp32) at every generated position
    margins = []
    for ids, c in zip(r_hf.prompt_ids, r_hf.completion_ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids + c])).logits[0, len(ids) - 1:len(ids) - 1 + len(c)]   # (len(c), V)
        top2 = logits.topk(2, dim=-1).values
        margins += (top2[:, 0] - top2[:, 1]).tolist()
    margins.sort()
    acc_hf, acc_vl = acc(r_hf.completions), acc(r_vl.completions)
    # the two engines' reward on the same prompts can only differ where completions differ
    print(f"\nH1 greedy eval: HF acc {acc_hf:.3f}, vLLM acc {acc_vl:.3f}; completions identical on "
          f"{len(prompts) - len(diffs)}/{len(prompts)} prompts; texts identical on "
          f"{sum(x == y for x, y in zip(r_hf.completions, r_vl.completions))}/{len(prompts)}; smallest top-1 vs "
          f"top-2 logit margin over all {len(margins)} greedy steps "
          f"{margins[0]:.3g} (5 smallest {[round(m, 3) for m in margins[:5]]}; fp32 engine noise ~1e-5)")
    for d in diffs:
        print(f"  differs: {d}")
    out["h1"] = {"acc_hf": acc_hf, "acc_vllm": acc_vl, "n_differ": len(diffs), "differ": diffs,
                 "min_greedy_margin": margins[0]}

    # ---- H2: pre-pack workaround: the engine computes with the synced tensors -----------------------------------
    vmodel = compat.get_model(eng.llm)
    ref = dict(hf_weights(model))
    L = model.config.num_hidden_layers
    expect = {n: ref[n] for n in ("model.embed_tokens.weight", "model.norm.weight")}
    for i in range(L):
        h = f"model.layers.{i}."
        for kind in ("weight", "bias"):
            expect[h + f"self_attn.qkv_proj.{kind}"] = torch.cat([ref[f"{h}self_attn.{x}_proj.{kind}"]
                                                                  for x in "qkv"])
        expect[h + "self_attn.o_proj.weight"] = ref[h + "self_attn.o_proj.weight"]
        expect[h + "mlp.gate_up_proj.weight"] = torch.cat([ref[h + "mlp.gate_proj.weight"],
                                                           ref[h + "mlp.up_proj.weight"]])
        expect[h + "mlp.down_proj.weight"] = ref[h + "mlp.down_proj.weight"]
        expect[h + "input_layernorm.weight"] = ref[h + "input_layernorm.weight"]
        expect[h + "post_attention_layernorm.weight"] = ref[h + "post_attention_layernorm.weight"]
    vparams = dict(vmodel.named_parameters())
    # vLLM pads the vocabulary (embed_tokens / tied lm_head rows) to a multiple of 64: compare the real rows
    mism = [n for n, t in expect.items() if n not in vparams or vparams[n].shape[1:] != t.shape[1:]
            or vparams[n].shape[0] < t.shape[0] or not torch.equal(vparams[n].detach().cpu()[:t.shape[0]], t)]
    vocab_rows = (vparams["model.embed_tokens.weight"].shape[0], ref["model.embed_tokens.weight"].shape[0])
    tied = vmodel.lm_head.weight.data_ptr() == vmodel.model.embed_tokens.weight.data_ptr()
    # every module with a quant_method and a 2-D weight computes through layer.cpu_linear on CPU
    linears = {n: m for n, m in vmodel.named_modules() if hasattr(m, "quant_method")
               and getattr(getattr(m, "weight", None), "ndim", 0) == 2}
    not_plain = [n for n, m in linears.items() if getattr(m, "cpu_linear", None) is not torch.nn.functional.linear]
    # anything tensor-valued a layer keeps besides its parameters could be a stale packed copy
    extra = sorted({f"{n}.{a}" for n, m in vmodel.named_modules() for a, v in vars(m).items()
                    if isinstance(v, torch.Tensor) and not a.startswith("_") and v.numel() > 64})
    seqs = [tok(p + a)["input_ids"] + [eos] for p, a in zip(prompts[:32], answers[:32])]
    # functional check: perturb one HF tensor at a time; engine and trainer must move together
    per_tensor = {}
    student = copy.deepcopy(model)
    base_ref = [trainer_logprobs(student, s) for s in seqs]
    gen = torch.Generator().manual_seed(0)
    for name, param in student.named_parameters():
        with torch.no_grad():
            saved = param.clone()
            param.add_(torch.randn(param.shape, generator=gen) * 0.05 * (param.std() + 1e-2))
        eng.sync_weights(student)
        e, t = eng.prompt_logprobs(seqs), [trainer_logprobs(student, s) for s in seqs]
        per_tensor[name] = {"gap": max_gap(e, t), "moved": max_gap(t, base_ref)}
        with torch.no_grad():
            param.copy_(saved)
    eng.sync_weights(model)
    worst = max(per_tensor.items(), key=lambda kv: kv[1]["gap"])
    unmoved = [n for n, v in per_tensor.items() if v["moved"] < 1e-4]
    print(f"\nH2 pre-pack workaround: {len(expect)} engine tensors compared with the synced HF tensors, "
          f"{len(mism)} differ {mism[:4]} (embedding rows engine/HF {vocab_rows[0]}/{vocab_rows[1]}: vLLM pads the "
          f"vocabulary; padded rows never score real tokens); lm_head tied to embed_tokens in the engine: {tied}; "
          f"{len(linears)} linear layers, {len(not_plain)} not computed with plain F.linear {not_plain[:4]}; "
          f"non-parameter tensors kept on modules: {extra[:6] or 'none'}")
    print(f"  perturbing each of {len(per_tensor)} HF tensors alone (0.05 std noise): worst engine-vs-trainer gap "
          f"{worst[1]['gap']:.2e} nats ({worst[0]}), tensors whose perturbation did not move the trainer: "
          f"{unmoved or 'none'}")
    out["h2"] = {"tensors_compared": len(expect), "tensor_mismatches": mism, "lm_head_tied": tied,
                 "linears": len(linears), "not_plain_linear": not_plain, "extra_tensors": extra,
                 "perturb_worst_gap": worst[1]["gap"], "perturb_worst_tensor": worst[0],
                 "perturb_min_moved": min(v["moved"] for v in per_tensor.values())}

    # ---- H3: sync after AdamW steps at a large lr ---------------------------------------------------------------
    out["h3"] = {}
    print()
    for lr in (1e-3, 1e-2):
        student = copy.deepcopy(model)
        student.train()
        opt = torch.optim.AdamW(student.parameters(), lr=lr)
        g = torch.Generator().manual_seed(1)
        for _ in range(8):
            idx = torch.randint(0, len(task.train), (32,), generator=g).tolist()
            batch = [tok(task.train[i]["prompt"] + task.train[i]["answer"])["input_ids"] + [eos] for i in idx]
            loss = sum(student(torch.tensor([s]), labels=torch.tensor([s])).loss for s in batch) / len(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        eng.sync_weights(model)
        stale = eng.prompt_logprobs(seqs)
        eng.sync_weights(student)
        e1, t1 = eng.prompt_logprobs(seqs), [trainer_logprobs(student, s) for s in seqs]
        moved = max_gap(t1, base_ref)
        hf_s = HFEngine(student, tok)
        g_hf, g_vl = hf_s.generate(prompts, 1, greedy), eng.generate(prompts, 1, greedy)
        same = sum(a == b for a, b in zip(g_hf.completion_ids, g_vl.completion_ids))
        a_hf, a_vl = acc(g_hf.completions), acc(g_vl.completions)
        eng.sync_weights(model)
        restored = max_gap(eng.prompt_logprobs(seqs), base_ref)
        print(f"H3 sync after 8 AdamW steps (lr {lr:g}, full-sequence LM loss): trainer log-probs moved up to "
              f"{moved:.2f} nats; engine vs trainer after sync max gap {max_gap(e1, t1):.2e} (engine before sync: "
              f"{max_gap(stale, t1):.2f}); greedy completions identical {same}/{len(prompts)}, acc HF {a_hf:.3f} vs "
              f"vLLM {a_vl:.3f}; synced back to the warm start: gap {restored:.2e}")
        out["h3"][f"lr{lr:g}"] = {"moved": moved, "gap_after_sync": max_gap(e1, t1), "greedy_same": same,
                                  "acc_hf": a_hf, "acc_vllm": a_vl, "gap_after_restore": restored}

    # ---- H4: sampling ------------------------------------------------------------------------------------------
    bos_in = sum(tok.bos_token_id in ids for ids in r_vl.prompt_ids)
    same_ids = r_vl.prompt_ids == r_hf.prompt_ids
    vtok = eng.llm.get_tokenizer()
    try:
        gen_cfg_eos = eng.llm.llm_engine.model_config.hf_config.eos_token_id
    except AttributeError:
        gen_cfg_eos = None
    fin_vl = sum(r_vl.finished)
    ends_eos = all((c[-1] == eos) == f for c, f in zip(r_vl.completion_ids, r_vl.finished))
    max_len = max(len(c) for c in r_vl.completion_ids + r_hf.completion_ids)
    n = args.samples
    samp = SamplingConfig(max_new_tokens=max_new, temperature=1.0, top_p=1.0, seed=1234)
    s_vl = eng.generate(prompts, n, samp)
    s_hf = hf.generate(prompts, n, samp)
    rep = [p for p in prompts for _ in range(n)]
    ans = [a for a in answers for _ in range(n)]
    m_vl = sum(task.reward_fn(rep, s_vl.completions, ans)) / len(rep)
    m_hf = sum(task.reward_fn(rep, s_hf.completions, ans)) / len(rep)
    exact = sum(math.exp(float(trainer_logprobs(model, s)[-(len(tok(a)["input_ids"]) + 1):].sum()))
                for s, a in zip([tok(p + a)["input_ids"] + [eos] for p, a in zip(prompts, answers)], answers))
    exact /= len(prompts)
    se = math.sqrt(exact * (1 - exact) / len(rep))
    lp_gap = max((lp - trainer_logprobs(model, s_vl.prompt_ids[i // n] + c)[-len(c):]).abs().max().item()
                 for i, (c, lp) in enumerate(zip(s_vl.completion_ids, s_vl.logprobs)))
    groups_distinct = sum(len({tuple(c) for c in s_vl.completion_ids[i * n:(i + 1) * n]}) > 1
                          for i in range(len(prompts)))
    # same SamplingConfig.seed, different RNGs: the two engines draw different (equally distributed) samples
    same_draws = sum(a == b for a, b in zip(s_vl.completion_ids, s_hf.completion_ids)) / len(rep)
    again = eng.generate(prompts[:8], n, samp)
    reproducible = again.completion_ids == s_vl.completion_ids[:8 * n]
    print(f"\nH4 sampling: prompt ids identical in both engines: {same_ids}; BOS in {bos_in}/{len(prompts)} prompts "
          f"(tokenizer adds none; the SFT warm start was trained without BOS too); EOS id {eos}, vLLM tokenizer eos "
          f"{vtok.eos_token_id}, hf_config eos {gen_cfg_eos}; greedy: {fin_vl}/{len(prompts)} vLLM completions "
          f"finished at EOS, EOS last exactly when finished: {ends_eos}; longest completion {max_len} <= "
          f"max_new_tokens {max_new}")
    print(f"  temperature 1, {n} samples x {len(prompts)} prompts: mean reward vLLM {m_vl:.4f}, HF {m_hf:.4f}, exact "
          f"expectation from the model's probabilities {exact:.4f} (binomial s.e. {se:.4f}; z vLLM "
          f"{(m_vl - exact) / se:+.2f}, HF {(m_hf - exact) / se:+.2f}); vLLM sampled-token log-probs vs trainer: max "
          f"gap {lp_gap:.2e}; groups with >1 distinct sample {groups_distinct}/{len(prompts)}; same seed twice -> "
          f"same samples: {reproducible}; vLLM and HF with the same seed drew the same completion for only "
          f"{100 * same_draws:.0f} % of samples (different RNG streams), so an engine=vllm run and an engine=hf run "
          f"with the same --seed are different random runs")
    out["h4"] = {"prompt_ids_equal": same_ids, "bos_prompts": bos_in, "eos": eos, "vllm_tok_eos": vtok.eos_token_id,
                 "greedy_finished_vllm": fin_vl, "eos_last_iff_finished": ends_eos, "max_completion_len": max_len,
                 "max_new_tokens": max_new, "reward_t1_vllm": m_vl, "reward_t1_hf": m_hf, "reward_t1_exact": exact,
                 "reward_t1_se": se, "sampled_logprob_gap": lp_gap, "groups_distinct": groups_distinct,
                 "reproducible": reproducible, "same_draws_vllm_hf": same_draws}

    # ---- H5: the benchmark's eval path -------------------------------------------------------------------------
    ev_hf = evaluate_rewards(hf, model, task.eval, task.reward_fn, cfg)["eval/reward"]
    ev_vl = evaluate_rewards(eng, model, task.eval, task.reward_fn, cfg)["eval/reward"]
    starts = {}
    e2e = Path(args.e2e_dir)
    if e2e.is_dir():
        from safetensors.torch import load_file

        for run_dir in sorted(e2e.iterdir()):
            st = run_dir / "train" / "vllm_model" / "model.safetensors"
            if st.is_file():
                w = load_file(str(st))
                same_start = all(torch.equal(w[k], v) for k, v in ref.items() if k in w)
                entry = {"same_as_warm_start": same_start}
                if not same_start:
                    other = copy.deepcopy(model)
                    other.load_state_dict(w, strict=False)
                    other.eval()
                    entry["hf_greedy_acc_of_its_start"] = evaluate_rewards(
                        HFEngine(other, tok), other, task.eval, task.reward_fn, cfg)["eval/reward"]
                starts[run_dir.name] = entry
    print(f"\nH5 eval path: worker.py -> rapid.train -> evaluate_rewards(engine, ...) evaluates through the *run's* "
          f"engine (vLLM for --engine vllm), greedy, the same 200 prompts and max_new_tokens={max_new}: "
          f"evaluate_rewards HF {ev_hf:.3f}, vLLM {ev_vl:.3f}")
    for name, entry in starts.items():
        print(f"  {e2e}/{name}: started from {settings.key()}: {entry['same_as_warm_start']}"
              + (f" (its start, evaluated by HF greedy: {entry['hf_greedy_acc_of_its_start']:.3f})"
                 if "hf_greedy_acc_of_its_start" in entry else ""))
    out["h5"] = {"eval_hf": ev_hf, "eval_vllm": ev_vl, "e2e_run_starts": starts}
    eng.close()
    tmp.cleanup()

    # ---- H6: run-to-run spread of the e2e results (result.json files, when present) ---------------------------
    finals: dict[str, list] = {}
    for pattern in args.results:
        for f in sorted(Path("/").glob(pattern.lstrip("/")) if pattern.startswith("/") else Path().glob(pattern)):
            r = json.loads(f.read_text())
            if r.get("run") in ("rapid-h1", "rapid-h4", "rapid-h16", "grpg") and r["curve"][0]["accuracy"] == 0.325:
                finals.setdefault(r["engine"], []).append((r["run"], r["seed"], r["accuracy_final"]))
    if finals:
        print("\nH6 e2e final accuracies (runs from warm start e052cd1d5aec, rapid-h1/h4/h16/grpg):")
        for engine_name, rows in finals.items():
            vals = sorted(a for *_, a in rows)
            print(f"  {engine_name}: n={len(vals)} mean {sum(vals) / len(vals):.3f} range {vals[0]:.3f}-{vals[-1]:.3f} "
                  f"{sorted(rows, key=lambda x: (x[1], x[0]))}")
        out["h6"] = {k: v for k, v in finals.items()}
    near_ties_only = all(d["logit_gap_fp64"] is not None and abs(d["logit_gap_fp64"]) < 1e-3 for d in diffs)
    ok = (near_ties_only and not mism and tied and not not_plain and worst[1]["gap"] <= TOL
          and all(v["gap_after_sync"] <= TOL for v in out["h3"].values())
          and same_ids and ends_eos and abs(m_vl - exact) < 3 * se and lp_gap <= TOL and ev_hf == ev_vl)
    out["engine_matches_hf"] = bool(ok)
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
