"""On-policy |log w| per sampling setting, HF engine (rapid.train, H = 1) — numbers for RESULTS.md."""
import json
import sys
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import rapid
from rapid.tiny import build_tiny
from rapid.testing import PROMPTS, digits_reward, hostile, small_config
if __name__ == "__main__":
    torch.set_num_threads(1)
    settings = [dict(temperature=1.0), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8),
                dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=0.9, stop=["a", "5"]),
                dict(dtype="bfloat16", top_p=0.9, micro_batch_tokens=12)]
    for s in settings:
        for hostile_cfg in (False, True):
            m, t = build_tiny(seed=0)
            if hostile_cfg:
                hostile(m)
            cfg = small_config(num_rollouts=1, prompts_per_rollout=4, prompts_per_step=4, max_new_tokens=6, **s)
            h = rapid.train(m, PROMPTS, digits_reward, cfg, tokenizer=t).history[0]
            print(json.dumps({"setting": s, "hostile_generation_config": hostile_cfg,
                              "log_w_abs_mean": h["rapid/log_w_abs_mean"], "w_mean": h["rapid/w_mean"],
                              "w_max": h["rapid/w_max"], "engine_logprob_diff": h["rapid/engine_logprob_diff"]}))
