// Dynamic thresholding's per-sample scale on the GPU: the ratio-quantile of
// |v| over each sample by radix select on the float bits, never a sort.
//
// Magnitudes are >= 0, so their IEEE bit patterns (keys) order like the
// values. One block per sample builds a histogram of the top kDigitBits of the
// keys in shared memory, finds the bin that holds the wanted rank with a block
// scan, and repeats on the next digits of the keys in that bin: 3 passes over
// the sample for float, 6 for double. When the interpolation needs the next
// order statistic and it is not a copy of the first, one more pass takes the
// smallest key above the first. Ranks and interpolation are torch.quantile's
// (diffaccel/quantile.h); a sample holding a NaN gets a NaN scale, as in torch.
#pragma once

#include <cstdint>

#include "diffaccel/quantile.h"
#include "memory_access.cuh"

namespace diffaccel::cuda {

constexpr int kSelectThreads = 1024;
constexpr int kDigitBits = 11;
constexpr int kDigitBins = 1 << kDigitBits;  // two bins per thread

template <typename acc_t>
struct MagnitudeKey;
template <>
struct MagnitudeKey<float> {
  using type = uint32_t;
  static constexpr int kBits = 31;  // the sign bit of a magnitude is 0
  static constexpr type kInf = 0x7f800000u;
  static __device__ type of(float v) { return __float_as_uint(fabsf(v)); }
  static __device__ float value(type k) { return __uint_as_float(k); }
};
template <>
struct MagnitudeKey<double> {
  using type = unsigned long long;
  static constexpr int kBits = 63;
  static constexpr type kInf = 0x7ff0000000000000ull;
  static __device__ type of(double v) { return static_cast<type>(__double_as_longlong(fabs(v))); }
  static __device__ double value(type k) { return __longlong_as_double(static_cast<long long>(k)); }
};

// Exclusive prefix sum over the block (kSelectThreads threads); returns this
// thread's share and leaves the total in *total.
__device__ __forceinline__ unsigned int block_exclusive_scan(unsigned int v, unsigned int* total) {
  __shared__ unsigned int warp_sums[kSelectThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned int inclusive = v;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const unsigned int up = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    unsigned int w = lane < kSelectThreads / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const unsigned int up = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += up;
    }
    if (lane < kSelectThreads / 32) warp_sums[lane] = w;  // inclusive per warp
  }
  __syncthreads();
  const unsigned int before_warp = warp == 0 ? 0 : warp_sums[warp - 1];
  *total = warp_sums[kSelectThreads / 32 - 1];
  const unsigned int result = before_warp + inclusive - v;
  __syncthreads();  // warp_sums is reused by the next call
  return result;
}

// source(b, i) is element i of sample b, in acc_t. Launch: one block of
// kSelectThreads per sample; per_sample < 2^32 (checked by the caller).
template <typename acc_t, typename Source>
__global__ void __launch_bounds__(kSelectThreads)
    select_threshold_scales(Source source, int64_t per_sample, ThresholdSelect select,
                            acc_t* scales) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  __shared__ unsigned int histogram[kDigitBins];
  __shared__ unsigned int found_digit, found_before, found_count;
  __shared__ key_t smallest_above;

  const int64_t b = blockIdx.x;
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(select.ratio, per_sample);
  key_t prefix = 0;
  int prefix_bits = 0;  // how many top bits of the key are fixed
  unsigned int remaining = static_cast<unsigned int>(rank.below);  // rank among keys matching prefix
  unsigned int equal_count = 0;
  int shift = Key::kBits - kDigitBits;
  for (bool first = true;; first = false) {
    for (int i = threadIdx.x; i < kDigitBins; i += kSelectThreads) histogram[i] = 0;
    __syncthreads();
    bool saw_nan = false;
    for (int64_t i = threadIdx.x; i < per_sample; i += kSelectThreads) {
      const key_t key = Key::of(source(b, i));
      saw_nan |= key > Key::kInf;
      const bool matches = prefix_bits == 0 || (key >> (Key::kBits - prefix_bits)) == (prefix >> (Key::kBits - prefix_bits));
      if (matches) atomicAdd(&histogram[(key >> shift) & (kDigitBins - 1)], 1u);
    }
    if (first && __syncthreads_or(saw_nan)) {
      if (threadIdx.x == 0) scales[b] = acc_t(NAN);
      return;
    }
    __syncthreads();
    const unsigned int lo = histogram[2 * threadIdx.x], hi = histogram[2 * threadIdx.x + 1];
    unsigned int total;
    const unsigned int before = block_exclusive_scan(lo + hi, &total);
    if (remaining >= before && remaining < before + lo) {
      found_digit = 2 * threadIdx.x, found_before = before, found_count = lo;
    } else if (remaining >= before + lo && remaining < before + lo + hi) {
      found_digit = 2 * threadIdx.x + 1, found_before = before + lo, found_count = hi;
    }
    __syncthreads();
    prefix |= key_t(found_digit) << shift;
    prefix_bits = Key::kBits - shift;
    remaining -= found_before;
    equal_count = found_count;
    __syncthreads();  // found_* are rewritten by the next pass
    if (shift == 0) break;
    shift = shift > kDigitBits ? shift - kDigitBits : 0;
  }

  // prefix is the key of the rank.below-th smallest magnitude; remaining is its
  // rank among the equal_count copies of it.
  const int64_t at_most_below = rank.below - remaining + equal_count;  // keys <= prefix
  key_t above = prefix;
  if (rank.above != rank.below && at_most_below <= rank.above) {
    if (threadIdx.x == 0) smallest_above = ~key_t(0);
    __syncthreads();
    key_t local = ~key_t(0);
    for (int64_t i = threadIdx.x; i < per_sample; i += kSelectThreads) {
      const key_t key = Key::of(source(b, i));
      if (key > prefix && key < local) local = key;
    }
    atomicMin(&smallest_above, local);
    __syncthreads();
    above = smallest_above;
  }
  if (threadIdx.x == 0) {
    const acc_t q = lerp_like_torch(Key::value(prefix), Key::value(above), rank.weight);
    scales[b] = dynamic_threshold_scale(q, select.style, acc_t(select.max_value));
  }
}

}  // namespace diffaccel::cuda
