"""Triton ``linear_token_logprobs``: log softmax((hidden @ weightᵀ + bias) / T)[targets], never storing (N, V).

Physical floor (DESIGN.md section 2): forward is one GEMM, 2·N·D·V FLOP (Qwen2.5-0.5B: D = 896, V = 151 936,
N = 16 384 → 4.5 TFLOP → ~5.6 ms at ~800 TFLOP/s bf16); backward is two more GEMMs of the same size (d hidden and
d weight) plus the logits recomputation, so fwd+bwd is at least 3 GEMMs (~17 ms) and this op does 4.

Forward: a (row block, vocab split) grid. Each program computes (BLOCK_M, BLOCK_N) logits tiles with ``tl.dot``
(fp32 accumulate) over its vocab split, keeps an online log-sum-exp per row and picks the target logit when it falls
in the split. It writes one partial LSE per (row, split); a log-sum-exp over the few splits finishes the row.
Backward: rows are processed in chunks sized so that the chunk's d logits (rows × V, input dtype) stay under
``DZ_BUDGET_BYTES``. A Triton kernel recomputes the chunk's logits tiles from hidden and weight, applies
d z = g · (onehot − softmax) / T with the saved LSE, and writes d z; two cuBLAS GEMMs then give
d hidden = d z @ W and d W += d zᵀ @ hidden (accumulated in fp32 across chunks when there is more than one).
Extra memory: the d z chunk plus, for 16-bit weights over several chunks, one fp32 copy of d W.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_M, BLOCK_N = 64, 128          # logits tile (rows, vocab) under the interpreter; BLOCK_N is fixed everywhere
ROW_ALIGN = 128                      # backward row chunks are multiples of every BLOCK_M used
TILES_PER_SPLIT = 32                 # vocab tiles per forward program: the split is 4096 vocab entries
DZ_BUDGET_BYTES = 128 * 2**20        # bound on the backward's d-logits chunk
_DW_SLAB = 16384                     # vocab rows per fp32 d-weight accumulation GEMM (bounds its temporary)


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, n_rows, V, D, stride_hn, stride_hd, stride_wv, stride_wd, inv_t,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) tile of (hidden @ weightᵀ + bias) / T in fp32; columns ≥ V are −inf."""
    row_ok = rows < n_rows
    col_ok = cols < V
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < D
        h = tl.load(h_ptr + rows[:, None] * stride_hn + kk[None, :] * stride_hd,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)                    # (BLOCK_M, BLOCK_K)
        w = tl.load(w_ptr + cols[None, :] * stride_wv + kk[:, None] * stride_wd,
                    mask=col_ok[None, :] & k_ok[:, None], other=0.0)                    # (BLOCK_K, BLOCK_N)
        if UPCAST:  # the CPU interpreter has no 16-bit dot
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_ok[None, :], acc * inv_t, -float("inf"))


@triton.jit
def _linear_token_logprobs_fwd_kernel(h_ptr, w_ptr, b_ptr, targets_ptr, part_lse_ptr, picked_ptr, N, V, D,
                                      stride_hn, stride_hd, stride_wv, stride_wd, inv_t, n_splits,
                                      HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                      TILES_PER_SPLIT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)                      # (BLOCK_M,)
    row_ok = rows < N
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1).to(tl.int64)          # (BLOCK_M,)
    v_lo = pid_s * (TILES_PER_SPLIT * BLOCK_N)
    m = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)                           # running row max
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)                                         # running Σ exp(z − m)
    picked = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_tiles = tl.minimum(TILES_PER_SPLIT, tl.cdiv(V - v_lo, BLOCK_N))                  # the last split is short
    for tile in range(0, n_tiles):
        cols = (v_lo + tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)            # (BLOCK_N,)
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                         inv_t, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)  # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)                          # tiles past V are all −inf
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), axis=1)
        m = m_new
        picked += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
    tl.store(part_lse_ptr + rows * n_splits + pid_s, m + tl.log(s), mask=row_ok)
    in_split = (target >= v_lo) & (target < v_lo + TILES_PER_SPLIT * BLOCK_N)
    tl.store(picked_ptr + rows, picked, mask=row_ok & in_split)


@triton.jit
def _linear_token_logprobs_bwd_kernel(h_ptr, w_ptr, b_ptr, targets_ptr, lse_ptr, grad_ptr, dz_ptr, row0, row_end,
                                      V, D, stride_hn, stride_hd, stride_wv, stride_wd, inv_t, stride_dz,
                                      HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = (row0 + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)   # (BLOCK_M,)
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)          # (BLOCK_N,)
    row_ok = rows < row_end
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_end, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                     inv_t, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)      # (BLOCK_M, BLOCK_N)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    dz = g[:, None] * (onehot - tl.exp(z - lse[:, None])) * inv_t                      # (BLOCK_M, BLOCK_N)
    out = dz_ptr + (rows - row0)[:, None] * stride_dz + cols[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < V)[None, :])


def _cuda_configs() -> list:
    """Tile shapes tried once per (V, D, dtypes) on CUDA: 16-bit ones use wgmma tiles, fp32 ones smaller K."""
    cfg = lambda bm, bk, warps, stages: triton.Config({"BLOCK_M": bm, "BLOCK_K": bk},  # noqa: E731
                                                      num_warps=warps, num_stages=stages)
    return [cfg(128, 64, 8, 3), cfg(64, 64, 4, 3), cfg(128, 64, 8, 4), cfg(64, 64, 8, 4),   # 16-bit
            cfg(64, 32, 8, 2), cfg(32, 32, 4, 2)]                                           # fp32 (ieee dot)


def _prune(configs, named_args, **_):
    full = named_args["h_ptr"].dtype == torch.float32
    return [c for c in configs if (c.kwargs["BLOCK_K"] == 32) == full]


if _INTERPRET:  # no autotune under the interpreter: one fixed, small configuration
    _fwd_kernel, _bwd_kernel = _linear_token_logprobs_fwd_kernel, _linear_token_logprobs_bwd_kernel
else:
    def _tuned(kernel):  # each kernel gets its own Config objects and cache
        return triton.autotune(_cuda_configs(), key=["V", "D"], prune_configs_by={"early_config_prune": _prune})(kernel)

    _fwd_kernel, _bwd_kernel = _tuned(_linear_token_logprobs_fwd_kernel), _tuned(_linear_token_logprobs_bwd_kernel)


def _kernel_args(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float):
    """Strides and compile-time flags shared by both kernels (tile sizes too, under the interpreter)."""
    meta = dict(HAS_BIAS=bias is not None, UPCAST=_INTERPRET,
                PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32", BLOCK_N=BLOCK_N)
    if _INTERPRET:
        meta.update(BLOCK_M=BLOCK_M, BLOCK_K=32)
    strides = (hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), 1.0 / temperature)
    return strides, meta


def linear_token_logprobs_fwd(hidden, weight, targets, temperature, bias):
    """Returns (log-probs (N,) fp32, LSE (N,) fp32)."""
    n, d = hidden.shape
    vocab = weight.shape[0]
    targets = targets.contiguous()
    split = TILES_PER_SPLIT * BLOCK_N
    n_splits = triton.cdiv(vocab, split)
    part_lse = torch.empty((n, n_splits), dtype=torch.float32, device=hidden.device)  # (N, splits)
    picked = torch.empty(n, dtype=torch.float32, device=hidden.device)                # (N,)
    if n:
        strides, meta = _kernel_args(hidden, weight, bias, temperature)
        grid = lambda meta_: (triton.cdiv(n, meta_["BLOCK_M"]), n_splits)  # noqa: E731
        _fwd_kernel[grid](hidden, weight, bias if bias is not None else hidden, targets, part_lse, picked, n, vocab,
                          d, *strides, n_splits, TILES_PER_SPLIT=TILES_PER_SPLIT, **meta)
    lse = torch.logsumexp(part_lse, dim=1)                                             # (N,)
    return picked - lse, lse


def _rows_per_chunk(n: int, vocab: int, itemsize: int) -> int:
    rows = max(ROW_ALIGN, DZ_BUDGET_BYTES // max(1, vocab * itemsize))
    return min(n, rows // ROW_ALIGN * ROW_ALIGN) if n > 0 else 0


def linear_token_logprobs_bwd(grad, hidden, weight, targets, lse, temperature, bias, need_h, need_w, need_b):
    """(d hidden, d weight, d bias), each None when not needed, in the dtypes of their inputs."""
    n, d = hidden.shape
    vocab = weight.shape[0]
    dz_dtype = hidden.dtype                              # d logits stored in the GEMM input dtype, as eager does
    chunk = _rows_per_chunk(n, vocab, torch.finfo(dz_dtype).bits // 8)
    n_chunks = triton.cdiv(n, chunk) if chunk else 0
    d_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_h else None  # (N, D)
    fp32_acc = weight.dtype != torch.float32 and n_chunks > 1
    d_weight = None
    if need_w:
        d_weight = torch.zeros(weight.shape, dtype=torch.float32 if fp32_acc else weight.dtype,
                               device=weight.device)                                   # (V, D)
    d_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b else None  # (V,)
    if not (need_h or need_w or need_b) or n == 0:
        return d_hidden, _cast(d_weight, weight), _cast(d_bias, bias)
    targets, grad = targets.contiguous(), grad.contiguous()
    strides, meta = _kernel_args(hidden, weight, bias, temperature)
    dz_buf = torch.empty((chunk, vocab), dtype=dz_dtype, device=hidden.device)        # (chunk, V)
    for row0 in range(0, n, chunk):
        rows = min(chunk, n - row0)
        dz = dz_buf[:rows]                                                             # (rows, V)
        grid = lambda meta_: (triton.cdiv(rows, meta_["BLOCK_M"]), triton.cdiv(vocab, BLOCK_N))  # noqa: E731
        _bwd_kernel[grid](hidden, weight, bias if bias is not None else hidden, targets, lse, grad, dz, row0,
                          row0 + rows, vocab, d, *strides, dz.stride(0), **meta)
        h = hidden[row0:row0 + rows]                                                   # (rows, D)
        if need_h:
            torch.mm(dz, weight, out=d_hidden[row0:row0 + rows])
        if need_w and not fp32_acc:
            d_weight.addmm_(dz.t(), h)
        elif need_w:
            for v0 in range(0, vocab, _DW_SLAB):   # 16-bit GEMM per slab, summed in fp32: bounded temporary
                d_weight[v0:v0 + _DW_SLAB] += torch.mm(dz[:, v0:v0 + _DW_SLAB].t(), h)  # fp32 += 16-bit
        if need_b:
            d_bias += dz.sum(dim=0, dtype=torch.float32)
    return d_hidden, _cast(d_weight, weight), _cast(d_bias, bias)


def _cast(t: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None or like is None else t.to(like.dtype)


class LinearTokenLogprobs(torch.autograd.Function):
    """Saves hidden, weight, bias (alive anyway) and the (N,) LSE; backward recomputes the logits tiles."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, bias):
        out, lse = linear_token_logprobs_fwd(hidden, weight, targets, temperature, bias)
        ctx.save_for_backward(hidden, weight, targets, lse, bias)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse, bias = ctx.saved_tensors
        need_h, need_w, _, _, need_b = ctx.needs_input_grad
        d_hidden, d_weight, d_bias = linear_token_logprobs_bwd(grad, hidden, weight, targets, lse, ctx.temperature,
                                                               bias, need_h, need_w, need_b)
        return d_hidden, d_weight, None, None, d_bias


def linear_token_logprobs(hidden, weight, targets, temperature: float = 1.0, bias=None) -> torch.Tensor:
    """(N,) fp32 log-probs of ``targets`` under softmax((hidden @ weightᵀ + bias) / temperature)."""
    return LinearTokenLogprobs.apply(hidden, weight, targets, temperature, bias)
