// Loads and stores of the CUDA kernels: any floating dtype, converted to the
// compute type acc_t, one element at a time or as a pack of kPack elements
// moved with 16-byte vector accesses. The dtype is a run-time value that is
// the same for every thread, so its switch costs a uniform branch, not a
// divergent one, and mixed dtypes (bf16 model output, fp32 state) need no
// separate kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "launchers.h"

namespace diffaccel::cuda {

// Elements per vector step: 16 bytes of a 16-bit tensor, two 16-byte accesses
// of a float32 one, four of a float64 one.
constexpr int kPack = 8;
constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t load_one(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat16: return acc_t(__half2float(static_cast<const __half*>(p)[i]));
    case DType::kBFloat16: return acc_t(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    case DType::kFloat32: return acc_t(static_cast<const float*>(p)[i]);
    default: return acc_t(static_cast<const double*>(p)[i]);
  }
}

template <typename acc_t>
__device__ __forceinline__ void store_one(void* p, DType t, int64_t i, acc_t v) {
  switch (t) {
    case DType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(float(v)); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(float(v)); break;
    case DType::kFloat32: static_cast<float*>(p)[i] = float(v); break;
    default: static_cast<double*>(p)[i] = double(v); break;
  }
}

// kPack elements from i (a multiple of kPack; the pointer 16-byte aligned).
template <typename acc_t>
__device__ __forceinline__ void load_pack(const void* p, DType t, int64_t i, acc_t* v) {
  switch (t) {
    case DType::kFloat16: {
      const uint4 raw = static_cast<const uint4*>(p)[i / kPack];
      const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
      for (int e = 0; e < kPack; ++e) v[e] = acc_t(__half2float(h[e]));
      break;
    }
    case DType::kBFloat16: {
      const uint4 raw = static_cast<const uint4*>(p)[i / kPack];
      const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
      for (int e = 0; e < kPack; ++e) v[e] = acc_t(__bfloat162float(h[e]));
      break;
    }
    case DType::kFloat32: {
      const float4* q = static_cast<const float4*>(p) + i / 4;
      const float4 a = q[0], b = q[1];
      v[0] = acc_t(a.x), v[1] = acc_t(a.y), v[2] = acc_t(a.z), v[3] = acc_t(a.w);
      v[4] = acc_t(b.x), v[5] = acc_t(b.y), v[6] = acc_t(b.z), v[7] = acc_t(b.w);
      break;
    }
    default: {
      const double2* q = static_cast<const double2*>(p) + i / 2;
#pragma unroll
      for (int e = 0; e < kPack / 2; ++e) {
        const double2 a = q[e];
        v[2 * e] = acc_t(a.x), v[2 * e + 1] = acc_t(a.y);
      }
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ void store_pack(void* p, DType t, int64_t i, const acc_t* v) {
  switch (t) {
    case DType::kFloat16: {
      uint4 raw;
      __half* h = reinterpret_cast<__half*>(&raw);
#pragma unroll
      for (int e = 0; e < kPack; ++e) h[e] = __float2half_rn(float(v[e]));
      static_cast<uint4*>(p)[i / kPack] = raw;
      break;
    }
    case DType::kBFloat16: {
      uint4 raw;
      __nv_bfloat16* h = reinterpret_cast<__nv_bfloat16*>(&raw);
#pragma unroll
      for (int e = 0; e < kPack; ++e) h[e] = __float2bfloat16_rn(float(v[e]));
      static_cast<uint4*>(p)[i / kPack] = raw;
      break;
    }
    case DType::kFloat32: {
      float4* q = static_cast<float4*>(p) + i / 4;
      q[0] = make_float4(float(v[0]), float(v[1]), float(v[2]), float(v[3]));
      q[1] = make_float4(float(v[4]), float(v[5]), float(v[6]), float(v[7]));
      break;
    }
    default: {
      double2* q = static_cast<double2*>(p) + i / 2;
#pragma unroll
      for (int e = 0; e < kPack / 2; ++e) q[e] = make_double2(double(v[2 * e]), double(v[2 * e + 1]));
    }
  }
}

// W elements from i: W == kPack uses vector accesses, W == 1 a scalar one.
template <int W, typename acc_t>
__device__ __forceinline__ void load_elements(In in, int64_t i, acc_t* v) {
  if constexpr (W == kPack) load_pack(in.data, in.dtype, i, v);
  else v[0] = load_one<acc_t>(in.data, in.dtype, i);
}
template <int W, typename acc_t>
__device__ __forceinline__ void store_elements(Out out, int64_t i, const acc_t* v) {
  if constexpr (W == kPack) store_pack(out.data, out.dtype, i, v);
  else store_one(out.data, out.dtype, i, v[0]);
}

template <int W>
struct Width {
  static constexpr int value = W;
};

// Runs body(Width<W>{}, i) over [0, n) with a grid-stride loop: packs of
// kPack elements when `vectorized` (every pointer 16-byte aligned, and no pack
// straddles two samples whose rows differ), then the n % kPack tail one by
// one; everything one by one otherwise.
template <typename Body>
__device__ __forceinline__ void for_each_element(int64_t n, bool vectorized, Body&& body) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if (vectorized) {
    const int64_t packs = n / kPack;
    for (int64_t p = first; p < packs; p += stride) body(Width<kPack>{}, p * kPack);
    scalar_begin = packs * kPack;
  }
  for (int64_t i = scalar_begin + first; i < n; i += stride) body(Width<1>{}, i);
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Enough blocks of kThreads to cover `units` work items, capped at a few
// waves of the device so the grid-stride loop does the rest.
int grid_size(int64_t units);

}  // namespace diffaccel::cuda

namespace diffaccel::cuda {

// n coefficients of sample b's row (row stride 0: one row shared by the batch).
template <typename acc_t, int N>
__device__ __forceinline__ void load_row(In coeffs, int64_t stride, int64_t b, acc_t* row) {
#pragma unroll
  for (int j = 0; j < N; ++j) row[j] = load_one<acc_t>(coeffs.data, coeffs.dtype, b * stride + j);
}

// The n coefficients an element of sample b uses: its own row when every
// sample has one (per_sample_rows), else the batch's row, which the thread
// loaded once into `shared`. Copied with compile-time indices so that both
// arrays stay in registers: a pointer chosen at run time between two register
// arrays would put both in local memory and read them back for every element.
template <typename acc_t, int N>
__device__ __forceinline__ void element_row(In coeffs, int64_t stride, int64_t b, bool per_sample_rows,
                                            const acc_t* shared, acc_t* row) {
  if (per_sample_rows) {
    load_row<acc_t, N>(coeffs, stride, b, row);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) row[j] = shared[j];
  }
}

// (limit, divisor) of threshold_element for sample b.
template <typename acc_t>
__device__ __forceinline__ void threshold_bounds(const ThresholdApply& t, int64_t b, acc_t* limit, acc_t* divisor) {
  if (t.scales) {
    *limit = *divisor = static_cast<const acc_t*>(t.scales)[b];
  } else {
    *limit = acc_t(t.clip_max);
    *divisor = acc_t(1);
  }
}

// Whether the packs of kPack elements may be used: every pointer 16-byte
// aligned, and, where per-sample values are read, no pack spans two samples.
inline bool can_vectorize(std::initializer_list<const void*> pointers, bool per_sample_values, int64_t per_sample) {
  for (const void* p : pointers) {
    if (p && !aligned16(p)) return false;
  }
  return !per_sample_values || per_sample % kPack == 0;
}

}  // namespace diffaccel::cuda
