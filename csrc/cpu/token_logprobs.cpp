// token_logprobs on CPU: out[i] = z[i, t_i] − logsumexp_{K_i} z[i], one row per task, where z = processed logits
// (soft-cap, temperature) and K_i the kept set (z >= threshold[i], plus the target).
//
// Forward reads each row twice (process + max, then Σ exp and, for the entropy, Σ exp · z) from a per-thread fp32
// copy of the row; backward recomputes the softmax from the saved LSE:
// d logits[i, j] = g_i / T · (1[j = t_i] − p_ij) · (1 − tanh²) for the soft-cap, exactly 0 outside K_i.
// No [N, V] fp32 buffer.
#include <ATen/ATen.h>
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
void fwd_impl(const at::Tensor& logits, const int64_t* targets, const LogitOptions& opt, float* out, float* lse,
              float* entropy) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  const float* thr = opt.thr_ptr();
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    std::vector<float> row(vocab);
    for (int64_t i = begin; i < end; ++i) {
      load_row(x + i * vocab, row.data(), vocab);
      const RowProcess p = RowProcess::make(opt.temperature, opt.softcap, thr, i);
      const float m = process_and_max(row.data(), nullptr, vocab, p, targets[i]);
      LseState state;
      if (entropy) {
        float ez = 0.0f;
        const float s = sum_exp_ez(row.data(), vocab, m, &ez);
        state.merge(m, s, ez);
        entropy[i] = state.entropy();
      } else {
        state.merge(m, sum_exp(row.data(), vocab, m));
      }
      lse[i] = state.lse();
      out[i] = row[targets[i]] - lse[i];
    }
  });
}

template <typename scalar_t>
void bwd_impl(const float* grad, const at::Tensor& logits, const int64_t* targets, const float* lse,
              const LogitOptions& opt, at::Tensor& dlogits) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  scalar_t* dx = dlogits.data_ptr<scalar_t>();
  const float* thr = opt.thr_ptr();
  const float k = opt.softcap != 0.0 ? static_cast<float>(opt.temperature / opt.softcap) : 0.0f;  // tanh = z · k
  at::parallel_for(0, n, row_grain(vocab), [&](int64_t begin, int64_t end) {
    std::vector<float> row(vocab);
    for (int64_t i = begin; i < end; ++i) {
      load_row(x + i * vocab, row.data(), vocab);
      const RowProcess p = RowProcess::make(opt.temperature, opt.softcap, thr, i);
      process_and_max(row.data(), nullptr, vocab, p, targets[i]);
      const float scale = grad[i] * p.inv_t;
      const float z_t = row[targets[i]];
      if (k != 0.0f) {
        neg_softmax_scaled_softcap(row.data(), vocab, lse[i], scale, k);
        row[targets[i]] += scale * (1.0f - (z_t * k) * (z_t * k));
      } else {
        neg_softmax_scaled(row.data(), vocab, lse[i], scale);
        row[targets[i]] += scale;
      }
      scalar_t* dst = dx + i * vocab;
      for (int64_t j = 0; j < vocab; ++j) dst[j] = static_cast<scalar_t>(row[j]);
    }
  });
}

}  // namespace

LogprobResult token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& targets, const LogitOptions& opt) {
  const auto opts = logits.options().dtype(at::kFloat);
  const int64_t n = logits.size(0);
  at::Tensor out = at::empty({n}, opts), lse = at::empty({n}, opts);
  at::Tensor entropy = at::empty({opt.want_entropy ? n : 0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_fwd", [&] {
    fwd_impl<scalar_t>(logits, targets.data_ptr<int64_t>(), opt, out.data_ptr<float>(), lse.data_ptr<float>(),
                       opt.want_entropy ? entropy.data_ptr<float>() : nullptr);
  });
  return {out, lse, entropy};
}

at::Tensor token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,
                              const at::Tensor& lse, const LogitOptions& opt) {
  at::Tensor dlogits = at::empty_like(logits, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "rapid_token_logprobs_bwd", [&] {
    bwd_impl<scalar_t>(grad.data_ptr<float>(), logits, targets.data_ptr<int64_t>(), lse.data_ptr<float>(), opt,
                       dlogits);
  });
  return dlogits;
}

}  // namespace cpu
}  // namespace rapid
