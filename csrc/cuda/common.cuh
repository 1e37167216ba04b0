// Shared CUDA helpers: (max, Σexp) pairs of an online log-sum-exp and their warp / block reductions.
#pragma once

// c10 headers only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers we do not use).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cmath>

namespace rapid {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of the row kernels (8 warps)

struct MaxSum {
  float m;  // running max
  float s;  // Σ exp(x − m)
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

// Fold one value into a thread's running pair (skips -inf, which contributes nothing).
__device__ __forceinline__ MaxSum push(MaxSum a, float v) {
  if (v == -INFINITY) return a;
  if (v > a.m) return {v, a.s * __expf(a.m - v) + 1.0f};
  return {a.m, a.s + __expf(v - a.m)};
}

__device__ __forceinline__ MaxSum warp_reduce(MaxSum v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = combine(v, other);
  }
  return v;
}

// Reduce over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ MaxSum block_reduce(MaxSum v) {
  __shared__ MaxSum partial[32];
  __shared__ MaxSum result;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x >> 5;
    MaxSum w = lane < num_warps ? partial[lane] : MaxSum{-INFINITY, 0.0f};
    w = warp_reduce(w);
    if (lane == 0) result = w;
  }
  __syncthreads();
  return result;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; every thread gets the result. Fixed order: deterministic.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float result;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < (blockDim.x >> 5) ? partial[lane] : 0.0f;
    w = warp_sum(w);
    if (lane == 0) result = w;
  }
  __syncthreads();
  return result;
}

}  // namespace cuda
}  // namespace rapid
