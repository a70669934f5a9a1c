// diffaccel::langevin_correct on CUDA, in two launches:
//  1. norms: per (chunk, sample) block, the sums of squares of score and z in
//     double by a fixed-shape block reduction (16-byte packs where the update
//     kernel uses them: the H200 run measured the two launches together at
//     52% of the copy bandwidth with this pass reading one element at a time); the last block to finish adds
//     the chunks of each sample in order and turns the norms into each
//     sample's step and noise scale (so the result is the same bits every run);
//  2. update: x_mean = x + step * score, x_new = x_mean + sqrt(2 step) * z.
// With noise=None, z is drawn in both launches from the same counter-based
// Philox stream (philox.h): element i is philox_normal(seed, offset, i), never
// written to memory.
#include <cmath>

#include "diffaccel/elementwise.h"
#include "diffaccel/philox.h"
#include "chunked_reduction.cuh"
#include "launchers.h"
#include "memory_access.cuh"

namespace diffaccel::cuda {
namespace {

static_assert(kNormChunk % kPack == 0, "the norms kernel's packs must not straddle two chunks");

struct Scratch {
  unsigned int* counter;
  double* partial;  // [batch][chunks][2]: score, noise
  double* norms;    // [batch][2]
  void* step;       // acc_t [batch]
  void* noise_scale;
};

Scratch scratch_layout(void* base, int64_t batch, int64_t per_sample) {
  char* p = static_cast<char*>(base);
  Scratch s;
  s.counter = reinterpret_cast<unsigned int*>(p);
  p += 16;
  s.partial = reinterpret_cast<double*>(p);
  p += round16(batch * chunks_of(per_sample) * 2 * sizeof(double));
  s.norms = reinterpret_cast<double*>(p);
  p += round16(batch * 2 * sizeof(double));
  s.step = p;
  p += round16(batch * sizeof(double));
  s.noise_scale = p;
  return s;
}

struct PhiloxKey {
  uint64_t seed, offset;
};

__device__ __forceinline__ PhiloxKey unpack(const PhiloxArgs& a) {
  if (a.captured) {
    return {static_cast<uint64_t>(*a.seed_ptr), static_cast<uint64_t>(*a.offset_ptr) + a.offset_intragraph};
  }
  return {a.seed, a.offset};
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) langevin_norms_kernel(LangevinParams p, Scratch s, bool vectorized) {
  __shared__ double buffer[kThreads];
  const BlockChunk chunk(p.per_sample);
  const int64_t begin = chunk.begin, end = chunk.end;
  const PhiloxKey key = unpack(p.philox);
  double score_sq = 0, noise_sq = 0;
  if (vectorized) {
    // Packs of kPack elements with 16-byte loads, as the update kernel reads
    // them (the chunk's bounds are multiples of kPack: per_sample is), z drawn
    // as two Philox blocks of four, exactly as the update kernel draws it.
    for (int64_t i = begin + int64_t(kPack) * threadIdx.x; i < end; i += int64_t(kPack) * kThreads) {
      acc_t g[kPack], z[kPack];
      load_pack(p.score.data, p.score.dtype, i, g);
      if (p.has_noise) {
        load_pack(p.noise.data, p.noise.dtype, i, z);
      } else {
        philox_normal4<acc_t>(key.seed, key.offset, i / 4, z);
        philox_normal4<acc_t>(key.seed, key.offset, i / 4 + 1, z + 4);
      }
#pragma unroll
      for (int e = 0; e < kPack; ++e) {
        score_sq += double(g[e]) * double(g[e]);
        noise_sq += double(z[e]) * double(z[e]);
      }
    }
  } else {
    // Groups of four elements, the four normals of one Philox block.
    for (int64_t q = begin / 4 + threadIdx.x; q * 4 < end; q += kThreads) {
      acc_t z4[4];  // drawn in acc_t exactly as the update kernel draws it
      if (!p.has_noise) philox_normal4<acc_t>(key.seed, key.offset, q, z4);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = 4 * q + e;
        if (i < begin || i >= end) continue;
        const double g = load_one<acc_t>(p.score.data, p.score.dtype, i);
        const double z = p.has_noise ? double(load_one<acc_t>(p.noise.data, p.noise.dtype, i)) : double(z4[e]);
        score_sq += g * g;
        noise_sq += z * z;
      }
    }
  }
  score_sq = block_sum(score_sq, buffer);
  noise_sq = block_sum(noise_sq, buffer);
  if (threadIdx.x == 0) {
    s.partial[chunk.slot * 2] = score_sq;
    s.partial[chunk.slot * 2 + 1] = noise_sq;
  }
  if (!finished_last(s.counter, gridDim.x * gridDim.y)) return;

  // The last block: each sample's norms, then its step.
  for (int64_t j = threadIdx.x; j < p.batch; j += kThreads) {
    s.norms[2 * j] = sqrt(sample_total(s.partial, j, chunk.chunks, 2, 0));
    s.norms[2 * j + 1] = sqrt(sample_total(s.partial, j, chunk.chunks, 2, 1));
  }
  __syncthreads();
  __shared__ double mean_grad, mean_noise;
  if (threadIdx.x == 0) {
    double gm = 0, nm = 0;
    for (int64_t j = 0; j < p.batch; ++j) gm += s.norms[2 * j], nm += s.norms[2 * j + 1];
    mean_grad = gm / double(p.batch);
    mean_noise = nm / double(p.batch);
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < p.batch; j += kThreads) {
    const double g = p.per_sample_reduction ? s.norms[2 * j] : mean_grad;
    const double n = p.per_sample_reduction ? s.norms[2 * j + 1] : mean_noise;
    const double alpha = load_one<double>(p.alpha.data, p.alpha.dtype, j * p.alpha_stride);
    const double r = p.snr * n / g;
    const double step = 2.0 * alpha * r * r;
    static_cast<acc_t*>(s.step)[j] = acc_t(step);
    static_cast<acc_t*>(s.noise_scale)[j] = acc_t(sqrt(2.0 * step));
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) langevin_update_kernel(LangevinParams p, Scratch s, bool vectorized) {
  const PhiloxKey key = unpack(p.philox);
  const acc_t* step = static_cast<const acc_t*>(s.step);
  const acc_t* noise_scale = static_cast<const acc_t*>(s.noise_scale);
  for_each_element(p.batch * p.per_sample, vectorized, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const int64_t b = i / p.per_sample;
    acc_t x[W], g[W], z[W];
    load_elements<W>(p.x, i, x);
    load_elements<W>(p.score, i, g);
    if (p.has_noise) {
      load_elements<W>(p.noise, i, z);
    } else if constexpr (W == kPack) {
      philox_normal4<acc_t>(key.seed, key.offset, i / 4, z);
      philox_normal4<acc_t>(key.seed, key.offset, i / 4 + 1, z + 4);
    } else {
      z[0] = philox_normal<acc_t>(key.seed, key.offset, i);
    }
    acc_t x_new[W], x_mean[W];
#pragma unroll
    for (int e = 0; e < W; ++e) langevin_element(x[e], g[e], z[e], step[b], noise_scale[b], x_new[e], x_mean[e]);
    store_elements<W>(p.x_mean, i, x_mean);
    store_elements<W>(p.x_new, i, x_new);
  });
}

}  // namespace

int64_t langevin_scratch_bytes(int64_t batch, int64_t per_sample) {
  return 16 + round16(batch * chunks_of(per_sample) * 2 * sizeof(double)) + round16(batch * 2 * sizeof(double)) +
         2 * round16(batch * sizeof(double));
}

template <typename acc_t>
cudaError_t launch_langevin_correct(const LangevinParams& p, void* scratch, cudaStream_t stream) {
  const int64_t n = p.batch * p.per_sample;
  if (n == 0) return cudaSuccess;
  const Scratch s = scratch_layout(scratch, p.batch, p.per_sample);
  cudaError_t status = cudaMemsetAsync(s.counter, 0, sizeof(unsigned int), stream);
  if (status != cudaSuccess) return status;
  const bool vectorized = can_vectorize(
      {p.x.data, p.score.data, p.has_noise ? p.noise.data : nullptr, p.x_new.data, p.x_mean.data}, true, p.per_sample);
  const dim3 norms_grid(static_cast<unsigned int>(chunks_of(p.per_sample)), static_cast<unsigned int>(p.batch));
  langevin_norms_kernel<acc_t><<<norms_grid, kThreads, 0, stream>>>(p, s, vectorized);
  const int grid = grid_size(vectorized ? (n + kPack - 1) / kPack : n);
  langevin_update_kernel<acc_t><<<grid, kThreads, 0, stream>>>(p, s, vectorized);
  return cudaGetLastError();
}

template cudaError_t launch_langevin_correct<float>(const LangevinParams&, void*, cudaStream_t);
template cudaError_t launch_langevin_correct<double>(const LangevinParams&, void*, cudaStream_t);

}  // namespace diffaccel::cuda
