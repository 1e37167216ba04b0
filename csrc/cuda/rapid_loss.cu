// rapid_loss on CUDA: one block per group, one launch for the whole epilogue.
//
// For each of its K sequences the block reduces Σ(lp − blp) and Σ lp over the sequence's tokens; thread 0 then
// computes the clipped weights, the importance-weighted baseline, the advantages and the per-sequence gradient
// coefficient c_s = −w̄_s A_s / (S · loss_norm) (K is small), and the block broadcasts c_s to the tokens. Per-group
// partial losses and clip counts are summed on the host side by ATen (deterministic, no atomics).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/ops/empty.h>

#include "../rapid_ops.h"
#include "common.cuh"

namespace rapid {
namespace cuda {
namespace {

__device__ float clip_weight(float log_w, float log_eta, int mode, bool* clipped) {
  if (mode == static_cast<int>(ISClip::kTruncate)) {
    *clipped = log_w > log_eta;
    return expf(fminf(log_w, log_eta));
  }
  if (mode == static_cast<int>(ISClip::kMask)) {
    *clipped = log_w > log_eta;
    return *clipped ? 0.0f : expf(log_w);
  }
  *clipped = log_w > kLogWCap;
  return expf(fminf(log_w, kLogWCap));
}

__global__ void rapid_loss_group_kernel(const float* __restrict__ lp, const float* __restrict__ blp,
                                        const float* __restrict__ rewards, const int64_t* __restrict__ cu,
                                        int64_t k, float log_eta, int is_clip, int baseline, int adv_scale,
                                        bool geometric, float norm, float* __restrict__ seq_logratio,
                                        float* __restrict__ weights, float* __restrict__ baselines,
                                        float* __restrict__ advantages, float* __restrict__ seq_coef,
                                        float* __restrict__ lp_sum, float* __restrict__ group_loss,
                                        float* __restrict__ group_clipped, float* __restrict__ coef) {
  const int64_t g0 = static_cast<int64_t>(blockIdx.x) * k;
  for (int64_t s = g0; s < g0 + k; ++s) {
    float ratio = 0.0f, total = 0.0f;
    for (int64_t t = cu[s] + threadIdx.x; t < cu[s + 1]; t += blockDim.x) {
      ratio += lp[t] - blp[t];
      total += lp[t];
    }
    ratio = block_sum(ratio);
    total = block_sum(total);
    if (threadIdx.x == 0) {
      if (geometric) ratio /= static_cast<float>(max(cu[s + 1] - cu[s], int64_t{1}));
      bool clipped = false;
      seq_logratio[s] = ratio;
      weights[s] = clip_weight(ratio, log_eta, is_clip, &clipped);
      lp_sum[s] = total;
      group_clipped[blockIdx.x] = (s == g0 ? 0.0f : group_clipped[blockIdx.x]) + (clipped ? 1.0f : 0.0f);
    }
  }
  if (threadIdx.x == 0) {
    float wr_total = 0.0f, r_mean = 0.0f;
    for (int64_t j = g0; j < g0 + k; ++j) {
      wr_total += weights[j] * rewards[j];
      r_mean += rewards[j];
    }
    r_mean /= static_cast<float>(k);
    float scale = 1.0f;
    if (adv_scale == static_cast<int>(AdvScale::kStd)) {
      float var = 0.0f;
      for (int64_t j = g0; j < g0 + k; ++j) var += (rewards[j] - r_mean) * (rewards[j] - r_mean);
      scale = 1.0f / ((k > 1 ? sqrtf(var / static_cast<float>(k - 1)) : 0.0f) + kStdEps);
    }
    float loss = 0.0f;
    for (int64_t j = g0; j < g0 + k; ++j) {
      const float b = baseline == static_cast<int>(Baseline::kLoo)
                          ? (wr_total - weights[j] * rewards[j]) / static_cast<float>(k - 1)
                          : wr_total / static_cast<float>(k);
      baselines[j] = b;
      advantages[j] = (rewards[j] - b) * scale;
      seq_coef[j] = -weights[j] * advantages[j] / norm;
      loss += seq_coef[j] * lp_sum[j];
    }
    group_loss[blockIdx.x] = loss;
  }
  __syncthreads();  // seq_coef of this group is visible to the whole block
  for (int64_t s = g0; s < g0 + k; ++s) {
    const float c = seq_coef[s];
    for (int64_t t = cu[s] + threadIdx.x; t < cu[s + 1]; t += blockDim.x) coef[t] = c;
  }
}

}  // namespace
}  // namespace cuda

// Entry points, defined by qualified name: a signature that drifts from rapid_ops.h is a compile error.

LossResult cuda::rapid_loss_fwd(const at::Tensor& token_logprobs, const at::Tensor& behavior_logprobs,
                          const at::Tensor& rewards, const at::Tensor& cu_seqlens, const LossOptions& opt) {
  const c10::cuda::CUDAGuard guard(token_logprobs.device());
  const int64_t n = token_logprobs.size(0), num_seqs = rewards.size(0), k = opt.group_size;
  const int64_t num_groups = num_seqs / k;
  const auto fopts = token_logprobs.options().dtype(at::kFloat);
  at::Tensor seq_logratio = at::empty({num_seqs}, fopts), weights = at::empty({num_seqs}, fopts);
  at::Tensor baselines = at::empty({num_seqs}, fopts), advantages = at::empty({num_seqs}, fopts);
  at::Tensor seq_coef = at::empty({num_seqs}, fopts), lp_sum = at::empty({num_seqs}, fopts);
  at::Tensor group_loss = at::empty({num_groups}, fopts), group_clipped = at::empty({num_groups}, fopts);
  at::Tensor coef = at::empty({n}, fopts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  rapid_loss_group_kernel<<<static_cast<unsigned int>(num_groups), kThreads, 0, stream>>>(
      token_logprobs.data_ptr<float>(), behavior_logprobs.data_ptr<float>(), rewards.data_ptr<float>(),
      cu_seqlens.data_ptr<int64_t>(), k, std::log(opt.eta), static_cast<int>(opt.is_clip),
      static_cast<int>(opt.baseline), static_cast<int>(opt.adv_scale), opt.geometric,
      static_cast<float>(num_seqs) * opt.loss_norm, seq_logratio.data_ptr<float>(), weights.data_ptr<float>(),
      baselines.data_ptr<float>(), advantages.data_ptr<float>(), seq_coef.data_ptr<float>(), lp_sum.data_ptr<float>(),
      group_loss.data_ptr<float>(), group_clipped.data_ptr<float>(), coef.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor loss = group_loss.sum();
  at::Tensor clip_fraction = group_clipped.sum().div(static_cast<double>(num_seqs));
  return {loss, seq_logratio, weights, baselines, advantages, clip_fraction, coef};
}

}  // namespace rapid
