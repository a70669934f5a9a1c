// diffaccel::threshold on CPU and CUDA: clip, or dynamic thresholding by
// selection; and diffaccel::threshold_backward, dynamic thresholding's
// gradient with the scales held fixed, and its per-sample sums, in one pass.
#include <string_view>
#include <tuple>
#include <vector>

#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"
#include "threshold_options.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.threshold";
constexpr const char* kBackwardOp = "diffaccel.threshold_backward";

void check_threshold_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale) {
  TORCH_CHECK_VALUE(x.dim() >= 1, kBackwardOp, ": argument 'x' must have a batch dimension, got shape ", shape_str(x));
  check_float_dtype(kBackwardOp, "x", x, x.scalar_type());
  check_like(kBackwardOp, "grad", grad, x, "x");
  check_float_dtype(kBackwardOp, "grad", grad, x.scalar_type());
  check_per_sample_vector(kBackwardOp, "scale", scale, x, "x");
}

// (passed, dot): contiguous, in the compute type.
std::tuple<at::Tensor, at::Tensor> threshold_backward_outputs(const at::Tensor& x) {
  const at::TensorOptions options = x.options().dtype(acc_type_of(x));
  return {at::empty(x.sizes(), options), at::empty({batch_of(x)}, options)};
}

ThresholdOptions check_threshold(const at::Tensor& x, std::string_view kind, double ratio, double max_value,
                                 std::string_view style, const at::Tensor& out) {
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp, ": argument 'x' must have a batch dimension, got shape ", shape_str(x));
  check_float_dtype(kOp, "x", x, x.scalar_type());
  const ThresholdOptions options = parse_threshold(kOp, kind, ratio, max_value, style);
  check_out(kOp, "out", out, x);
  check_no_partial_overlap(kOp, "out", out, x, "x");
  return options;
}

void threshold_out_cpu(const at::Tensor& x, std::string_view kind, double ratio, double max_value,
                       std::string_view style, const at::Tensor& out) {
  const ThresholdOptions options = check_threshold(x, kind, ratio, max_value, style, out);

  const int64_t batch = batch_of(x);
  const at::ScalarType acc = acc_type_of(x);
  const at::Tensor xc = contiguous_input(x);
  KernelOut y(out);
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_threshold_cpu", [&] {
    cpu::ThresholdArgs<scalar_t> args;
    args.per_sample = per_sample_of(x);
    args.x = kernel_in(xc);
    ThresholdTable<scalar_t> table(options, batch);
    args.limit = table.limit();
    args.divisor = table.divisor();
    args.threshold_stride = table.stride();
    args.y = y.view(exceeds_last_level_cache(total_bytes({&xc, &out})));
    if (table.dynamic && args.per_sample > 0) {
      const cpu::DynamicThreshold dyn{options.ratio, options.style, options.max_value,
                                      outputs_apart_from_inputs({&y.buffer}, {&xc})};
      scalar_t* scale = table.scales();
      const bool by_sample = samples_keep_threads_busy(batch, args.per_sample);
      parallel_samples(
          batch, [&](int64_t b0, int64_t b1) { cpu::threshold_dynamic_samples(args, dyn, scale, b0, b1, by_sample); });
      if (by_sample) return;
    }
    parallel_elements(x.numel(), [&](int64_t begin, int64_t end) { cpu::threshold_range(args, begin, end); });
  });
  y.finish();
}

std::tuple<at::Tensor, at::Tensor> threshold_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& scale) {
  check_threshold_backward(grad, x, scale);
  const int64_t batch = batch_of(x);
  const int64_t per_sample = per_sample_of(x);
  const at::ScalarType acc = acc_type_of(x);
  auto [passed, dot] = threshold_backward_outputs(x);
  const at::Tensor gc = contiguous_input(grad), xc = contiguous_input(x);
  const at::Tensor scales = scale.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_threshold_backward_cpu", [&] {
    cpu::ThresholdBackwardArgs<scalar_t> args;
    args.per_sample = per_sample;
    args.grad = kernel_in(gc);
    args.x = kernel_in(xc);
    args.scale = scales.data_ptr<scalar_t>();
    args.passed = passed.data_ptr<scalar_t>();
    const std::vector<double> totals =
        per_sample_totals(1, batch, per_sample, [&](int64_t, double* partial, int64_t c0, int64_t c1) {
          cpu::threshold_backward_chunks(args, partial, c0, c1);
        });
    scalar_t* d = dot.data_ptr<scalar_t>();
    for (int64_t b = 0; b < batch; ++b) d[b] = scalar_t(totals[b]);
  });
  return {passed, dot};
}

#ifdef DIFFACCEL_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> threshold_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                           const at::Tensor& scale) {
  check_threshold_backward(grad, x, scale);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = batch_of(x);
  const int64_t per_sample = per_sample_of(x);
  check_cuda_sizes(kBackwardOp, batch, per_sample);
  const at::ScalarType acc = acc_type_of(x);
  auto [passed, dot] = threshold_backward_outputs(x);
  const at::Tensor gc = contiguous_input(grad), xc = contiguous_input(x);
  const at::Tensor scales = scale.to(acc).contiguous();
  cuda::ThresholdBackwardParams p;
  p.batch = batch;
  p.per_sample = per_sample;
  p.grad = kernel_in(gc);
  p.x = kernel_in(xc);
  p.scale = scales.data_ptr();
  p.passed = passed.data_ptr();
  p.dot = dot.data_ptr();
  const at::Tensor scratch =
      at::empty({cuda::reduction_scratch_bytes(batch, per_sample)}, x.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_threshold_backward_cuda", [&] {
    check_launch(kBackwardOp, cuda::launch_threshold_backward<scalar_t>(p, scratch.data_ptr(), stream));
  });
  return {passed, dot};
}

void threshold_out_cuda(const at::Tensor& x, std::string_view kind, double ratio, double max_value,
                        std::string_view style, const at::Tensor& out) {
  const ThresholdOptions options = check_threshold(x, kind, ratio, max_value, style, out);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = batch_of(x);
  check_cuda_sizes(kOp, batch, per_sample_of(x));
  const at::Tensor xc = contiguous_input(x);
  KernelOut y(out);
  cuda::ThresholdParams p;
  p.batch = batch;
  p.per_sample = per_sample_of(x);
  p.x = kernel_in(xc);
  p.y = cuda_out(y.buffer);
  p.threshold.clip_max = options.max_value;
  const at::ScalarType acc = acc_type_of(x);
  const bool dynamic = options.kind == ThresholdKind::kDynamic;
  const cuda::ThresholdSelect select{options.ratio, options.style, options.max_value};
  const at::Tensor scratch = dynamic ? select_scratch(x, batch, p.per_sample) : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_threshold_cuda", [&] {
    check_launch(kOp, cuda::launch_threshold<scalar_t>(p, dynamic ? &select : nullptr,
                                                       dynamic ? scratch.data_ptr() : nullptr, stream));
  });
  y.finish();
}
#endif

template <auto kOutKernel>
at::Tensor threshold_functional(const at::Tensor& x, std::string_view kind, double ratio, double max_value,
                                std::string_view style) {
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  kOutKernel(x, kind, ratio, max_value, style, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("threshold", &threshold_functional<&threshold_out_cpu>);
  m.impl("threshold_out", &threshold_out_cpu);
  m.impl("threshold_backward", &threshold_backward_cpu);
}

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("threshold", &threshold_functional<&threshold_out_cuda>);
  m.impl("threshold_out", &threshold_out_cuda);
  m.impl("threshold_backward", &threshold_backward_cuda);
}
#endif

}  // namespace diffaccel
