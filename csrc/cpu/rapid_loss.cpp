// rapid_loss on CPU: the whole sequence/group epilogue of the RAPID estimator in one pass over packed tokens.
//
// Per sequence s (parallel over sequences): log w_s = Σ_t (lp_t − blp_t) (mean for "geometric") and Σ_t lp_t.
// Per group (serial, tiny): w̄ = clip(w), baseline (loo / mean), advantage (optionally / group std), and the
// per-sequence coefficient c_s = −w̄_s A_s / (S · loss_norm). Then loss = Σ_s c_s Σ_t lp_t and the per-token
// gradient coef[t] = c_{s(t)} (written in the same parallel pass shape). Sums are fp32 per sequence (as the
// reference's index_add_), the loss is summed over sequences in order in double: reproducible for any thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../rapid_ops.h"

namespace rapid {
namespace cpu {
namespace {

// w̄ from log w; sets *clipped when the clip changed the weight (same rules as reference.clip_weights).
float clip_weight(float log_w, float log_eta, ISClip mode, bool* clipped) {
  switch (mode) {
    case ISClip::kTruncate:
      *clipped = log_w > log_eta;
      return std::exp(std::min(log_w, log_eta));
    case ISClip::kMask:
      *clipped = log_w > log_eta;
      return *clipped ? 0.0f : std::exp(log_w);
    case ISClip::kNone:
    default:
      *clipped = log_w > kLogWCap;
      return std::exp(std::min(log_w, kLogWCap));
  }
}

}  // namespace

LossResult rapid_loss_fwd(const at::Tensor& token_logprobs, const at::Tensor& behavior_logprobs,
                          const at::Tensor& rewards, const at::Tensor& cu_seqlens, const LossOptions& opt) {
  const int64_t n = token_logprobs.size(0), num_seqs = rewards.size(0), k = opt.group_size;
  const auto fopts = token_logprobs.options().dtype(at::kFloat);
  at::Tensor seq_logratio = at::empty({num_seqs}, fopts), weights = at::empty({num_seqs}, fopts);
  at::Tensor baselines = at::empty({num_seqs}, fopts), advantages = at::empty({num_seqs}, fopts);
  at::Tensor coef = at::empty({n}, fopts);
  const float* lp = token_logprobs.data_ptr<float>();
  const float* blp = behavior_logprobs.data_ptr<float>();
  const float* r = rewards.data_ptr<float>();
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  float* lr = seq_logratio.data_ptr<float>();
  float* w = weights.data_ptr<float>();
  float* b = baselines.data_ptr<float>();
  float* a = advantages.data_ptr<float>();
  float* c = coef.data_ptr<float>();
  std::vector<float> lp_sum(num_seqs), seq_coef(num_seqs);
  std::vector<char> clipped(num_seqs);

  // Pass 1 over tokens: per-sequence sums of the log-ratio and of the log-probs; then the clipped weight.
  const float log_eta = std::log(opt.eta);
  at::parallel_for(0, num_seqs, 64, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      float ratio = 0.0f, total = 0.0f;
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
        ratio += lp[t] - blp[t];
        total += lp[t];
      }
      if (opt.geometric) ratio /= static_cast<float>(std::max<int64_t>(cu[s + 1] - cu[s], 1));
      lr[s] = ratio;
      lp_sum[s] = total;
      bool was_clipped = false;
      w[s] = clip_weight(ratio, log_eta, opt.is_clip, &was_clipped);
      clipped[s] = was_clipped;
    }
  });

  // Per group: importance-weighted baseline, advantage, coefficient.
  const float norm = static_cast<float>(num_seqs) * opt.loss_norm;
  for (int64_t g0 = 0; g0 < num_seqs; g0 += k) {
    float wr_total = 0.0f, r_mean = 0.0f;
    for (int64_t j = g0; j < g0 + k; ++j) {
      wr_total += w[j] * r[j];
      r_mean += r[j];
    }
    r_mean /= static_cast<float>(k);
    float scale = 1.0f;
    if (opt.adv_scale == AdvScale::kStd) {
      float var = 0.0f;
      for (int64_t j = g0; j < g0 + k; ++j) var += (r[j] - r_mean) * (r[j] - r_mean);
      const float std_r = k > 1 ? std::sqrt(var / static_cast<float>(k - 1)) : 0.0f;
      scale = 1.0f / (std_r + kStdEps);
    }
    for (int64_t j = g0; j < g0 + k; ++j) {
      b[j] = opt.baseline == Baseline::kLoo ? (wr_total - w[j] * r[j]) / static_cast<float>(k - 1)
                                            : wr_total / static_cast<float>(k);
      a[j] = (r[j] - b[j]) * scale;
      seq_coef[j] = -w[j] * a[j] / norm;
    }
  }

  // Pass 2 over tokens: broadcast the coefficient; the loss and clip fraction in sequence order.
  at::parallel_for(0, num_seqs, 64, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t) c[t] = seq_coef[s];
    }
  });
  double loss = 0.0;
  int64_t num_clipped = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    loss += static_cast<double>(seq_coef[s]) * static_cast<double>(lp_sum[s]);
    num_clipped += clipped[s];
  }
  at::Tensor loss_t = at::full({}, static_cast<float>(loss), fopts);
  at::Tensor clip_fraction = at::full({}, static_cast<float>(num_clipped) / static_cast<float>(num_seqs), fopts);
  return {loss_t, seq_logratio, weights, baselines, advantages, clip_fraction, coef};
}

}  // namespace cpu
}  // namespace rapid
