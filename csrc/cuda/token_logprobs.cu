// token_logprobs on CUDA: one block per row. Forward: each thread keeps an online (max, Σexp) pair over a strided
// slice of the row, then a warp-shuffle + shared-memory block reduction gives the row's LSE. Backward recomputes
// softmax from the saved LSE: d logits = g / T · (1[j = t] − p). An out-of-range target gives NaN (no OOB read).
#include <ATen/Dispatch.h>

#include "../rapid_ops.h"
#include "common.cuh"

namespace rapid {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void token_logprobs_fwd_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ targets,
                                          int64_t vocab, float inv_t, float* __restrict__ out,
                                          float* __restrict__ lse) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * vocab;
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) acc = push(acc, static_cast<float>(x[j]) * inv_t);
  acc = block_reduce(acc);
  if (threadIdx.x == 0) {
    const float row_lse = acc.m + logf(acc.s);
    const int64_t t = targets[row];
    lse[row] = row_lse;
    out[row] = (t >= 0 && t < vocab) ? static_cast<float>(x[t]) * inv_t - row_lse : NAN;
  }
}

template <typename scalar_t>
__global__ void token_logprobs_bwd_kernel(const float* __restrict__ grad, const scalar_t* __restrict__ logits,
                                          const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                          int64_t vocab, float inv_t, scalar_t* __restrict__ dlogits) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * vocab;
  scalar_t* dx = dlogits + row * vocab;
  const float scale = grad[row] * inv_t, row_lse = lse[row];
  const int64_t t = targets[row];
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float p = __expf(static_cast<float>(x[j]) * inv_t - row_lse);
    dx[j] = static_cast<scalar_t>((j == t ? scale : 0.0f) - scale * p);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& targets,
                                                      double temperature) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const auto opts = logits.options().dtype(at::kFloat);
  at::Tensor out = at::empty({n}, opts), lse = at::empty({n}, opts);
  if (n == 0) return {out, lse};
  const float inv_t = static_cast<float>(1.0 / temperature);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_fwd_cuda",
                                  [&] {
    token_logprobs_fwd_kernel<scalar_t><<<static_cast<unsigned int>(n), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), vocab, inv_t, out.data_ptr<float>(),
        lse.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

at::Tensor token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,
                              const at::Tensor& lse, double temperature) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), vocab = logits.size(1);
  at::Tensor dlogits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (n == 0) return dlogits;
  const float inv_t = static_cast<float>(1.0 / temperature);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_bwd_cuda",
                                  [&] {
    token_logprobs_bwd_kernel<scalar_t><<<static_cast<unsigned int>(n), kThreads, 0, stream>>>(
        grad.data_ptr<float>(), logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
        vocab, inv_t, dlogits.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dlogits;
}

}  // namespace cuda
}  // namespace rapid
