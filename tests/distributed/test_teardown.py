"""Teardown after ``rapid.train`` on 2 gloo ranks, whether rapid made the process group or the caller did.

A torchrun script that made its own group, trained, and called ``destroy_process_group()`` aborted at exit now and
then (``terminate called without an active exception``): importing rapid's trainer while the caller's group existed
left that group in ``torch.distributed.nn.functional``'s default arguments, so destroying it freed nothing and its
gloo worker threads ran into interpreter shutdown. These tests pin what must hold when ``train`` returns (or fails):

- no process group rapid made is registered any more, and no data-parallel wrapper is alive;
- nothing but the test itself references the group object, so dropping that reference frees it and ends its
  gloo threads then (the thread count drops), not at interpreter shutdown;
- no thread but the main one is left that would keep the interpreter from exiting (non-daemon);
- a check that fails after rapid made the group (configs differ across ranks) still destroys that group;
- ``Dist.close`` destroys a side group rapid made (nccl's gloo monitor) and leaves the caller's group alone.
"""

from __future__ import annotations

import os

import pytest

from .launch import run_ranks

PROMPTS = [{"prompt": f"{i}+{i}="} for i in range(8)]
BASE = dict(group_size=2, prompts_per_rollout=4, prompts_per_step=2, num_rollouts=1, max_new_tokens=4, lr=1e-5,
            seed=0, progress_bar=False, kernel_backend="torch")


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _train_and_inspect(user_made: bool) -> dict:
    import gc
    import sys
    import threading

    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    if user_made:
        tdist.init_process_group("gloo")           # the caller's group, made before rapid is imported
    import rapid
    from rapid.tiny import build_tiny

    seen = []

    def reward(prompts, completions, **_):
        if not seen and tdist.is_initialized():
            seen.append(tdist.group.WORLD)          # the group in use during the run (rapid's or the caller's)
        return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

    model, tok = build_tiny(seed=0)
    result = rapid.train(model, PROMPTS, reward, rapid.RapidConfig(**BASE), tokenizer=tok)
    group = seen.pop()
    world = tdist.distributed_c10d._world
    out = {"registered": [world.pg_names.get(g, "?") for g in world.pg_map], "initialized": tdist.is_initialized(),
           "ddp_alive": sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()),
           "model_type": type(result.model).__name__,
           "non_daemon": [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]}
    if user_made:
        tdist.destroy_process_group()
    out["other_refs"] = sys.getrefcount(group) - 2          # minus ``group`` here and getrefcount's argument
    before = _os_threads()
    del group                                               # the last reference: the group is freed now
    out["threads_ended"] = before - _os_threads()
    return out


@pytest.mark.parametrize("user_made", [False, True], ids=["rapid-made-group", "user-made-group"])
def test_train_leaves_nothing_holding_the_group(tmp_path, user_made):
    results = [r.unwrap() for r in run_ranks(_train_and_inspect, 2, tmp_path, user_made, timeout=240)]
    for rank, got in enumerate(results):
        if user_made:       # the caller's group is the caller's: still registered until its own destroy
            assert got["registered"] == ["0"] and got["initialized"], (rank, got)
        else:
            assert got["registered"] == [] and not got["initialized"], (rank, got)
        assert got["other_refs"] == 0, (rank, got)
        assert got["threads_ended"] >= 2, (rank, got)           # ProcessGroupGloo's 2 worker threads (+ gloo's loop)
        assert got["ddp_alive"] == 0 and got["model_type"] == "Qwen2ForCausalLM", (rank, got)
        assert got["non_daemon"] == [], (rank, got)


def _mismatched_config() -> dict:
    import torch.distributed as tdist

    import rapid
    from rapid.tiny import build_tiny

    model, tok = build_tiny(seed=0)
    cfg = rapid.RapidConfig(**{**BASE, "lr": 1e-5 * (1 + int(os.environ["RANK"]))})     # differs across ranks
    try:
        rapid.train(model, PROMPTS, lambda prompts, completions, **_: [0.0] * len(completions), cfg,
                    tokenizer=tok)
    except ValueError as err:
        return {"error": str(err), "initialized": tdist.is_initialized()}
    return {"error": None, "initialized": tdist.is_initialized()}


def test_failed_check_destroys_the_group_rapid_made(tmp_path):
    for rank, got in enumerate(r.unwrap() for r in run_ranks(_mismatched_config, 2, tmp_path, timeout=120)):
        assert got["error"] is not None and "config differs across ranks" in got["error"], (rank, got)
        assert not got["initialized"], (rank, got)


def _close_with_side_group() -> dict:
    import torch.distributed as tdist

    from rapid.distributed import Dist, init_distributed

    tdist.init_process_group("gloo")                    # the caller's group
    joined = init_distributed()
    # what init_distributed builds on nccl (a gloo side group for barriers), here beside a gloo default group
    dist = Dist(rank=joined.rank, world_size=joined.world_size, backend=joined.backend,
                monitor_group=tdist.new_group(backend="gloo"), owns_monitor=True)
    dist.barrier("side group in use")
    world = tdist.distributed_c10d._world
    before = len(world.pg_map)
    dist.close()
    return {"before": before, "after": [world.pg_names[g] for g in world.pg_map],
            "initialized": tdist.is_initialized()}


def test_close_destroys_the_side_group_it_made_and_keeps_the_callers(tmp_path):
    for rank, got in enumerate(r.unwrap() for r in run_ranks(_close_with_side_group, 2, tmp_path, timeout=60)):
        assert got["before"] == 2, (rank, got)
        assert got["after"] == ["0"] and got["initialized"], (rank, got)
