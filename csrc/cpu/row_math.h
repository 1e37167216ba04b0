// Row-wise float math for the CPU kernels: a branch-free exp and the passes of an online log-sum-exp and of the
// softmax gradient over one row segment.
//
// Why not at::vec: ATen selects its SIMD width at build time of each translation unit (CPU_CAPABILITY), and an
// extension built with default flags would get the scalar fallback. Instead the loops below are written so GCC
// vectorises them (fixed-width partial sums, no data-dependent branches), and on x86-64 each hot function is built
// for AVX-512, AVX2+FMA and the baseline with `target_clones`, picked once at load time by the dynamic loader.
// Every reduction uses the same fixed partial-sum layout whatever the thread count, so results are bitwise
// reproducible across torch.set_num_threads settings on one machine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define RAPID_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RAPID_MULTIVERSION
#endif

namespace rapid {
namespace cpu {

constexpr int kLanes = 16;  // width of the partial sums: one AVX-512 register of floats, two of AVX2

// exp(x) for float, ~1 ulp on the range that matters (Cody-Waite reduction + the cephes degree-6 polynomial).
// Inputs below -87.3 return ~1e-38 instead of a denormal or 0: negligible in a softmax sum; NaN stays NaN.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// z[j] <- (z[j] + bias[j]) * inv_t in place (bias may be null); returns max_j z[j].
RAPID_MULTIVERSION inline float scale_and_max(float* z, const float* bias, int64_t n, float inv_t) {
  float acc[kLanes];
  std::fill(acc, acc + kLanes, -std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = (z[j + l] + (bias ? bias[j + l] : 0.0f)) * inv_t;
      z[j + l] = v;
      acc[l] = std::max(acc[l], v);
    }
  }
  for (; j < n; ++j) {
    const float v = (z[j] + (bias ? bias[j] : 0.0f)) * inv_t;
    z[j] = v;
    acc[0] = std::max(acc[0], v);
  }
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, acc[l]);
  return m;
}

// Σ_j exp(z[j] − m), with a fixed summation order.
RAPID_MULTIVERSION inline float sum_exp(const float* z, int64_t n, float m) {
  float acc[kLanes] = {0.0f};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += fast_exp(z[j + l] - m);
  }
  for (; j < n; ++j) acc[0] += fast_exp(z[j] - m);
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// Softmax part of the gradient: z[j] <- −scale · exp(z[j] − lse), where z already holds logits / T.
// The caller adds +scale at the target column (the one-hot part).
RAPID_MULTIVERSION inline void neg_softmax_scaled(float* z, int64_t n, float lse, float scale) {
  for (int64_t j = 0; j < n; ++j) z[j] = -scale * fast_exp(z[j] - lse);
}

// Online log-sum-exp state of one row: running max m and Σ exp(x − m).
struct LseState {
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;

  // Fold in a segment whose max is seg_max and whose Σ exp(x − seg_max) is seg_sum.
  void merge(float seg_max, float seg_sum) {
    if (seg_max == -std::numeric_limits<float>::infinity()) return;
    if (seg_max > m) {
      s = s * std::exp(m - seg_max) + seg_sum;
      m = seg_max;
    } else {
      s += seg_sum * std::exp(seg_max - m);
    }
  }
  float lse() const { return m + std::log(s); }
};

}  // namespace cpu
}  // namespace rapid
