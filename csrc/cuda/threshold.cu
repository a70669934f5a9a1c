// diffaccel::threshold on CUDA: clip as one elementwise pass; dynamic as the
// selection pass (radix_select.cuh) then the same elementwise pass.
#include "diffaccel/elementwise.h"
#include "launchers.h"
#include "memory_access.cuh"
#include "radix_select.cuh"

namespace diffaccel::cuda {
namespace {

template <typename acc_t>
struct Magnitudes {
  In x;
  int64_t per_sample;
  __device__ acc_t operator()(int64_t b, int64_t i) const {
    return load_one<acc_t>(x.data, x.dtype, b * per_sample + i);
  }
};

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) threshold_kernel(ThresholdParams p, bool vectorized) {
  const bool per_sample_bounds = p.threshold.scales != nullptr;
  acc_t limit, divisor;
  threshold_bounds(p.threshold, 0, &limit, &divisor);
  for_each_element(p.batch * p.per_sample, vectorized, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    acc_t lim = limit, div = divisor;
    if (per_sample_bounds) threshold_bounds(p.threshold, i / p.per_sample, &lim, &div);
    acc_t v[W];
    load_elements<W>(p.x, i, v);
#pragma unroll
    for (int e = 0; e < W; ++e) v[e] = threshold_element(v[e], lim, div);
    store_elements<W>(p.y, i, v);
  });
}

}  // namespace

template <typename acc_t>
cudaError_t launch_threshold(const ThresholdParams& params, const ThresholdSelect* select, void* select_scratch,
                             cudaStream_t stream) {
  ThresholdParams p = params;
  const int64_t n = p.batch * p.per_sample;
  if (n == 0) return cudaSuccess;
  if (select) {
    const cudaError_t status = launch_select<acc_t>(Magnitudes<acc_t>{p.x, p.per_sample}, p.batch, p.per_sample,
                                                    *select, select_scratch, stream);
    if (status != cudaSuccess) return status;
    p.threshold.scales = select_scratch;
  }
  p.threshold.enabled = true;
  const bool vectorized = can_vectorize({p.x.data, p.y.data}, p.threshold.scales != nullptr, p.per_sample);
  const int grid = grid_size(vectorized ? (n + kPack - 1) / kPack : n);
  threshold_kernel<acc_t><<<grid, kThreads, 0, stream>>>(p, vectorized);
  return cudaGetLastError();
}

int64_t select_scratch_bytes(int64_t batch, int64_t per_sample, bool double_acc) {
  return double_acc ? select_scratch_bytes_of<double>(batch, per_sample)
                    : select_scratch_bytes_of<float>(batch, per_sample);
}

template cudaError_t launch_threshold<float>(const ThresholdParams&, const ThresholdSelect*, void*, cudaStream_t);
template cudaError_t launch_threshold<double>(const ThresholdParams&, const ThresholdSelect*, void*, cudaStream_t);

}  // namespace diffaccel::cuda
