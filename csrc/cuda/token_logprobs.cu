// token_logprobs on CUDA: one block per row. Forward: each thread keeps an online (max, Σexp, Σexp·z) state over a
// strided slice of the row, then a warp-shuffle + shared-memory block reduction gives the row's LSE (and entropy).
// Backward recomputes the softmax from the saved LSE: d logits = g · (1[j = t] − p) · dz/dl, exactly 0 outside the
// kept set. z = process(logit) (soft-cap, temperature); with a threshold, z < threshold[row] is dropped except at
// the target. Rows are read with 16-byte vector loads when they are 16-byte aligned (8 bf16/fp16 or 4 fp32 per
// load), else one element at a time. An out-of-range target gives NaN (no OOB read).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "../rapid_ops.h"
#include "common.cuh"

namespace rapid {
namespace cuda {
namespace {

struct RowArgs {
  Process proc;
  const float* thr;  // [N] or null
};

// Processed, truncated value of element j of a row (−inf when dropped).
__device__ __forceinline__ float keep_value(float raw, int64_t j, int64_t t, float thr, const Process& proc) {
  const float z = proc(raw);
  return (z >= thr || j == t) ? z : -INFINITY;
}

template <typename scalar_t, bool kVector>
__global__ void token_logprobs_fwd_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ targets,
                                          int64_t vocab, RowArgs args, float* __restrict__ out,
                                          float* __restrict__ lse, float* __restrict__ entropy) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * vocab;
  const int64_t t = targets[row];
  const float thr = args.thr ? args.thr[row] : -INFINITY;
  MaxSum acc{-INFINITY, 0.0f, 0.0f};
  if constexpr (kVector) {
    constexpr int V = Vec<scalar_t>::kVec;
    for (int64_t j0 = threadIdx.x * V; j0 < vocab; j0 += blockDim.x * V) {
      float v[V];
      Vec<scalar_t>::load(x + j0, v);
#pragma unroll
      for (int i = 0; i < V; ++i) acc = push(acc, keep_value(v[i], j0 + i, t, thr, args.proc));
    }
  } else {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      acc = push(acc, keep_value(static_cast<float>(x[j]), j, t, thr, args.proc));
    }
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) {
    const float row_lse = acc.m + logf(acc.s);
    lse[row] = row_lse;
    out[row] = (t >= 0 && t < vocab) ? args.proc(static_cast<float>(x[t])) - row_lse : NAN;
    if (entropy) entropy[row] = row_lse - acc.t / acc.s;
  }
}

template <typename scalar_t, bool kVector>
__global__ void token_logprobs_bwd_kernel(const float* __restrict__ grad, const scalar_t* __restrict__ logits,
                                          const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                          int64_t vocab, RowArgs args, scalar_t* __restrict__ dlogits) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * vocab;
  scalar_t* dx = dlogits + row * vocab;
  const float g = grad[row], row_lse = lse[row];
  const int64_t t = targets[row];
  const float thr = args.thr ? args.thr[row] : -INFINITY;
  auto d = [&](float raw, int64_t j) {
    const float z = keep_value(raw, j, t, thr, args.proc);
    if (z == -INFINITY) return 0.0f;
    return g * args.proc.slope(z) * ((j == t ? 1.0f : 0.0f) - __expf(z - row_lse));
  };
  if constexpr (kVector) {
    constexpr int V = Vec<scalar_t>::kVec;
    for (int64_t j0 = threadIdx.x * V; j0 < vocab; j0 += blockDim.x * V) {
      float v[V];
      Vec<scalar_t>::load(x + j0, v);
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = d(v[i], j0 + i);
      Vec<scalar_t>::store(dx + j0, v);
    }
  } else {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      dx[j] = static_cast<scalar_t>(d(static_cast<float>(x[j]), j));
    }
  }
}

}  // namespace
}  // namespace cuda

// Entry points, defined by qualified name: a signature that drifts from rapid_ops.h is a compile error.

LogprobResult cuda::token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& targets, const LogitOptions& opt) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const auto opts = logits.options().dtype(at::kFloat);
  at::Tensor out = at::empty({n}, opts), lse = at::empty({n}, opts);
  at::Tensor entropy = at::empty({opt.want_entropy ? n : 0}, opts);
  if (n == 0) return {out, lse, entropy};
  const RowArgs args{Process::make(opt.temperature, opt.softcap), opt.thr_ptr()};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = rows_aligned16(logits.data_ptr(), vocab, logits.element_size());
  float* ent = opt.want_entropy ? entropy.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_fwd_cuda",
                                  [&] {
    const dim3 grid(static_cast<unsigned int>(n));
    if (vec) {
      token_logprobs_fwd_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(
          logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), vocab, args, out.data_ptr<float>(),
          lse.data_ptr<float>(), ent);
    } else {
      token_logprobs_fwd_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(
          logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), vocab, args, out.data_ptr<float>(),
          lse.data_ptr<float>(), ent);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse, entropy};
}

at::Tensor cuda::token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,
                              const at::Tensor& lse, const LogitOptions& opt) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t n = logits.size(0), vocab = logits.size(1);
  at::Tensor dlogits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (n == 0) return dlogits;
  const RowArgs args{Process::make(opt.temperature, opt.softcap), opt.thr_ptr()};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = rows_aligned16(logits.data_ptr(), vocab, logits.element_size()) &&
                   rows_aligned16(dlogits.data_ptr(), vocab, dlogits.element_size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_bwd_cuda",
                                  [&] {
    const dim3 grid(static_cast<unsigned int>(n));
    if (vec) {
      token_logprobs_bwd_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(
          grad.data_ptr<float>(), logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
          vocab, args, dlogits.data_ptr<scalar_t>());
    } else {
      token_logprobs_bwd_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(
          grad.data_ptr<float>(), logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
          vocab, args, dlogits.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dlogits;
}

}  // namespace rapid
