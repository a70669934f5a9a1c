// diffaccel::error_norm on CUDA: one launch (after a 4-byte memset). Blocks of
// (chunk, sample) sum the squared scaled errors in double, reading 16-byte
// packs where every pointer is aligned and samples hold whole packs (the H200
// run of 2026-11-27 measured the one-element-at-a-time loop at 51% of the copy
// bandwidth fp32, 16% bf16); the last block to finish adds each sample's chunks
// in order and writes the RMS. Its backward pass: one elementwise launch.
#include <cmath>

#include "chunked_reduction.cuh"
#include "diffaccel/elementwise.h"
#include "launchers.h"
#include "memory_access.cuh"

namespace diffaccel::cuda {
namespace {

static_assert(kNormChunk % kPack == 0, "the packs must not straddle two chunks");

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) error_norm_kernel(ErrorNormParams p, ReductionScratch s, bool vectorized) {
  __shared__ double buffer[kThreads];
  const BlockChunk chunk(p.per_sample);
  const acc_t atol = acc_t(p.atol), rtol = acc_t(p.rtol);
  double sum = 0;
  if (vectorized) {  // the chunk's bounds are multiples of kPack: per_sample is
    for (int64_t i = chunk.begin + int64_t(kPack) * threadIdx.x; i < chunk.end; i += int64_t(kPack) * kThreads) {
      acc_t high[kPack], low[kPack], prev[kPack];
      load_pack(p.high.data, p.high.dtype, i, high);
      load_pack(p.low.data, p.low.dtype, i, low);
      load_pack(p.prev.data, p.prev.dtype, i, prev);
#pragma unroll
      for (int e = 0; e < kPack; ++e) {
        const acc_t err = scaled_error(high[e], low[e], prev[e], atol, rtol);
        sum += double(err) * double(err);
      }
    }
  } else {
    for (int64_t i = chunk.begin + threadIdx.x; i < chunk.end; i += kThreads) {
      const acc_t e =
          scaled_error(load_one<acc_t>(p.high.data, p.high.dtype, i), load_one<acc_t>(p.low.data, p.low.dtype, i),
                       load_one<acc_t>(p.prev.data, p.prev.dtype, i), atol, rtol);
      sum += double(e) * double(e);
    }
  }
  sum = block_sum(sum, buffer);
  if (threadIdx.x == 0) s.partial[chunk.slot] = sum;
  if (!finished_last(s.counter, gridDim.x * gridDim.y)) return;
  for (int64_t j = threadIdx.x; j < p.batch; j += kThreads) {
    const double rms = sqrt(sample_total(s.partial, j, chunk.chunks, 1, 0) / double(p.per_sample));
    store_one(p.out.data, p.out.dtype, j, acc_t(rms));
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) error_norm_backward_kernel(ErrorNormBackwardParams p, bool vectorized) {
  const acc_t atol = acc_t(p.atol), rtol = acc_t(p.rtol);
  const acc_t* k = static_cast<const acc_t*>(p.k);
  for_each_element(p.batch * p.per_sample, vectorized, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const acc_t factor = k[i / p.per_sample];
    acc_t high[W], low[W], prev[W], grad_high[W], grad_low[W], grad_prev[W];
    load_elements<W>(p.high, i, high);
    load_elements<W>(p.low, i, low);
    load_elements<W>(p.prev, i, prev);
#pragma unroll
    for (int e = 0; e < W; ++e) {
      scaled_error_backward(factor, high[e], low[e], prev[e], atol, rtol, grad_high[e], grad_low[e], grad_prev[e]);
    }
    store_elements<W>(p.grad_high, i, grad_high);
    store_elements<W>(p.grad_low, i, grad_low);
    store_elements<W>(p.grad_prev, i, grad_prev);
  });
}

}  // namespace

// (An empty sample's block writes a zero sum: its RMS is 0 / 0 = NaN, as
// torch's mean of nothing.)

template <typename acc_t>
cudaError_t launch_error_norm(const ErrorNormParams& p, void* scratch, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const ReductionScratch s = reduction_scratch(scratch);
  dim3 grid;
  const cudaError_t status = start_reduction(s, p.batch, p.per_sample, stream, &grid);
  if (status != cudaSuccess) return status;
  const bool vectorized = can_vectorize({p.high.data, p.low.data, p.prev.data}, true, p.per_sample);
  error_norm_kernel<acc_t><<<grid, kThreads, 0, stream>>>(p, s, vectorized);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t launch_error_norm_backward(const ErrorNormBackwardParams& p, cudaStream_t stream) {
  const int64_t n = p.batch * p.per_sample;
  if (n == 0) return cudaSuccess;
  const bool vectorized = can_vectorize(
      {p.high.data, p.low.data, p.prev.data, p.grad_high.data, p.grad_low.data, p.grad_prev.data}, true, p.per_sample);
  error_norm_backward_kernel<acc_t>
      <<<grid_size(vectorized ? (n + kPack - 1) / kPack : n), kThreads, 0, stream>>>(p, vectorized);
  return cudaGetLastError();
}

template cudaError_t launch_error_norm<float>(const ErrorNormParams&, void*, cudaStream_t);
template cudaError_t launch_error_norm<double>(const ErrorNormParams&, void*, cudaStream_t);
template cudaError_t launch_error_norm_backward<float>(const ErrorNormBackwardParams&, cudaStream_t);
template cudaError_t launch_error_norm_backward<double>(const ErrorNormBackwardParams&, cudaStream_t);

}  // namespace diffaccel::cuda
