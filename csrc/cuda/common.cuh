// Shared CUDA helpers: (max, Σexp, Σexp·x) states of an online log-sum-exp and their warp / block reductions,
// the logit processing (soft-cap, temperature) and 16-byte vector loads.
#pragma once

// c10 headers only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers we do not use).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace rapid {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of the row kernels (8 warps)

// Online log-sum-exp state: running max m, Σ exp(x − m) and Σ exp(x − m) · x (the entropy's E[x] numerator).
struct MaxSum {
  float m;  // running max
  float s;  // Σ exp(x − m)
  float t;  // Σ exp(x − m) · x
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f, 0.0f};
  const float ra = __expf(a.m - m), rb = __expf(b.m - m);
  return {m, a.s * ra + b.s * rb, a.t * ra + b.t * rb};
}

// Fold one value into a thread's running state (skips -inf, which contributes nothing).
__device__ __forceinline__ MaxSum push(MaxSum a, float v) {
  if (v == -INFINITY) return a;
  if (v > a.m) {
    const float r = __expf(a.m - v);
    return {v, a.s * r + 1.0f, a.t * r + v};
  }
  const float e = __expf(v - a.m);
  return {a.m, a.s + e, a.t + e * v};
}

// Raw logit -> processed logit z = softcap · tanh(raw / softcap) / T (softcap = 0: raw / T).
struct Process {
  float inv_t, softcap, inv_cap, cap_scale;
  static Process make(double temperature, double softcap) {
    const float inv_t = static_cast<float>(1.0 / temperature), cap = static_cast<float>(softcap);
    return {inv_t, cap, cap != 0.0f ? 1.0f / cap : 0.0f, cap * inv_t};
  }
  __device__ __forceinline__ float operator()(float raw) const {
    return softcap != 0.0f ? cap_scale * tanhf(raw * inv_cap) : raw * inv_t;
  }
  // d z / d raw = (1 − tanh²) / T, from z itself (tanh = z / cap_scale).
  __device__ __forceinline__ float slope(float z) const {
    if (softcap == 0.0f) return inv_t;
    const float th = z / cap_scale;
    return inv_t * (1.0f - th * th);
  }
};

// 16-byte vector loads: kVec elements of T per load (8 bf16/fp16, 4 fp32).
template <typename T>
struct Vec {
  static constexpr int kVec = 16 / sizeof(T);
  __device__ __forceinline__ static void load(const T* p, float (&out)[16 / sizeof(T)]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = static_cast<float>(e[i]);
  }
  __device__ __forceinline__ static void store(T* p, const float (&in)[16 / sizeof(T)]) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] = static_cast<T>(in[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};

// True when rows of `cols` elements of `elem` bytes starting at `ptr` are all 16-byte aligned.
inline bool rows_aligned16(const void* ptr, int64_t cols, int64_t elem) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (cols * elem) % 16 == 0;
}

__device__ __forceinline__ MaxSum warp_reduce(MaxSum v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset),
                 __shfl_xor_sync(0xffffffffu, v.t, offset)};
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
    MaxSum w = lane < num_warps ? partial[lane] : MaxSum{-INFINITY, 0.0f, 0.0f};
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
