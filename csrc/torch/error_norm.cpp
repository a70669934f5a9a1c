// diffaccel::error_norm on CPU and CUDA: per sample, the RMS of the scaled
// error of adaptive step-size control,
//   sqrt(mean_i(((x_high - x_low) / max(atol, rtol * max(|x_low|, |x_prev|)))^2)),
// in one pass over the three tensors (sums of squares in double).
#include <cmath>

#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.error_norm";

void check_error_norm(const at::Tensor& x_high, const at::Tensor& x_low, const at::Tensor& x_prev, double atol,
                      double rtol) {
  TORCH_CHECK_VALUE(x_high.dim() >= 1, kOp, ": argument 'x_high' must have a batch dimension, got shape ",
                    shape_str(x_high));
  check_float_dtype(kOp, "x_high", x_high, x_high.scalar_type());
  check_like(kOp, "x_low", x_low, x_high, "x_high");
  check_float_dtype(kOp, "x_low", x_low, x_high.scalar_type());
  check_like(kOp, "x_prev", x_prev, x_high, "x_high");
  check_float_dtype(kOp, "x_prev", x_prev, x_high.scalar_type());
  TORCH_CHECK_VALUE(atol > 0.0, kOp, ": argument 'atol' must be > 0, got ", atol);
  TORCH_CHECK_VALUE(rtol >= 0.0, kOp, ": argument 'rtol' must be >= 0, got ", rtol);
}

at::Tensor error_norm_cpu(const at::Tensor& x_high, const at::Tensor& x_low, const at::Tensor& x_prev, double atol,
                          double rtol) {
  check_error_norm(x_high, x_low, x_prev, atol, rtol);
  const int64_t batch = batch_of(x_high);
  const int64_t per_sample = per_sample_of(x_high);
  const at::ScalarType acc = acc_type_of(x_high);
  at::Tensor out = at::empty({batch}, x_high.options().dtype(acc));
  const at::Tensor hc = contiguous_input(x_high), lc = contiguous_input(x_low), pc = contiguous_input(x_prev);
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_error_norm_cpu", [&] {
    cpu::ErrorNormArgs<scalar_t> args;
    args.per_sample = per_sample;
    args.high = kernel_in(hc);
    args.low = kernel_in(lc);
    args.prev = kernel_in(pc);
    args.atol = scalar_t(atol);
    args.rtol = scalar_t(rtol);
    const std::vector<double> totals =
        per_sample_totals(1, batch, per_sample, [&](int64_t, double* partial, int64_t c0, int64_t c1) {
          cpu::error_sum_squares_chunks(args, partial, c0, c1);
        });
    scalar_t* result = out.data_ptr<scalar_t>();
    // An empty sample has no mean: NaN, as torch's mean of nothing.
    for (int64_t b = 0; b < batch; ++b) result[b] = scalar_t(std::sqrt(totals[b] / double(per_sample)));
  });
  return out;
}

#ifdef DIFFACCEL_WITH_CUDA
at::Tensor error_norm_cuda(const at::Tensor& x_high, const at::Tensor& x_low, const at::Tensor& x_prev, double atol,
                           double rtol) {
  check_error_norm(x_high, x_low, x_prev, atol, rtol);
  const c10::cuda::CUDAGuard guard(x_high.device());
  const int64_t batch = batch_of(x_high);
  const int64_t per_sample = per_sample_of(x_high);
  check_cuda_sizes(kOp, batch, per_sample);
  const at::ScalarType acc = acc_type_of(x_high);
  at::Tensor out = at::empty({batch}, x_high.options().dtype(acc));
  const at::Tensor hc = contiguous_input(x_high), lc = contiguous_input(x_low), pc = contiguous_input(x_prev);
  cuda::ErrorNormParams p;
  p.batch = batch;
  p.per_sample = per_sample;
  p.high = kernel_in(hc);
  p.low = kernel_in(lc);
  p.prev = kernel_in(pc);
  p.atol = atol;
  p.rtol = rtol;
  p.out = cuda_out(out);
  const at::Tensor scratch =
      at::empty({cuda::error_norm_scratch_bytes(batch, per_sample)}, x_high.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_error_norm_cuda", [&] {
    check_launch(kOp, cuda::launch_error_norm<scalar_t>(p, scratch.data_ptr(), stream));
  });
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) { m.impl("error_norm", &error_norm_cpu); }

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) { m.impl("error_norm", &error_norm_cuda); }
#endif

}  // namespace diffaccel
