// diffaccel::multistep_combine on CPU: y = sum_j coeffs[..., j] * tensors[j].
#include <torch/library.h>

#include "common.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.multistep_combine";

at::ScalarType combine_result_type(at::TensorList tensors) {
  at::ScalarType t = tensors[0].scalar_type();
  for (const at::Tensor& v : tensors) t = at::promote_types(t, v.scalar_type());
  return t;
}

void multistep_combine_out_cpu(at::TensorList tensors, const at::Tensor& coeffs,
                               const at::Tensor& out) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxCombine, kOp, ": argument 'tensors' must hold 1 to ",
                    kMaxCombine, " tensors, got ", n);
  const at::Tensor& first = tensors[0];
  TORCH_CHECK_VALUE(first.dim() >= 1, kOp,
                    ": argument 'tensors' must have a batch dimension, got shape ",
                    shape_str(first));
  const at::ScalarType result = combine_result_type(tensors);
  for (const at::Tensor& t : tensors) {
    check_like(kOp, "tensors", t, first, "tensors[0]");
    check_float_dtype(kOp, "tensors", t, result);
  }
  check_coeffs(kOp, coeffs, first, n, "one coefficient per tensor");
  TORCH_CHECK_VALUE(out.device() == first.device() && out.sizes() == first.sizes(), kOp,
                    ": argument 'out' must have shape ", shape_str(first), " on ",
                    first.device(), ", got ", shape_str(out), " on ", out.device());
  TORCH_CHECK_TYPE(out.scalar_type() == result, kOp, ": argument 'out' must have dtype ", dtype_name(result),
                   " (the promoted dtype of 'tensors'), got ", dtype_name(out.scalar_type()));
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes, kOp,
                    ": argument 'out' has elements that share memory");
  for (const at::Tensor& t : tensors) check_no_partial_overlap(kOp, "out", out, t, "tensors");

  const at::ScalarType acc = result == at::kDouble ? at::kDouble : at::kFloat;
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
    parallel_elements(first.numel(), [&](int64_t begin, int64_t end) {
      cpu::multistep_combine_range(args, begin, end);
    });
  });
  y.finish();
}

at::Tensor multistep_combine_cpu(at::TensorList tensors, const at::Tensor& coeffs) {
  TORCH_CHECK_VALUE(!tensors.empty(), kOp, ": argument 'tensors' must hold 1 to ", kMaxCombine,
                    " tensors, got 0");
  at::Tensor out = at::empty(tensors[0].sizes(),
                             tensors[0].options().dtype(combine_result_type(tensors)));
  multistep_combine_out_cpu(tensors, coeffs, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("multistep_combine", &multistep_combine_cpu);
  m.impl("multistep_combine_out", &multistep_combine_out_cpu);
}

}  // namespace diffaccel
