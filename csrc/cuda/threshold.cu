// diffaccel::threshold on CUDA: clip as one elementwise pass; dynamic as the
// selection pass (radix_select.cuh) then the same elementwise pass. And
// diffaccel::threshold_backward: one chunked-reduction launch
// (chunked_reduction.cuh) that writes the passed gradient as it sums.
#include "chunked_reduction.cuh"
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

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) threshold_backward_kernel(ThresholdBackwardParams p, ReductionScratch s) {
  __shared__ double buffer[kThreads];
  const BlockChunk chunk(p.per_sample);
  const acc_t scale = static_cast<const acc_t*>(p.scale)[blockIdx.y];
  acc_t* passed = static_cast<acc_t*>(p.passed);
  double sum = 0;
  for (int64_t i = chunk.begin + threadIdx.x; i < chunk.end; i += kThreads) {
    acc_t kept;
    const acc_t g = threshold_backward_element(load_one<acc_t>(p.grad.data, p.grad.dtype, i),
                                               load_one<acc_t>(p.x.data, p.x.dtype, i), scale, kept);
    passed[i] = g;
    sum += double(g) * double(kept);
  }
  sum = block_sum(sum, buffer);
  if (threadIdx.x == 0) s.partial[chunk.slot] = sum;
  if (!finished_last(s.counter, gridDim.x * gridDim.y)) return;
  acc_t* dot = static_cast<acc_t*>(p.dot);
  for (int64_t j = threadIdx.x; j < p.batch; j += kThreads)
    dot[j] = acc_t(sample_total(s.partial, j, chunk.chunks, 1, 0));
}

}  // namespace

template <typename acc_t>
cudaError_t launch_threshold_backward(const ThresholdBackwardParams& p, void* scratch, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const ReductionScratch s = reduction_scratch(scratch);
  dim3 grid;
  const cudaError_t status = start_reduction(s, p.batch, p.per_sample, stream, &grid);
  if (status != cudaSuccess) return status;
  threshold_backward_kernel<acc_t><<<grid, kThreads, 0, stream>>>(p, s);
  return cudaGetLastError();
}

template cudaError_t launch_threshold_backward<float>(const ThresholdBackwardParams&, void*, cudaStream_t);
template cudaError_t launch_threshold_backward<double>(const ThresholdBackwardParams&, void*, cudaStream_t);

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
