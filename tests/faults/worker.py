"""A training run in its own process, for the fault tests:
``python -m tests.faults.worker OUT [--resume] [--hang-at N]`` (the N-th rollout's reward call never returns).

Writes OUT/started when the first rollout is scored and OUT/final.pt (the trained weights) when it finishes.
The reward sleeps a little so a run lasts a few seconds and a signal lands somewhere inside it.
"""

import sys
import time
from pathlib import Path

import torch

import rapid
from rapid.tiny import build_tiny

CONFIG = dict(group_size=4, prompts_per_rollout=8, prompts_per_step=2, num_rollouts=5, max_new_tokens=4, lr=3e-3,
              progress_bar=False, seed=0, save_every=1, keep_checkpoints=2)


def main() -> int:
    out = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    hang_at = int(sys.argv[sys.argv.index("--hang-at") + 1]) if "--hang-at" in sys.argv else None
    calls = {"n": 0}

    def reward(prompts, completions, **_):
        if len(completions) > 2:
            calls["n"] += 1
            (out / "started").touch()
            if calls["n"] == hang_at:              # a verifier stuck for good, deaf to exceptions
                (out / "hanging").touch()
                while True:
                    try:
                        time.sleep(3600)
                    except BaseException:          # noqa: BLE001 — this reward ignores every signal
                        pass
            time.sleep(0.3)
        return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

    torch.set_num_threads(1)
    model, tok = build_tiny(seed=0)
    rows = [{"prompt": f"{i}="} for i in range(32)]
    cfg = rapid.RapidConfig(**CONFIG, output_dir=str(out / "run"), resume=resume, reward_timeout_s=600.0)
    result = rapid.train(model, rows, reward, cfg, tokenizer=tok)
    if not result.interrupted:
        torch.save(result.model.state_dict(), out / "final.pt")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
