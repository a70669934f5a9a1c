// Portability macros for the per-element math shared by the CPU and CUDA
// kernels. This header, like everything in csrc/include/diffaccel, includes
// no torch header, so nvcc can compile it on a machine whose torch has no CUDA.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DA_HOST_DEVICE __host__ __device__
#define DA_INLINE __forceinline__
#define DA_UNROLL _Pragma("unroll")
#else
#define DA_HOST_DEVICE
#define DA_INLINE inline __attribute__((always_inline))
#define DA_UNROLL _Pragma("GCC unroll 8")
#endif

namespace diffaccel {

// Histories longer than this do not occur in any supported solver
// (LMS / Adams order 4 and DPM-Solver++(3M) need at most 3 earlier tensors);
// a fixed bound lets the kernels unroll over the history at compile time.
constexpr int kMaxHistory = 4;
// multistep_combine takes between 1 and this many tensors.
constexpr int kMaxCombine = 8;
// multistep_combine writes one output; multistep_combine_pair two sums of the
// same tensors in the same pass.
constexpr int kMaxCombineOutputs = 2;
// Leading entries of an ei_step coefficient row: c_x, c_m, a, b_0; the row
// then holds b_1..b_k and ends with s, so its length is kEiFixedCoeffs + 1 + k.
constexpr int kEiFixedCoeffs = 4;

}  // namespace diffaccel
