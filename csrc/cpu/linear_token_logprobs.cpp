// linear_token_logprobs on CPU: log softmax_K(process(hidden @ weightᵀ + bias))[targets], vocab-chunked.
//
// GEMMs: bf16 inputs run bf16 GEMMs (oneDNN through at::mm; fp32 accumulate, the tile rounded to bf16 like the
// eager bf16 logits) — ~2x the sgemm rate on AVX512-BF16 parts (RAPID_CPU_GEMM=fp32 opts out); fp32 inputs run
// sgemm; fp16 is upcast to fp32 (no fast fp16 GEMM on these CPUs). Every GEMM is single-threaded and sized by us; parallelism is ours, one parallel
// region per phase (many small multithreaded GEMMs each end in an OpenMP barrier, which on a loaded machine cost more
// than the GEMMs: measured 4.6x the CPU time with 2 threads).
//   forward:  tasks = (row block, group of vocab chunks), >= kMinTasks of them whatever N; each walks its chunks
//             with an online log-sum-exp per row into its own partial state; the partials of a row are merged in
//             group order at the end.
//   backward: vocab chunk by chunk (DESIGN.md section 2). Phase A, parallel over row blocks: recompute the chunk's
//             logits tile, dz = g / T · (onehot − softmax_K) · (soft-cap derivative), store dz for all rows in one
//             [N, chunk] buffer (GEMM dtype) and add dz @ W_c to the block's rows of an fp32 d hidden. Phase B,
//             parallel over fixed column slices of the chunk: d W_slice = dzᵀ @ hidden as ONE GEMM over all rows,
//             written once in the weight dtype (one rounding), and d bias = column sums of dz.
// Task shapes depend on N, V and the chunk only, never on the thread count, so results are bitwise identical for
// any thread count. Extra memory: one tile per thread, the [N, chunk] dz buffer (bounded by kDzBudgetBytes), an fp32
// [N, D] d hidden, an fp32 copy of hidden for fp16 inputs; never [N, V].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../rapid_ops.h"
#include "row_math.h"

namespace rapid {
namespace cpu {
namespace {

// Floats in one logits tile (default 2^19 = 2 MiB, about one L2: the row passes then read what the GEMM just
// wrote from cache). RAPID_CPU_TILE_FLOATS overrides it (read once), for tuning on other CPUs.
int64_t tile_floats() {
  static const int64_t value = [] {
    const char* env = std::getenv("RAPID_CPU_TILE_FLOATS");
    const int64_t parsed = env ? std::atoll(env) : 0;
    return parsed > 0 ? parsed : int64_t{1} << 19;
  }();
  return value;
}

constexpr int64_t kMinTasks = 32;                  // forward tasks at least (so 32 threads have work)
constexpr int64_t kSliceCols = 256;                // backward phase-B column slice
constexpr int64_t kDzBudgetBytes = int64_t{64} << 20;  // bound on the backward's [N, chunk] dz buffer

// Rows per tile: the tile budget, but at most ~N / 16 (and at least 64) so that small batches still give
// several row blocks. Depends on N and the chunk only.
int64_t row_block(int64_t n, int64_t chunk) {
  const int64_t by_budget = std::max<int64_t>(1, tile_floats() / chunk);
  const int64_t by_balance = std::max<int64_t>(64, (n + 15) / 16);
  return std::max<int64_t>(1, std::min({n, by_budget, by_balance}));
}

// RAPID_CPU_GEMM=fp32 (read once) runs bf16 inputs through fp32 GEMMs instead: logits exact to fp32 (no bf16
// rounding of the tile), at about half the speed on AVX512-BF16 parts.
bool bf16_gemms_allowed() {
  static const bool value = [] {
    const char* env = std::getenv("RAPID_CPU_GEMM");
    return env == nullptr || std::string(env) != "fp32";
  }();
  return value;
}

// The GEMM side of the op: hidden and weight in the dtype the GEMMs run in.
struct Gemm {
  bool bf16;
  at::Tensor h;        // [N, D] bf16, or fp32
  at::Tensor weight;   // [V, D] as given

  Gemm(const at::Tensor& hidden, const at::Tensor& w)
      : bf16(hidden.scalar_type() == at::kBFloat16 && bf16_gemms_allowed()), weight(w) {
    h = bf16 || hidden.scalar_type() == at::kFloat ? hidden : hidden.to(at::kFloat);
  }
  // W rows [c0, c0 + cols) in the GEMM dtype (an fp32 copy for fp16).
  at::Tensor w_chunk(int64_t c0, int64_t cols) const {
    const at::Tensor w = weight.narrow(0, c0, cols);
    return bf16 || w.scalar_type() == at::kFloat ? w : w.to(at::kFloat);
  }
  at::ScalarType dtype() const { return bf16 ? at::kBFloat16 : at::kFloat; }
};

at::Tensor float_view(float* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

// fp32 logits tile of hidden rows [r0, r0 + rows) and chunk w_c into `tile` (rows x cols floats); `scratch` is a
// GEMM-dtype buffer of at least rows x cols elements (bf16 path only).
void tile_logits(const Gemm& g, const at::Tensor& w_c, int64_t r0, int64_t rows, float* tile, at::Tensor& scratch) {
  at::Tensor out = float_view(tile, rows, w_c.size(0));
  if (g.bf16) {
    at::Tensor z16 = scratch.narrow(0, 0, rows * w_c.size(0)).view({rows, w_c.size(0)});
    at::mm_out(z16, g.h.narrow(0, r0, rows), w_c.t());
    out.copy_(z16);
  } else {
    at::mm_out(out, g.h.narrow(0, r0, rows), w_c.t());
  }
}

}  // namespace

LogprobResult linear_token_logprobs_fwd(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                        const c10::optional<at::Tensor>& bias, const LogitOptions& opt, int64_t chunk) {
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  const auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor out = at::empty({n}, fopts), lse = at::empty({n}, fopts);
  at::Tensor entropy = at::empty({opt.want_entropy ? n : 0}, fopts);
  if (n == 0) return {out, lse, entropy};
  chunk = std::max<int64_t>(1, std::min(chunk, vocab));
  const int64_t rblock = row_block(n, chunk);
  const int64_t num_rb = (n + rblock - 1) / rblock, num_chunks = (vocab + chunk - 1) / chunk;
  const int64_t groups = std::min(num_chunks, std::max<int64_t>(1, (kMinTasks + num_rb - 1) / num_rb));
  const Gemm g(hidden.detach(), weight.detach());
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
  const float* thr = opt.thr_ptr();
  const int64_t* tgt = targets.data_ptr<int64_t>();
  std::vector<LseState> part(n * groups);   // [row][group] partial states
  std::vector<float> picked(n, 0.0f);
  at::parallel_for(0, num_rb * groups, 1, [&](int64_t t_begin, int64_t t_end) {
    const at::NoGradGuard no_grad;  // grad mode is thread-local: worker threads start with it on
    std::vector<float> tile(rblock * chunk);
    at::Tensor scratch = g.bf16 ? at::empty({rblock * chunk}, hidden.options()) : at::Tensor();
    for (int64_t task = t_begin; task < t_end; ++task) {
      const int64_t blk = task / groups, grp = task % groups;
      const int64_t r0 = blk * rblock, rows = std::min(rblock, n - r0);
      for (int64_t ci = grp; ci < num_chunks; ci += groups) {
        const int64_t c0 = ci * chunk, cols = std::min(chunk, vocab - c0);
        tile_logits(g, g.w_chunk(c0, cols), r0, rows, tile.data(), scratch);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t r = r0 + i, t = tgt[r] - c0;
          float* row = tile.data() + i * cols;
          const RowProcess p = RowProcess::make(opt.temperature, opt.softcap, thr, r);
          const float m = process_and_max(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, p, t);
          if (opt.want_entropy) {
            float ez = 0.0f;
            const float s = sum_exp_ez(row, cols, m, &ez);
            part[r * groups + grp].merge(m, s, ez);
          } else {
            part[r * groups + grp].merge(m, sum_exp(row, cols, m));
          }
          if (t >= 0 && t < cols) picked[r] = row[t];
        }
      }
    }
  });
  float* out_p = out.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  float* ent_p = opt.want_entropy ? entropy.data_ptr<float>() : nullptr;
  for (int64_t i = 0; i < n; ++i) {
    LseState state = part[i * groups];
    for (int64_t grp = 1; grp < groups; ++grp) state.merge(part[i * groups + grp]);  // fixed order
    lse_p[i] = state.lse();
    out_p[i] = picked[i] - lse_p[i];
    if (ent_p) ent_p[i] = state.entropy();
  }
  return {out, lse, entropy};
}

LinearGrads linear_token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& targets, const c10::optional<at::Tensor>& bias,
                                      const at::Tensor& lse, const LogitOptions& opt, int64_t chunk, bool need_hidden,
                                      bool need_weight, bool need_bias) {
  const int64_t n = hidden.size(0), dim = hidden.size(1), vocab = weight.size(0);
  const auto fopts = hidden.options().dtype(at::kFloat);
  need_bias = need_bias && bias.has_value();
  at::Tensor d_weight =
      need_weight ? at::empty_like(weight, at::MemoryFormat::Contiguous) : at::empty({0}, weight.options());
  at::Tensor d_bias = need_bias ? at::empty({vocab}, fopts) : at::empty({0}, fopts);
  at::Tensor d_hidden32 = need_hidden ? at::zeros({n, dim}, fopts) : at::Tensor();
  if (n > 0 && (need_hidden || need_weight || need_bias)) {
    const Gemm g(hidden.detach(), weight.detach());
    const int64_t dz_bytes = g.bf16 ? 2 : 4;
    const int64_t by_budget = std::max<int64_t>(kSliceCols, kDzBudgetBytes / (n * dz_bytes));
    chunk = std::max<int64_t>(1, std::min({chunk, vocab, by_budget}));
    const int64_t rblock = row_block(n, chunk);
    const int64_t num_rb = (n + rblock - 1) / rblock;
    const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
    const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
    const float* thr = opt.thr_ptr();
    const int64_t* tgt = targets.data_ptr<int64_t>();
    const float* gr = grad.data_ptr<float>();
    const float* lse_p = lse.data_ptr<float>();
    const float k = opt.softcap != 0.0 ? static_cast<float>(opt.temperature / opt.softcap) : 0.0f;  // tanh = z · k
    at::Tensor dz_flat = at::empty({n * chunk}, hidden.options().dtype(g.dtype()));  // this chunk's dz, all rows
    for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
      const int64_t cols = std::min(chunk, vocab - c0);
      const at::Tensor w_c = g.w_chunk(c0, cols);                                      // [cols, D]
      const at::Tensor dz = dz_flat.narrow(0, 0, n * cols).view({n, cols});           // [N, cols]
      // Phase A: dz rows and d hidden rows, one row block per task.
      at::parallel_for(0, num_rb, 1, [&](int64_t b_begin, int64_t b_end) {
        const at::NoGradGuard no_grad;
        std::vector<float> tile(g.bf16 ? rblock * cols : 0);   // fp32 path: the tile lives in dz itself
        at::Tensor scratch = g.bf16 ? at::empty({rblock * cols}, hidden.options()) : at::Tensor();
        for (int64_t blk = b_begin; blk < b_end; ++blk) {
          const int64_t r0 = blk * rblock, rows = std::min(rblock, n - r0);
          float* zp = g.bf16 ? tile.data() : dz.data_ptr<float>() + r0 * cols;
          tile_logits(g, w_c, r0, rows, zp, scratch);
          for (int64_t i = 0; i < rows; ++i) {
            const int64_t r = r0 + i, t = tgt[r] - c0;
            float* row = zp + i * cols;
            const RowProcess p = RowProcess::make(opt.temperature, opt.softcap, thr, r);
            const float scale = gr[r] * p.inv_t;
            if (p.plain()) {
              neg_softmax_from_logits(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, p.inv_t, lse_p[r], scale);
              if (t >= 0 && t < cols) row[t] += scale;
              continue;
            }
            process_and_max(row, bias_ptr ? bias_ptr + c0 : nullptr, cols, p, t);
            const float z_t = (t >= 0 && t < cols) ? row[t] : 0.0f;
            if (k != 0.0f) {
              neg_softmax_scaled_softcap(row, cols, lse_p[r], scale, k);
              if (t >= 0 && t < cols) row[t] += scale * (1.0f - (z_t * k) * (z_t * k));
            } else {
              neg_softmax_scaled(row, cols, lse_p[r], scale);
              if (t >= 0 && t < cols) row[t] += scale;
            }
          }
          at::Tensor dz_rows = dz.narrow(0, r0, rows);                                  // [rows, cols]
          if (g.bf16) dz_rows.copy_(float_view(zp, rows, cols));                         // one rounding to bf16
          if (need_hidden && g.bf16) d_hidden32.narrow(0, r0, rows).add_(at::mm(dz_rows, w_c));
          if (need_hidden && !g.bf16) d_hidden32.narrow(0, r0, rows).addmm_(dz_rows, w_c);
        }
      });
      // Phase B: d W and d bias of the chunk, one fixed column slice per task, each a full-K GEMM over all rows.
      const int64_t slices = (cols + kSliceCols - 1) / kSliceCols;
      if (need_weight || need_bias) {
        at::parallel_for(0, slices, 1, [&](int64_t s_begin, int64_t s_end) {
          const at::NoGradGuard no_grad;
          for (int64_t sl = s_begin; sl < s_end; ++sl) {
            const int64_t s0 = sl * kSliceCols, width = std::min(kSliceCols, cols - s0);
            const at::Tensor dz_s = dz.narrow(1, s0, width);                            // [N, width]
            if (need_weight) {
              at::Tensor dw = d_weight.narrow(0, c0 + s0, width);                       // [width, D]
              if (dw.scalar_type() == g.dtype()) {
                at::mm_out(dw, dz_s.t(), g.h);
              } else {
                dw.copy_(at::mm(dz_s.t(), g.h));                                         // fp16 weight: fp32 GEMM
              }
            }
            if (need_bias) d_bias.narrow(0, c0 + s0, width).copy_(dz_s.sum(0, /*keepdim=*/false, at::kFloat));
          }
        });
      }
    }
  } else {
    if (need_weight) d_weight.zero_();
    if (need_bias) d_bias.zero_();
  }
  at::Tensor d_hidden = need_hidden ? d_hidden32.to(hidden.scalar_type()) : at::empty({0}, hidden.options());
  if (need_bias) d_bias = d_bias.to(bias->scalar_type());
  return {d_hidden, d_weight, d_bias};
}

}  // namespace cpu
}  // namespace rapid
