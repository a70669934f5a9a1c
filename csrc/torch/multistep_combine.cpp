// diffaccel::multistep_combine on CPU and CUDA: y = sum_j coeffs[..., j] * tensors[j].
#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.multistep_combine";

at::ScalarType combine_result_type(at::TensorList tensors) {
  at::ScalarType t = tensors[0].scalar_type();
  for (const at::Tensor& v : tensors) t = at::promote_types(t, v.scalar_type());
  return t;
}

// Every check of the op's arguments; returns the dtype the sum is computed in.
at::ScalarType check_multistep_combine(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& out) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxCombine, kOp, ": argument 'tensors' must hold 1 to ", kMaxCombine,
                    " tensors, got ", n);
  const at::Tensor& first = tensors[0];
  TORCH_CHECK_VALUE(first.dim() >= 1, kOp, ": argument 'tensors' must have a batch dimension, got shape ",
                    shape_str(first));
  const at::ScalarType result = combine_result_type(tensors);
  for (const at::Tensor& t : tensors) {
    check_like(kOp, "tensors", t, first, "tensors[0]");
    check_float_dtype(kOp, "tensors", t, result);
  }
  check_coeffs(kOp, coeffs, first, n, "one coefficient per tensor");
  TORCH_CHECK_VALUE(out.device() == first.device() && out.sizes() == first.sizes(), kOp,
                    ": argument 'out' must have shape ", shape_str(first), " on ", first.device(), ", got ",
                    shape_str(out), " on ", out.device());
  TORCH_CHECK_TYPE(out.scalar_type() == result, kOp, ": argument 'out' must have dtype ", dtype_name(result),
                   " (the promoted dtype of 'tensors'), got ", dtype_name(out.scalar_type()));
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes, kOp,
                    ": argument 'out' has elements that share memory");
  for (const at::Tensor& t : tensors) check_no_partial_overlap(kOp, "out", out, t, "tensors");
  return result == at::kDouble ? at::kDouble : at::kFloat;
}

void multistep_combine_out_cpu(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& out) {
  const at::ScalarType acc = check_multistep_combine(tensors, coeffs, out);
  const at::Tensor& first = tensors[0];
  const int64_t n = static_cast<int64_t>(tensors.size());
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& t : tensors) inputs.push_back(contiguous_input(t));
  KernelOut y(out);
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_multistep_combine_cpu", [&] {
    cpu::CombineArgs<scalar_t> args;
    args.per_sample = per_sample_of(first);
    args.num_tensors = static_cast<int>(n);
    for (int64_t j = 0; j < n; ++j) args.tensors[j] = kernel_in(inputs[j]);
    const CoeffTable<scalar_t> table(coeffs);
    args.coeffs = table.values.data();
    args.coeff_stride = table.stride;
    int64_t footprint = total_bytes({&out});
    for (const at::Tensor& t : inputs) footprint += total_bytes({&t});
    args.y = y.view(exceeds_last_level_cache(footprint));
    parallel_elements(first.numel(),
                      [&](int64_t begin, int64_t end) { cpu::multistep_combine_range(args, begin, end); });
  });
  y.finish();
}

#ifdef DIFFACCEL_WITH_CUDA
void multistep_combine_out_cuda(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& out) {
  const at::ScalarType acc = check_multistep_combine(tensors, coeffs, out);
  const at::Tensor& first = tensors[0];
  const c10::cuda::CUDAGuard guard(first.device());
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& t : tensors) inputs.push_back(contiguous_input(t));
  const at::Tensor cc = coeffs.contiguous();
  KernelOut y(out);
  cuda::CombineParams p;
  p.batch = batch_of(first);
  p.per_sample = per_sample_of(first);
  p.num_tensors = static_cast<int>(inputs.size());
  for (size_t j = 0; j < inputs.size(); ++j) p.tensors[j] = kernel_in(inputs[j]);
  p.coeffs = coeffs_in(cc);
  p.coeff_stride = cc.dim() == 2 ? cc.size(1) : 0;
  p.y = cuda_out(y.buffer);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_multistep_combine_cuda",
                             [&] { check_launch(kOp, cuda::launch_multistep_combine<scalar_t>(p, stream)); });
  y.finish();
}
#endif

template <auto kOutKernel>
at::Tensor multistep_combine_functional(at::TensorList tensors, const at::Tensor& coeffs) {
  TORCH_CHECK_VALUE(!tensors.empty(), kOp, ": argument 'tensors' must hold 1 to ", kMaxCombine, " tensors, got 0");
  at::Tensor out = at::empty(tensors[0].sizes(), tensors[0].options().dtype(combine_result_type(tensors)));
  kOutKernel(tensors, coeffs, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("multistep_combine", &multistep_combine_functional<&multistep_combine_out_cpu>);
  m.impl("multistep_combine_out", &multistep_combine_out_cpu);
}

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("multistep_combine", &multistep_combine_functional<&multistep_combine_out_cuda>);
  m.impl("multistep_combine_out", &multistep_combine_out_cuda);
}
#endif

}  // namespace diffaccel
