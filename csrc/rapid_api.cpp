// Host side of rapid_kernels._C: argument checks and the Python bindings; kernels live in cpu/ and cuda/.
//
// The checks repeat the rules of rapid_kernels/_validate.py so that calling the bound functions (or the
// torch.library ops wrapping them, rapid_kernels/_cpp_ops.py) directly can never reach a kernel with bad input.
// They raise ValueError (TORCH_CHECK_VALUE) naming the argument. Data-dependent checks (target range, monotone
// cu_seqlens, finite rewards) run here for CPU tensors only: on CUDA they would cost a device sync that the Python
// validation has already paid, and the CUDA kernels turn an out-of-range target into NaN instead of reading
// out of bounds.
#include <torch/extension.h>

#include <cmath>
#include <string>

#include "rapid_ops.h"

namespace rapid {
namespace {

bool is_kernel_float(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

void check_float_tensor(const at::Tensor& x, const char* name, int64_t ndim) {
  TORCH_CHECK_VALUE(x.dim() == ndim, name, " must be ", ndim, "-D, got shape ", x.sizes());
  TORCH_CHECK_VALUE(is_kernel_float(x.scalar_type()), name,
                    " must be float32, bfloat16 or float16 for the C++/CUDA kernels (float64 goes to the reference "
                    "backend), got ", x.scalar_type());
}

void check_index_tensor(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 1, name, " must be 1-D, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kLong || x.scalar_type() == at::kInt, name,
                    " must have dtype int32 or int64, got ", x.scalar_type());
}

void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.device() == ref.device(), name, " is on ", x.device(), " but ", ref_name, " is on ",
                    ref.device());
}

void check_positive_finite(double value, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0, name, " must be finite and > 0, got ", value);
}

void check_supported_device(const at::Tensor& x, const char* name) {
#ifdef RAPID_WITH_CUDA
  TORCH_CHECK_VALUE(x.is_cpu() || x.is_cuda(), name, " must be a CPU or CUDA tensor, got ", x.device());
#else
  TORCH_CHECK_VALUE(x.is_cpu(), name, " is on ", x.device(), " but rapid_kernels._C was built without CUDA");
#endif
}

// targets: [n] int, entries in [0, vocab); returns a contiguous int64 copy (or the tensor itself).
at::Tensor checked_targets(const at::Tensor& targets, int64_t n, int64_t vocab, const char* ref_name) {
  check_index_tensor(targets, "targets");
  TORCH_CHECK_VALUE(targets.size(0) == n, "targets has ", targets.size(0), " entries but ", ref_name, " has ", n,
                    " rows");
  TORCH_CHECK_VALUE(n == 0 || vocab > 0, ref_name, " has a vocabulary of size 0");
  at::Tensor t = targets.to(at::kLong).contiguous();
  if (n > 0 && t.is_cpu()) {
    auto [lo, hi] = at::aminmax(t);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lo_v >= 0 && hi_v < vocab, "targets must lie in [0, ", vocab, "), got values in [", lo_v,
                      ", ", hi_v, "]");
  }
  return t;
}

template <typename Enum>
Enum parse_choice(const std::string& value, const char* name, std::initializer_list<const char*> options) {
  int index = 0;
  for (const char* option : options) {
    if (value == option) return static_cast<Enum>(index);
    ++index;
  }
  std::string allowed;
  for (const char* option : options) allowed += std::string(allowed.empty() ? "" : ", ") + "'" + option + "'";
  TORCH_CHECK_VALUE(false, name, " must be one of (", allowed, "), got '", value, "'");
  return static_cast<Enum>(0);
}

#ifdef RAPID_WITH_CUDA
#define RAPID_DISPATCH(device_tensor, fn, ...) \
  ((device_tensor).is_cuda() ? cuda::fn(__VA_ARGS__) : cpu::fn(__VA_ARGS__))
#else
#define RAPID_DISPATCH(device_tensor, fn, ...) cpu::fn(__VA_ARGS__)
#endif

// Soft-cap, threshold and entropy flag of the log-prob ops (rapid_kernels/_validate.py: check_softcap,
// check_threshold): softcap 0 (off) or finite > 0; threshold absent or [n] float32 on ref's device without NaN.
LogitOptions logit_options(const at::Tensor& ref, const char* ref_name, double temperature, double softcap,
                           const c10::optional<at::Tensor>& threshold, bool want_entropy) {
  check_positive_finite(temperature, "temperature");
  TORCH_CHECK_VALUE(softcap == 0.0 || (std::isfinite(softcap) && softcap > 0), "softcap must be finite and > 0 "
                    "(0 = no soft-cap), got ", softcap);
  LogitOptions opt;
  opt.temperature = temperature;
  opt.softcap = softcap;
  opt.want_entropy = want_entropy;
  if (threshold.has_value()) {
    const at::Tensor& t = *threshold;
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == ref.size(0) && t.scalar_type() == at::kFloat,
                      "threshold must be float32 of shape [", ref.size(0), "] (one per row of ", ref_name, "), got ",
                      t.scalar_type(), " ", t.sizes());
    check_same_device(ref, ref_name, t, "threshold");
    if (t.is_cpu() && t.numel() > 0) {
      TORCH_CHECK_VALUE(!at::isnan(t).any().item<bool>(),
                        "threshold must not contain NaN (use -inf for no truncation)");
    }
    opt.threshold = t.contiguous();
  }
  return opt;
}

// ------------------------------------------------------------------------------------------------ token_logprobs
LogprobResult token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                 double softcap, const c10::optional<at::Tensor>& threshold, bool want_entropy) {
  check_float_tensor(logits, "logits", 2);
  check_supported_device(logits, "logits");
  const LogitOptions opt = logit_options(logits, "logits", temperature, softcap, threshold, want_entropy);
  check_same_device(logits, "logits", targets, "targets");
  const at::Tensor t = checked_targets(targets, logits.size(0), logits.size(1), "logits");
  const at::Tensor x = logits.contiguous();
  return RAPID_DISPATCH(x, token_logprobs_fwd, x, t, opt);
}

at::Tensor token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& targets,
                              const at::Tensor& lse, double temperature, double softcap,
                              const c10::optional<at::Tensor>& threshold) {
  check_float_tensor(logits, "logits", 2);
  check_supported_device(logits, "logits");
  const LogitOptions opt = logit_options(logits, "logits", temperature, softcap, threshold, false);
  const int64_t n = logits.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == n, "grad must have shape [", n, "], got ", grad.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == n && lse.scalar_type() == at::kFloat,
                    "lse must be float32 of shape [", n, "], got ", lse.scalar_type(), " ", lse.sizes());
  check_same_device(logits, "logits", grad, "grad");
  check_same_device(logits, "logits", lse, "lse");
  check_same_device(logits, "logits", targets, "targets");
  const at::Tensor t = checked_targets(targets, n, logits.size(1), "logits");
  const at::Tensor x = logits.contiguous();
  const at::Tensor g = grad.to(at::kFloat).contiguous();
  return RAPID_DISPATCH(x, token_logprobs_bwd, g, x, t, lse.contiguous(), opt);
}

// ----------------------------------------------------------------------------------------- linear_token_logprobs
struct LinearArgs {
  at::Tensor hidden, weight, targets;
  c10::optional<at::Tensor> bias;
};

LinearArgs check_linear(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                        const c10::optional<at::Tensor>& bias, int64_t chunk) {
  check_float_tensor(hidden, "hidden", 2);
  check_float_tensor(weight, "weight", 2);
  check_supported_device(hidden, "hidden");
  TORCH_CHECK_VALUE(weight.size(1) == hidden.size(1), "weight must be [V, D] with D = hidden.shape[1] = ",
                    hidden.size(1), ", got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == hidden.scalar_type(), "weight dtype ", weight.scalar_type(),
                    " differs from hidden dtype ", hidden.scalar_type());
  check_same_device(hidden, "hidden", weight, "weight");
  check_same_device(hidden, "hidden", targets, "targets");
  LinearArgs args;
  if (bias.has_value()) {
    check_float_tensor(*bias, "bias", 1);
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0), "bias must have V = ", weight.size(0), " entries, got ",
                      bias->size(0));
    check_same_device(hidden, "hidden", *bias, "bias");
    args.bias = bias->contiguous();
  }
  TORCH_CHECK_VALUE(chunk > 0, "chunk must be > 0, got ", chunk);
  args.targets = checked_targets(targets, hidden.size(0), weight.size(0), "hidden");
  args.hidden = hidden.contiguous();
  args.weight = weight.contiguous();
  return args;
}

LogprobResult linear_token_logprobs_fwd(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                        const c10::optional<at::Tensor>& bias, double temperature, int64_t chunk,
                                        double softcap, const c10::optional<at::Tensor>& threshold,
                                        bool want_entropy) {
  const LinearArgs a = check_linear(hidden, weight, targets, bias, chunk);
  const LogitOptions opt = logit_options(a.hidden, "hidden", temperature, softcap, threshold, want_entropy);
  return RAPID_DISPATCH(a.hidden, linear_token_logprobs_fwd, a.hidden, a.weight, a.targets, a.bias, opt, chunk);
}

LinearGrads linear_token_logprobs_bwd(const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& targets, const c10::optional<at::Tensor>& bias,
                                      const at::Tensor& lse, double temperature, int64_t chunk, double softcap,
                                      const c10::optional<at::Tensor>& threshold, bool need_hidden, bool need_weight,
                                      bool need_bias) {
  const LinearArgs a = check_linear(hidden, weight, targets, bias, chunk);
  const LogitOptions opt = logit_options(a.hidden, "hidden", temperature, softcap, threshold, false);
  const int64_t n = hidden.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == n, "grad must have shape [", n, "], got ", grad.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == n && lse.scalar_type() == at::kFloat,
                    "lse must be float32 of shape [", n, "], got ", lse.scalar_type(), " ", lse.sizes());
  check_same_device(hidden, "hidden", grad, "grad");
  check_same_device(hidden, "hidden", lse, "lse");
  const at::Tensor g = grad.to(at::kFloat).contiguous();
  return RAPID_DISPATCH(a.hidden, linear_token_logprobs_bwd, g, a.hidden, a.weight, a.targets, a.bias,
                        lse.contiguous(), opt, chunk, need_hidden, need_weight, need_bias);
}

// ---------------------------------------------------------------------------------------------------- rapid_loss
LossResult rapid_loss_fwd(const at::Tensor& token_logprobs, const at::Tensor& behavior_logprobs,
                          const at::Tensor& rewards, const at::Tensor& cu_seqlens, int64_t group_size, double eta,
                          const std::string& baseline, double loss_norm, const std::string& is_level,
                          const std::string& is_clip, const std::string& adv_scale) {
  TORCH_CHECK_VALUE(token_logprobs.dim() == 1 && token_logprobs.scalar_type() == at::kFloat,
                    "token_logprobs must be 1-D float32 for the C++/CUDA kernels, got ", token_logprobs.scalar_type(),
                    " of shape ", token_logprobs.sizes());
  check_supported_device(token_logprobs, "token_logprobs");
  TORCH_CHECK_VALUE(behavior_logprobs.dim() == 1 && at::isFloatingType(behavior_logprobs.scalar_type()),
                    "behavior_logprobs must be a 1-D float tensor, got ", behavior_logprobs.scalar_type(),
                    " of shape ", behavior_logprobs.sizes());
  TORCH_CHECK_VALUE(rewards.dim() == 1 && at::isFloatingType(rewards.scalar_type()),
                    "rewards must be a 1-D float tensor, got ", rewards.scalar_type(), " of shape ", rewards.sizes());
  check_index_tensor(cu_seqlens, "cu_seqlens");
  check_same_device(token_logprobs, "token_logprobs", behavior_logprobs, "behavior_logprobs");
  check_same_device(token_logprobs, "token_logprobs", rewards, "rewards");
  check_same_device(token_logprobs, "token_logprobs", cu_seqlens, "cu_seqlens");
  const int64_t n = token_logprobs.size(0), num_seqs = rewards.size(0);
  TORCH_CHECK_VALUE(behavior_logprobs.size(0) == n, "behavior_logprobs has ", behavior_logprobs.size(0),
                    " entries but token_logprobs has ", n);
  TORCH_CHECK_VALUE(cu_seqlens.size(0) == num_seqs + 1, "cu_seqlens must have S + 1 = ", num_seqs + 1,
                    " entries (S = len(rewards)), got ", cu_seqlens.size(0));
  TORCH_CHECK_VALUE(num_seqs > 0, "rewards is empty: the batch must hold at least one group");
  LossOptions opt;
  opt.baseline = parse_choice<Baseline>(baseline, "baseline", {"loo", "mean"});
  const int level = parse_choice<int>(is_level, "is_level", {"sequence", "token", "geometric"});
  TORCH_CHECK_VALUE(level != 1, "is_level='token' is implemented by the reference backend only");
  opt.geometric = level == 2;
  opt.is_clip = parse_choice<ISClip>(is_clip, "is_clip", {"truncate", "mask", "none"});
  opt.adv_scale = parse_choice<AdvScale>(adv_scale, "adv_scale", {"none", "std"});
  TORCH_CHECK_VALUE(group_size >= 1, "group_size must be a positive int, got ", group_size);
  TORCH_CHECK_VALUE(opt.baseline != Baseline::kLoo || group_size >= 2,
                    "group_size must be >= 2 with baseline='loo' (leave-one-out), got ", group_size);
  TORCH_CHECK_VALUE(num_seqs % group_size == 0, "the number of sequences S = ", num_seqs,
                    " is not divisible by group_size = ", group_size);
  check_positive_finite(eta, "eta");
  check_positive_finite(loss_norm, "loss_norm");
  opt.group_size = group_size;
  opt.eta = static_cast<float>(eta);
  opt.loss_norm = static_cast<float>(loss_norm);

  const at::Tensor cu = cu_seqlens.to(at::kLong).contiguous();
  const at::Tensor r = rewards.to(at::kFloat).contiguous();
  const at::Tensor blp = behavior_logprobs.to(at::kFloat).contiguous();
  if (cu.is_cpu()) {
    const int64_t* c = cu.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(c[0] == 0 && c[num_seqs] == n, "cu_seqlens must start at 0 and end at N = ", n, ", got ", c[0],
                      " ... ", c[num_seqs]);
    for (int64_t s = 0; s < num_seqs; ++s) TORCH_CHECK_VALUE(c[s + 1] >= c[s], "cu_seqlens must be non-decreasing");
    TORCH_CHECK_VALUE(at::isfinite(r).all().item<bool>(),
                      "rewards must be finite (got NaN or inf); map failed rewards to a number first");
    TORCH_CHECK_VALUE(n == 0 || at::isfinite(blp).all().item<bool>(),
                      "behavior_logprobs must be finite (got NaN or inf)");
  }
  const at::Tensor lp = token_logprobs.contiguous();
  return RAPID_DISPATCH(lp, rapid_loss_fwd, lp, blp, r, cu, opt);
}

bool built_with_cuda() {
#ifdef RAPID_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace rapid

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rapid fused kernels (C++/OpenMP on CPU, CUDA when built with it); use rapid_kernels, not this module";
  m.def("built_with_cuda", &rapid::built_with_cuda, "True when the CUDA kernels were compiled in");
  m.def("token_logprobs_fwd", &rapid::token_logprobs_fwd,
        "(logits, targets, temperature, softcap, threshold, want_entropy) -> (out, lse, entropy)");
  m.def("token_logprobs_bwd", &rapid::token_logprobs_bwd,
        "(grad, logits, targets, lse, temperature, softcap, threshold) -> dlogits");
  m.def("linear_token_logprobs_fwd", &rapid::linear_token_logprobs_fwd,
        "(hidden, weight, targets, bias, temperature, chunk, softcap, threshold, want_entropy) -> (out, lse, entropy)");
  m.def("linear_token_logprobs_bwd", &rapid::linear_token_logprobs_bwd,
        "(grad, hidden, weight, targets, bias, lse, temperature, chunk, softcap, threshold, need_hidden, need_weight, "
        "need_bias) -> (d_hidden, d_weight, d_bias)");
  m.def("rapid_loss_fwd", &rapid::rapid_loss_fwd,
        "(token_logprobs, behavior_logprobs, rewards, cu_seqlens, group_size, eta, baseline, loss_norm, is_level, "
        "is_clip, adv_scale) -> (loss, seq_logratio, weights, baselines, advantages, clip_fraction, coef)");
}
