"""``backend="auto"`` follows a recorded measurement per device (with a fallback order when none exists), and the
public ops trace into one graph under ``torch.compile(fullgraph=True)`` on every CPU backend (forward, backward,
soft-cap, threshold and entropy included), giving the eager results."""

from __future__ import annotations

import json

import pytest
import torch

import rapid_kernels as rk
from rapid_kernels import _dispatch

BACKENDS = rk.available_backends("cpu")
OP = "linear_token_logprobs"


@pytest.fixture
def table(tmp_path, monkeypatch):
    """Write a user dispatch table for this CPU; returns a writer."""
    path = tmp_path / "dispatch_table.json"
    monkeypatch.setenv("RAPID_DISPATCH_TABLE", str(path))
    monkeypatch.delenv("RAPID_KERNEL_BACKEND", raising=False)
    _dispatch.reset_auto_cache()

    def write(backend: str) -> None:
        record = {"backend": backend, "timings_ms": {backend: 1.0}, "shape": "N=1", "dtype": "float32"}
        key = _dispatch.device_key(torch.device("cpu"))
        path.write_text(json.dumps({"version": 1, "records": {key: {OP: record}}}))
        _dispatch.reset_auto_cache()

    yield write
    _dispatch.reset_auto_cache()


def test_auto_follows_the_recorded_measurement(table):
    table("torch")
    assert _dispatch.auto_backend_name("cpu", OP) == "torch"
    if "cpp" in BACKENDS:
        table("cpp")
        assert _dispatch.auto_backend_name("cpu", OP) == "cpp"


def test_unusable_record_falls_back_to_the_fixed_order(table):
    table("cuda")                                   # recorded elsewhere / not usable on CPU tensors
    expected = "cpp" if "cpp" in BACKENDS else "torch"
    assert _dispatch.auto_backend_name("cpu", OP) == expected


def test_environment_override_wins(table, monkeypatch):
    table("cpp")
    monkeypatch.setenv("RAPID_KERNEL_BACKEND", "torch")
    assert _dispatch.auto_backend_name("cpu", OP) == "torch"


def test_shipped_table_is_well_formed():
    records = json.loads(_dispatch.SHIPPED_TABLE.read_text())["records"]
    assert records, "the package ships at least one measured record"
    for key, ops in records.items():
        assert key.split(":", 1)[0] in ("cpu", "cuda")
        for op, rec in ops.items():
            assert op in ("token_logprobs", "linear_token_logprobs", "rapid_loss", "fused_rapid_loss")
            assert rec["backend"] in rec["timings_ms"] and rec["timings_ms"][rec["backend"]] == min(
                rec["timings_ms"].values())


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_fused_loss_compiles_fullgraph(backend):
    torch.manual_seed(0)
    n, d, vocab = 12, 8, 50
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(vocab, d, requires_grad=True)
    t = torch.randint(0, vocab, (n,))
    blp, thr = torch.randn(n) - 4, torch.full((n,), -2.0)
    cu, r = torch.tensor([0, 2, 5, 9, 12]), torch.tensor([1.0, 0.0, 0.0, 1.0])

    def step(h, w):
        out = rk.fused_rapid_loss(h, w, t, blp, r, cu, 2, temperature=0.9, softcap=5.0, threshold=thr,
                                  return_entropy=True, backend=backend)
        tlp = rk.token_logprobs(h @ w.T, t, 0.9, softcap=5.0, backend=backend)
        return out.loss + tlp.sum(), out.entropy

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, entropy = compiled(h, w)
    grads = torch.autograd.grad(loss, (h, w))
    eager_loss, eager_entropy = step(h, w)
    eager_grads = torch.autograd.grad(eager_loss, (h, w))
    assert torch.allclose(loss, eager_loss) and torch.allclose(entropy, eager_entropy)
    assert all(torch.allclose(a, b) for a, b in zip(grads, eager_grads))


def test_compiled_data_checks_still_fire():
    """Under torch.compile the data checks become torch._assert_async: bad targets still stop the call."""
    def f(h, w, t):
        return rk.linear_token_logprobs(h, w, t, backend="torch")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    h, w = torch.randn(3, 4), torch.randn(5, 4)
    assert compiled(h, w, torch.tensor([0, 1, 4])).shape == (3,)
    with pytest.raises(RuntimeError, match="targets must lie in"):
        compiled(h, w, torch.tensor([0, 1, 5]))
