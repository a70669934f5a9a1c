// Shared helpers of the torch binding layer: argument checks that name the
// argument, views of tensors as the raw In/Out the CPU kernels take, and the
// contiguous staging of non-contiguous inputs and outputs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include <unistd.h>

#include <algorithm>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <string>
#include <vector>

#include "../cpu/kernels.h"

namespace diffaccel {

// Elementwise work below this many elements stays on one thread.
constexpr int64_t kParallelGrain = 32768;

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// Dtypes named as Python spells them, so C++ and Python errors read the same.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// Every op computes in float32 unless its state x is float64, and then all
// tensors must be float64: mixing float64 with 16/32-bit is refused rather
// than silently losing the precision the caller asked for.
inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType state_dtype) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": argument '", name,
                   "' must be float16, bfloat16, float32 or float64, got ", dtype_name(t.scalar_type()));
  const bool state_f64 = state_dtype == at::kDouble;
  TORCH_CHECK_TYPE((t.scalar_type() == at::kDouble) == state_f64, op, ": argument '", name, "' has dtype ",
                   dtype_name(t.scalar_type()), " but the state is ", dtype_name(state_dtype),
                   "; float64 cannot be mixed with 16/32-bit tensors");
}

inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, const char* x_name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": argument '", name, "' is on ", t.device(), " but '", x_name,
                    "' is on ", x.device());
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": argument '", name, "' must have shape ", shape_str(x), " like '",
                    x_name, "', got ", shape_str(t));
}

inline void check_out(const char* op, const char* name, const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(out.device() == x.device(), op, ": argument '", name, "' is on ", out.device(), " but must be on ",
                    x.device());
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), op, ": argument '", name, "' must have shape ", shape_str(x), ", got ",
                    shape_str(out));
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), op, ": argument '", name, "' must have dtype ",
                   dtype_name(x.scalar_type()), ", got ", dtype_name(out.scalar_type()));
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes, op, ": argument '", name,
                    "' has elements that share memory");
}

// An output may be exactly one of the inputs (in place) but may not overlap
// any of them partially.
inline void check_no_partial_overlap(const char* op, const char* name, const at::Tensor& out, const at::Tensor& in,
                                     const char* in_name) {
  TORCH_CHECK_VALUE(at::get_overlap_status(out, in) != at::MemOverlapStatus::Partial, op, ": argument '", name,
                    "' partially overlaps '", in_name,
                    "'; an output may be the very same tensor as an input, or not overlap it");
}

// Two outputs of one op must be distinct memory. (get_overlap_status answers
// TooHard for non-dense views; those are not flagged.)
inline bool outputs_overlap(const at::Tensor& a, const at::Tensor& b) {
  const at::MemOverlapStatus status = at::get_overlap_status(a, b);
  return status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
}

// Whether none of the outputs shares memory with any of the inputs (so that a
// kernel may write an output and later write it again from the same inputs).
inline bool outputs_apart_from_inputs(const std::vector<const at::Tensor*>& outputs,
                                      const std::vector<const at::Tensor*>& inputs) {
  for (const at::Tensor* out : outputs) {
    for (const at::Tensor* in : inputs) {
      if (at::get_overlap_status(*out, *in) != at::MemOverlapStatus::No) return false;
    }
  }
  return true;
}

// Coefficients: shape [n] (shared by the batch) or [batch, n], on x's device.
inline void check_coeffs(const char* op, const at::Tensor& coeffs, const at::Tensor& x, int64_t n, const char* layout) {
  TORCH_CHECK_VALUE(coeffs.device() == x.device(), op, ": argument 'coeffs' is on ", coeffs.device(),
                    " but the data is on ", x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(coeffs.scalar_type()), op, ": argument 'coeffs' must be a floating tensor, got ",
                   dtype_name(coeffs.scalar_type()));
  const bool shared = coeffs.dim() == 1 && coeffs.size(0) == n;
  const bool per_sample = coeffs.dim() == 2 && coeffs.size(0) == x.size(0) && coeffs.size(1) == n;
  TORCH_CHECK_VALUE(shared || per_sample, op, ": argument 'coeffs' must have shape [", n, "] or [", x.size(0), ", ", n,
                    "] (", layout, "), got ", shape_str(coeffs));
}

inline cpu::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cpu::DType::kFloat16;
    case at::kBFloat16: return cpu::DType::kBFloat16;
    case at::kDouble: return cpu::DType::kFloat64;
    default: return cpu::DType::kFloat32;
  }
}

// Inputs are read through contiguous views; a non-contiguous input is copied once.
inline at::Tensor contiguous_input(const at::Tensor& t) { return t.contiguous(); }
inline cpu::In kernel_in(const at::Tensor& contiguous) {
  return {contiguous.data_ptr(), kernel_dtype(contiguous.scalar_type())};
}

// Whether an op touching this many bytes in all is larger than the last-level
// cache, so its outputs are best written with streaming stores (measured on the
// 2-core dev machine: 16 MiB tensors, ei_step 2M row, about 1.8x faster; 1 MiB
// tensors about 1.2x slower, since the next op would have read them from cache).
// The cache size is capped at 32 MiB because virtual machines report the
// host's total L3 (320 MiB on the dev machine) rather than the slice one
// core's data actually shares.
inline bool exceeds_last_level_cache(int64_t bytes) {
  static const int64_t llc = [] {
    constexpr int64_t kCap = int64_t(32) << 20;
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return l3 > 0 && int64_t(l3) < kCap ? int64_t(l3) : kCap;
  }();
  return bytes > llc;
}

inline int64_t total_bytes(std::initializer_list<const at::Tensor*> tensors) {
  int64_t bytes = 0;
  for (const at::Tensor* t : tensors) bytes += t->numel() * int64_t(t->element_size());
  return bytes;
}

// An output the kernel writes: the caller's tensor when it is contiguous, else
// a contiguous buffer copied back by finish().
struct KernelOut {
  at::Tensor target;
  at::Tensor buffer;
  explicit KernelOut(const at::Tensor& out)
      : target(out), buffer(out.is_contiguous() ? out : at::empty_like(out, at::MemoryFormat::Contiguous)) {}
  // streaming: the op's whole footprint exceeds the last-level cache.
  cpu::Out view(bool streaming) const { return {buffer.data_ptr(), kernel_dtype(buffer.scalar_type()), streaming}; }
  void finish() {
    if (!buffer.is_same(target)) target.copy_(buffer);
  }
};

inline int64_t batch_of(const at::Tensor& x) { return x.dim() == 0 ? 1 : x.size(0); }
inline int64_t per_sample_of(const at::Tensor& x) {
  const int64_t b = batch_of(x);
  return b == 0 ? 0 : x.numel() / b;
}

// A floating [batch] tensor (per-sample values) on x's device.
inline void check_per_sample_vector(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                                    const char* x_name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": argument '", name, "' is on ", t.device(), " but '", x_name,
                    "' is on ", x.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch_of(x), op, ": argument '", name, "' must have shape [",
                    batch_of(x), "], got ", shape_str(t));
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": argument '", name, "' must be a floating tensor, got ",
                   dtype_name(t.scalar_type()));
}

// The distance between samples' coefficient rows in a contiguous table whose
// row has row_dims dimensions: 0 when the table is one row shared by the batch.
inline int64_t coeff_row_stride(const at::Tensor& coeffs, int64_t row_dims) {
  if (coeffs.dim() <= row_dims) return 0;
  int64_t stride = 1;
  for (int64_t d = 1; d < coeffs.dim(); ++d) stride *= coeffs.size(d);
  return stride;
}

// Coefficients read on the host into the compute type (a few dozen values, so
// no tensor is allocated for them), with the row stride the kernels take (0
// when one row is shared by the batch). CPU tensors only.
template <typename acc_t>
struct CoeffTable {
  std::vector<acc_t> values;
  int64_t stride;
  // row_dims: the dimensions of one row (1 for [n] / [B, n], 2 for [2, n] / [B, 2, n]).
  explicit CoeffTable(const at::Tensor& coeffs, int64_t row_dims = 1)
      : values(coeffs.numel()), stride(coeff_row_stride(coeffs, row_dims)) {
    const at::Tensor dense = coeffs.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "diffaccel_coeffs", [&] {
      const scalar_t* p = dense.data_ptr<scalar_t>();
      for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<acc_t>(p[i]);
    });
  }
};

inline at::ScalarType acc_type_of(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Runs fn(begin, end) over [0, total) on the intra-op thread pool.
template <typename Fn>
inline void parallel_elements(int64_t total, Fn&& fn) {
  at::parallel_for(0, total, kParallelGrain, fn);
}
// Per-sample work (selection, norms) gets one sample per task.
template <typename Fn>
inline void parallel_samples(int64_t batch, Fn&& fn) {
  at::parallel_for(0, batch, 1, fn);
}

// Whether per-sample work (a selection, then that sample's elementwise pass)
// runs sample by sample: when there is a sample for every thread, or when the
// samples are too small for splitting their elementwise pass across threads
// to pay for waking them (a pass over 32768 float32 elements takes a few
// microseconds, about what a parallel region costs); else the selections run
// per sample and the elementwise pass is split by elements. (The results are
// the same bits either way.)
constexpr int64_t kSplitSampleMin = 32768;
inline bool samples_keep_threads_busy(int64_t batch, int64_t per_sample) {
  return batch >= at::get_num_threads() || per_sample < kSplitSampleMin;
}

// Per-sample totals of reductions over cpu::kNormChunk-element chunks:
// chunks(r, partial, chunk_begin, chunk_end) fills partial[c] of reduction r
// (0 <= r < reductions) for chunks flat over the batch. All reductions run in
// one parallel pass, chunk c of every reduction going to the same thread.
// Each sample's chunks are then added in order, so the totals
// (totals[r * batch + b]) are the same bits whatever the thread count.
inline std::vector<double> add_chunk_partials(const std::vector<double>& partial, int64_t totals, int64_t per_sample) {
  const int64_t chunks_per_sample = cpu::norm_chunks_of(per_sample);
  std::vector<double> result(totals, 0.0);
  for (int64_t t = 0; t < totals; ++t) {
    for (int64_t c = 0; c < chunks_per_sample; ++c) result[t] += partial[t * chunks_per_sample + c];
  }
  return result;
}

template <typename Chunks>
std::vector<double> per_sample_totals(int64_t reductions, int64_t batch, int64_t per_sample, Chunks&& chunks) {
  const int64_t per_reduction = batch * cpu::norm_chunks_of(per_sample);
  std::vector<double> partial(reductions * per_reduction);
  at::parallel_for(0, per_reduction, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < reductions; ++r) chunks(r, partial.data() + r * per_reduction, c0, c1);
  });
  return add_chunk_partials(partial, reductions * batch, per_sample);
}

// Per-sample totals as per_sample_totals computes them (the same bits), then
// an elementwise pass that needs them, in one parallel region: each thread
// sums its chunks, the threads meet at a barrier, one turns the totals into
// what the pass reads (prepare(totals)), and each thread then runs
// pass(begin, end) over the elements of the chunks it summed. One fork and
// join instead of two (langevin_correct: 0.5-1.5 us less a call on the
// 2-core dev VM). Without OpenMP, or inside another parallel region, the
// two passes run one after the other. prepare and pass must not throw.
template <typename Chunks, typename Prepare, typename Pass>
void per_sample_totals_then_pass(int64_t reductions, int64_t batch, int64_t per_sample, Chunks&& chunks,
                                 Prepare&& prepare, Pass&& pass) {
  const int64_t total = batch * per_sample;
#if AT_PARALLEL_OPENMP && defined(_OPENMP)
  const int64_t per_reduction = batch * cpu::norm_chunks_of(per_sample);
  // As parallel_elements splits the pass: a thread for every kParallelGrain elements.
  const int64_t threads =
      at::in_parallel_region()
          ? 1
          : std::min<int64_t>({at::get_num_threads(), (total + kParallelGrain - 1) / kParallelGrain, per_reduction});
  if (threads > 1) {
    std::vector<double> partial(reductions * per_reduction);
#pragma omp parallel num_threads(threads)
    {
      const int64_t thread = omp_get_thread_num(), team = omp_get_num_threads();
      const int64_t c0 = per_reduction * thread / team, c1 = per_reduction * (thread + 1) / team;
      for (int64_t r = 0; r < reductions; ++r) chunks(r, partial.data() + r * per_reduction, c0, c1);
#pragma omp barrier
#pragma omp single
      prepare(add_chunk_partials(partial, reductions * batch, per_sample));
      // (the end of single waits for prepare)
      pass(cpu::norm_chunk_start(c0, per_sample), cpu::norm_chunk_start(c1, per_sample));
    }
    return;
  }
#endif
  prepare(per_sample_totals(reductions, batch, per_sample, chunks));
  parallel_elements(total, pass);
}

}  // namespace diffaccel
