// The CUDA kernels' interface: raw device pointers, sizes and a stream, no
// torch types, so nvcc compiles csrc/cuda on a machine whose torch has no
// CUDA. csrc/torch/ checks the arguments, makes the tensors contiguous,
// allocates the small scratch buffers and calls these on the current stream.
//
// Every tensor is viewed as [batch, per_sample], contiguous. Coefficients and
// alpha are device tensors of any floating dtype, read inside the kernels (no
// host synchronization, so the ops can be captured in a CUDA graph).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "diffaccel/config.h"
#include "diffaccel/quantile.h"
#include "diffaccel/views.h"

namespace diffaccel::cuda {

struct Out {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
};

// Thresholding of a data prediction inside a kernel: clamp(v, -limit, limit) /
// divisor with limit = divisor = scales[b] (dynamic; scales written by the
// selection kernel) or limit = clip_max, divisor = 1 (clip).
struct ThresholdApply {
  bool enabled = false;
  const void* scales = nullptr;  // acc_t per sample, or null for clip
  double clip_max = 0;
};

// Dynamic thresholding's selection: per sample, the ratio-quantile of |v|
// (torch.quantile's rank and interpolation) turned into the scale by the style.
struct ThresholdSelect {
  double ratio = 0.995;
  ThresholdStyle style = ThresholdStyle::kDiffusers;
  double max_value = 1.0;
};

struct EiStepParams {
  int64_t batch = 0, per_sample = 0;
  In x, model_out, noise;
  In history[kMaxHistory];
  int num_history = 0;
  bool has_noise = false;
  In coeffs;                 // [5 + k] or [batch, 5 + k]
  int64_t coeff_stride = 0;  // 0 when one row is shared by the batch
  ThresholdApply threshold;
  Out x_next, d;
};

// As cpu::CombineArgs: y[m] = sum_j c[m][j] * tensors[j], output m's
// coefficients num_tensors entries after output m - 1's in a sample's row.
struct CombineParams {
  int64_t batch = 0, per_sample = 0;
  In tensors[kMaxCombine];
  int num_tensors = 0;
  int num_outputs = 1;
  In coeffs;
  int64_t coeff_stride = 0;
  Out y[kMaxCombineOutputs];
};

struct ThresholdParams {
  int64_t batch = 0, per_sample = 0;
  In x;
  ThresholdApply threshold;
  Out y;
};

// The generator state of an in-kernel draw: torch's PhiloxCudaState, unpacked
// on the device (under graph capture the seed and offset are read from device
// memory at replay, so each replay draws new noise).
struct PhiloxArgs {
  uint64_t seed = 0;
  uint64_t offset = 0;
  const int64_t* seed_ptr = nullptr;    // set when captured
  const int64_t* offset_ptr = nullptr;  // set when captured
  uint64_t offset_intragraph = 0;
  bool captured = false;
};

struct LangevinParams {
  int64_t batch = 0, per_sample = 0;
  In x, score;
  bool has_noise = false;  // else drawn in the kernels from philox
  In noise;
  PhiloxArgs philox;
  double snr = 0;
  In alpha;                  // 0-d or [batch]
  int64_t alpha_stride = 0;  // 0 when one alpha is shared
  bool per_sample_reduction = false;
  Out x_new, x_mean;
};

// error_norm: out[b] = sqrt(mean_i scaled_error(high, low, prev, atol, rtol)^2),
// written in acc_t.
struct ErrorNormParams {
  int64_t batch = 0, per_sample = 0;
  In high, low, prev;
  double atol = 0, rtol = 0;
  Out out;
};

// error_norm's backward: scaled_error_backward (elementwise.h) per element,
// with k[b] = dL/dE_b / (N E_b) in acc_t; each gradient in its input's dtype.
struct ErrorNormBackwardParams {
  int64_t batch = 0, per_sample = 0;
  In high, low, prev;
  const void* k = nullptr;  // acc_t per sample
  double atol = 0, rtol = 0;
  Out grad_high, grad_low, grad_prev;
};

// Dynamic thresholding's backward with the scales held fixed
// (threshold_backward_element, elementwise.h): passed (acc_t, contiguous) and
// dot[b] = sum of passed * x over the passed elements (acc_t), one launch.
struct ThresholdBackwardParams {
  int64_t batch = 0, per_sample = 0;
  In grad, x;
  const void* scale = nullptr;  // acc_t per sample
  void* passed = nullptr;
  void* dot = nullptr;
};

// Scratch sizes the caller allocates on the device (bytes).
// Dynamic thresholding's selection: the per-sample scales, then (for large
// samples) histograms and pass state; double_acc when acc_t is double.
int64_t select_scratch_bytes(int64_t batch, int64_t per_sample, bool double_acc);
int64_t langevin_scratch_bytes(int64_t batch, int64_t per_sample);
// error_norm and threshold_backward: a counter and one double per (sample, chunk).
int64_t reduction_scratch_bytes(int64_t batch, int64_t per_sample);

// acc_t is float, or double when every tensor is float64. Each returns the
// CUDA error of its launches (cudaSuccess when all went in).
// select_scratch: select_scratch_bytes(...) bytes when select is given (the
// scales are written at its start), else null.
template <typename acc_t>
cudaError_t launch_ei_step(const EiStepParams& p, const ThresholdSelect* select, void* select_scratch,
                           cudaStream_t stream);
template <typename acc_t>
cudaError_t launch_multistep_combine(const CombineParams& p, cudaStream_t stream);
template <typename acc_t>
cudaError_t launch_threshold(const ThresholdParams& p, const ThresholdSelect* select, void* select_scratch,
                             cudaStream_t stream);
// scratch: langevin_scratch_bytes(...) bytes of device memory (per-chunk
// partial sums, norms, steps, and a counter the launcher zeroes first).
template <typename acc_t>
cudaError_t launch_langevin_correct(const LangevinParams& p, void* scratch, cudaStream_t stream);
template <typename acc_t>
cudaError_t launch_error_norm(const ErrorNormParams& p, void* scratch, cudaStream_t stream);
template <typename acc_t>
cudaError_t launch_error_norm_backward(const ErrorNormBackwardParams& p, cudaStream_t stream);
// scratch: reduction_scratch_bytes(...) bytes (a counter the launcher zeroes, chunk sums).
template <typename acc_t>
cudaError_t launch_threshold_backward(const ThresholdBackwardParams& p, void* scratch, cudaStream_t stream);

}  // namespace diffaccel::cuda
