"""Triton ``linear_token_logprobs``: log softmax_K(process(hidden @ weightᵀ + bias))[targets], never storing (N, V).

Physical floor (DESIGN.md section 2): forward is one GEMM, 2·N·D·V FLOP (Qwen2.5-0.5B: D = 896, V = 151 936,
N = 16 384 → 4.5 TFLOP → ~5.6 ms at ~800 TFLOP/s bf16); backward is two more GEMMs of the same size (d hidden and
d weight) plus the logits recomputation, so fwd+bwd is at least 3 GEMMs (~17 ms) and this op does 4.

Forward: a (row block, vocab split) grid; the split count is chosen from N so that even a small batch fills every
SM (``split_cols``). Each program computes (BLOCK_M, BLOCK_N) logits tiles with ``tl.dot`` (fp32 accumulate; wgmma
on Hopper for 16-bit inputs), processes them in registers (soft-cap, temperature, threshold: ``reference``'s
definition) and keeps an online base-2 log-sum-exp per row (plus Σ p·z for the entropy). It writes one partial
(LSE, E[z]) per (row, split); a log-sum-exp over the few splits finishes the row. The target logit is one row dot
h_n · W[y_n] (+ bias), done by the split-0 programs, not a compare-and-reduce over every tile.

Backward, vocab-chunked (DESIGN.md section 2): the vocabulary is cut into chunks whose d logits for ALL rows,
(N, chunk) in the input dtype, fit ``DZ_BUDGET_BYTES``. Per chunk a Triton kernel recomputes the logits tiles and
writes dz = g · dz/dl · (onehot − softmax_K); then d W[chunk] = dzᵀ @ hidden is ONE well-shaped GEMM written once
(one rounding to the weight dtype, no read-modify-write of d W), and d hidden += dz @ W[chunk] accumulates in fp32.
Extra memory: the dz chunk and one fp32 (N, D) d hidden.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_lib import INTERPRET, LOG2E, autotune, launch, num_sms, process, register_op, slope

# Tiles under the interpreter (no autotune there); on GPU the autotuned configs below decide.
INTERPRET_META = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4)
SPLIT_ALIGN = 256                    # forward vocab splits are multiples of the largest BLOCK_N
INTERPRET_SPLIT = 4096               # split width under the interpreter (tests probe V = 4096 + 1)
DZ_BUDGET_BYTES = 256 * 2**20        # bound on the backward's (N, chunk) d-logits buffer
MIN_CHUNK = 256                      # backward vocab chunks are at least this wide (and multiples of it)


@triton.jit
def _raw_tile(h_base, w_base, b_base, rows_left, cols_left, D, stride_hn, stride_hd, stride_wv, stride_wd,
              HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) tile of hidden @ weightᵀ + bias in fp32 (raw logits), from the tile's base pointers.

    In-tile offsets are int32 (the bases carry the int64 part): int64 offset tensors per element cost registers
    that the wgmma accumulator needs (the sm_90 tier measured spills with them)."""
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rm < rows_left
    col_ok = rn < cols_left
    h_ptrs = h_base + rm[:, None] * stride_hn + rk[None, :] * stride_hd                 # (BLOCK_M, BLOCK_K)
    w_ptrs = w_base + rn[None, :] * stride_wv + rk[:, None] * stride_wd                 # (BLOCK_K, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = rk < D - k0
        h = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:  # the CPU interpreter has no 16-bit dot
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
        h_ptrs += BLOCK_K * stride_hd
        w_ptrs += BLOCK_K * stride_wd
    if HAS_BIAS:
        acc += tl.load(b_base + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _kept(z, cols_left, target_local, thr, HAS_THRESHOLD: tl.constexpr, BLOCK_N: tl.constexpr):
    """z with −inf past the tile's last column and, with a threshold, outside {z ≥ thr} ∪ {target}."""
    rn = tl.arange(0, BLOCK_N)
    keep = (rn < cols_left)[None, :]
    if HAS_THRESHOLD:
        keep = keep & ((z >= thr[:, None]) | (rn[None, :] == target_local[:, None]))
    return tl.where(keep, z, -float("inf"))


@triton.jit
def _linear_token_logprobs_fwd_kernel(h_ptr, w_ptr, b_ptr, targets_ptr, thr_ptr, part_lse_ptr, part_ez_ptr,
                                      picked_ptr, N, V, D, stride_hn, stride_hd, stride_wv, stride_wd, inv_t, softcap,
                                      split_cols, n_splits, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                                      HAS_THRESHOLD: tl.constexpr, ENTROPY: tl.constexpr, UPCAST: tl.constexpr,
                                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                      BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)                                                # (BLOCK_M,)
    row_ok = rows < N
    target = tl.load(targets_ptr + rows, mask=row_ok, other=0).to(tl.int32)           # (BLOCK_M,)
    thr2 = tl.zeros((BLOCK_M,), dtype=tl.float32)                                      # unused without HAS_THRESHOLD
    if HAS_THRESHOLD:
        thr2 = tl.load(thr_ptr + rows, mask=row_ok, other=-float("inf")) * LOG2E
    h_base = h_ptr + row0.to(tl.int64) * stride_hn
    v_lo = pid_s * split_cols
    v_hi = tl.minimum(v_lo + split_cols, V)
    # Everything in base 2 (z2 = z · log2 e, exp2): one tile-sized array live besides the accumulator.
    m2 = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)                          # running max of z2
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)                                         # Σ exp2(z2 − m2)
    t = tl.zeros((BLOCK_M,), dtype=tl.float32)                                         # Σ exp2(z2 − m2) · z2
    for v0 in range(v_lo, v_hi, BLOCK_N):
        raw = _raw_tile(h_base, w_ptr + tl.cast(v0, tl.int64) * stride_wv, b_ptr + v0, N - row0, v_hi - v0, D,
                        stride_hn, stride_hd, stride_wv, stride_wd, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N,
                        BLOCK_K)
        z2 = _kept(process(raw, inv_t * LOG2E, softcap, HAS_SOFTCAP), v_hi - v0, target - v0, thr2, HAS_THRESHOLD,
                   BLOCK_N)                                                            # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m2, tl.max(z2, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)                          # all-dropped rows so far
        r = tl.exp2(m2 - m_safe)
        if ENTROPY:
            e = tl.exp2(z2 - m_safe[:, None])
            s = s * r + tl.sum(e, axis=1)
            t = t * r + tl.sum(e * tl.where(z2 > -float("inf"), z2, 0.0), axis=1)     # e = 0 where dropped
        else:
            s = s * r + tl.sum(tl.exp2(z2 - m_safe[:, None]), axis=1)
        m2 = m_new
    out = rows.to(tl.int64) * n_splits + pid_s
    s_safe = tl.where(s > 0, s, 1.0)                             # a split with every entry dropped: LSE −inf
    tl.store(part_lse_ptr + out, tl.where(s > 0, (m2 + tl.log2(s_safe)) * 0.6931471805599453, -float("inf")),
             mask=row_ok)
    if ENTROPY:
        tl.store(part_ez_ptr + out, t / s_safe * 0.6931471805599453, mask=row_ok)      # E[z] in natural units
    if pid_s == 0:   # the target logit: one row dot h_n · W[y_n], not a compare over every tile
        rk = tl.arange(0, BLOCK_K)
        h_ptrs = h_base + tl.arange(0, BLOCK_M)[:, None] * stride_hn + rk[None, :] * stride_hd
        w_ptrs = w_ptr + target.to(tl.int64)[:, None] * stride_wv + rk[None, :] * stride_wd
        dot = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            msk = row_ok[:, None] & (rk < D - k0)[None, :]
            h = tl.load(h_ptrs, mask=msk, other=0.0)
            w = tl.load(w_ptrs, mask=msk, other=0.0)
            dot += tl.sum(h.to(tl.float32) * w.to(tl.float32), axis=1)
            h_ptrs += BLOCK_K * stride_hd
            w_ptrs += BLOCK_K * stride_wd
        if HAS_BIAS:
            dot += tl.load(b_ptr + target, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(picked_ptr + rows, process(dot, inv_t, softcap, HAS_SOFTCAP), mask=row_ok)


@triton.jit
def _linear_token_logprobs_bwd_kernel(h_ptr, w_ptr, b_ptr, targets_ptr, thr_ptr, lse_ptr, grad_ptr, dz_ptr, N, v0,
                                      v_end, D, stride_hn, stride_hd, stride_wv, stride_wd, inv_t, softcap, stride_dz,
                                      HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_THRESHOLD: tl.constexpr,
                                      UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_M
    c0 = v0 + tl.program_id(1) * BLOCK_N                                               # first vocab id of the tile
    rows = row0 + tl.arange(0, BLOCK_M)                                                # (BLOCK_M,)
    row_ok = rows < N
    raw = _raw_tile(h_ptr + row0.to(tl.int64) * stride_hn, w_ptr + c0.to(tl.int64) * stride_wv, b_ptr + c0,
                    N - row0, v_end - c0, D, stride_hn, stride_hd, stride_wv, stride_wd, HAS_BIAS, UPCAST, PRECISION,
                    BLOCK_M, BLOCK_N, BLOCK_K)                                         # (BLOCK_M, BLOCK_N)
    target_local = tl.load(targets_ptr + rows, mask=row_ok, other=-1).to(tl.int32) - c0
    thr2 = tl.zeros((BLOCK_M,), dtype=tl.float32)                                      # unused without HAS_THRESHOLD
    if HAS_THRESHOLD:
        thr2 = tl.load(thr_ptr + rows, mask=row_ok, other=-float("inf")) * LOG2E
    # base 2 exactly as in the forward (same rounding at the threshold, so both passes keep the same set)
    z2 = _kept(process(raw, inv_t * LOG2E, softcap, HAS_SOFTCAP), v_end - c0, target_local, thr2, HAS_THRESHOLD,
               BLOCK_N)
    lse2 = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) * LOG2E
    g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    rn = tl.arange(0, BLOCK_N)
    onehot = tl.where(rn[None, :] == target_local[:, None], 1.0, 0.0)
    keep = z2 > -float("inf")
    p = tl.exp2(z2 - lse2[:, None])                                                      # 0 where dropped
    z = tl.where(keep, z2 * 0.6931471805599453, 0.0)             # dropped entries: no inf arithmetic in slope
    dz = tl.where(keep, g[:, None] * slope(z, inv_t, softcap, HAS_SOFTCAP) * (onehot - p), 0.0)   # 0 outside K
    out = (dz_ptr + row0.to(tl.int64) * stride_dz + (c0 - v0)
           + (tl.arange(0, BLOCK_M)[:, None] * stride_dz + rn[None, :]))
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & (rn < v_end - c0)[None, :])


# --------------------------------------------------------------------------------------------- configurations
def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


def configs_16bit(heavy: bool = False) -> list:
    """Hopper tiles for bf16/fp16 (wgmma, 2 warpgroups or 1). 128×256 only without the soft-cap / threshold /
    entropy epilogue: with it, the sm_90 tier measured register spills (32 B fwd, 1.8 KB bwd); 128×128 with one
    warpgroup spills in every variant and is not offered."""
    tiles = [_cfg(64, 256, 64, 8, 3), _cfg(128, 128, 64, 8, 3), _cfg(64, 128, 64, 4, 4)]
    return tiles if heavy else [_cfg(128, 256, 64, 8, 3), *tiles]


def configs_fp32(heavy: bool = False) -> list:
    """fp32 inputs take the exact (ieee) dot: FMA tiles, smaller K. 32×128 spills with the heavy epilogue, and
    64×64 with 4 warps spilled under Triton 3.6 (sm_90 tier), so neither is offered there."""
    tiles = [_cfg(64, 128, 32, 8, 2)]
    return tiles if heavy else [*tiles, _cfg(32, 128, 32, 4, 2)]


def configs(bits: int, heavy: bool) -> list:
    return configs_fp32(heavy) if bits == 32 else configs_16bit(heavy)


# One autotuned kernel per (dtype class, epilogue weight): no prune_configs_by (keeps wrap_triton / torch.compile
# happy), and each only offers configs the sm_90 tier proved spill-free for it.
_KINDS = [(bits, heavy) for bits in (16, 32) for heavy in (False, True)]
_FWD = {k: autotune(configs(*k), key=["V", "D"])(_linear_token_logprobs_fwd_kernel) for k in _KINDS}
_BWD = {k: autotune(configs(*k), key=["D", "v_end"])(_linear_token_logprobs_bwd_kernel) for k in _KINDS}


def split_cols(n: int, vocab: int, sms: int) -> int:
    """Vocab columns per forward program: enough splits that ~2 waves of programs fill ``sms`` SMs even when N is
    small (N ≤ 256 → ~120 splits of V = 151 936 on an H100), few enough that each split keeps ≥ 4 tiles of 256
    columns. A tile that crosses the split's end is masked, so alignment is for speed only."""
    row_blocks = triton.cdiv(max(n, 1), 128)
    splits = max(1, min(triton.cdiv(2 * sms, row_blocks), vocab // (4 * SPLIT_ALIGN)))
    return triton.cdiv(triton.cdiv(vocab, splits), SPLIT_ALIGN) * SPLIT_ALIGN


def _common(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], threshold: Optional[Tensor], temperature: float,
            softcap: float):
    """(strides + scalars, compile-time flags, the kernel key) shared by both kernels."""
    meta = dict(HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap > 0, HAS_THRESHOLD=threshold is not None,
                UPCAST=INTERPRET, PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32")
    if INTERPRET:
        meta.update(INTERPRET_META)
    scalars = (hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), 1.0 / temperature,
               softcap or 1.0)
    heavy = softcap > 0 or threshold is not None
    return scalars, meta, (32 if hidden.dtype == torch.float32 else 16, heavy)


# ---------------------------------------------------------------------------------------------------- the ops
def _fwd(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor], threshold: Optional[Tensor],
         temperature: float, softcap: float, want_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(log-probs (N,) fp32, LSE (N,) fp32, entropy (N,) fp32 or (0,)); softcap 0.0 = none."""
    n, d = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    split = INTERPRET_SPLIT if INTERPRET else split_cols(n, vocab, num_sms(dev))
    n_splits = triton.cdiv(vocab, split)
    part_lse = torch.empty((n, n_splits), dtype=torch.float32, device=dev)             # (N, splits)
    part_ez = torch.empty((n, n_splits) if want_entropy else (0,), dtype=torch.float32, device=dev)
    picked = torch.empty(n, dtype=torch.float32, device=dev)                          # (N,)
    if n:
        scalars, meta, key = _common(hidden, weight, bias, threshold, temperature, softcap)
        grid = lambda meta_: (triton.cdiv(n, meta_["BLOCK_M"]), n_splits)  # noqa: E731
        kernel = _FWD[(key[0], key[1] or want_entropy)]
        launch(kernel)[grid](hidden, weight, bias if bias is not None else picked, targets,
                             threshold if threshold is not None else picked, part_lse,
                             part_ez if want_entropy else picked, picked, n, vocab, d, *scalars, split, n_splits,
                             ENTROPY=want_entropy, **meta)
    lse = torch.logsumexp(part_lse, dim=1)                                             # (N,)
    entropy = part_lse.new_empty(0)
    if want_entropy:
        share = torch.exp(part_lse - lse.unsqueeze(1))                                 # (N, splits) split masses
        entropy = lse - (share * part_ez).sum(dim=1)                                   # (N,)
    return picked - lse, lse, entropy


def _fwd_fake(hidden, weight, targets, bias, threshold, temperature, softcap, want_entropy):
    n = hidden.shape[0]
    f32 = dict(dtype=torch.float32)
    return hidden.new_empty(n, **f32), hidden.new_empty(n, **f32), hidden.new_empty(n if want_entropy else 0, **f32)


def dz_chunk(n: int, vocab: int, itemsize: int) -> int:
    """Vocab columns per backward chunk: d logits of all N rows within DZ_BUDGET_BYTES, a multiple of MIN_CHUNK."""
    cols = DZ_BUDGET_BYTES // max(1, n * itemsize) // MIN_CHUNK * MIN_CHUNK
    return min(vocab, max(MIN_CHUNK, cols))


def _addmm_fp32_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc (fp32) += a @ b with fp32 accumulation and no 16-bit rounding of the product: cuBLAS with an fp32 output
    (``torch.mm(..., out_dtype=torch.float32)``, torch >= 2.9) for 16-bit a, b on CUDA, else an fp32 GEMM."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif acc.is_cuda and hasattr(torch.ops.aten.mm, "dtype"):
        acc.add_(torch.mm(a, b, out_dtype=torch.float32))                         # (N, D) fp32 temporary
    else:
        acc.addmm_(a.float(), b.float())


def _bwd(grad: Tensor, hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor],
         threshold: Optional[Tensor], lse: Tensor, temperature: float, softcap: float, need_h: bool, need_w: bool,
         need_b: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(d hidden, d weight, d bias) in their inputs' dtypes; one not asked for is an empty (0,) tensor."""
    n, d = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    d_hidden32 = torch.zeros((n, d) if need_h else (0,), dtype=torch.float32, device=dev)       # (N, D)
    d_weight = torch.empty(weight.shape if need_w else (0,), dtype=weight.dtype, device=dev)    # (V, D)
    d_bias = torch.empty(vocab if need_b else 0, dtype=torch.float32, device=dev)                # (V,)
    if n == 0:
        d_weight.zero_()
        d_bias.zero_()
    elif need_h or need_w or need_b:
        scalars, meta, key = _common(hidden, weight, bias, threshold, temperature, softcap)
        chunk = dz_chunk(n, vocab, hidden.element_size())
        dz_buf = torch.empty(n * chunk, dtype=hidden.dtype, device=dev)                          # (N · chunk,)
        for v0 in range(0, vocab, chunk):
            cols = min(chunk, vocab - v0)
            dz = dz_buf[:n * cols].view(n, cols)                                                  # (N, cols)
            grid = lambda meta_: (triton.cdiv(n, meta_["BLOCK_M"]), triton.cdiv(cols, meta_["BLOCK_N"]))  # noqa: E731
            launch(_BWD[key])[grid](hidden, weight, bias if bias is not None else lse, targets,
                                    threshold if threshold is not None else lse, lse, grad, dz, n, v0, v0 + cols, d,
                                    *scalars, dz.stride(0), **meta)
            if need_w:   # d W[chunk] = dzᵀ H: one GEMM, fp32 accumulate, written once in the weight dtype
                torch.mm(dz.t(), hidden, out=d_weight[v0:v0 + cols])
            if need_h:
                _addmm_fp32_(d_hidden32, dz, weight[v0:v0 + cols])                                # (N, D) fp32
            if need_b:
                d_bias[v0:v0 + cols] = dz.sum(dim=0, dtype=torch.float32)
    d_hidden = d_hidden32.to(hidden.dtype) if need_h else hidden.new_empty(0)
    if need_b:
        d_bias = d_bias.to(bias.dtype)
    return d_hidden, d_weight, d_bias


def _bwd_fake(grad, hidden, weight, targets, bias, threshold, lse, temperature, softcap, need_h, need_w, need_b):
    d_bias = bias.new_empty(bias.shape) if (need_b and bias is not None) else hidden.new_empty(0, dtype=torch.float32)
    return (hidden.new_empty(hidden.shape if need_h else (0,)), weight.new_empty(weight.shape if need_w else (0,)),
            d_bias)


linear_token_logprobs_fwd = register_op("rapid_triton::linear_token_logprobs_fwd", _fwd, _fwd_fake)
linear_token_logprobs_bwd = register_op("rapid_triton::linear_token_logprobs_bwd", _bwd, _bwd_fake)


def _setup(ctx, inputs, output):
    hidden, weight, targets, bias, threshold, temperature, softcap, _ = inputs
    ctx.save_for_backward(hidden, weight, targets, bias, threshold, output[1])
    ctx.temperature, ctx.softcap = temperature, softcap
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_out, grad_lse, grad_entropy):
    hidden, weight, targets, bias, threshold, lse = ctx.saved_tensors
    need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
    need_b = need_b and bias is not None
    d_hidden, d_weight, d_bias = linear_token_logprobs_bwd(grad_out.contiguous(), hidden, weight, targets, bias,
                                                           threshold, lse, ctx.temperature, ctx.softcap, need_h,
                                                           need_w, need_b)
    return (d_hidden if need_h else None, d_weight if need_w else None, None, d_bias if need_b else None, None, None,
            None, None)


linear_token_logprobs_fwd.register_autograd(_backward, setup_context=_setup)


def linear_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                          bias: Tensor | None = None, softcap: float | None = None, threshold: Tensor | None = None,
                          want_entropy: bool = False):
    """((N,) fp32 log-probs under the processed distribution of hidden @ weightᵀ + bias, entropy (N,) or None)."""
    bias = None if bias is None else bias.contiguous()
    out, _, entropy = linear_token_logprobs_fwd(hidden, weight, targets.contiguous(), bias,
                                                None if threshold is None else threshold.contiguous(),
                                                float(temperature), float(softcap or 0.0), bool(want_entropy))
    return out, (entropy if want_entropy else None)
