"""DDP and FSDP2 through ``parallelize`` on 2 gloo ranks: the update equals one process's update on the union of
the ranks' data, gradient accumulation under ``no_sync`` really defers the reduction, weights agree on every rank."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from rapid.distributed import init_distributed
from rapid.parallel import full_tensor, no_sync, parallelize
from rapid.tiny import build_tiny

from .launch import run_ranks

WORLD, SEQS, MICRO, LR, STEPS = 2, 8, 2, 0.5, 2
CASES = [("ddp", "float32"), ("fsdp", "float32"), ("fsdp", "bfloat16")]


class SeqLoss(torch.nn.Module):
    """A per-sequence policy-gradient-shaped loss, −Σ_s c_s Σ_t log p(y_t), computed inside forward (so the
    wrapper's hooks run) — the shape of rapid's Policy."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids[:, :-1]).logits                                     # (B, T-1, V)
        self.seen_dtype = logits.dtype
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)   # (B, T-1)
        return -(coef * (lp * mask[:, 1:]).sum(-1)).sum()


@functools.lru_cache(maxsize=1)
def _template() -> torch.nn.Module:
    return build_tiny(num_layers=2, seed=0)[0]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """The tiny model (seed 0), or one with other weights; copies of one build (building costs seconds per rank)."""
    model = copy.deepcopy(_template())
    if seed:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g), alpha=0.02)
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 90, (SEQS, 9), generator=g)                                       # (S, T)
    lengths = torch.randint(4, 10, (SEQS,), generator=g)
    mask = (torch.arange(9)[None, :] < lengths[:, None]).float()                             # (S, T)
    coef = torch.randn(SEQS, generator=g)                                                     # (S,) like w̄·A
    return ids, mask, coef


def _train(module, ids, mask, coef, scale: float, wrapped=None, probe=None) -> None:
    """STEPS SGD steps; each step accumulates over micro-batches of MICRO sequences, syncing on the last only."""
    wrapped = wrapped if wrapped is not None else module
    opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=LR)
    n = len(ids) // MICRO
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        for i in range(n):
            sl = slice(i * MICRO, (i + 1) * MICRO)
            with no_sync(wrapped, enabled=i < n - 1):
                (wrapped(ids[sl], mask[sl], coef[sl]) * scale).backward()
            if probe is not None and i == 0:
                probe(wrapped)
        opt.step()


def _all_cases() -> dict:
    """One spawn runs every case (start-up dominates a 2-rank run on a shared 2-core box)."""
    dist = init_distributed(timeout_s=60)
    return {case: _case(dist, *case) for case in CASES}


def _case(dist, parallel: str, dtype_name: str) -> dict:
    model = tiny_model()
    ids, mask, coef = _data()
    local = slice(dist.rank * SEQS // WORLD, (dist.rank + 1) * SEQS // WORLD)               # this rank's groups
    total = dist.all_reduce(float(SEQS // WORLD))                                            # S_global
    loss = SeqLoss(model)
    wrapped = parallelize(loss, parallel, getattr(torch, dtype_name), dist.device, dist)
    seen: dict = {}

    def probe(w) -> None:                           # after the first (unsynced) micro-batch
        grads = [p.grad for p in w.parameters()]
        seen["grads_none"] = all(g is None for g in grads)
        norm = sum(float(g.float().norm()) for g in grads if g is not None)
        seen["grad_norms"] = dist.all_gather_object(norm)

    # the wrapper averages gradients over ranks: the rank's share of Σ/S_global, times the world size
    _train(loss, ids[local], mask[local], coef[local], dist.world_size / total, wrapped, probe)
    shard_dtypes = {str(p.dtype) for p in wrapped.parameters()}
    weights = {n: full_tensor(p.detach()) for n, p in model.named_parameters()}   # collective under FSDP2
    return {"weights": weights, "shard_dtypes": shard_dtypes, "compute": str(loss.seen_dtype), **seen,
            "wrapper": type(wrapped).__name__}


def _reference() -> dict[str, torch.Tensor]:
    model = tiny_model()
    ids, mask, coef = _data()
    _train(SeqLoss(model), ids, mask, coef, 1.0 / SEQS)
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return [r.unwrap() for r in run_ranks(_all_cases, WORLD, tmp_path_factory.mktemp("ranks"), timeout=120)]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_update_equals_single_process_on_the_union(ranks, reference, parallel):
    r0, r1 = (r[(parallel, "float32")] for r in ranks)
    assert r0["wrapper"] == ("DistributedDataParallel" if parallel == "ddp" else "FSDPSeqLoss")
    for name, want in reference.items():
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name          # identical on every rank
        delta = (r0["weights"][name] - want).abs().max().item()
        assert delta < 2e-6, (name, delta)                                            # fp32 summation-order noise
    # no_sync deferred the reduction: the first micro-batch's gradients were still rank-local
    if parallel == "ddp":
        assert r0["grad_norms"][0] != r0["grad_norms"][1]
    else:
        assert r0["grads_none"] and r1["grads_none"]


def test_fsdp_keeps_fp32_master_weights_and_computes_in_bf16(ranks, reference):
    r0, r1 = (r[("fsdp", "bfloat16")] for r in ranks)
    assert r0["shard_dtypes"] == {"torch.float32"} and r0["compute"] == "torch.bfloat16"
    for name, want in reference.items():
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
        assert r0["weights"][name].dtype == torch.float32
        assert (r0["weights"][name] - want).abs().max().item() < 5e-2, name           # bf16 compute, same update
