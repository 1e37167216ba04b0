// token_logprobs on CPU: out[i] = logits[i, t_i] / T − logsumexp(logits[i] / T), one row per task.
//
// Forward reads each row twice (scale + max, then Σ exp) from a per-thread fp32 copy of the row; backward
// recomputes softmax from the saved LSE: d logits[i, j] = g_i / T · (1[j = t_i] − p_ij). No [N, V] fp32 buffer.
#include <ATen/Parallel.h>

#include <vector>

#include "../rapid_ops.h"
#include "row_math.h"

namespace rapid {
namespace cpu {
namespace {

// Rows per parallel task: enough work per task to amortise the scheduling, small enough to balance.
int64_t row_grain(int64_t vocab) { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(vocab, 1)); }

template <typename scalar_t>
void load_row(const scalar_t* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

template <typename scalar_t>
void fwd_impl(const at::Tensor& logits, const int64_t* targets, float inv_t, float* out, float* lse) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    std::vector<float> row(vocab);
    for (int64_t i = begin; i < end; ++i) {
      load_row(x + i * vocab, row.data(), vocab);
      const float m = scale_and_max(row.data(), nullptr, vocab, inv_t);
      LseState state;
      state.merge(m, sum_exp(row.data(), vocab, m));
      lse[i] = state.lse();
      out[i] = row[targets[i]] - lse[i];
    }
  });
}

template <typename scalar_t>
void bwd_impl(const float* grad, const at::Tensor& logits, const int64_t* targets, const float* lse, float inv_t,
              at::Tensor& dlogits) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  scalar_t* dx = dlogits.data_ptr<scalar_t>();
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    std::vector<float> row(vocab);
    for (int64_t i = begin; i < end; ++i) {
      load_row(x + i * vocab, row.data(), vocab);
      scale_and_max(row.data(), nullptr, vocab, inv_t);
      const float scale = grad[i] * inv_t;
      neg_softmax_scaled(row.data(), vocab, lse[i], scale);
      row[targets[i]] += scale;
      scalar_t* dst = dx + i * vocab;
      for (int64_t j = 0; j < vocab; ++j) dst[j] = static_cast<scalar_t>(row[j]);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& targets,
                                                      double temperature) {
  const auto opts = logits.options().dtype(at::kFloat);
  at::Tensor out = at::empty({logits.size(0)}, opts);
  at::Tensor lse = at::empty({logits.size(0)}, opts);
  const float inv_t = static_cast<float>(1.0 / temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_fwd", [&] {
    fwd_impl<scalar_t>(logits, targets.data_ptr<int64_t>(), inv_t, out.data_ptr<float>(), lse.data_ptr<float>());
  });
  return {out, lse};
}

at::Tensor token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,
                              const at::Tensor& lse, double temperature) {
  at::Tensor dlogits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  const float inv_t = static_cast<float>(1.0 / temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_bwd", [&] {
    bwd_impl<scalar_t>(grad.data_ptr<float>(), logits, targets.data_ptr<int64_t>(), lse.data_ptr<float>(), inv_t,
                       dlogits);
  });
  return dlogits;
}

}  // namespace cpu
}  // namespace rapid
