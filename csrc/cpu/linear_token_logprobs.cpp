// linear_token_logprobs on CPU: log softmax((hidden @ weightᵀ + bias) / T)[targets], vocab-chunked.
//
// The logits are produced one (rows × chunk) fp32 tile at a time by an ATen GEMM (MKL / oneDNN, multithreaded);
// the row-wise passes over a tile (online log-sum-exp, softmax gradient) run in parallel over rows. Loop order is
// chunk-outer, row-block-inner, so one chunk of the weight is converted to fp32 once and its gradient
// accumulates in place. Extra memory: one tile (≤ tile_floats() floats), an fp32 copy of hidden for bf16/fp16
// inputs, and an fp32 [N, D] d-hidden accumulator in backward; never [N, V].
//
// Backward recomputes each tile from the saved LSE:
//   dz = g / T · (onehot − softmax),  d hidden += dz @ W_c,  d W_c += dzᵀ @ hidden,  d bias_c += Σ_rows dz.
#include <ATen/Parallel.h>

#include <cstdlib>
#include <vector>

#include "../rapid_ops.h"
#include "row_math.h"

namespace rapid {
namespace cpu {
namespace {

// Floats in one logits tile (default 2^19 = 2 MiB, about one L2: the row passes then read what the GEMM just
// wrote from cache); the row block is derived from it and the vocab chunk. RAPID_CPU_TILE_FLOATS overrides it
// (read once), for tuning on other CPUs.
int64_t tile_floats() {
  static const int64_t value = [] {
    const char* env = std::getenv("RAPID_CPU_TILE_FLOATS");
    const int64_t parsed = env ? std::atoll(env) : 0;
    return parsed > 0 ? parsed : int64_t{1} << 19;
  }();
  return value;
}

int64_t row_block(int64_t n, int64_t chunk) { return std::min(n, std::max<int64_t>(1, tile_floats() / chunk)); }

at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// The (rows, cols) logits tile of hidden rows [r0, r0 + rows) and vocab chunk w_c (already fp32).
at::Tensor tile_logits(at::Tensor& buffer, const at::Tensor& h, const at::Tensor& w_c, int64_t r0, int64_t rows) {
  at::Tensor z = buffer.narrow(0, 0, rows * w_c.size(0)).view({rows, w_c.size(0)});
  at::mm_out(z, h.narrow(0, r0, rows), w_c.t());
  return z;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_token_logprobs_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                                                             const at::Tensor& targets,
                                                             const c10::optional<at::Tensor>& bias,
                                                             double temperature, int64_t chunk) {
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  const float inv_t = static_cast<float>(1.0 / temperature);
  const auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor out = at::empty({n}, fopts), lse = at::empty({n}, fopts);
  if (n == 0) return {out, lse};
  chunk = std::min(chunk, vocab);
  const int64_t rblock = row_block(n, chunk);
  const at::Tensor h = as_float(hidden);
  const at::Tensor b = bias.has_value() ? as_float(*bias) : at::Tensor();
  const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
  const int64_t* tgt = targets.data_ptr<int64_t>();
  std::vector<LseState> state(n);
  std::vector<float> picked(n, 0.0f);
  at::Tensor buffer = at::empty({rblock * chunk}, fopts);

  for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - c0);
    const at::Tensor w_c = as_float(weight.narrow(0, c0, cols));
    for (int64_t r0 = 0; r0 < n; r0 += rblock) {
      const int64_t rows = std::min(rblock, n - r0);
      at::Tensor z = tile_logits(buffer, h, w_c, r0, rows);
      float* zp = z.data_ptr<float>();
      at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          float* row = zp + i * cols;
          const float m = scale_and_max(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, inv_t);
          state[r0 + i].merge(m, sum_exp(row, cols, m));
          const int64_t t = tgt[r0 + i] - c0;
          if (t >= 0 && t < cols) picked[r0 + i] = row[t];
        }
      });
    }
  }
  float* out_p = out.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    lse_p[i] = state[i].lse();
    out_p[i] = picked[i] - lse_p[i];
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_token_logprobs_bwd(
    const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
    const c10::optional<at::Tensor>& bias, const at::Tensor& lse, double temperature, int64_t chunk, bool need_hidden,
    bool need_weight, bool need_bias) {
  const int64_t n = hidden.size(0), dim = hidden.size(1), vocab = weight.size(0);
  const float inv_t = static_cast<float>(1.0 / temperature);
  const auto fopts = hidden.options().dtype(at::kFloat);
  need_bias = need_bias && bias.has_value();
  const bool weight_fp32 = weight.scalar_type() == at::kFloat;
  at::Tensor d_hidden_acc = need_hidden ? at::zeros({n, dim}, fopts) : at::Tensor();
  at::Tensor d_weight = need_weight ? at::zeros_like(weight) : at::Tensor();
  at::Tensor d_bias = need_bias ? at::empty_like(*bias) : at::Tensor();
  chunk = std::max<int64_t>(1, std::min(chunk, vocab));
  const int64_t rblock = std::max<int64_t>(1, row_block(n, chunk));
  if (n > 0 && (need_hidden || need_weight || need_bias)) {
    const at::Tensor h = as_float(hidden);
    const at::Tensor b = bias.has_value() ? as_float(*bias) : at::Tensor();
    const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
    const int64_t* tgt = targets.data_ptr<int64_t>();
    const float* g = grad.data_ptr<float>();
    const float* lse_p = lse.data_ptr<float>();
    at::Tensor buffer = at::empty({rblock * chunk}, fopts);
    at::Tensor dw_acc = (need_weight && !weight_fp32) ? at::empty({chunk, dim}, fopts) : at::Tensor();
    std::vector<float> db_acc(need_bias ? chunk : 0);

    for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
      const int64_t cols = std::min(chunk, vocab - c0);
      const at::Tensor w_c = as_float(weight.narrow(0, c0, cols));
      at::Tensor dw_c;
      if (need_weight) {
        dw_c = weight_fp32 ? d_weight.narrow(0, c0, cols) : dw_acc.narrow(0, 0, cols);
        dw_c.zero_();
      }
      std::fill(db_acc.begin(), db_acc.end(), 0.0f);
      for (int64_t r0 = 0; r0 < n; r0 += rblock) {
        const int64_t rows = std::min(rblock, n - r0);
        at::Tensor z = tile_logits(buffer, h, w_c, r0, rows);
        float* zp = z.data_ptr<float>();
        at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            float* row = zp + i * cols;
            const float scale = g[r0 + i] * inv_t;
            neg_softmax_from_logits(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, inv_t, lse_p[r0 + i], scale);
            const int64_t t = tgt[r0 + i] - c0;
            if (t >= 0 && t < cols) row[t] += scale;
          }
        });
        if (need_hidden) d_hidden_acc.narrow(0, r0, rows).addmm_(z, w_c);
        if (need_weight) dw_c.addmm_(z.t(), h.narrow(0, r0, rows));
        if (need_bias) {  // column sums, rows in order: the same result for any thread count
          at::parallel_for(0, cols, 256, [&](int64_t begin, int64_t end) {
            for (int64_t i = 0; i < rows; ++i) {
              const float* row = zp + i * cols;
              for (int64_t j = begin; j < end; ++j) db_acc[j] += row[j];
            }
          });
        }
      }
      if (need_weight && !weight_fp32) d_weight.narrow(0, c0, cols).copy_(dw_c);
      if (need_bias) {
        d_bias.narrow(0, c0, cols).copy_(at::from_blob(db_acc.data(), {cols}, at::TensorOptions().dtype(at::kFloat)));
      }
    }
  } else if (need_bias) {
    d_bias.zero_();
  }
  at::Tensor d_hidden = need_hidden ? d_hidden_acc.to(hidden.scalar_type()) : at::empty({0}, hidden.options());
  if (!need_weight) d_weight = at::empty({0}, weight.options());
  if (!need_bias) d_bias = at::empty({0}, hidden.options().dtype(at::kFloat));
  return {d_hidden, d_weight, d_bias};
}

}  // namespace cpu
}  // namespace rapid
