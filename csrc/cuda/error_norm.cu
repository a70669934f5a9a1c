// diffaccel::error_norm on CUDA: one launch (after a 4-byte memset). Blocks of
// (chunk, sample) sum the squared scaled errors in double, reading 16-byte
// packs where every pointer is aligned and samples hold whole packs (the H200
// run of 2026-11-27 measured the one-element-at-a-time loop at 51% of the copy
// bandwidth fp32, 16% bf16); the last block to finish adds each sample's chunks
// in order and writes the RMS.
#include <cmath>

#include "chunked_reduction.cuh"
#include "diffaccel/elementwise.h"
#include "launchers.h"
#include "memory_access.cuh"

namespace diffaccel::cuda {
namespace {

struct Scratch {
  unsigned int* counter;
  double* partial;  // [batch][chunks]
};

Scratch scratch_layout(void* base) {
  char* p = static_cast<char*>(base);
  return {reinterpret_cast<unsigned int*>(p), reinterpret_cast<double*>(p + 16)};
}

static_assert(kNormChunk % kPack == 0, "the packs must not straddle two chunks");

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) error_norm_kernel(ErrorNormParams p, Scratch s, bool vectorized) {
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

}  // namespace

// At least one chunk per sample: an empty sample's block writes a zero sum and
// its RMS is 0 / 0 = NaN, as torch's mean of nothing.
int64_t error_norm_chunks(int64_t per_sample) { return per_sample > 0 ? chunks_of(per_sample) : 1; }

int64_t error_norm_scratch_bytes(int64_t batch, int64_t per_sample) {
  return 16 + round16(batch * error_norm_chunks(per_sample) * int64_t(sizeof(double)));
}

template <typename acc_t>
cudaError_t launch_error_norm(const ErrorNormParams& p, void* scratch, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const Scratch s = scratch_layout(scratch);
  cudaError_t status = cudaMemsetAsync(s.counter, 0, sizeof(unsigned int), stream);
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned int>(error_norm_chunks(p.per_sample)), static_cast<unsigned int>(p.batch));
  const bool vectorized = can_vectorize({p.high.data, p.low.data, p.prev.data}, true, p.per_sample);
  error_norm_kernel<acc_t><<<grid, kThreads, 0, stream>>>(p, s, vectorized);
  return cudaGetLastError();
}

template cudaError_t launch_error_norm<float>(const ErrorNormParams&, void*, cudaStream_t);
template cudaError_t launch_error_norm<double>(const ErrorNormParams&, void*, cudaStream_t);

}  // namespace diffaccel::cuda
