// diffaccel::langevin_correct on CPU and CUDA: the corrector of predictor-corrector
// sampling (Song et al. 2021; score_sde's LangevinCorrector and diffusers'
// ScoreSdeVeScheduler.step_correct).
#include <cmath>
#include <optional>
#include <string_view>

#include <ATen/core/Generator.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"

#ifdef DIFFACCEL_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.langevin_correct";

void check_langevin_correct(const at::Tensor& x, const at::Tensor& score, double snr, const at::Tensor& alpha,
                            const std::optional<at::Tensor>& noise, std::string_view reduction,
                            const at::Tensor& x_new_out, const at::Tensor& x_mean_out) {
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp, ": argument 'x' must have a batch dimension, got shape ", shape_str(x));
  check_float_dtype(kOp, "x", x, x.scalar_type());
  check_like(kOp, "score", score, x, "x");
  check_float_dtype(kOp, "score", score, x.scalar_type());
  TORCH_CHECK_VALUE(snr >= 0.0, kOp, ": argument 'snr' must be >= 0, got ", snr);
  const int64_t batch = batch_of(x);
  TORCH_CHECK_VALUE(alpha.device() == x.device(), kOp, ": argument 'alpha' is on ", alpha.device(), " but 'x' is on ",
                    x.device());
  TORCH_CHECK_VALUE(alpha.dim() == 0 || (alpha.dim() == 1 && alpha.size(0) == batch), kOp,
                    ": argument 'alpha' must be a number, a 0-d tensor or shape [", batch, "], got shape ",
                    shape_str(alpha));
  TORCH_CHECK_VALUE(reduction == "batch" || reduction == "sample", kOp,
                    ": argument 'reduction' must be \"batch\" or \"sample\", got \"", reduction, "\"");
  if (noise) {
    check_like(kOp, "noise", *noise, x, "x");
    check_float_dtype(kOp, "noise", *noise, x.scalar_type());
  }
  check_out(kOp, "out[0] (x_new)", x_new_out, x);
  check_out(kOp, "out[1] (x_mean)", x_mean_out, x);
  TORCH_CHECK_VALUE(!outputs_overlap(x_new_out, x_mean_out), kOp,
                    ": the two outputs (x_new, x_mean) must not share memory");
  for (const at::Tensor* out : {&x_new_out, &x_mean_out}) {
    const char* name = out == &x_new_out ? "out[0] (x_new)" : "out[1] (x_mean)";
    check_no_partial_overlap(kOp, name, *out, x, "x");
    check_no_partial_overlap(kOp, name, *out, score, "score");
    if (noise) check_no_partial_overlap(kOp, name, *out, *noise, "noise");
  }
}

void langevin_correct_out_cpu(const at::Tensor& x, const at::Tensor& score, double snr, const at::Tensor& alpha,
                              const std::optional<at::Tensor>& noise, std::optional<at::Generator> generator,
                              std::string_view reduction, const at::Tensor& x_new_out, const at::Tensor& x_mean_out) {
  check_langevin_correct(x, score, snr, alpha, noise, reduction, x_new_out, x_mean_out);
  const int64_t batch = batch_of(x);
  // Drawn exactly as torch.randn(x.shape, generator=generator, dtype=x.dtype) would.
  const at::Tensor z = noise ? contiguous_input(*noise) : at::randn(x.sizes(), generator, x.options());
  const at::Tensor xc = contiguous_input(x);
  const at::Tensor sc = contiguous_input(score);

  // alpha read in place (a 0-d tensor, or [B] at any stride): converting and
  // expanding it would be a few ATen calls, each as long as a small step.
  const at::Tensor alpha_values = alpha.scalar_type() == at::kDouble ? alpha : alpha.to(at::kDouble);
  const double* alpha_data = alpha_values.const_data_ptr<double>();
  const int64_t alpha_stride = alpha_values.dim() == 0 ? 0 : alpha_values.stride(0);
  const bool per_sample_reduction = reduction == "sample";
  const int64_t per_sample = per_sample_of(x);
  const cpu::In norm_of[2] = {kernel_in(sc), kernel_in(z)};

  KernelOut x_new(x_new_out), x_mean(x_mean_out);
  AT_DISPATCH_FLOATING_TYPES(acc_type_of(x), "diffaccel_langevin_correct_cpu", [&] {
    std::vector<scalar_t> step(static_cast<size_t>(batch)), noise_scale(static_cast<size_t>(batch));
    // The per-sample step and noise scale, from the sums of squares of the
    // score (first batch entries) and of the noise (the next batch).
    const auto set_steps = [&](std::vector<double> norms) {
      for (double& n : norms) n = std::sqrt(n);
      const double* grad_norm = norms.data();
      const double* noise_norm = norms.data() + batch;
      double grad_mean = 0, noise_mean = 0;
      for (int64_t b = 0; b < batch; ++b) {
        grad_mean += grad_norm[b];
        noise_mean += noise_norm[b];
      }
      grad_mean /= double(batch);
      noise_mean /= double(batch);
      for (int64_t b = 0; b < batch; ++b) {
        const double r = snr * (per_sample_reduction ? noise_norm[b] : noise_mean) /
                         (per_sample_reduction ? grad_norm[b] : grad_mean);
        const double s = 2.0 * alpha_data[b * alpha_stride] * r * r;
        step[b] = scalar_t(s);
        noise_scale[b] = scalar_t(std::sqrt(2.0 * s));
      }
    };
    cpu::LangevinArgs<scalar_t> args;
    args.per_sample = per_sample;
    args.x = kernel_in(xc);
    args.score = kernel_in(sc);
    args.noise = kernel_in(z);
    args.step = step.data();
    args.noise_scale = noise_scale.data();
    const bool streaming = exceeds_last_level_cache(total_bytes({&xc, &sc, &z, &x_new_out, &x_mean_out}));
    args.x_new = x_new.view(streaming);
    args.x_mean = x_mean.view(streaming);
    per_sample_totals_then_pass(
        2, batch, per_sample,
        [&](int64_t r, double* partial, int64_t c0, int64_t c1) {
          cpu::sum_squares_chunks(norm_of[r], per_sample, partial, c0, c1);
        },
        set_steps, [&](int64_t begin, int64_t end) { cpu::langevin_range(args, begin, end); });
  });
  x_new.finish();
  x_mean.finish();
}

#ifdef DIFFACCEL_WITH_CUDA
// With noise=None the noise is drawn inside the kernels from the generator's
// Philox stream (diffaccel/philox.h): element i is philox_normal(seed, offset, i)
// for the (seed, offset) the generator hands out, and the generator advances by
// 4, so consecutive calls draw independent noise. Under CUDA-graph capture the
// seed and offset are read on the device at each replay.
cuda::PhiloxArgs philox_args(std::optional<at::Generator> generator) {
  auto* gen =
      at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    state = gen->philox_cuda_state(4);
  }
  cuda::PhiloxArgs args;
  args.captured = state.captured_;
  if (state.captured_) {
    args.seed_ptr = state.seed_.ptr;
    args.offset_ptr = state.offset_.ptr;
    args.offset_intragraph = state.offset_intragraph_;
  } else {
    args.seed = state.seed_.val;
    args.offset = state.offset_.val;
  }
  return args;
}

void langevin_correct_out_cuda(const at::Tensor& x, const at::Tensor& score, double snr, const at::Tensor& alpha,
                               const std::optional<at::Tensor>& noise, std::optional<at::Generator> generator,
                               std::string_view reduction, const at::Tensor& x_new_out, const at::Tensor& x_mean_out) {
  check_langevin_correct(x, score, snr, alpha, noise, reduction, x_new_out, x_mean_out);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = batch_of(x);
  const int64_t per_sample = per_sample_of(x);
  check_cuda_sizes(kOp, batch, per_sample);
  const at::Tensor xc = contiguous_input(x);
  const at::Tensor sc = contiguous_input(score);
  const std::optional<at::Tensor> zc = noise ? std::optional(contiguous_input(*noise)) : std::nullopt;
  // The kernel reads alpha in its own floating dtype; anything else is converted.
  const at::Tensor alpha_c = alpha.is_floating_point() ? alpha.contiguous() : alpha.to(at::kDouble);
  KernelOut x_new(x_new_out), x_mean(x_mean_out);
  cuda::LangevinParams p;
  p.batch = batch;
  p.per_sample = per_sample;
  p.x = kernel_in(xc);
  p.score = kernel_in(sc);
  p.has_noise = zc.has_value();
  if (zc) p.noise = kernel_in(*zc);
  else p.philox = philox_args(std::move(generator));
  p.snr = snr;
  p.alpha = kernel_in(alpha_c);
  p.alpha_stride = alpha_c.dim() == 1 ? 1 : 0;
  p.per_sample_reduction = reduction == "sample";
  p.x_new = cuda_out(x_new.buffer);
  p.x_mean = cuda_out(x_mean.buffer);
  const at::Tensor scratch = at::empty({cuda::langevin_scratch_bytes(batch, per_sample)}, x.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_type_of(x), "diffaccel_langevin_correct_cuda", [&] {
    check_launch(kOp, cuda::launch_langevin_correct<scalar_t>(p, scratch.data_ptr(), stream));
  });
  x_new.finish();
  x_mean.finish();
}
#endif

template <auto kOutKernel>
std::tuple<at::Tensor, at::Tensor> langevin_correct_functional(const at::Tensor& x, const at::Tensor& score, double snr,
                                                               const at::Tensor& alpha,
                                                               const std::optional<at::Tensor>& noise,
                                                               std::optional<at::Generator> generator,
                                                               std::string_view reduction) {
  at::Tensor x_new = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor x_mean = at::empty_like(x_new);
  kOutKernel(x, score, snr, alpha, noise, std::move(generator), reduction, x_new, x_mean);
  return {x_new, x_mean};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("langevin_correct", &langevin_correct_functional<&langevin_correct_out_cpu>);
  m.impl("langevin_correct_out", &langevin_correct_out_cpu);
}

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("langevin_correct", &langevin_correct_functional<&langevin_correct_out_cuda>);
  m.impl("langevin_correct_out", &langevin_correct_out_cuda);
}
#endif

}  // namespace diffaccel
