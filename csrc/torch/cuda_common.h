// Helpers of the CUDA bindings: the current stream, device guard, the raw
// views csrc/cuda/launchers.h takes, and the error check after a launch.
// Compiled only when the extension is built with CUDA (DIFFACCEL_WITH_CUDA).
#pragma once

#ifdef DIFFACCEL_WITH_CUDA

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/launchers.h"
#include "common.h"

namespace diffaccel {

inline cuda::Out cuda_out(const at::Tensor& contiguous) {
  return {contiguous.data_ptr(), kernel_dtype(contiguous.scalar_type())};
}

// Coefficient rows stay on the device in their own dtype: the kernels read them,
// so no value is copied to the host (no synchronization; graph-capturable).
inline In coeffs_in(const at::Tensor& coeffs) { return kernel_in(coeffs); }

// Device scratch of dynamic thresholding's selection (the per-sample scales,
// then the multi-block passes' histograms and state for large samples).
inline at::Tensor select_scratch(const at::Tensor& x, int64_t batch, int64_t per_sample) {
  const bool double_acc = acc_type_of(x) == at::kDouble;
  return at::empty({cuda::select_scratch_bytes(batch, per_sample, double_acc)}, x.options().dtype(at::kByte));
}

inline void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

// One block per sample in the selection and norm kernels: the grid's y
// dimension and the 32-bit ranks bound the batch and the sample size.
inline void check_cuda_sizes(const char* op, int64_t batch, int64_t per_sample) {
  TORCH_CHECK_VALUE(batch <= 65535, op, ": batches of more than 65535 samples are not supported on CUDA, got ", batch);
  TORCH_CHECK_VALUE(per_sample < (int64_t(1) << 32), op,
                    ": samples of 2^32 elements or more are not supported on CUDA, got ", per_sample);
}

}  // namespace diffaccel

#endif  // DIFFACCEL_WITH_CUDA
