"""Dist on 2 gloo ranks: collectives, the metrics reduction rule, the config check, and failing ranks named."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch
import torch.distributed

from rapid import parallel
from rapid.distributed import Dist, RankFailureError, init_distributed, main_logger

from .launch import run_ranks


def _collectives() -> dict:
    d = init_distributed(timeout_s=30)
    r = d.rank
    out = {"rank": d.rank, "world": d.world_size, "backend": d.backend, "is_main": d.is_main,
           "sum_float": d.all_reduce(1.5 + r), "max_float": d.all_reduce(float(r), op="max"),
           "sum_list": d.all_reduce([1.0, float(r)]),
           "sum_tensor": d.all_reduce(torch.tensor([1, 2 + r])),
           "bcast": d.broadcast_object({"h": 4 + r}),
           "gather": d.all_gather_object(("rank", r))}
    d.barrier("ok")
    out["metrics"] = d.reduce_metrics({
        "reward/mean": 0.25 + 0.5 * r, "timing_s/gen": 1.0 + r, "reward/errors": 1 + r, "perf/util_mean": 10.0 * r,
        "rapid/w_max": 2.0 - r, "rollout": 3, "final": True, "only_rank1": 7.0 if r == 1 else None,
        **({"eval/reward": 0.5} if r == 0 else {})})
    joined = init_distributed(timeout_s=30)         # a group already exists: join it, and leave it to its owner
    joined.close()
    out["joined"] = (joined.rank, joined.world_size, d.owns_group, torch.distributed.is_initialized())
    d.check_same_config({"lr": 1e-3, "seed": 0, "output_dir": f"run{r}"}, ignore=("output_dir",))
    try:
        d.check_same_config({"lr": 1e-3 * (1 + r), "seed": 0, "group_size": 8})
    except ValueError as err:
        out["mismatch"] = str(err)
    return out


def test_collectives_metrics_and_config_check(tmp_path):
    results = [r.unwrap() for r in run_ranks(_collectives, 2, tmp_path)]
    for r, got in enumerate(results):
        assert (got["rank"], got["world"], got["backend"], got["is_main"]) == (r, 2, "gloo", r == 0)
        assert got["sum_float"] == 4.0 and got["max_float"] == 1.0 and got["sum_list"] == [2.0, 1.0]
        assert got["sum_tensor"].tolist() == [2, 5] and got["sum_tensor"].dtype == torch.int64
        assert got["joined"] == (r, 2, True, True)
        assert got["bcast"] == {"h": 4} and got["gather"] == [("rank", 0), ("rank", 1)]
        # the rule: mean by default, max for timings and maxima, sum for counts, per-rank kept for utilisation
        assert got["metrics"] == {
            "reward/mean": 0.5, "timing_s/gen": 2.0, "reward/errors": 3, "perf/util_mean": 5.0,
            "perf/util_mean/rank0": 0.0, "perf/util_mean/rank1": 10.0, "rapid/w_max": 2.0, "rollout": 3,
            "final": True, "only_rank1": 7.0, "eval/reward": 0.5}
        assert type(got["metrics"]["rollout"]) is int and type(got["metrics"]["reward/errors"]) is int
        assert got["mismatch"].startswith("config differs across ranks: rank 1 differs from rank 0 in lr")
        assert "rank 0: 0.001" in got["mismatch"] and "rank 1: 0.002" in got["mismatch"]
        assert "group_size" not in got["mismatch"] and "seed" not in got["mismatch"]


def _late_rank(bad: int, mode: str) -> str:
    d = init_distributed(timeout_s=3)
    if d.rank == bad:
        if mode == "exit":
            os._exit(3)                         # a crash: no clean-up, no goodbye
        time.sleep(60)                          # a hang: killed by the launcher
    started = time.monotonic()
    try:
        d.barrier("rollout 7")
    except RankFailureError as err:
        return f"{time.monotonic() - started:.1f}|{err}"
    return "no error"


@pytest.mark.parametrize("bad,mode", [(1, "hang"), (1, "exit"), (0, "hang")])
def test_a_missing_rank_is_named_instead_of_hanging(tmp_path, bad, mode):
    good = 1 - bad
    result = run_ranks(_late_rank, 2, tmp_path, bad, mode, timeout=40, wait_for=[good])[good].unwrap()
    seconds, message = result.split("|", 1)
    assert float(seconds) < 10                  # bounded by the timeout (3 s), not by the hung rank
    assert message.startswith("barrier 'rollout 7': ")
    if bad == 1:
        assert "rank(s) 1 did not arrive within 3 s" in message
    else:
        assert "rank 0 did not confirm within 3 s" in message


def test_world_size_one_needs_no_process_group(monkeypatch, caplog):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    d = init_distributed()
    assert d == Dist(timeout_s=1800.0) and not d.active and d.is_main
    assert d.all_reduce(2.5) == 2.5 and d.all_gather_object("x") == ["x"] and d.broadcast_object(3) == 3
    assert d.reduce_metrics({"a": 1.0}) == {"a": 1.0}
    d.barrier("nothing to wait for")
    d.check_same_config({"lr": 1.0})
    with caplog.at_level(logging.INFO, logger="rapid.test"):
        main_logger("rapid.test").info("from rank 0")
        monkeypatch.setenv("RANK", "1")
        main_logger("rapid.test").info("from rank 1")
    assert [r.getMessage() for r in caplog.records if r.name == "rapid.test"] == ["from rank 0"]


def test_bad_arguments_are_named(monkeypatch):
    with pytest.raises(ValueError, match="timeout_s"):
        init_distributed(timeout_s=0)
    with pytest.raises(ValueError, match="op must be"):
        Dist().all_reduce(1.0, op="mean")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed()
    with pytest.raises(ValueError, match="parallel must be"):
        parallel.check_parallel("zero3")


def test_wrappers_at_world_size_one_and_bad_modules(monkeypatch):
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert parallel.parallelize(module, "ddp", torch.bfloat16, torch.device("cpu")) is module
    with parallel.no_sync(module):                     # no wrapper: a no-op
        module(torch.ones(1, 3)).sum().backward()
    assert module[0].weight.grad is not None
    with pytest.raises(ValueError, match=r"fp32 master weights, but 0.weight is torch.bfloat16"):
        parallel.parallelize(torch.nn.Sequential(torch.nn.Linear(3, 2).bfloat16()), "fsdp", torch.bfloat16,
                                torch.device("cpu"))
    monkeypatch.setattr(parallel, "_fsdp2", lambda: None)
    with pytest.raises(ValueError, match=r"parallel='fsdp' needs FSDP2"):
        parallel.parallelize(module, "fsdp", torch.float32, torch.device("cpu"))
