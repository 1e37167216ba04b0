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
// Inputs below -87.3 (−inf included) return ~1e-38 instead of a denormal or 0: negligible in a softmax sum; the
// gradient passes zero masked (−inf) entries exactly. Round-to-nearest of
// x·log2(e) uses the 1.5·2^23 trick (exact for |x| < 2^22), so no floor() call blocks vectorisation.
template <typename T, typename I>
inline T exp_impl(T x) {
  // Clamp without arithmetic on x, so that x = −inf gives ~1e-38 (not NaN); NaN stays NaN.
  x = x < -87.3f ? T{} - 87.3f : x;   // (written so T may be a vector or a scalar)
  x = x > 88.7f ? T{} + 88.7f : x;
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

// Softmax part of the gradient: z[j] <- −scale · exp(z[j] − lse), where z already holds processed logits.
// Entries that are −inf (masked vocabulary, truncated by a threshold) get exactly 0. The caller adds +scale at the
// target column (the one-hot part).
RAPID_MULTIVERSION inline void neg_softmax_scaled(float* z, int64_t n, float lse, float scale) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vfloat v = vload(z + j);
    vstore(z + j, v > neg_inf ? fast_exp(v - lse) * -scale : vfloat{});
  }
  for (; j < n; ++j) z[j] = z[j] > neg_inf ? -scale * fast_exp(z[j] - lse) : 0.0f;
}

// As neg_softmax_scaled, times the soft-cap derivative d z / d raw ∝ 1 − tanh² = 1 − (z · k)², k = T / softcap
// (z = softcap · tanh(raw / softcap) / T, so tanh = z · k).
RAPID_MULTIVERSION inline void neg_softmax_scaled_softcap(float* z, int64_t n, float lse, float scale, float k) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vfloat v = vload(z + j);
    const vfloat th = v * k;
    vstore(z + j, v > neg_inf ? fast_exp(v - lse) * -scale * (1.0f - th * th) : vfloat{});
  }
  for (; j < n; ++j) {
    const float th = z[j] * k;
    z[j] = z[j] > neg_inf ? -scale * fast_exp(z[j] - lse) * (1.0f - th * th) : 0.0f;
  }
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

// tanh(x) = 1 − 2 / (exp(2x) + 1): saturates cleanly to ±1 (fast_exp clamps), absolute error ~1e-7.
inline vfloat vtanh(vfloat x) { return 1.0f - 2.0f / (fast_exp(x * 2.0f) + 1.0f); }
inline float stanh(float x) { return 1.0f - 2.0f / (fast_exp(x * 2.0f) + 1.0f); }

// How a raw logit becomes the processed one: z = softcap · tanh(raw / softcap) / T (softcap = 0: raw / T); with a
// threshold, z < thr becomes −inf except at the row's target column (always kept).
struct RowProcess {
  float inv_t = 1.0f;
  float softcap = 0.0f;                                     // 0: no soft-cap
  float thr = -std::numeric_limits<float>::infinity();      // −inf: no truncation
  bool plain() const { return softcap == 0.0f && thr == -std::numeric_limits<float>::infinity(); }
  float one(float raw) const { return softcap != 0.0f ? softcap * inv_t * stanh(raw / softcap) : raw * inv_t; }

  // Row `row`'s processing: temperature, soft-cap (0 = none), threshold from `thr` (null = none).
  static RowProcess make(double temperature, double softcap, const float* thr, int64_t row) {
    RowProcess p;
    p.inv_t = static_cast<float>(1.0 / temperature);
    p.softcap = static_cast<float>(softcap);
    if (thr) p.thr = thr[row];
    return p;
  }
};

// z[j] <- process(z[j] + bias[j]) in place (bias may be null), truncated below p.thr except at column `target`
// (a local index; outside [0, n) when the target is in another segment). Returns max_j z[j].
RAPID_MULTIVERSION inline float process_and_max(float* z, const float* bias, int64_t n, const RowProcess& p,
                                               int64_t target) {
  if (p.plain()) return scale_and_max(z, bias, n, p.inv_t);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const bool has_target = target >= 0 && target < n;
  const float z_target = has_target ? p.one(z[target] + (bias ? bias[target] : 0.0f)) : 0.0f;
  const float cap_scale = p.softcap * p.inv_t, inv_cap = p.softcap != 0.0f ? 1.0f / p.softcap : 0.0f;
  vfloat acc = vfloat{} + neg_inf;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    vfloat v = vload(z + j) + (bias ? vload(bias + j) : vfloat{});
    v = p.softcap != 0.0f ? vtanh(v * inv_cap) * cap_scale : v * p.inv_t;
    v = v >= p.thr ? v : vfloat{} + neg_inf;
    vstore(z + j, v);
    acc = vmax(acc, v);
  }
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, acc[l]);
  for (; j < n; ++j) {
    const float v = p.one(z[j] + (bias ? bias[j] : 0.0f));
    z[j] = v >= p.thr ? v : neg_inf;
    m = std::max(m, z[j]);
  }
  if (has_target) {
    z[target] = z_target;
    m = std::max(m, z_target);
  }
  return m;
}

// Returns Σ_j exp(z[j] − m); writes Σ_j exp(z[j] − m) · z[j] over finite z to *ez (the entropy's E[z] numerator).
RAPID_MULTIVERSION inline float sum_exp_ez(const float* z, int64_t n, float m, float* ez) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  vfloat acc{}, acc_z{};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const vfloat v = vload(z + j);
    const vfloat e = v > neg_inf ? fast_exp(v - m) : vfloat{};
    acc += e;
    acc_z += v > neg_inf ? e * v : vfloat{};
  }
  float s = 0.0f, t = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    s += acc[l];
    t += acc_z[l];
  }
  for (; j < n; ++j) {
    if (z[j] > neg_inf) {
      const float e = fast_exp(z[j] - m);
      s += e;
      t += e * z[j];
    }
  }
  *ez = t;
  return s;
}

// Online log-sum-exp state of one row: running max m, Σ exp(x − m), and Σ exp(x − m) · x (for the entropy).
struct LseState {
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;
  float t = 0.0f;

  // Fold in a segment whose max is seg_max, Σ exp(x − seg_max) is seg_sum and Σ exp(x − seg_max) · x is seg_t.
  void merge(float seg_max, float seg_sum, float seg_t = 0.0f) {
    if (seg_max == -std::numeric_limits<float>::infinity()) return;
    if (seg_max > m) {
      const float r = std::exp(m - seg_max);
      s = s * r + seg_sum;
      t = t * r + seg_t;
      m = seg_max;
    } else {
      const float r = std::exp(seg_max - m);
      s += seg_sum * r;
      t += seg_t * r;
    }
  }
  void merge(const LseState& o) { merge(o.m, o.s, o.t); }
  float lse() const { return m + std::log(s); }
  float entropy() const { return s > 0.0f ? lse() - t / s : 0.0f; }
};

}  // namespace cpu
}  // namespace rapid
