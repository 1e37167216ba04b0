// Row-wise float math for the CPU kernels: a branch-free exp and the passes of an online log-sum-exp and of the
// softmax gradient over one row segment.
//
// Why not at::vec: ATen selects its SIMD width at build time of each translation unit (CPU_CAPABILITY), and an
// extension built with default flags would get the scalar fallback. Instead the loops below use GCC vector
// extensions (16 floats), and on x86-64 each hot function is built for AVX-512, AVX2+FMA and the baseline with
// `target_clones`, picked once at load time by the dynamic loader.
// Every reduction uses the same fixed partial-sum layout whatever the thread count, so results are bitwise
// reproducible across torch.set_num_threads settings on one machine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define RAPID_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RAPID_MULTIVERSION
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector arguments of inline helpers; never crosses a library ABI
#endif

namespace rapid {
namespace cpu {

constexpr int kLanes = 16;  // width of the partial sums: one AVX-512 register of floats, two of AVX2

// 16 floats, written with GCC vector extensions: one AVX-512 register, two AVX2 ones, four SSE ones, whatever the
// clone being compiled supports. Scalars broadcast in mixed vector/scalar arithmetic.
typedef float vfloat __attribute__((vector_size(4 * kLanes)));
typedef int32_t vint __attribute__((vector_size(4 * kLanes)));

inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

// exp(x), ~1 ulp on the range that matters (Cody-Waite reduction + the cephes degree-6 polynomial), branch-free.
// Inputs below -87.3 return ~1e-38 instead of a denormal or 0: negligible in a softmax sum. Round-to-nearest of
// x·log2(e) uses the 1.5·2^23 trick (exact for |x| < 2^22), so no floor() call blocks vectorisation.
template <typename T, typename I>
inline T exp_impl(T x) {
  x = x < -87.3f ? T{} - 87.3f + x * 0.0f : x;   // (written so T may be a vector or a scalar)
  x = x > 88.7f ? T{} + 88.7f + x * 0.0f : x;
  const T k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const T r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const T y = p * r * r + r + 1.0f;
  I bits;
  if constexpr (std::is_same_v<T, float>) {
    bits = (static_cast<int32_t>(k) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(k, vint) + 127) << 23;
  }
  T scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline float fast_exp(float x) { return exp_impl<float, int32_t>(x); }
inline vfloat fast_exp(vfloat x) { return exp_impl<vfloat, vint>(x); }

// z[j] <- (z[j] + bias[j]) * inv_t in place (bias may be null); returns max_j z[j].
RAPID_MULTIVERSION inline float scale_and_max(float* z, const float* bias, int64_t n, float inv_t) {
  vfloat acc = vfloat{} - std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vfloat v = (vload(z + j) + (bias ? vload(bias + j) : vfloat{})) * inv_t;
    vstore(z + j, v);
    acc = vmax(acc, v);
  }
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, acc[l]);
  for (; j < n; ++j) {
    z[j] = (z[j] + (bias ? bias[j] : 0.0f)) * inv_t;
    m = std::max(m, z[j]);
  }
  return m;
}

// Σ_j exp(z[j] − m), with a fixed summation order.
RAPID_MULTIVERSION inline float sum_exp(const float* z, int64_t n, float m) {
  vfloat acc{};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) acc += fast_exp(vload(z + j) - m);
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < n; ++j) s += fast_exp(z[j] - m);
  return s;
}

// Softmax part of the gradient: z[j] <- −scale · exp(z[j] − lse), where z already holds logits / T.
// The caller adds +scale at the target column (the one-hot part).
RAPID_MULTIVERSION inline void neg_softmax_scaled(float* z, int64_t n, float lse, float scale) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) vstore(z + j, fast_exp(vload(z + j) - lse) * -scale);
  for (; j < n; ++j) z[j] = -scale * fast_exp(z[j] - lse);
}

// The softmax part of the gradient straight from raw logits, in one pass:
// z[j] <- −scale · exp((z[j] + bias[j]) · inv_t − lse). The caller adds +scale at the target column.
RAPID_MULTIVERSION inline void neg_softmax_from_logits(float* z, const float* bias, int64_t n, float inv_t, float lse,
                                                       float scale) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vfloat v = (vload(z + j) + (bias ? vload(bias + j) : vfloat{})) * inv_t;
    vstore(z + j, fast_exp(v - lse) * -scale);
  }
  for (; j < n; ++j) z[j] = -scale * fast_exp((z[j] + (bias ? bias[j] : 0.0f)) * inv_t - lse);
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
