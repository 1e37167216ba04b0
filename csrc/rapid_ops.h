// Kernel entry points shared by csrc/rapid_api.cpp (host checks + bindings) and the per-device kernel files.
//
// Every function here receives arguments the API layer has already checked: contiguous, on one device, fp32 /
// bf16 / fp16 for the float inputs (float64 goes to the Python reference), int64 targets and cu_seqlens.
// Outputs that are log-probs, ratios, sums or losses are float32; gradients have the dtype of their input.
#pragma once

// Only the Tensor class (not torch/extension.h): keeps the CUDA translation units light, so they compile in
// seconds-to-minutes instead of many minutes (the sm_90 compile test compiles them on every CPU CI run).
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <limits>
#include <tuple>

namespace rapid {

// Flags of rapid_loss (mirrors the Literal options of rapid_kernels/_validate.py).
enum class Baseline : int { kLoo = 0, kMean = 1 };
enum class ISClip : int { kTruncate = 0, kMask = 1, kNone = 2 };
enum class AdvScale : int { kNone = 0, kStd = 1 };

// log w is capped here with is_clip="none", only so exp() cannot overflow (reference.LOG_W_CAP).
constexpr float kLogWCap = 80.0f;
// Added to the group std with adv_scale="std" (reference.group_advantages).
constexpr float kStdEps = 1e-6f;

struct LossOptions {
  int64_t group_size;
  float eta;
  Baseline baseline;
  float loss_norm;
  bool geometric;  // is_level="geometric": log w is the mean, not the sum, of the token log-ratios
  ISClip is_clip;
  AdvScale adv_scale;
};

// (loss [], seq_logratio [S], weights [S], baselines [S], advantages [S], clip_fraction [], coef [N]);
// coef[t] = d loss / d token_logprobs[t].
using LossResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// How raw logits become the processed distribution (rapid_kernels/reference.py: process_logits, truncate).
struct LogitOptions {
  double temperature = 1.0;
  double softcap = 0.0;                 // 0: no soft-cap; else z = softcap · tanh(l / softcap) / T
  at::Tensor threshold;                 // undefined, or [N] fp32: keep z >= threshold[n] (and the target)
  bool want_entropy = false;            // forward also returns the entropy of the processed distribution
  const float* thr_ptr() const { return threshold.defined() ? threshold.data_ptr<float>() : nullptr; }
};

// (out [N] fp32, lse [N] fp32, entropy [N] fp32 or empty)
using LogprobResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// (d hidden, d weight, d bias); a gradient that is not asked for is an empty tensor.
using LinearGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

#define RAPID_DECLARE_KERNELS                                                                                     \
  LogprobResult token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& targets, const LogitOptions& opt); \
  at::Tensor token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,      \
                                const at::Tensor& lse, const LogitOptions& opt);                                \
  LogprobResult linear_token_logprobs_fwd(const at::Tensor& hidden, const at::Tensor& weight,                     \
                                          const at::Tensor& targets, const c10::optional<at::Tensor>& bias,      \
                                          const LogitOptions& opt, int64_t chunk);                                \
  LinearGrads linear_token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight, \
                                        const at::Tensor& targets, const c10::optional<at::Tensor>& bias,        \
                                        const at::Tensor& lse, const LogitOptions& opt, int64_t chunk,           \
                                        bool need_hidden, bool need_weight, bool need_bias);                     \
  LossResult rapid_loss_fwd(const at::Tensor& token_logprobs, const at::Tensor& behavior_logprobs,                \
                            const at::Tensor& rewards, const at::Tensor& cu_seqlens, const LossOptions& opt);

namespace cpu {
RAPID_DECLARE_KERNELS
}  // namespace cpu

#ifdef RAPID_WITH_CUDA
namespace cuda {
RAPID_DECLARE_KERNELS
}  // namespace cuda
#endif

}  // namespace rapid
