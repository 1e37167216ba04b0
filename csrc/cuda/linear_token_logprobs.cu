// linear_token_logprobs on CUDA: vocab-chunked around cuBLAS GEMMs (at::mm), never materialising [N, V].
//
// Each (row block × vocab chunk) logits tile is one GEMM with an fp32 output (bf16/fp16 inputs use the
// mixed-precision at::mm(..., out_dtype) of torch >= 2.9; older torch rounds the tile to the input dtype first).
// A row kernel (one block per tile row, 16-byte loads) folds the tile into the running (max, Σexp, Σexp·z) of each
// row and picks the target logit, after the soft-cap / temperature / threshold processing. Backward recomputes each
// tile, turns it into dz = g · dz/dl · (onehot − softmax_K), then d hidden += dz @ W_c, d W_c += dzᵀ @ hidden,
// d bias_c += Σ_rows dz, accumulated in fp32.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/version.h>

#include "../rapid_ops.h"
#include "common.cuh"

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define RAPID_HAS_MM_OUT_DTYPE 1
#endif

namespace rapid {
namespace cuda {
namespace {

constexpr int64_t kTileElems = int64_t{1} << 26;  // 64 Mi elements per logits tile (256 MiB in fp32)

// a @ b as an fp32 tile (pass wᵀ views for a @ wᵀ).
at::Tensor mm_float(const at::Tensor& a, const at::Tensor& b) {
#ifdef RAPID_HAS_MM_OUT_DTYPE
  if (a.scalar_type() != at::kFloat) return at::mm(a, b, at::kFloat);
#endif
  return at::mm(a, b).to(at::kFloat);
}

struct TileArgs {
  const float* bias;    // [V] fp32 or null
  int64_t cols, c0;     // tile width and first vocab column
  Process proc;
  const float* thr;     // [N] (offset to the tile's first row) or null
  const int64_t* targets;
};

// Processed, truncated logit of tile element (row, j) (−inf when dropped by the threshold).
__device__ __forceinline__ float tile_value(float raw, int64_t j, int64_t t, float thr, const TileArgs& a) {
  const float z = a.proc(raw + (a.bias ? a.bias[a.c0 + j] : 0.0f));
  return (z >= thr || j == t) ? z : -INFINITY;
}

// Folds one fp32 logits tile into the running (max, Σexp, Σexp·z) state of each row and picks the target logit.
template <bool kVector>
__global__ void lse_tile_kernel(const float* __restrict__ z, TileArgs a, float* __restrict__ m, float* __restrict__ s,
                                float* __restrict__ t_acc, float* __restrict__ picked) {
  const int64_t row = blockIdx.x, cols = a.cols;
  const float* zr = z + row * cols;
  const int64_t t = a.targets[row] - a.c0;
  const float thr = a.thr ? a.thr[row] : -INFINITY;
  MaxSum acc{-INFINITY, 0.0f, 0.0f};
  if constexpr (kVector) {
    for (int64_t j0 = threadIdx.x * 4; j0 < cols; j0 += blockDim.x * 4) {
      float v[4];
      Vec<float>::load(zr + j0, v);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc = push(acc, tile_value(v[i], j0 + i, t, thr, a));
    }
  } else {
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) acc = push(acc, tile_value(zr[j], j, t, thr, a));
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) {
    const MaxSum merged = combine(MaxSum{m[row], s[row], t_acc[row]}, acc);
    m[row] = merged.m;
    s[row] = merged.s;
    t_acc[row] = merged.t;
    if (t >= 0 && t < cols) picked[row] = a.proc(zr[t] + (a.bias ? a.bias[a.c0 + t] : 0.0f));
  }
}

// dz = g · dz/dl · (1[j = t] − softmax_K), in the GEMM dtype, exactly 0 outside the kept set.
template <typename scalar_t, bool kVector>
__global__ void grad_tile_kernel(const float* __restrict__ z, TileArgs a, const float* __restrict__ grad,
                                 const float* __restrict__ lse, scalar_t* __restrict__ dz) {
  const int64_t row = blockIdx.x, cols = a.cols;
  const float g = grad[row], row_lse = lse[row];
  const int64_t t = a.targets[row] - a.c0;
  const float thr = a.thr ? a.thr[row] : -INFINITY;
  auto d = [&](float raw, int64_t j) {
    const float v = tile_value(raw, j, t, thr, a);
    if (v == -INFINITY) return 0.0f;
    return g * a.proc.slope(v) * ((j == t ? 1.0f : 0.0f) - __expf(v - row_lse));
  };
  if constexpr (kVector) {
    for (int64_t j0 = threadIdx.x * 4; j0 < cols; j0 += blockDim.x * 4) {
      float v[4];
      Vec<float>::load(z + row * cols + j0, v);
#pragma unroll
      for (int i = 0; i < 4; ++i) dz[row * cols + j0 + i] = static_cast<scalar_t>(d(v[i], j0 + i));
    }
  } else {
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      dz[row * cols + j] = static_cast<scalar_t>(d(z[row * cols + j], j));
    }
  }
}

int64_t row_block(int64_t n, int64_t chunk) { return std::min(n, std::max<int64_t>(1, kTileElems / chunk)); }

}  // namespace
}  // namespace cuda

// Entry points, defined by qualified name: a signature that drifts from rapid_ops.h is a compile error.

LogprobResult cuda::linear_token_logprobs_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                                              const at::Tensor& targets, const c10::optional<at::Tensor>& bias,
                                              const LogitOptions& opt, int64_t chunk) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  const auto fopts = hidden.options().dtype(at::kFloat);
  if (n == 0) return {at::empty({0}, fopts), at::empty({0}, fopts), at::empty({0}, fopts)};
  chunk = std::min(chunk, vocab);
  const int64_t rblock = row_block(n, chunk);
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor m = at::full({n}, -INFINITY, fopts), s = at::zeros({n}, fopts), t_acc = at::zeros({n}, fopts);
  at::Tensor picked = at::full({n}, NAN, fopts);  // stays NaN for an out-of-range target
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - c0);
    const at::Tensor w_c = weight.narrow(0, c0, cols);
    for (int64_t r0 = 0; r0 < n; r0 += rblock) {
      const int64_t rows = std::min(rblock, n - r0);
      const at::Tensor z = mm_float(hidden.narrow(0, r0, rows), w_c.t()).contiguous();
      const TileArgs a{b.defined() ? b.data_ptr<float>() : nullptr, cols, c0,
                       Process::make(opt.temperature, opt.softcap),
                       opt.threshold.defined() ? opt.thr_ptr() + r0 : nullptr,
                       targets.data_ptr<int64_t>() + r0};
      const bool vec = cols % 4 == 0 && rows_aligned16(z.data_ptr(), cols, 4);
      const dim3 grid(static_cast<unsigned int>(rows));
      if (vec) {
        lse_tile_kernel<true><<<grid, kThreads, 0, stream>>>(z.data_ptr<float>(), a, m.data_ptr<float>() + r0,
                                                             s.data_ptr<float>() + r0, t_acc.data_ptr<float>() + r0,
                                                             picked.data_ptr<float>() + r0);
      } else {
        lse_tile_kernel<false><<<grid, kThreads, 0, stream>>>(z.data_ptr<float>(), a, m.data_ptr<float>() + r0,
                                                              s.data_ptr<float>() + r0, t_acc.data_ptr<float>() + r0,
                                                              picked.data_ptr<float>() + r0);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  at::Tensor lse = m.add(s.log());
  at::Tensor entropy = opt.want_entropy ? lse.sub(t_acc.div(s)) : at::empty({0}, fopts);
  return {picked.sub(lse), lse, entropy};
}

LinearGrads cuda::linear_token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight,
                                            const at::Tensor& targets, const c10::optional<at::Tensor>& bias,
                                            const at::Tensor& lse, const LogitOptions& opt, int64_t chunk,
                                            bool need_hidden, bool need_weight, bool need_bias) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t n = hidden.size(0), dim = hidden.size(1), vocab = weight.size(0);
  const auto fopts = hidden.options().dtype(at::kFloat);
  need_bias = need_bias && bias.has_value();
  at::Tensor d_hidden = need_hidden ? at::zeros({n, dim}, fopts) : at::empty({0}, hidden.options());
  // d weight in its own dtype, each chunk's rows accumulated in an fp32 (chunk, D) buffer then written once.
  at::Tensor d_weight = need_weight ? at::zeros_like(weight) : at::empty({0}, weight.options());
  at::Tensor d_bias = need_bias ? at::zeros({vocab}, fopts) : at::empty({0}, fopts);
  chunk = std::max<int64_t>(1, std::min(chunk, vocab));
  const int64_t rblock = std::max<int64_t>(1, row_block(n, chunk));
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t c0 = 0; n > 0 && c0 < vocab && (need_hidden || need_weight || need_bias); c0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - c0);
    const at::Tensor w_c = weight.narrow(0, c0, cols);
    at::Tensor dw_c = need_weight ? at::zeros({cols, dim}, fopts) : at::Tensor();
    for (int64_t r0 = 0; r0 < n; r0 += rblock) {
      const int64_t rows = std::min(rblock, n - r0);
      const at::Tensor h_blk = hidden.narrow(0, r0, rows);
      const at::Tensor z = mm_float(h_blk, w_c.t()).contiguous();
      at::Tensor dz = at::empty({rows, cols}, hidden.options());  // in the GEMM dtype
      const TileArgs a{b.defined() ? b.data_ptr<float>() : nullptr, cols, c0,
                       Process::make(opt.temperature, opt.softcap),
                       opt.threshold.defined() ? opt.thr_ptr() + r0 : nullptr,
                       targets.data_ptr<int64_t>() + r0};
      const bool vec = cols % 4 == 0 && rows_aligned16(z.data_ptr(), cols, 4);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "rapid_linear_bwd_cuda", [&] {
        const dim3 grid(static_cast<unsigned int>(rows));
        if (vec) {
          grad_tile_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(
              z.data_ptr<float>(), a, grad.data_ptr<float>() + r0, lse.data_ptr<float>() + r0, dz.data_ptr<scalar_t>());
        } else {
          grad_tile_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(
              z.data_ptr<float>(), a, grad.data_ptr<float>() + r0, lse.data_ptr<float>() + r0, dz.data_ptr<scalar_t>());
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (need_hidden) d_hidden.narrow(0, r0, rows).add_(mm_float(dz, w_c));
      if (need_weight) dw_c.add_(mm_float(dz.t(), h_blk));
      if (need_bias) d_bias.narrow(0, c0, cols).add_(dz.sum(0, /*keepdim=*/false, at::kFloat));
    }
    if (need_weight) d_weight.narrow(0, c0, cols).copy_(dw_c);
  }
  if (need_hidden) d_hidden = d_hidden.to(hidden.scalar_type());
  if (need_bias) d_bias = d_bias.to(bias->scalar_type());
  return {d_hidden, d_weight, d_bias};
}

}  // namespace rapid
