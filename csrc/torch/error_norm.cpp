// diffaccel::error_norm on CPU and CUDA: per sample, the RMS of the scaled
// error of adaptive step-size control,
//   sqrt(mean_i(((x_high - x_low) / max(atol, rtol * max(|x_low|, |x_prev|)))^2)),
// in one pass over the three tensors (sums of squares in double); and
// diffaccel::error_norm_backward, its gradient in one elementwise pass.
#include <tuple>

#include <cmath>

#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.error_norm";
constexpr const char* kBackwardOp = "diffaccel.error_norm_backward";

void check_error_norm(const at::Tensor& x_high, const at::Tensor& x_low, const at::Tensor& x_prev, double atol,
                      double rtol, const char* op = kOp) {
  TORCH_CHECK_VALUE(x_high.dim() >= 1, op, ": argument 'x_high' must have a batch dimension, got shape ",
                    shape_str(x_high));
  check_float_dtype(op, "x_high", x_high, x_high.scalar_type());
  check_like(op, "x_low", x_low, x_high, "x_high");
  check_float_dtype(op, "x_low", x_low, x_high.scalar_type());
  check_like(op, "x_prev", x_prev, x_high, "x_high");
  check_float_dtype(op, "x_prev", x_prev, x_high.scalar_type());
  TORCH_CHECK_VALUE(atol >= 0.0, op, ": argument 'atol' must be >= 0, got ", atol);
  TORCH_CHECK_VALUE(rtol >= 0.0, op, ": argument 'rtol' must be >= 0, got ", rtol);
}

// grad (dL/dE) and error (the forward's E): floating [batch] tensors on the data's device.
void check_error_norm_backward(const at::Tensor& grad, const at::Tensor& error, const at::Tensor& x_high,
                               const at::Tensor& x_low, const at::Tensor& x_prev, double atol, double rtol) {
  check_error_norm(x_high, x_low, x_prev, atol, rtol, kBackwardOp);
  check_per_sample_vector(kBackwardOp, "grad", grad, x_high, "x_high");
  check_per_sample_vector(kBackwardOp, "error", error, x_high, "x_high");
}

// One error_norm_backward call, checked: the inputs made contiguous, the
// per-sample factors k_b = grad_b / (N E_b) of the scaled error in dL/de
// (sqrt's, mean's and the square's gradients together; in double, then in the
// compute type, by tensor ops, so nothing is read back on CUDA), and the
// gradients, each contiguous in its input's dtype.
struct ErrorNormBackwardCall {
  int64_t batch, per_sample;
  at::ScalarType acc;
  at::Tensor high, low, prev, k, grad_high, grad_low, grad_prev;

  ErrorNormBackwardCall(const at::Tensor& grad, const at::Tensor& error, const at::Tensor& x_high,
                        const at::Tensor& x_low, const at::Tensor& x_prev, double atol, double rtol) {
    check_error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol);
    batch = batch_of(x_high);
    per_sample = per_sample_of(x_high);
    acc = acc_type_of(x_high);
    high = contiguous_input(x_high);
    low = contiguous_input(x_low);
    prev = contiguous_input(x_prev);
    k = (grad.to(at::kDouble) / (error.to(at::kDouble) * double(per_sample))).to(acc).contiguous();
    grad_high = at::empty(x_high.sizes(), x_high.options());
    grad_low = at::empty(x_low.sizes(), x_low.options());
    grad_prev = at::empty(x_prev.sizes(), x_prev.options());
  }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> gradients() const { return {grad_high, grad_low, grad_prev}; }
};

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> error_norm_backward_cpu(const at::Tensor& grad, const at::Tensor& error,
                                                                       const at::Tensor& x_high,
                                                                       const at::Tensor& x_low,
                                                                       const at::Tensor& x_prev, double atol,
                                                                       double rtol) {
  const ErrorNormBackwardCall c(grad, error, x_high, x_low, x_prev, atol, rtol);
  AT_DISPATCH_FLOATING_TYPES(c.acc, "diffaccel_error_norm_backward_cpu", [&] {
    cpu::ErrorNormBackwardArgs<scalar_t> args;
    args.per_sample = c.per_sample;
    args.high = kernel_in(c.high);
    args.low = kernel_in(c.low);
    args.prev = kernel_in(c.prev);
    args.k = c.k.data_ptr<scalar_t>();
    args.atol = scalar_t(atol);
    args.rtol = scalar_t(rtol);
    const bool streaming =
        exceeds_last_level_cache(total_bytes({&c.high, &c.low, &c.prev, &c.grad_high, &c.grad_low, &c.grad_prev}));
    args.grad_high = {c.grad_high.data_ptr(), kernel_dtype(c.grad_high.scalar_type()), streaming};
    args.grad_low = {c.grad_low.data_ptr(), kernel_dtype(c.grad_low.scalar_type()), streaming};
    args.grad_prev = {c.grad_prev.data_ptr(), kernel_dtype(c.grad_prev.scalar_type()), streaming};
    parallel_elements(c.high.numel(),
                      [&](int64_t begin, int64_t end) { cpu::error_norm_backward_range(args, begin, end); });
  });
  return c.gradients();
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
      at::empty({cuda::reduction_scratch_bytes(batch, per_sample)}, x_high.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_error_norm_cuda", [&] {
    check_launch(kOp, cuda::launch_error_norm<scalar_t>(p, scratch.data_ptr(), stream));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> error_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& error,
                                                                        const at::Tensor& x_high,
                                                                        const at::Tensor& x_low,
                                                                        const at::Tensor& x_prev, double atol,
                                                                        double rtol) {
  const c10::cuda::CUDAGuard guard(x_high.device());
  const ErrorNormBackwardCall c(grad, error, x_high, x_low, x_prev, atol, rtol);
  check_cuda_sizes(kBackwardOp, c.batch, c.per_sample);
  cuda::ErrorNormBackwardParams p;
  p.batch = c.batch;
  p.per_sample = c.per_sample;
  p.high = kernel_in(c.high);
  p.low = kernel_in(c.low);
  p.prev = kernel_in(c.prev);
  p.k = c.k.data_ptr();
  p.atol = atol;
  p.rtol = rtol;
  p.grad_high = cuda_out(c.grad_high);
  p.grad_low = cuda_out(c.grad_low);
  p.grad_prev = cuda_out(c.grad_prev);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(c.acc, "diffaccel_error_norm_backward_cuda",
                             [&] { check_launch(kBackwardOp, cuda::launch_error_norm_backward<scalar_t>(p, stream)); });
  return c.gradients();
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("error_norm", &error_norm_cpu);
  m.impl("error_norm_backward", &error_norm_backward_cpu);
}

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("error_norm", &error_norm_cuda);
  m.impl("error_norm_backward", &error_norm_backward_cuda);
}
#endif

}  // namespace diffaccel
