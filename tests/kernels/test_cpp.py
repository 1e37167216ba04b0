"""The C++/OpenMP backend (``backend="cpp"``) against the float64 reference: outputs, gradients, odd shapes,
non-contiguous inputs, bad input, thread-count reproducibility, ``opcheck`` and ``torch.compile``.

Shapes are small (CPU tier, shared cores). N = 41 and V = 4231 are deliberately odd; V = CPU_VOCAB_CHUNK + 1
puts a single column in the last vocabulary chunk.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import rapid_kernels as rk
from rapid_kernels import reference as ref

_cpp_ops = pytest.importorskip("rapid_kernels._cpp_ops", reason="rapid_kernels._C not built")
pytestmark = pytest.mark.skipif("cpp" not in rk.available_backends(), reason="cpp backend unavailable")

# (output atol, gradient atol) against float64 computed from the same (low-precision) input values: outputs are
# fp32 whatever the input, so only gradients pay the rounding of their low-precision dtype.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-5, 2e-2), torch.float16: (2e-5, 2e-3)}
DTYPES = list(TOL)


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:.3g}"


def _leaf(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).detach().requires_grad_()


# ------------------------------------------------------------------------------------------------ token_logprobs
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, vocab, temperature", [(41, 4231, 0.7), (1, 7, 1.0), (0, 5, 1.0)])
def test_token_logprobs_matches_reference(dtype, n, vocab, temperature):
    torch.manual_seed(0)
    logits = _leaf(torch.randn(n, vocab) * 4, dtype)
    targets = torch.randint(0, vocab, (n,))
    grad = torch.randn(n)
    out = rk.token_logprobs(logits, targets, temperature, backend="cpp")
    out.backward(grad)
    expect_logits = _leaf(logits.detach(), torch.float64)
    expect = ref.token_logprobs(expect_logits, targets, temperature)
    expect.backward(grad.double())
    atol_out, atol_grad = TOL[dtype]
    assert out.dtype == torch.float32
    _close(out, expect, atol_out, "token_logprobs")
    assert logits.grad.dtype == dtype
    _close(logits.grad, expect_logits.grad, atol_grad, "d logits")


def test_token_logprobs_non_contiguous():
    torch.manual_seed(1)
    base = torch.randn(2 * 4231, 41).t()                                  # (41, 8462), strides (1, 41)
    logits = base[:, ::2].detach().requires_grad_()                     # (41, 4231) non-contiguous
    targets = torch.randint(0, 4231, (82,))[::2]                        # non-contiguous targets
    out = rk.token_logprobs(logits, targets, 1.3, backend="cpp")
    out.sum().backward()
    expect_logits = _leaf(logits.detach(), torch.float64)
    ref.token_logprobs(expect_logits, targets, 1.3).sum().backward()
    _close(out, ref.token_logprobs(logits.detach().double(), targets, 1.3), 2e-5, "token_logprobs")
    _close(logits.grad, expect_logits.grad, 2e-5, "d logits")


# ----------------------------------------------------------------------------------------- linear_token_logprobs
def _eager_bf16_error(hidden, weight, bias, targets, temperature, grad, leaves, expect):
    """PyTorch's own error on the same bf16 inputs (logits rounded to bf16, as eager training code computes them):
    (output error, [d hidden, d weight, d bias] errors) against the float64 reference."""
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    logits = h @ w.T + (b if b is not None else 0)                                         # (N, V) bf16
    out = torch.log_softmax(logits.float() / temperature, -1).gather(1, targets.long()[:, None]).squeeze(1)
    out.backward(grad)
    errs = [(x.grad.double() - r.grad).abs().max().item() for x, r in zip((h, w, b), leaves) if x is not None]
    return (out.double() - expect).abs().max().item(), errs


def _check_linear(n, dim, vocab, dtype, temperature, with_bias, hidden=None, weight=None, seed=0):
    """cpp vs float64. fp32/fp16: the fixed TOL table. bf16 runs bf16 GEMMs whose logits tile is rounded to bf16
    like eager's, so the bound is the flash-attention rule: at most twice PyTorch's own bf16 error (+ TOL)."""
    torch.manual_seed(seed)
    hidden = _leaf(torch.randn(n, dim) if hidden is None else hidden, dtype)
    weight = _leaf(torch.randn(vocab, dim) / dim**0.5 * 3 if weight is None else weight, dtype)
    bias = _leaf(torch.randn(vocab), dtype) if with_bias else None
    targets = torch.randint(0, vocab, (n,), dtype=torch.int32)
    grad = torch.randn(n)
    out = rk.linear_token_logprobs(hidden, weight, targets, temperature, bias, backend="cpp")
    out.backward(grad)
    leaves = [_leaf(t.detach(), torch.float64) if t is not None else None for t in (hidden, weight, bias)]
    expect = ref.linear_token_logprobs(leaves[0], leaves[1], targets, temperature, leaves[2])
    expect.backward(grad.double())
    atol_out, atol_grad = TOL[dtype]
    bounds = [atol_out * 5] + [atol_grad * 5] * 3
    if dtype == torch.bfloat16:
        eager_out, eager_grads = _eager_bf16_error(hidden, weight, bias, targets, temperature, grad,
                                                   [x for x in leaves if x is not None], expect)
        bounds = [2 * eager_out + atol_out] + [2 * e + atol_grad for e in eager_grads]
    _close(out, expect, bounds[0], "linear_token_logprobs")
    _close(hidden.grad, leaves[0].grad, bounds[1], "d hidden")
    _close(weight.grad, leaves[1].grad, bounds[2], "d weight")
    if with_bias:
        _close(bias.grad, leaves[2].grad, bounds[3], "d bias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_token_logprobs_matches_reference(dtype, with_bias):
    _check_linear(41, 48, 4231, dtype, 0.8, with_bias)


@pytest.mark.parametrize("vocab", [_cpp_ops.CPU_VOCAB_CHUNK + 1, _cpp_ops.CPU_VOCAB_CHUNK, 3])
def test_linear_token_logprobs_chunk_boundaries(vocab):
    _check_linear(37, 16, vocab, torch.float32, 1.0, True)


def test_linear_token_logprobs_many_row_blocks():
    # N · chunk floats exceeds one CPU tile (default 2^19), so rows are processed in several blocks.
    torch.manual_seed(3)
    n, dim, vocab = 1100, 8, 2 * _cpp_ops.CPU_VOCAB_CHUNK + 5
    hidden, weight = torch.randn(n, dim), torch.randn(vocab, dim)
    targets = torch.randint(0, vocab, (n,))
    out = rk.linear_token_logprobs(hidden, weight, targets, backend="cpp")
    _close(out, ref.linear_token_logprobs(hidden.double(), weight.double(), targets), 1e-4, "many row blocks")


def test_linear_token_logprobs_non_contiguous_and_frozen_weight():
    torch.manual_seed(2)
    hidden = torch.randn(41, 96)[:, ::2]                                # (41, 48) non-contiguous
    weight = torch.randn(48, 4231).t() / 7                              # (4231, 48) transposed view
    _check_linear(41, 48, 4231, torch.float32, 1.0, False, hidden=hidden, weight=weight)
    # LoRA-style frozen lm_head: only d hidden is computed.
    h = torch.randn(41, 48, requires_grad=True)
    out = rk.linear_token_logprobs(h, weight, torch.randint(0, 4231, (41,)), backend="cpp")
    out.sum().backward()
    assert h.grad is not None and h.grad.shape == (41, 48)


# ---------------------------------------------------------------------------------------------------- rapid_loss
def _loss_inputs(seed=0, lengths=(3, 0, 7, 2, 8, 5, 8, 8), index_dtype=torch.int64):
    torch.manual_seed(seed)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=index_dtype)
    n = int(cu[-1])
    lp = torch.randn(n) * 0.5 - 2
    blp = lp + torch.randn(n) * 0.3
    rewards = torch.randn(len(lengths))
    return lp, blp, rewards, cu


@pytest.mark.parametrize("baseline, is_clip, is_level, adv_scale",
                         list(itertools.product(["loo", "mean"], ["truncate", "mask", "none"],
                                                ["sequence", "geometric"], ["none", "std"])))
def test_rapid_loss_matches_reference(baseline, is_clip, is_level, adv_scale):
    lp, blp, rewards, cu = _loss_inputs(index_dtype=torch.int32 if baseline == "mean" else torch.int64)
    got_lp, exp_lp = _leaf(lp, torch.float32), _leaf(lp, torch.float64)
    args = (4, 1.5, baseline, 3.0, is_level, is_clip, adv_scale)
    got = rk.rapid_loss(got_lp, blp, rewards, cu, *args, backend="cpp")
    expect = ref.rapid_loss(exp_lp, blp.double(), rewards.double(), cu, *args)
    got.loss.backward()
    expect.loss.backward()
    for name in ("loss", "seq_logratio", "weights", "baselines", "advantages", "clip_fraction"):
        assert getattr(got, name).dtype == torch.float32, name
        _close(getattr(got, name), getattr(expect, name), 5e-5, name)
    _close(got_lp.grad, exp_lp.grad, 1e-6, "d token_logprobs")
    assert not got.weights.requires_grad and got.token_logprobs.shape == lp.shape


def test_rapid_loss_non_contiguous_and_token_level_fallback():
    lp, blp, rewards, cu = _loss_inputs(seed=4)
    lp2 = torch.stack([lp, lp]).t()[:, 0]                              # non-contiguous view of lp
    got = rk.rapid_loss(lp2, blp, rewards[::1], cu, 4, backend="cpp")
    _close(got.loss, ref.rapid_loss(lp.double(), blp.double(), rewards.double(), cu, 4).loss, 5e-5, "loss")
    token = rk.rapid_loss(lp, blp, rewards, cu, 4, is_level="token", backend="cpp")   # routed to the reference
    _close(token.loss, ref.rapid_loss(lp, blp, rewards, cu, 4, is_level="token").loss, 1e-6, "token-level loss")


# -------------------------------------------------------------------------------------------------- bad input
def _bad_cases():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.randint(0, 10, (4,))
    lp, blp, r, cu = _loss_inputs()
    loss = lambda **kw: lambda: rk.rapid_loss(**{**dict(token_logprobs=lp, behavior_logprobs=blp, rewards=r,  # noqa: E731
                                                        cu_seqlens=cu, group_size=4, backend="cpp"), **kw})
    lin = lambda **kw: lambda: rk.linear_token_logprobs(**{**dict(hidden=h, weight=w, targets=t,  # noqa: E731
                                                                  backend="cpp"), **kw})
    tok = lambda **kw: lambda: rk.token_logprobs(**{**dict(logits=h, targets=torch.zeros(4, dtype=torch.long),  # noqa: E731
                                                           backend="cpp"), **kw})
    return {
        "logits rank": tok(logits=torch.randn(4)),
        "logits dtype": tok(logits=h.int()),
        "targets dtype": tok(targets=torch.zeros(4)),
        "targets length": tok(targets=torch.zeros(3, dtype=torch.long)),
        "targets range": tok(targets=torch.tensor([0, 8, 1, 2])),
        "negative target": tok(targets=torch.tensor([0, -1, 1, 2])),
        "temperature": tok(temperature=0.0),
        "temperature nan": tok(temperature=float("nan")),
        "weight shape": lin(weight=torch.randn(10, 7)),
        "weight dtype": lin(weight=w.bfloat16()),
        "bias length": lin(bias=torch.randn(9)),
        "hidden rank": lin(hidden=torch.randn(4, 8, 1)),
        "linear targets range": lin(targets=torch.tensor([0, 1, 2, 10])),
        "lp dtype": loss(token_logprobs=lp.half()),
        "blp length": loss(behavior_logprobs=blp[:-1]),
        "cu length": loss(cu_seqlens=cu[:-1]),
        "cu end": loss(cu_seqlens=torch.cat([cu[:-1], cu[-1:] + 1])),
        "cu decreasing": loss(cu_seqlens=torch.tensor([0, 3, 2, 10, 12, 20, 25, 33, 41])),
        "group divides": loss(group_size=3),
        "loo needs K>=2": loss(group_size=1),
        "eta": loss(eta=-1.0),
        "loss_norm": loss(loss_norm=0.0),
        "baseline": loss(baseline="median"),
        "is_clip": loss(is_clip="clamp"),
        "rewards finite": loss(rewards=torch.tensor([0.0, float("nan"), 0, 0, 0, 0, 0, 0])),
        "blp finite": loss(behavior_logprobs=torch.full_like(blp, float("-inf"))),
        "empty rewards": loss(rewards=torch.zeros(0), cu_seqlens=torch.zeros(1, dtype=torch.long)),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_value_error(case):
    with pytest.raises(ValueError):
        _bad_cases()[case]()


def test_extension_checks_raise_value_error_directly():
    """The C++ host checks stand on their own: the raw ops reject bad input without the Python validation."""
    h, w = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="targets must lie in"):
        _cpp_ops.linear_token_logprobs_fwd(h, w, torch.tensor([0, 1, 2, 10]), None, 1.0, 4, 0.0, None, False)
    with pytest.raises(ValueError, match="float64 goes to the reference"):
        _cpp_ops.token_logprobs_fwd(h.double(), torch.zeros(4, dtype=torch.long), 1.0, 0.0, None, False)
    with pytest.raises(ValueError, match="weight dtype"):
        _cpp_ops.linear_token_logprobs_fwd(h, w.half(), torch.zeros(4, dtype=torch.long), None, 1.0, 4, 0.0, None,
                                           False)
    t = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="softcap"):
        _cpp_ops.linear_token_logprobs_fwd(h, w, t, None, 1.0, 4, -1.0, None, False)
    with pytest.raises(ValueError, match="threshold must not contain NaN"):
        _cpp_ops.token_logprobs_fwd(h, t, 1.0, 0.0, torch.tensor([0.0, float("nan"), 0.0, 0.0]), False)
    with pytest.raises(ValueError, match="threshold must be float32"):
        _cpp_ops.token_logprobs_fwd(h, t, 1.0, 0.0, torch.zeros(3), False)
    lp, blp, r, cu = _loss_inputs()
    with pytest.raises(ValueError, match="non-decreasing"):
        _cpp_ops.rapid_loss_fwd(lp, blp, r, torch.tensor([0, 3, 2, 10, 12, 20, 25, 33, 41]), 4, 2.0, "loo", 1.0,
                                "sequence", "truncate", "none")
    with pytest.raises(ValueError, match="baseline must be one of"):
        _cpp_ops.rapid_loss_fwd(lp, blp, r, cu, 4, 2.0, "median", 1.0, "sequence", "truncate", "none")


# ------------------------------------------------------------------------------------------- reproducibility
def _run_all_ops(seed=5):
    torch.manual_seed(seed)
    n, dim, vocab = 300, 40, 2 * _cpp_ops.CPU_VOCAB_CHUNK + 77
    hidden = torch.randn(n, dim, requires_grad=True)
    weight = (torch.randn(vocab, dim) / 4).requires_grad_()
    bias = torch.randn(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    lengths = [10] * 20 + [5] * 20
    lp_ext, blp, rewards, cu = _loss_inputs(seed, lengths=lengths)
    lp = rk.linear_token_logprobs(hidden, weight, targets, 0.9, bias, backend="cpp")
    out = rk.rapid_loss(lp, blp, rewards, cu, 4, backend="cpp")
    out.loss.backward()
    logits = torch.randn(n, 3001, requires_grad=True)
    tlp = rk.token_logprobs(logits, targets.clamp(max=3000), backend="cpp")
    tlp.backward(torch.randn(n))
    return [lp, out.loss, out.weights, hidden.grad, weight.grad, bias.grad, tlp, logits.grad]


def test_results_identical_across_thread_counts():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _run_all_ops()
        torch.set_num_threads(2)
        multi = [_run_all_ops(), _run_all_ops()]
    finally:
        torch.set_num_threads(threads)
    names = ["lp", "loss", "weights", "hidden.grad", "weight.grad", "bias.grad", "tlp", "logits.grad"]
    for run in multi:
        assert torch.equal(run[3].detach(), multi[0][3].detach())       # repeatable at a fixed thread count
        for name, a, b in zip(names, single, run):
            if name == "hidden.grad":
                # d hidden's per-row-block GEMMs go to MKL, whose fp32 sgemm inside an OpenMP task rounded differently
                # at 1 and 2 threads on an Intel Xeon with AMX (2026-12-08: 190 of 300 rows, 3e-7 of the tensor's
                # scale); bitwise on the AMD EPYC boxes. Every other output is bitwise thread-count invariant.
                scale = a.detach().abs().max().item()
                assert (a.detach() - b.detach()).abs().max().item() <= 1e-6 * scale
            else:
                assert torch.equal(a.detach(), b.detach()), name


# ----------------------------------------------------------------------------------- opcheck and torch.compile
def _opcheck_cases():
    torch.manual_seed(6)
    logits = torch.randn(9, 33, requires_grad=True)
    targets = torch.randint(0, 33, (9,))
    hidden, weight = torch.randn(9, 8, requires_grad=True), torch.randn(33, 8, requires_grad=True)
    bias = torch.randn(33, requires_grad=True)
    thr = torch.full((9,), -0.5)
    _, lse, _ = _cpp_ops.token_logprobs_fwd(logits.detach(), targets, 1.0, 0.0, None, False)
    _, llse, _ = _cpp_ops.linear_token_logprobs_fwd(hidden.detach(), weight.detach(), targets, bias.detach(), 1.0, 16,
                                                    2.0, thr, False)
    lp, blp, rewards, cu = _loss_inputs()
    return {
        "token_logprobs_fwd": (_cpp_ops.token_logprobs_fwd, (logits, targets, 0.8, 0.0, None, False)),
        "token_logprobs_fwd_cap_thr_entropy": (_cpp_ops.token_logprobs_fwd, (logits, targets, 0.8, 3.0, thr, True)),
        "token_logprobs_bwd": (_cpp_ops.token_logprobs_bwd, (torch.randn(9), logits.detach(), targets, lse, 1.0, 0.0,
                                                             None)),
        "linear_token_logprobs_fwd": (_cpp_ops.linear_token_logprobs_fwd,
                                      (hidden, weight, targets, bias, 1.0, 16, 0.0, None, False)),
        "linear_token_logprobs_fwd_nobias": (_cpp_ops.linear_token_logprobs_fwd,
                                             (hidden, weight, targets, None, 0.5, 16, 2.0, thr, True)),
        "linear_token_logprobs_bwd": (_cpp_ops.linear_token_logprobs_bwd,
                                      (torch.randn(9), hidden.detach(), weight.detach(), targets, bias.detach(), llse,
                                       1.0, 16, 2.0, thr, True, False, True)),
        "rapid_loss_fwd": (_cpp_ops.rapid_loss_fwd, (lp.requires_grad_(), blp, rewards, cu, 4, 2.0, "loo", 1.0,
                                                     "sequence", "truncate", "std")),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    """The custom ops trace into one graph (fake functions + registered autograd), forward and backward."""
    torch.manual_seed(7)
    hidden = torch.randn(41, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (41,))
    lp_b, blp, rewards, cu = _loss_inputs()
    blp = blp[:41] if blp.shape[0] >= 41 else torch.cat([blp, blp])[:41]

    def step(h, w):
        lp = _cpp_ops.linear_token_logprobs_fwd(h, w, targets, None, 1.0, 128, 0.0, None, False)[0]
        return _cpp_ops.rapid_loss_fwd(lp, blp, rewards, cu, 4, 2.0, "loo", 1.0, "sequence", "truncate", "none")[0]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(hidden, weight)
    loss.backward()
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    step(h2, w2).backward()
    assert torch.equal(loss, step(hidden, weight))
    assert torch.equal(hidden.grad, h2.grad) and torch.equal(weight.grad, w2.grad)


def test_auto_picks_cpp_on_cpu():
    impl = rk.resolve_backend("auto", "linear_token_logprobs", torch.zeros(1))
    import rapid_kernels.cpp_backend as cpp_backend
    assert impl is cpp_backend.linear_token_logprobs


def test_bf16_opt_out_of_bf16_gemms():
    """RAPID_CPU_GEMM=fp32 (read once per process, hence the child) computes bf16 inputs with fp32 GEMMs: the
    log-probs then match float64 on the same rounded inputs to fp32 accuracy, not bf16-logit accuracy."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, rapid_kernels as rk\n"
        "from rapid_kernels import reference as ref\n"
        "torch.manual_seed(0)\n"
        "h = torch.randn(41, 48).bfloat16(); w = (torch.randn(4231, 48) / 48**0.5 * 3).bfloat16()\n"
        "t = torch.randint(0, 4231, (41,))\n"
        "out = rk.linear_token_logprobs(h, w, t, 0.8, backend='cpp')\n"
        "print((out.double() - ref.linear_token_logprobs(h.double(), w.double(), t, 0.8)).abs().max().item())\n")
    errs = {}
    for mode in ("fp32", "default"):
        env = dict(os.environ, RAPID_CPU_GEMM=mode, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        errs[mode] = float(proc.stdout.strip().splitlines()[-1])
    assert errs["fp32"] < 1e-4 < errs["default"]
