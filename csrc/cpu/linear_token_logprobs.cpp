// linear_token_logprobs on CPU: log softmax((hidden @ weightᵀ + bias) / T)[targets], vocab-chunked.
//
// The logits exist one (row block × vocab chunk) fp32 tile at a time (~2 MiB, L2-sized), produced by a
// single-threaded ATen GEMM (MKL) and consumed at once by the row passes while still in cache. Parallelism is ours,
// one parallel region per phase: many small multithreaded GEMMs each end in an OpenMP barrier, and on a loaded
// machine those barriers cost more than the GEMMs (measured: 4.6x the CPU time with 2 threads).
//   forward:  parallel over row blocks; each walks the vocab chunks with an online log-sum-exp per row.
//   backward: parallel over kGroups fixed groups of vocab chunks; each recomputes its tiles from the saved LSE,
//             dz = g / T · (onehot − softmax), and owns d W_c += dzᵀ @ h and d bias_c += Σ_rows dz outright;
//             d hidden += dz @ W_c goes to the group's own fp32 [N, D] partial, summed in group order at the end.
// Group membership and every summation order are fixed, so results are bitwise identical for any thread count.
// Extra memory: one tile per thread, an fp32 copy of hidden for bf16/fp16 inputs, and up to kGroups fp32 [N, D]
// d-hidden partials in backward; never [N, V].
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

// Fixed number of vocab-chunk groups in backward (each with its own d-hidden partial): enough to keep a few
// threads busy, few enough to bound the partials' memory; fixed so that results do not depend on the thread count.
constexpr int64_t kGroups = 4;

// Rows per tile: the tile budget, but at most N / 8 (and at least 16) so that even a small batch gives the
// forward's row-block loop work for several threads. Depends on N and the chunk only, never on the thread count.
int64_t row_block(int64_t n, int64_t chunk) {
  const int64_t by_budget = std::max<int64_t>(1, tile_floats() / chunk);
  const int64_t by_balance = std::max<int64_t>(16, (n + 7) / 8);
  return std::max<int64_t>(1, std::min({n, by_budget, by_balance}));
}

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
  const at::Tensor h = as_float(hidden.detach());
  const at::Tensor b = bias.has_value() ? as_float(*bias) : at::Tensor();
  const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
  const int64_t* tgt = targets.data_ptr<int64_t>();
  std::vector<LseState> state(n);
  std::vector<float> picked(n, 0.0f);
  const int64_t num_blocks = (n + rblock - 1) / rblock;
  at::parallel_for(0, num_blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    const at::NoGradGuard no_grad;  // grad mode is thread-local: worker threads start with it on
    at::Tensor buffer = at::empty({rblock * chunk}, fopts);
    for (int64_t blk = b_begin; blk < b_end; ++blk) {
      const int64_t r0 = blk * rblock, rows = std::min(rblock, n - r0);
      for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
        const int64_t cols = std::min(chunk, vocab - c0);
        const at::Tensor z = tile_logits(buffer, h, as_float(weight.detach().narrow(0, c0, cols)), r0, rows);
        float* zp = z.data_ptr<float>();
        for (int64_t i = 0; i < rows; ++i) {
          float* row = zp + i * cols;
          const float m = scale_and_max(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, inv_t);
          state[r0 + i].merge(m, sum_exp(row, cols, m));
          const int64_t t = tgt[r0 + i] - c0;
          if (t >= 0 && t < cols) picked[r0 + i] = row[t];
        }
      }
    }
  });
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
  at::Tensor d_weight = need_weight ? at::zeros_like(weight) : at::Tensor();
  at::Tensor d_bias = need_bias ? at::zeros_like(*bias) : at::Tensor();
  at::Tensor d_hidden_acc;
  chunk = std::max<int64_t>(1, std::min(chunk, vocab));
  const int64_t rblock = std::max<int64_t>(1, row_block(n, chunk));
  const int64_t num_chunks = (vocab + chunk - 1) / chunk;
  const int64_t groups = std::min(num_chunks, kGroups);
  if (n > 0 && (need_hidden || need_weight || need_bias)) {
    const at::Tensor h = as_float(hidden.detach());
    const at::Tensor b = bias.has_value() ? as_float(*bias) : at::Tensor();
    const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
    const int64_t* tgt = targets.data_ptr<int64_t>();
    const float* g = grad.data_ptr<float>();
    const float* lse_p = lse.data_ptr<float>();
    std::vector<at::Tensor> dh_part(need_hidden ? groups : 0);
    for (auto& part : dh_part) part = at::zeros({n, dim}, fopts);
    at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
      const at::NoGradGuard no_grad;  // grad mode is thread-local: worker threads start with it on
      at::Tensor buffer = at::empty({rblock * chunk}, fopts);
      at::Tensor dw_acc = need_weight ? at::empty({chunk, dim}, fopts) : at::Tensor();
      std::vector<float> db_acc(need_bias ? chunk : 0);
      for (int64_t grp = g_begin; grp < g_end; ++grp) {
        for (int64_t ci = grp; ci < num_chunks; ci += groups) {  // chunks grp, grp + groups, ...
          const int64_t c0 = ci * chunk, cols = std::min(chunk, vocab - c0);
          const at::Tensor w_c = as_float(weight.detach().narrow(0, c0, cols));
          at::Tensor dw_c = need_weight ? dw_acc.narrow(0, 0, cols).zero_() : at::Tensor();
          std::fill(db_acc.begin(), db_acc.end(), 0.0f);
          for (int64_t r0 = 0; r0 < n; r0 += rblock) {
            const int64_t rows = std::min(rblock, n - r0);
            const at::Tensor z = tile_logits(buffer, h, w_c, r0, rows);
            float* zp = z.data_ptr<float>();
            for (int64_t i = 0; i < rows; ++i) {
              float* row = zp + i * cols;
              const float scale = g[r0 + i] * inv_t;
              neg_softmax_from_logits(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, inv_t, lse_p[r0 + i], scale);
              const int64_t t = tgt[r0 + i] - c0;
              if (t >= 0 && t < cols) row[t] += scale;
              if (need_bias) {
                for (int64_t j = 0; j < cols; ++j) db_acc[j] += row[j];
              }
            }
            if (need_hidden) dh_part[grp].narrow(0, r0, rows).addmm_(z, w_c);
            if (need_weight) dw_c.addmm_(z.t(), h.narrow(0, r0, rows));
          }
          if (need_weight) d_weight.narrow(0, c0, cols).copy_(dw_c);
          if (need_bias) {
            d_bias.narrow(0, c0, cols).copy_(at::from_blob(db_acc.data(), {cols}, at::TensorOptions().dtype(at::kFloat)));
          }
        }
      }
    });
    if (need_hidden) {
      d_hidden_acc = dh_part[0];
      for (int64_t grp = 1; grp < groups; ++grp) d_hidden_acc.add_(dh_part[grp]);  // fixed order
    }
  } else if (need_hidden) {
    d_hidden_acc = at::zeros({n, dim}, fopts);
  }
  at::Tensor d_hidden = need_hidden ? d_hidden_acc.to(hidden.scalar_type()) : at::empty({0}, hidden.options());
  if (!need_weight) d_weight = at::empty({0}, weight.options());
  if (!need_bias) d_bias = at::empty({0}, hidden.options().dtype(at::kFloat));
  return {d_hidden, d_weight, d_bias};
}

}  // namespace cpu
}  // namespace rapid
