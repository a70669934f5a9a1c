// diffaccel::ei_step on CUDA: one fused elementwise pass (plus, for dynamic
// thresholding, one selection pass that finds each sample's scale first).
#include "diffaccel/elementwise.h"
#include "launchers.h"
#include "memory_access.cuh"
#include "radix_select.cuh"

namespace diffaccel::cuda {
namespace {

// The data term d = c_x * x + c_m * m of sample b, element i: what dynamic
// thresholding takes the quantile of.
template <typename acc_t>
struct DataTerm {
  In x, model_out, coeffs;
  int64_t coeff_stride, per_sample;
  __device__ acc_t operator()(int64_t b, int64_t i) const {
    acc_t row[2];
    load_row<acc_t, 2>(coeffs, coeff_stride, b, row);
    const int64_t flat = b * per_sample + i;
    return ei_data_term(row, load_one<acc_t>(x.data, x.dtype, flat),
                        load_one<acc_t>(model_out.data, model_out.dtype, flat));
  }
};

template <typename acc_t, int K, bool kNoise>
__global__ void __launch_bounds__(kThreads) ei_step_kernel(EiStepParams p, bool vectorized, bool per_sample_rows) {
  constexpr int kRow = kEiFixedCoeffs + 1 + K;
  const int64_t n = p.batch * p.per_sample;
  acc_t shared_row[kRow];
  if (!per_sample_rows) load_row<acc_t, kRow>(p.coeffs, 0, 0, shared_row);
  for_each_element(n, vectorized, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const int64_t b = per_sample_rows ? i / p.per_sample : 0;
    acc_t row[kRow];
    element_row<acc_t, kRow>(p.coeffs, p.coeff_stride, b, per_sample_rows, shared_row, row);
    acc_t limit = 0, divisor = 1;
    if (p.threshold.enabled) threshold_bounds(p.threshold, b, &limit, &divisor);

    acc_t x[W], m[W], z[W], h[K > 0 ? K : 1][W];
    load_elements<W>(p.x, i, x);
    load_elements<W>(p.model_out, i, m);
#pragma unroll
    for (int j = 0; j < K; ++j) load_elements<W>(p.history[j], i, h[j]);
    if (kNoise) load_elements<W>(p.noise, i, z);
    acc_t x_next[W], d[W];
#pragma unroll
    for (int e = 0; e < W; ++e) {
      d[e] = ei_data_term(row, x[e], m[e]);
      if (p.threshold.enabled) d[e] = threshold_element(d[e], limit, divisor);
      acc_t he[K > 0 ? K : 1];
#pragma unroll
      for (int j = 0; j < K; ++j) he[j] = h[j][e];
      x_next[e] = ei_combine<acc_t, K, kNoise>(row, x[e], d[e], he, kNoise ? z[e] : acc_t(0));
    }
    // Every input of these elements is read before either output is written,
    // so x_next may be x and d may be a history tensor.
    store_elements<W>(p.d, i, d);
    store_elements<W>(p.x_next, i, x_next);
  });
}

template <typename acc_t, int K>
void launch_elementwise(const EiStepParams& p, bool vectorized, bool per_sample_rows, cudaStream_t stream) {
  const int64_t units = vectorized ? (p.batch * p.per_sample + kPack - 1) / kPack : p.batch * p.per_sample;
  const int grid = grid_size(units);
  if (p.has_noise) ei_step_kernel<acc_t, K, true><<<grid, kThreads, 0, stream>>>(p, vectorized, per_sample_rows);
  else ei_step_kernel<acc_t, K, false><<<grid, kThreads, 0, stream>>>(p, vectorized, per_sample_rows);
}

}  // namespace

template <typename acc_t>
cudaError_t launch_ei_step(const EiStepParams& params, const ThresholdSelect* select, void* select_scratch,
                           cudaStream_t stream) {
  EiStepParams p = params;
  if (p.batch * p.per_sample == 0) return cudaSuccess;
  if (select) {
    const DataTerm<acc_t> source{p.x, p.model_out, p.coeffs, p.coeff_stride, p.per_sample};
    const cudaError_t status = launch_select<acc_t>(source, p.batch, p.per_sample, *select, select_scratch, stream);
    if (status != cudaSuccess) return status;
    p.threshold.enabled = true;
    p.threshold.scales = select_scratch;
  }
  const bool per_sample_rows = p.coeff_stride != 0 || p.threshold.scales != nullptr;
  const bool vectorized =
      can_vectorize({p.x.data, p.model_out.data, p.has_noise ? p.noise.data : nullptr, p.history[0].data,
                     p.history[1].data, p.history[2].data, p.history[3].data, p.x_next.data, p.d.data},
                    per_sample_rows, p.per_sample);
  switch (p.num_history) {
    case 0: launch_elementwise<acc_t, 0>(p, vectorized, per_sample_rows, stream); break;
    case 1: launch_elementwise<acc_t, 1>(p, vectorized, per_sample_rows, stream); break;
    case 2: launch_elementwise<acc_t, 2>(p, vectorized, per_sample_rows, stream); break;
    case 3: launch_elementwise<acc_t, 3>(p, vectorized, per_sample_rows, stream); break;
    default: launch_elementwise<acc_t, 4>(p, vectorized, per_sample_rows, stream); break;
  }
  return cudaGetLastError();
}

template cudaError_t launch_ei_step<float>(const EiStepParams&, const ThresholdSelect*, void*, cudaStream_t);
template cudaError_t launch_ei_step<double>(const EiStepParams&, const ThresholdSelect*, void*, cudaStream_t);

}  // namespace diffaccel::cuda
