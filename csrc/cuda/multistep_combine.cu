// diffaccel::multistep_combine and multistep_combine_pair on CUDA:
// y_m = sum_j c_mj * t_j for one or two outputs in one pass.
#include "diffaccel/elementwise.h"
#include "launchers.h"
#include "memory_access.cuh"

namespace diffaccel::cuda {
namespace {

template <typename acc_t, int N, int M>
__global__ void __launch_bounds__(kThreads) combine_kernel(CombineParams p, bool vectorized) {
  const bool per_sample_rows = p.coeff_stride != 0;
  acc_t shared_c[M * N];
  if (!per_sample_rows) load_row<acc_t, M * N>(p.coeffs, 0, 0, shared_c);
  for_each_element(p.batch * p.per_sample, vectorized, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    acc_t c[M * N];
    element_row<acc_t, M * N>(p.coeffs, p.coeff_stride, per_sample_rows ? i / p.per_sample : 0, per_sample_rows,
                              shared_c, c);
    acc_t t[N][W];
#pragma unroll
    for (int j = 0; j < N; ++j) load_elements<W>(p.tensors[j], i, t[j]);
    // Every output is computed before any is stored: an output may be one of
    // the tensors (written in place).
    acc_t y[M][W];
#pragma unroll
    for (int e = 0; e < W; ++e) {
      acc_t te[N];
#pragma unroll
      for (int j = 0; j < N; ++j) te[j] = t[j][e];
#pragma unroll
      for (int m = 0; m < M; ++m) y[m][e] = combine_element<acc_t, N>(c + m * N, te);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) store_elements<W>(p.y[m], i, y[m]);
  });
}

template <typename acc_t, int N, int M>
void launch(const CombineParams& p, cudaStream_t stream) {
  bool vectorized = can_vectorize({p.y[0].data, p.y[1].data}, p.coeff_stride != 0, p.per_sample);
  for (int j = 0; j < N; ++j) vectorized = vectorized && aligned16(p.tensors[j].data);
  const int64_t n = p.batch * p.per_sample;
  const int grid = grid_size(vectorized ? (n + kPack - 1) / kPack : n);
  combine_kernel<acc_t, N, M><<<grid, kThreads, 0, stream>>>(p, vectorized);
}

template <typename acc_t, int M>
void launch_outputs(const CombineParams& p, cudaStream_t stream) {
  switch (p.num_tensors) {
    case 1: launch<acc_t, 1, M>(p, stream); break;
    case 2: launch<acc_t, 2, M>(p, stream); break;
    case 3: launch<acc_t, 3, M>(p, stream); break;
    case 4: launch<acc_t, 4, M>(p, stream); break;
    case 5: launch<acc_t, 5, M>(p, stream); break;
    case 6: launch<acc_t, 6, M>(p, stream); break;
    case 7: launch<acc_t, 7, M>(p, stream); break;
    default: launch<acc_t, 8, M>(p, stream); break;
  }
}

}  // namespace

template <typename acc_t>
cudaError_t launch_multistep_combine(const CombineParams& p, cudaStream_t stream) {
  if (p.batch * p.per_sample == 0) return cudaSuccess;
  if (p.num_outputs == 2) {
    launch_outputs<acc_t, 2>(p, stream);
  } else {
    launch_outputs<acc_t, 1>(p, stream);
  }
  return cudaGetLastError();
}

template cudaError_t launch_multistep_combine<float>(const CombineParams&, cudaStream_t);
template cudaError_t launch_multistep_combine<double>(const CombineParams&, cudaStream_t);

}  // namespace diffaccel::cuda
