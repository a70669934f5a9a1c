// The CPU kernels' interface: raw pointers and sizes, no torch types, so the
// kernels compile and test like the CUDA launchers. csrc/torch/ checks the
// arguments, makes the tensors contiguous, and splits the work with
// at::parallel_for over the [begin, end) ranges these functions take.
//
// Every tensor is viewed as [batch, per_sample], contiguous: element i of
// sample b sits at b * per_sample + i.
#pragma once

#include <cstdint>

#include "diffaccel/config.h"
#include "diffaccel/quantile.h"
#include "diffaccel/views.h"

namespace diffaccel::cpu {

using diffaccel::DType;
using diffaccel::In;

struct Out {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  // Write around the cache (non-temporal stores): set for data larger than the
  // last-level cache, where a normal store would first read the line it writes.
  bool streaming = false;
};

// What a pinned pass of dynamic thresholding (ScalePin, diffaccel/quantile.h;
// selection.h: dynamic_threshold_samples) counts while it thresholds with the
// pin's scale: the magnitudes off the pin's side, and whether any is NaN or
// infinite (which disproves every pin).
struct PinCount {
  int64_t off_side = 0, nonfinite = 0;
  template <typename acc_t>
  bool confirms(const ScalePin<acc_t>& pin, const QuantileRank<acc_t>& rank, int64_t n) const {
    return nonfinite == 0 && off_side <= pin.allowed_off_side(rank, n);
  }
};
// A pass counts for a pin when pin_count is set (limit and divisor then point
// at pin->scale, threshold_stride 0).
template <typename acc_t>
struct PinCounting {
  const ScalePin<acc_t>* pin = nullptr;
  PinCount* pin_count = nullptr;
};

// acc_t is float when every tensor is 16- or 32-bit, double when all are float64.
template <typename acc_t>
struct EiStepArgs {
  int64_t per_sample = 0;
  In x, model_out, noise;
  In history[kMaxHistory];
  int num_history = 0;
  bool has_noise = false;
  const acc_t* coeffs = nullptr;  // row b starts at coeffs + b * coeff_stride
  int64_t coeff_stride = 0;       // 0 when one row is shared by the batch
  // Thresholding of d: clamp(d, -limit[b], limit[b]) / divisor[b].
  bool has_threshold = false;
  const acc_t* limit = nullptr;
  const acc_t* divisor = nullptr;
  int64_t threshold_stride = 0;  // 0 for clip (one limit), 1 for per-sample scales
  PinCounting<acc_t> counting;   // counts |d| before thresholding
  Out x_next, d;
};

// y[m] = sum_j c[m][j] * tensors[j] for m < num_outputs; sample b's
// coefficients start at coeffs + b * coeff_stride, output m's row num_tensors
// entries after output m - 1's.
template <typename acc_t>
struct CombineArgs {
  int64_t per_sample = 0;
  In tensors[kMaxCombine];
  int num_tensors = 0;
  int num_outputs = 1;
  const acc_t* coeffs = nullptr;
  int64_t coeff_stride = 0;
  Out y[kMaxCombineOutputs];
};

template <typename acc_t>
struct ThresholdArgs {
  int64_t per_sample = 0;
  In x;
  const acc_t* limit = nullptr;
  const acc_t* divisor = nullptr;
  int64_t threshold_stride = 0;
  PinCounting<acc_t> counting;
  Out y;
};

template <typename acc_t>
struct LangevinArgs {
  int64_t per_sample = 0;
  In x, score, noise;
  const acc_t* step = nullptr;         // per sample
  const acc_t* noise_scale = nullptr;  // per sample, sqrt(2 * step)
  Out x_new, x_mean;
};

// Elementwise passes over the flat element range [begin, end) of batch * per_sample.
void ei_step_range(const EiStepArgs<float>& args, int64_t begin, int64_t end);
void ei_step_range(const EiStepArgs<double>& args, int64_t begin, int64_t end);
void multistep_combine_range(const CombineArgs<float>& args, int64_t begin, int64_t end);
void multistep_combine_range(const CombineArgs<double>& args, int64_t begin, int64_t end);
void threshold_range(const ThresholdArgs<float>& args, int64_t begin, int64_t end);
void threshold_range(const ThresholdArgs<double>& args, int64_t begin, int64_t end);
void langevin_range(const LangevinArgs<float>& args, int64_t begin, int64_t end);
void langevin_range(const LangevinArgs<double>& args, int64_t begin, int64_t end);

// Dynamic thresholding: scale[b] for samples [sample_begin, sample_end), by
// selection (selection.h); with apply, each sample's elementwise pass
// (threshold_range / ei_step_range) follows its selection at once, while the
// sample is still in cache. ei_step thresholds d = c_x * x + c_m * m, so its
// scales come from d.
// speculate: no output shares memory with an input, so a sample's pass may run
// with a pinned scale before its quantile is known, and run again should the
// pin not hold (selection.h: dynamic_threshold_samples).
struct DynamicThreshold {
  double ratio;
  ThresholdStyle style;
  double max_value;
  bool speculate = false;
};
void ei_step_dynamic_samples(const EiStepArgs<float>& args, const DynamicThreshold& t, float* scale,
                             int64_t sample_begin, int64_t sample_end, bool apply);
void ei_step_dynamic_samples(const EiStepArgs<double>& args, const DynamicThreshold& t, double* scale,
                             int64_t sample_begin, int64_t sample_end, bool apply);
void threshold_dynamic_samples(const ThresholdArgs<float>& args, const DynamicThreshold& t, float* scale,
                               int64_t sample_begin, int64_t sample_end, bool apply);
void threshold_dynamic_samples(const ThresholdArgs<double>& args, const DynamicThreshold& t, double* scale,
                               int64_t sample_begin, int64_t sample_end, bool apply);

// Sums of squares (blocks.h add_squares: float runs added in double, or
// double) over fixed chunks of kNormChunk elements of each sample:
// partial[b * chunks_per_sample + c]. Chunks [chunk_begin, chunk_end) are
// flat over the batch. The chunking does not depend on the thread count, so
// the norms are the same bits however the work is split.
constexpr int64_t kNormChunk = 4096;
inline int64_t norm_chunks_of(int64_t per_sample) { return (per_sample + kNormChunk - 1) / kNormChunk; }
// The flat index of chunk c's first element (c == batch * chunks: the end).
inline int64_t norm_chunk_start(int64_t c, int64_t per_sample) {
  const int64_t chunks = norm_chunks_of(per_sample);
  return (c / chunks) * per_sample + (c % chunks) * kNormChunk;
}
void sum_squares_chunks(In t, int64_t per_sample, double* partial, int64_t chunk_begin, int64_t chunk_end);

// error_norm, per chunk as sum_squares_chunks: the sum over the chunk of
// scaled_error(high, low, prev, atol, rtol)^2 (elementwise.h).
template <typename acc_t>
struct ErrorNormArgs {
  int64_t per_sample = 0;
  In high, low, prev;
  acc_t atol = 0, rtol = 0;
};
void error_sum_squares_chunks(const ErrorNormArgs<float>& args, double* partial, int64_t chunk_begin,
                              int64_t chunk_end);
void error_sum_squares_chunks(const ErrorNormArgs<double>& args, double* partial, int64_t chunk_begin,
                              int64_t chunk_end);

// error_norm's backward (scaled_error_backward, elementwise.h) over the flat
// range [begin, end): k[b] = dL/dE_b / (N E_b) per sample.
template <typename acc_t>
struct ErrorNormBackwardArgs {
  int64_t per_sample = 0;
  In high, low, prev;
  const acc_t* k = nullptr;
  acc_t atol = 0, rtol = 0;
  Out grad_high, grad_low, grad_prev;
};
void error_norm_backward_range(const ErrorNormBackwardArgs<float>& args, int64_t begin, int64_t end);
void error_norm_backward_range(const ErrorNormBackwardArgs<double>& args, int64_t begin, int64_t end);

// Dynamic thresholding's backward with the scales held fixed
// (threshold_backward_element, elementwise.h), per chunk as sum_squares_chunks:
// passed = g / s where |x| <= s, else 0, written in acc_t, and partial[c] = the
// chunk's sum of passed * x over those elements, in double.
template <typename acc_t>
struct ThresholdBackwardArgs {
  int64_t per_sample = 0;
  In grad, x;
  const acc_t* scale = nullptr;  // per sample
  acc_t* passed = nullptr;       // contiguous [batch, per_sample]
};
void threshold_backward_chunks(const ThresholdBackwardArgs<float>& args, double* partial, int64_t chunk_begin,
                               int64_t chunk_end);
void threshold_backward_chunks(const ThresholdBackwardArgs<double>& args, double* partial, int64_t chunk_begin,
                               int64_t chunk_end);

// The ISA level the multiversioned kernels run at on this CPU:
// "avx512f", "avx2" or "baseline".
const char* cpu_isa_level();

}  // namespace diffaccel::cpu
