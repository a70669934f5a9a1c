// diffaccel::multistep_combine and multistep_combine_pair on CPU and CUDA:
// y = sum_j coeffs[..., j] * tensors[j], and (y0, y1) with y_m = sum_j coeffs[..., m, j] * tensors[j].
#include <torch/library.h>

#include "common.h"
#include "cuda_common.h"

namespace diffaccel {
namespace {

constexpr const char* kOp = "diffaccel.multistep_combine";
constexpr const char* kPairOp = "diffaccel.multistep_combine_pair";

at::ScalarType combine_result_type(at::TensorList tensors) {
  at::ScalarType t = tensors[0].scalar_type();
  for (const at::Tensor& v : tensors) t = at::promote_types(t, v.scalar_type());
  return t;
}

// The output buffers of a call with their names in errors: 'out' of
// multistep_combine, 'out[0] (y0)' and 'out[1] (y1)' of multistep_combine_pair.
struct CombineOuts {
  const char* op;
  std::vector<at::Tensor> tensors;
  std::vector<const char*> names;
};

// Every check of the ops' arguments; returns the dtype the sums are computed in.
at::ScalarType check_combine(at::TensorList tensors, const at::Tensor& coeffs, const CombineOuts& outs) {
  const char* op = outs.op;
  const int64_t n = static_cast<int64_t>(tensors.size());
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxCombine, op, ": argument 'tensors' must hold 1 to ", kMaxCombine,
                    " tensors, got ", n);
  const at::Tensor& first = tensors[0];
  TORCH_CHECK_VALUE(first.dim() >= 1, op, ": argument 'tensors' must have a batch dimension, got shape ",
                    shape_str(first));
  const at::ScalarType result = combine_result_type(tensors);
  for (const at::Tensor& t : tensors) {
    check_like(op, "tensors", t, first, "tensors[0]");
    check_float_dtype(op, "tensors", t, result);
  }
  if (outs.tensors.size() == 1) {
    check_coeffs(op, coeffs, first, n, "one coefficient per tensor");
  } else {
    TORCH_CHECK_VALUE(coeffs.device() == first.device(), op, ": argument 'coeffs' is on ", coeffs.device(),
                      " but the data is on ", first.device());
    TORCH_CHECK_TYPE(at::isFloatingType(coeffs.scalar_type()), op,
                     ": argument 'coeffs' must be a floating tensor, got ", dtype_name(coeffs.scalar_type()));
    const bool shared = coeffs.dim() == 2 && coeffs.size(0) == 2 && coeffs.size(1) == n;
    const bool per_sample =
        coeffs.dim() == 3 && coeffs.size(0) == first.size(0) && coeffs.size(1) == 2 && coeffs.size(2) == n;
    TORCH_CHECK_VALUE(shared || per_sample, op, ": argument 'coeffs' must have shape [2, ", n, "] or [", first.size(0),
                      ", 2, ", n, "] (a row of one coefficient per tensor for each output), got ", shape_str(coeffs));
  }
  for (size_t m = 0; m < outs.tensors.size(); ++m) {
    const at::Tensor& out = outs.tensors[m];
    const char* name = outs.names[m];
    TORCH_CHECK_VALUE(out.device() == first.device() && out.sizes() == first.sizes(), op, ": argument '", name,
                      "' must have shape ", shape_str(first), " on ", first.device(), ", got ", shape_str(out), " on ",
                      out.device());
    TORCH_CHECK_TYPE(out.scalar_type() == result, op, ": argument '", name, "' must have dtype ", dtype_name(result),
                     " (the promoted dtype of 'tensors'), got ", dtype_name(out.scalar_type()));
    TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes, op, ": argument '", name,
                      "' has elements that share memory");
    for (const at::Tensor& t : tensors) check_no_partial_overlap(op, name, out, t, "tensors");
  }
  if (outs.tensors.size() == 2) {
    TORCH_CHECK_VALUE(!outputs_overlap(outs.tensors[0], outs.tensors[1]), op,
                      ": the two outputs (y0, y1) must not share memory");
  }
  return result == at::kDouble ? at::kDouble : at::kFloat;
}

// The dimensions of a coefficient row: [n] for one output, [2, n] for two.
int64_t row_dims(const CombineOuts& outs) { return static_cast<int64_t>(outs.tensors.size()); }

CombineOuts single_out(const at::Tensor& out) { return {kOp, {out}, {"out"}}; }
CombineOuts pair_out(const at::Tensor& y0_out, const at::Tensor& y1_out) {
  return {kPairOp, {y0_out, y1_out}, {"out[0] (y0)", "out[1] (y1)"}};
}

void combine_out_cpu(at::TensorList tensors, const at::Tensor& coeffs, const CombineOuts& outs) {
  const at::ScalarType acc = check_combine(tensors, coeffs, outs);
  const at::Tensor& first = tensors[0];
  const int64_t n = static_cast<int64_t>(tensors.size());
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& t : tensors) inputs.push_back(contiguous_input(t));
  std::vector<KernelOut> ys;
  for (const at::Tensor& out : outs.tensors) ys.emplace_back(out);
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_multistep_combine_cpu", [&] {
    cpu::CombineArgs<scalar_t> args;
    args.per_sample = per_sample_of(first);
    args.num_tensors = static_cast<int>(n);
    args.num_outputs = static_cast<int>(ys.size());
    for (int64_t j = 0; j < n; ++j) args.tensors[j] = kernel_in(inputs[j]);
    const CoeffTable<scalar_t> table(coeffs, row_dims(outs));
    args.coeffs = table.values.data();
    args.coeff_stride = table.stride;
    int64_t footprint = 0;
    for (const at::Tensor& t : outs.tensors) footprint += total_bytes({&t});
    for (const at::Tensor& t : inputs) footprint += total_bytes({&t});
    for (size_t m = 0; m < ys.size(); ++m) args.y[m] = ys[m].view(exceeds_last_level_cache(footprint));
    parallel_elements(first.numel(),
                      [&](int64_t begin, int64_t end) { cpu::multistep_combine_range(args, begin, end); });
  });
  for (KernelOut& y : ys) y.finish();
}

void multistep_combine_out_cpu(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& out) {
  combine_out_cpu(tensors, coeffs, single_out(out));
}
void multistep_combine_pair_out_cpu(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& y0_out,
                                    const at::Tensor& y1_out) {
  combine_out_cpu(tensors, coeffs, pair_out(y0_out, y1_out));
}

#ifdef DIFFACCEL_WITH_CUDA
void combine_out_cuda(at::TensorList tensors, const at::Tensor& coeffs, const CombineOuts& outs) {
  const at::ScalarType acc = check_combine(tensors, coeffs, outs);
  const at::Tensor& first = tensors[0];
  const c10::cuda::CUDAGuard guard(first.device());
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& t : tensors) inputs.push_back(contiguous_input(t));
  const at::Tensor cc = coeffs.contiguous();
  std::vector<KernelOut> ys;
  for (const at::Tensor& out : outs.tensors) ys.emplace_back(out);
  cuda::CombineParams p;
  p.batch = batch_of(first);
  p.per_sample = per_sample_of(first);
  p.num_tensors = static_cast<int>(inputs.size());
  p.num_outputs = static_cast<int>(ys.size());
  for (size_t j = 0; j < inputs.size(); ++j) p.tensors[j] = kernel_in(inputs[j]);
  p.coeffs = coeffs_in(cc);
  p.coeff_stride = coeff_row_stride(cc, row_dims(outs));
  for (size_t m = 0; m < ys.size(); ++m) p.y[m] = cuda_out(ys[m].buffer);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "diffaccel_multistep_combine_cuda",
                             [&] { check_launch(outs.op, cuda::launch_multistep_combine<scalar_t>(p, stream)); });
  for (KernelOut& y : ys) y.finish();
}

void multistep_combine_out_cuda(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& out) {
  combine_out_cuda(tensors, coeffs, single_out(out));
}
void multistep_combine_pair_out_cuda(at::TensorList tensors, const at::Tensor& coeffs, const at::Tensor& y0_out,
                                     const at::Tensor& y1_out) {
  combine_out_cuda(tensors, coeffs, pair_out(y0_out, y1_out));
}
#endif

at::Tensor empty_result(const char* op, at::TensorList tensors) {
  TORCH_CHECK_VALUE(!tensors.empty(), op, ": argument 'tensors' must hold 1 to ", kMaxCombine, " tensors, got 0");
  return at::empty(tensors[0].sizes(), tensors[0].options().dtype(combine_result_type(tensors)));
}

template <auto kOutKernel>
at::Tensor multistep_combine_functional(at::TensorList tensors, const at::Tensor& coeffs) {
  at::Tensor out = empty_result(kOp, tensors);
  kOutKernel(tensors, coeffs, out);
  return out;
}

template <auto kOutKernel>
std::tuple<at::Tensor, at::Tensor> multistep_combine_pair_functional(at::TensorList tensors, const at::Tensor& coeffs) {
  at::Tensor y0 = empty_result(kPairOp, tensors);
  at::Tensor y1 = at::empty_like(y0);
  kOutKernel(tensors, coeffs, y0, y1);
  return {y0, y1};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("multistep_combine", &multistep_combine_functional<&multistep_combine_out_cpu>);
  m.impl("multistep_combine_out", &multistep_combine_out_cpu);
  m.impl("multistep_combine_pair", &multistep_combine_pair_functional<&multistep_combine_pair_out_cpu>);
  m.impl("multistep_combine_pair_out", &multistep_combine_pair_out_cpu);
}

#ifdef DIFFACCEL_WITH_CUDA
TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("multistep_combine", &multistep_combine_functional<&multistep_combine_out_cuda>);
  m.impl("multistep_combine_out", &multistep_combine_out_cuda);
  m.impl("multistep_combine_pair", &multistep_combine_pair_functional<&multistep_combine_pair_out_cuda>);
  m.impl("multistep_combine_pair_out", &multistep_combine_pair_out_cuda);
}
#endif

}  // namespace diffaccel
