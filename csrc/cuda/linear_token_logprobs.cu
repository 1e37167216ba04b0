// linear_token_logprobs on CUDA: vocab-chunked around cuBLAS GEMMs (at::mm), never materialising [N, V].
//
// Each (row block × vocab chunk) logits tile is one GEMM with an fp32 output (bf16/fp16 inputs use the
// mixed-precision at::mm(..., out_dtype) of torch >= 2.9; older torch rounds the tile to the input dtype first).
// A row kernel (one block per tile row) folds the tile into the running (max, Σexp) of each row and picks the
// target logit. Backward recomputes each tile, turns it into dz = g / T · (onehot − softmax) in place, then
// d hidden += dz @ W_c, d W_c += dzᵀ @ hidden, d bias_c += Σ_rows dz, accumulated in fp32.
#include <ATen/Dispatch.h>
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

__global__ void lse_tile_kernel(const float* __restrict__ z, const float* __restrict__ bias, int64_t cols,
                                int64_t c0, float inv_t, const int64_t* __restrict__ targets, float* __restrict__ m,
                                float* __restrict__ s, float* __restrict__ picked) {
  const int64_t row = blockIdx.x;
  const float* zr = z + row * cols;
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    acc = push(acc, (zr[j] + (bias ? bias[c0 + j] : 0.0f)) * inv_t);
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) {
    const MaxSum merged = combine(MaxSum{m[row], s[row]}, acc);
    m[row] = merged.m;
    s[row] = merged.s;
    const int64_t t = targets[row] - c0;
    if (t >= 0 && t < cols) picked[row] = (zr[t] + (bias ? bias[c0 + t] : 0.0f)) * inv_t;
  }
}

template <typename scalar_t>
__global__ void grad_tile_kernel(const float* __restrict__ z, const float* __restrict__ bias, int64_t cols,
                                 int64_t c0, float inv_t, const int64_t* __restrict__ targets,
                                 const float* __restrict__ grad, const float* __restrict__ lse,
                                 scalar_t* __restrict__ dz) {
  const int64_t row = blockIdx.x;
  const float scale = grad[row] * inv_t, row_lse = lse[row];
  const int64_t t = targets[row] - c0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = (z[row * cols + j] + (bias ? bias[c0 + j] : 0.0f)) * inv_t;
    dz[row * cols + j] = static_cast<scalar_t>((j == t ? scale : 0.0f) - scale * __expf(v - row_lse));
  }
}

int64_t row_block(int64_t n, int64_t chunk) { return std::min(n, std::max<int64_t>(1, kTileElems / chunk)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_token_logprobs_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                                                             const at::Tensor& targets,
                                                             const c10::optional<at::Tensor>& bias,
                                                             double temperature, int64_t chunk) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  const auto fopts = hidden.options().dtype(at::kFloat);
  if (n == 0) return {at::empty({0}, fopts), at::empty({0}, fopts)};
  chunk = std::min(chunk, vocab);
  const int64_t rblock = row_block(n, chunk);
  const float inv_t = static_cast<float>(1.0 / temperature);
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat) : at::Tensor();
  at::Tensor m = at::full({n}, -INFINITY, fopts), s = at::zeros({n}, fopts);
  at::Tensor picked = at::full({n}, NAN, fopts);  // stays NaN for an out-of-range target
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - c0);
    const at::Tensor w_c = weight.narrow(0, c0, cols);
    for (int64_t r0 = 0; r0 < n; r0 += rblock) {
      const int64_t rows = std::min(rblock, n - r0);
      const at::Tensor z = mm_float(hidden.narrow(0, r0, rows), w_c.t()).contiguous();
      lse_tile_kernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
          z.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, cols, c0, inv_t,
          targets.data_ptr<int64_t>() + r0, m.data_ptr<float>() + r0, s.data_ptr<float>() + r0,
          picked.data_ptr<float>() + r0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  at::Tensor lse = m + s.log();
  return {picked - lse, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_token_logprobs_bwd(
    const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
    const c10::optional<at::Tensor>& bias, const at::Tensor& lse, double temperature, int64_t chunk, bool need_hidden,
    bool need_weight, bool need_bias) {
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
  const float inv_t = static_cast<float>(1.0 / temperature);
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat) : at::Tensor();
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
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "rapid_linear_bwd_cuda", [&] {
        grad_tile_kernel<scalar_t><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
            z.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, cols, c0, inv_t,
            targets.data_ptr<int64_t>() + r0, grad.data_ptr<float>() + r0, lse.data_ptr<float>() + r0,
            dz.data_ptr<scalar_t>());
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

}  // namespace cuda
}  // namespace rapid
