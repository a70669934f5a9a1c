// Per-sample reductions on the GPU in a fixed order: one block per (chunk,
// sample) sums its kNormChunk elements in double with a fixed-shape tree, and
// the last block to finish (a counter the launcher zeroes) adds each sample's
// chunks in order. No atomics touch the sums, so the result is the same bits
// every run. Used by langevin_correct (norms), error_norm and threshold_backward.
#pragma once

#include <cstdint>

#include "memory_access.cuh"

namespace diffaccel::cuda {

constexpr int64_t kNormChunk = 16384;  // elements of one sample per block

inline int64_t chunks_of(int64_t per_sample) { return (per_sample + kNormChunk - 1) / kNormChunk; }
inline int64_t round16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// The chunks of a one-sum-per-sample reduction: at least one per sample, so
// an empty sample's block writes a zero sum.
inline int64_t reduction_chunks(int64_t per_sample) { return per_sample > 0 ? chunks_of(per_sample) : 1; }

// The scratch of a one-sum-per-sample reduction: the finishing counter, then
// the [batch][chunks] partial sums.
struct ReductionScratch {
  unsigned int* counter;
  double* partial;
};
inline ReductionScratch reduction_scratch(void* base) {
  char* p = static_cast<char*>(base);
  return {reinterpret_cast<unsigned int*>(p), reinterpret_cast<double*>(p + 16)};
}
// (The scratch's size: reduction_scratch_bytes, launchers.h.)

// Before a reduction's launch: its (chunks x batch) grid, and the counter zeroed.
inline cudaError_t start_reduction(const ReductionScratch& s, int64_t batch, int64_t per_sample, cudaStream_t stream,
                                   dim3* grid) {
  *grid = dim3(static_cast<unsigned int>(reduction_chunks(per_sample)), static_cast<unsigned int>(batch));
  return cudaMemsetAsync(s.counter, 0, sizeof(unsigned int), stream);
}

// The chunk of this block (grid: chunks x batch): its slot among the
// [batch][chunks] partial sums and its elements [begin, end), flat.
struct BlockChunk {
  int64_t chunks, slot, begin, end;
  __device__ explicit BlockChunk(int64_t per_sample) {
    const int64_t sample = blockIdx.y, chunk = blockIdx.x;
    chunks = gridDim.x;
    slot = sample * chunks + chunk;
    begin = sample * per_sample + chunk * kNormChunk;
    end = sample * per_sample + min((chunk + 1) * kNormChunk, per_sample);
  }
};

// Sum over the block (kThreads threads) in a fixed order; every thread gets it.
__device__ __forceinline__ double block_sum(double v, double* buffer) {
  buffer[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) buffer[threadIdx.x] += buffer[threadIdx.x + half];
    __syncthreads();
  }
  const double total = buffer[0];
  __syncthreads();
  return total;
}

// Called by every thread once this block's results are stored: whether this
// is the last of `blocks` blocks sharing `counter` to finish (then everything
// they stored is visible to it; read it with __ldcg, past the non-coherent L1).
__device__ __forceinline__ bool finished_last(unsigned int* counter, unsigned int blocks) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == blocks - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The sample's total: its chunks added in order.
__device__ __forceinline__ double sample_total(const double* partial, int64_t sample, int64_t chunks, int stride,
                                               int component) {
  double total = 0;
  for (int64_t k = 0; k < chunks; ++k) total += __ldcg(&partial[(sample * chunks + k) * stride + component]);
  return total;
}

}  // namespace diffaccel::cuda
