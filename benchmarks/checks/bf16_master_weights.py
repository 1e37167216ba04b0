"""fp32 master weights vs bf16 parameters updated in place: the fraction of weights one bf16-compute rollout at
lr 1e-6 moves (RESULTS.md, "Exact behaviour distribution and precision")."""
import sys
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import rapid
from rapid.tiny import build_tiny
from rapid.testing import PROMPTS, digits_reward, small_config
if __name__ == "__main__":
    torch.set_num_threads(1)
    m, t = build_tiny(seed=0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    r = rapid.train(m, PROMPTS, digits_reward, small_config(dtype="bfloat16", lr=1e-6, num_rollouts=1), tokenizer=t)
    total = sum(p.numel() for p in r.model.parameters())
    moved = sum((p.detach() != before[n]).sum().item() for n, p in r.model.named_parameters())
    bf = sum(((before[n].bfloat16() + (p.detach() - before[n]).bfloat16()) != before[n].bfloat16()).sum().item()
             for n, p in r.model.named_parameters())
    print(f"fp32 master moved {moved/total:.4f}; same steps applied to bf16 params in place moved {bf/total:.4f}")
