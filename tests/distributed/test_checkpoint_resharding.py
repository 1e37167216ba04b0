"""Checkpoints across world sizes (2 gloo ranks ↔ 1 process), with DDP and FSDP2: model and optimizer state equal
after load, trainer state from rank 0, RNG per rank (derived, and said so, for a rank that did not exist), a
failure on one rank raises on every rank and leaves nothing half-written, a damaged newest checkpoint is skipped."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from rapid import checkpoint
from rapid.loss import seeds
from rapid.distributed import init_distributed
from rapid.parallel import full_tensor, parallelize

from .launch import run_ranks
from .test_parallel import SeqLoss, _data, tiny_model

PARALLEL = ("ddp", "fsdp")
CONFIG = {"lr": 1e-2, "seed": 0}


def _full_state(loss: SeqLoss, opt: torch.optim.Optimizer) -> dict[str, tuple]:
    """HF name → (weight, exp_avg, exp_avg_sq, step), whole tensors (gathered one at a time under FSDP2)."""
    out = {}
    for name, p in loss.named_parameters():
        st = opt.state[p]
        out[name.removeprefix("model.")] = tuple(full_tensor(t.detach()).clone() for t in (
            p, st["exp_avg"], st["exp_avg_sq"], st["step"]))
    return out


def _wrapped(dist, parallel: str, seed: int):
    loss = SeqLoss(tiny_model(seed))
    wrapped = parallelize(loss, parallel, torch.float32, dist.device, dist)
    return loss, wrapped, torch.optim.AdamW(wrapped.parameters(), lr=CONFIG["lr"])


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _world_two(root: str, from_world_one: str) -> dict:
    dist = init_distributed(timeout_s=60)
    logs = _Messages()
    logging.getLogger("rapid.checkpoint").addHandler(logs)
    out: dict = {}
    for parallel in PARALLEL:
        # 1 → 2: a world-size-1 checkpoint (bare HF model) into the wrapped loss module on two ranks
        loss, wrapped, opt = _wrapped(dist, parallel, seed=5)
        state = checkpoint.load_checkpoint(from_world_one, wrapped, opt, dist=dist)
        out[("loaded", parallel)] = {"state": _full_state(loss, opt), "trainer": state, "draw": torch.rand(2),
                                     "rank_state": checkpoint.load_rank_state(from_world_one, dist)}
        # 2 → 1: train one step on this rank's share, save (the parent loads it at world size 1)
        loss, wrapped, opt = _wrapped(dist, parallel, seed=0)
        ids, mask, coef = _data()
        local = slice(4 * dist.rank, 4 * dist.rank + 4)
        (wrapped(ids[local], mask[local], coef[local]) / 4).backward()
        opt.step()
        torch.manual_seed(100 + dist.rank)
        path = checkpoint.save_checkpoint(f"{root}/{parallel}", 1, wrapped, opt, {"rollout": 1, "sampler": 7},
                                          CONFIG, dist=dist, rank_state={"rank": dist.rank})
        out[("saved", parallel)] = {"state": _full_state(loss, opt), "draw": torch.rand(2), "path": str(path)}
    # a failure on one rank: every rank raises, the previous checkpoint stays the newest intact one
    original = checkpoint._save

    def failing(obj, path):
        if dist.rank == 1 and "ranks" in str(path):
            raise OSError("rank 1's disk is full")
        original(obj, path)

    checkpoint._save = failing
    try:
        checkpoint.save_checkpoint(f"{root}/ddp", 2, wrapped, opt, {"rollout": 2}, CONFIG, dist=dist)
    except (OSError, checkpoint.CheckpointError) as err:
        out["failure"] = f"{type(err).__name__}: {err}"
    checkpoint._save = original
    dist.barrier("after the failed save")
    out["left"] = sorted(os.listdir(f"{root}/ddp"))
    # a damaged newest checkpoint: every rank falls back to the previous one
    checkpoint.save_checkpoint(f"{root}/ddp", 2, wrapped, opt, {"rollout": 2}, CONFIG, dist=dist)
    if dist.is_main:
        (checkpoint.list_checkpoints(f"{root}/ddp")[-1] / "trainer_state.pt").write_bytes(b"x")
    dist.barrier("damaged")
    out["fallback"] = str(checkpoint.latest_intact_checkpoint(f"{root}/ddp", dist))
    out["logs"] = logs.messages
    return out


def _hf_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, tuple]:
    return {n: (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"], opt.state[p]["step"])
            for n, p in model.named_parameters()}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        for a, b in zip(got[name], want[name]):
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Save at world size 1 (a trained bare model), then one 2-rank job that loads it and saves its own."""
    root = tmp_path_factory.mktemp("ckpt")
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=CONFIG["lr"])
    ids, mask, coef = _data()
    (SeqLoss(model)(ids, mask, coef) / 8).backward()
    opt.step()
    torch.manual_seed(11)
    one = checkpoint.save_checkpoint(root / "world1", 1, model, opt, {"rollout": 1, "sampler": 3}, CONFIG,
                                     rank_state={"rank": 0})
    expected = {"state": _hf_state(model, opt), "draw": torch.rand(2), "rng": torch.load(
        one / "ranks" / "rank-00000.pt", weights_only=False)["rng"]}
    ranks = [r.unwrap() for r in run_ranks(_world_two, 2, root, str(root), str(one), timeout=150)]
    return expected, ranks


@pytest.mark.parametrize("parallel", PARALLEL)
def test_world_one_checkpoint_resumes_on_two_ranks(run, parallel):
    expected, ranks = run
    for rank, out in enumerate(ranks):
        got = out[("loaded", parallel)]
        _assert_same(got["state"], expected["state"])
        assert got["trainer"] == {"rollout": 1, "sampler": 3}
        assert got["rank_state"] == ({"rank": 0} if rank == 0 else None)
    torch.testing.assert_close(ranks[0][("loaded", parallel)]["draw"], expected["draw"], atol=0, rtol=0)
    # rank 1 did not exist at save time: a seed derived from rank 0's state and the rank, logged
    torch.manual_seed(seeds.rank_seed(expected["rng"], 1))
    torch.testing.assert_close(ranks[1][("loaded", parallel)]["draw"], torch.rand(2), atol=0, rtol=0)
    assert any(m.startswith("rank 1: rollout-000001 has no RNG state for this rank (saved at world size 1)")
               for m in ranks[1]["logs"])


@pytest.mark.parametrize("parallel", PARALLEL)
def test_two_rank_checkpoint_resumes_in_one_process(run, parallel):
    _, ranks = run
    saved = ranks[0][("saved", parallel)]
    _assert_same(ranks[1][("saved", parallel)]["state"], saved["state"])   # ranks agreed before the save
    model = tiny_model(seed=9)                                              # the bare HF model, other weights
    opt = torch.optim.AdamW(model.parameters(), lr=CONFIG["lr"])
    state = checkpoint.load_checkpoint(saved["path"], model, opt)
    draw = torch.rand(2)
    assert state == {"rollout": 1, "sampler": 7}
    _assert_same(_hf_state(model, opt), saved["state"])
    torch.testing.assert_close(draw, saved["draw"], atol=0, rtol=0)       # rank 0's RNG continues
    assert checkpoint.load_rank_state(saved["path"]) == {"rank": 0}


def test_a_failing_rank_fails_the_save_everywhere_and_damage_falls_back(run):
    _, ranks = run
    assert ranks[1]["failure"] == "OSError: rank 1's disk is full"
    assert ranks[0]["failure"].startswith("CheckpointError: checkpoint write failed on rank 1: OSError: rank 1's")
    assert ranks[0]["left"] == ["rollout-000001"]                           # no temp dir, no half checkpoint
    assert [r["fallback"] for r in ranks] == [ranks[0][("saved", "ddp")]["path"]] * 2
    assert any("skipping checkpoint" in m and "trainer_state.pt" in m for m in ranks[0]["logs"])
