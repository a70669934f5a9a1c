// diffaccel::ei_step: argument checks, then the fused kernel of csrc/cpu (CPU)
// or csrc/cuda (CUDA).
#include <optional>
#include <string_view>

#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"
#include "threshold_options.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.ei_step";

// Every check of the op's arguments, for both devices; returns the parsed thresholding.
std::optional<ThresholdOptions> check_ei_step(const at::Tensor& x, const at::Tensor& model_out, at::TensorList history,
                                              const at::Tensor& coeffs, const std::optional<at::Tensor>& noise,
                                              std::optional<std::string_view> threshold_kind, double threshold_ratio,
                                              double threshold_max_value, std::string_view threshold_style,
                                              const at::Tensor& x_next_out, const at::Tensor& d_out) {
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp, ": argument 'x' must have a batch dimension, got shape ", shape_str(x));
  check_float_dtype(kOp, "x", x, x.scalar_type());
  check_like(kOp, "model_out", model_out, x, "x");
  check_float_dtype(kOp, "model_out", model_out, x.scalar_type());
  const int64_t k = static_cast<int64_t>(history.size());
  TORCH_CHECK_VALUE(k <= kMaxHistory, kOp, ": argument 'history' holds ", k, " tensors, at most ", kMaxHistory,
                    " are supported");
  for (const at::Tensor& h : history) {
    check_like(kOp, "history", h, x, "x");
    check_float_dtype(kOp, "history", h, x.scalar_type());
  }
  check_coeffs(kOp, coeffs, x, kEiFixedCoeffs + 1 + k, "[c_x, c_m, a, b_0, b_1..b_k, s] for k history tensors");
  if (noise) {
    check_like(kOp, "noise", *noise, x, "x");
    check_float_dtype(kOp, "noise", *noise, x.scalar_type());
  }
  std::optional<ThresholdOptions> threshold;
  if (threshold_kind) {
    threshold = parse_threshold(kOp, *threshold_kind, threshold_ratio, threshold_max_value, threshold_style);
  }
  check_out(kOp, "out[0] (x_next)", x_next_out, x);
  check_out(kOp, "out[1] (d)", d_out, x);
  TORCH_CHECK_VALUE(!outputs_overlap(x_next_out, d_out), kOp, ": the two outputs (x_next, d) must not share memory");
  for (const at::Tensor* out : {&x_next_out, &d_out}) {
    const char* name = out == &x_next_out ? "out[0] (x_next)" : "out[1] (d)";
    check_no_partial_overlap(kOp, name, *out, x, "x");
    check_no_partial_overlap(kOp, name, *out, model_out, "model_out");
    for (const at::Tensor& h : history) check_no_partial_overlap(kOp, name, *out, h, "history");
    if (noise) check_no_partial_overlap(kOp, name, *out, *noise, "noise");
  }
  return threshold;
}

// The op's tensor inputs as the kernels read them: contiguous (a non-contiguous
// one is copied once).
struct EiStepInputs {
  at::Tensor x, model_out;
  std::vector<at::Tensor> history;
  std::optional<at::Tensor> noise;
  EiStepInputs(const at::Tensor& x_, const at::Tensor& model_out_, at::TensorList history_,
               const std::optional<at::Tensor>& noise_)
      : x(contiguous_input(x_)), model_out(contiguous_input(model_out_)) {
    for (const at::Tensor& h : history_) history.push_back(contiguous_input(h));
    if (noise_) noise = contiguous_input(*noise_);
  }
};

void ei_step_out_cpu(const at::Tensor& x, const at::Tensor& model_out, at::TensorList history, const at::Tensor& coeffs,
                     const std::optional<at::Tensor>& noise, std::optional<std::string_view> threshold_kind,
                     double threshold_ratio, double threshold_max_value, std::string_view threshold_style,
                     const at::Tensor& x_next_out, const at::Tensor& d_out) {
  const std::optional<ThresholdOptions> threshold =
      check_ei_step(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value,
                    threshold_style, x_next_out, d_out);
  const int64_t batch = batch_of(x);
  const at::ScalarType acc = acc_type_of(x);
  const EiStepInputs in(x, model_out, history, noise);
  const at::Tensor &xc = in.x, &mc = in.model_out;
  const std::vector<at::Tensor>& hc = in.history;
  const std::optional<at::Tensor>& zc = in.noise;
  KernelOut x_next(x_next_out), d(d_out);

  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_ei_step_cpu", [&] {
    cpu::EiStepArgs<scalar_t> args;
    args.per_sample = per_sample_of(x);
    args.x = kernel_in(xc);
    args.model_out = kernel_in(mc);
    args.num_history = static_cast<int>(hc.size());
    for (size_t j = 0; j < hc.size(); ++j) args.history[j] = kernel_in(hc[j]);
    args.has_noise = zc.has_value();
    if (zc) args.noise = kernel_in(*zc);
    const CoeffTable<scalar_t> table(coeffs);
    args.coeffs = table.values.data();
    args.coeff_stride = table.stride;
    int64_t footprint = total_bytes({&xc, &mc, &x_next_out, &d_out});
    for (const at::Tensor& h : hc) footprint += total_bytes({&h});
    if (zc) footprint += total_bytes({&*zc});
    const bool streaming = exceeds_last_level_cache(footprint);
    args.x_next = x_next.view(streaming);
    args.d = d.view(streaming);
    std::optional<ThresholdTable<scalar_t>> thresholds;
    if (threshold) {
      thresholds.emplace(*threshold, batch);
      args.has_threshold = true;
      args.limit = thresholds->limit();
      args.divisor = thresholds->divisor();
      args.threshold_stride = thresholds->stride();
      if (thresholds->dynamic && args.per_sample > 0) {
        std::vector<const at::Tensor*> inputs{&xc, &mc};
        for (const at::Tensor& h : hc) inputs.push_back(&h);
        if (zc) inputs.push_back(&*zc);
        const cpu::DynamicThreshold dyn{threshold->ratio, threshold->style, threshold->max_value,
                                        outputs_apart_from_inputs({&x_next.buffer, &d.buffer}, inputs)};
        scalar_t* scale = thresholds->scales();
        const bool by_sample = samples_keep_threads_busy(batch, args.per_sample);
        parallel_samples(
            batch, [&](int64_t b0, int64_t b1) { cpu::ei_step_dynamic_samples(args, dyn, scale, b0, b1, by_sample); });
        if (by_sample) return;
      }
    }
    parallel_elements(x.numel(), [&](int64_t begin, int64_t end) { cpu::ei_step_range(args, begin, end); });
  });
  x_next.finish();
  d.finish();
}

#ifdef DIFFACCEL_WITH_CUDA
void ei_step_out_cuda(const at::Tensor& x, const at::Tensor& model_out, at::TensorList history,
                      const at::Tensor& coeffs, const std::optional<at::Tensor>& noise,
                      std::optional<std::string_view> threshold_kind, double threshold_ratio,
                      double threshold_max_value, std::string_view threshold_style, const at::Tensor& x_next_out,
                      const at::Tensor& d_out) {
  const std::optional<ThresholdOptions> threshold =
      check_ei_step(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value,
                    threshold_style, x_next_out, d_out);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = batch_of(x);
  check_cuda_sizes(kOp, batch, per_sample_of(x));
  const EiStepInputs in(x, model_out, history, noise);
  const at::Tensor &xc = in.x, &mc = in.model_out;
  const std::vector<at::Tensor>& hc = in.history;
  const std::optional<at::Tensor>& zc = in.noise;
  const at::Tensor cc = coeffs.contiguous();
  KernelOut x_next(x_next_out), d(d_out);

  cuda::EiStepParams p;
  p.batch = batch;
  p.per_sample = per_sample_of(x);
  p.x = kernel_in(xc);
  p.model_out = kernel_in(mc);
  p.num_history = static_cast<int>(hc.size());
  for (size_t j = 0; j < hc.size(); ++j) p.history[j] = kernel_in(hc[j]);
  p.has_noise = zc.has_value();
  if (zc) p.noise = kernel_in(*zc);
  p.coeffs = coeffs_in(cc);
  p.coeff_stride = cc.dim() == 2 ? cc.size(1) : 0;
  p.x_next = cuda_out(x_next.buffer);
  p.d = cuda_out(d.buffer);
  const at::ScalarType acc = acc_type_of(x);
  std::optional<cuda::ThresholdSelect> select;
  at::Tensor scratch;
  if (threshold && threshold->kind == ThresholdKind::kDynamic) {
    select = cuda::ThresholdSelect{threshold->ratio, threshold->style, threshold->max_value};
    scratch = select_scratch(x, batch, p.per_sample);
  } else if (threshold) {
    p.threshold.enabled = true;
    p.threshold.clip_max = threshold->max_value;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_ei_step_cuda", [&] {
    check_launch(kOp, cuda::launch_ei_step<scalar_t>(p, select ? &*select : nullptr,
                                                     select ? scratch.data_ptr() : nullptr, stream));
  });
  x_next.finish();
  d.finish();
}
#endif

// The functional form: fresh contiguous outputs, then the _out kernel of the device.
template <auto kOutKernel>
std::tuple<at::Tensor, at::Tensor> ei_step_functional(const at::Tensor& x, const at::Tensor& model_out,
                                                      at::TensorList history, const at::Tensor& coeffs,
                                                      const std::optional<at::Tensor>& noise,
                                                      std::optional<std::string_view> threshold_kind,
                                                      double threshold_ratio, double threshold_max_value,
                                                      std::string_view threshold_style) {
  at::Tensor x_next = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor d = at::empty_like(x_next);
  kOutKernel(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value,
             threshold_style, x_next, d);
  return {x_next, d};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("ei_step", &ei_step_functional<&ei_step_out_cpu>);
  m.impl("ei_step_out", &ei_step_out_cpu);
}

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("ei_step", &ei_step_functional<&ei_step_out_cuda>);
  m.impl("ei_step_out", &ei_step_out_cuda);
}
#endif

}  // namespace diffaccel
