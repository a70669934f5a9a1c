// CPU kernel of diffaccel::multistep_combine and multistep_combine_pair:
// y_m = sum_j c_mj * t_j for one or two outputs in one pass.
#include "blocks.h"
#include "diffaccel/elementwise.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t, int N, int M>
DA_INLINE void combine_spans(const CombineArgs<acc_t>& a, int64_t begin, int64_t end) {
  const Walk walk = walk_for<acc_t>(a.tensors, N, a.y, M);
  for_each_sample_span(a.per_sample, begin, end, [&](int64_t sample, int64_t first, int64_t count) DA_LAMBDA_INLINE {
    const LocalRow<acc_t, M * N> coeffs(a.coeffs + sample * a.coeff_stride);
    const acc_t* c = coeffs.at;
    for_each_block(first, count, walk, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE {
      acc_t t_buf[N][kBlock], y_buf[M][kBlock];
      const acc_t* t[N];
      for (int j = 0; j < N; ++j) t[j] = load_block(a.tensors[j], offset, n, t_buf[j]);
      acc_t* y[M];
      for (int m = 0; m < M; ++m) y[m] = output_block(a.y[m], offset, y_buf[m]);
      // Every output of an element is computed from its inputs before any is
      // stored: an output may be one of the tensors (written in place).
      for_each_element<acc_t>(n, walk, [&](int64_t i) DA_LAMBDA_INLINE {
        acc_t v[N];
        for (int j = 0; j < N; ++j) v[j] = t[j][i];
        acc_t r[M];
        for (int m = 0; m < M; ++m) r[m] = combine_element<acc_t, N>(c + m * N, v);
        for (int m = 0; m < M; ++m) y[m][i] = r[m];
      });
      for (int m = 0; m < M; ++m) commit_block(a.y[m], offset, n, y_buf[m], y[m]);
    });
  });
}

template <typename acc_t, int M>
DA_INLINE void combine_range_outputs(const CombineArgs<acc_t>& a, int64_t begin, int64_t end) {
  switch (a.num_tensors) {
    case 1: return combine_spans<acc_t, 1, M>(a, begin, end);
    case 2: return combine_spans<acc_t, 2, M>(a, begin, end);
    case 3: return combine_spans<acc_t, 3, M>(a, begin, end);
    case 4: return combine_spans<acc_t, 4, M>(a, begin, end);
    case 5: return combine_spans<acc_t, 5, M>(a, begin, end);
    case 6: return combine_spans<acc_t, 6, M>(a, begin, end);
    case 7: return combine_spans<acc_t, 7, M>(a, begin, end);
    case 8: return combine_spans<acc_t, 8, M>(a, begin, end);
  }
}

template <typename acc_t>
DA_INLINE void combine_range_impl(const CombineArgs<acc_t>& a, int64_t begin, int64_t end) {
  if (a.num_outputs == 2) return combine_range_outputs<acc_t, 2>(a, begin, end);
  combine_range_outputs<acc_t, 1>(a, begin, end);
}

}  // namespace

DA_CPU_MULTIVERSION void multistep_combine_range(const CombineArgs<float>& a, int64_t begin, int64_t end) {
  combine_range_impl(a, begin, end);
  streaming_store_fence();
}
DA_CPU_MULTIVERSION void multistep_combine_range(const CombineArgs<double>& a, int64_t begin, int64_t end) {
  combine_range_impl(a, begin, end);
  streaming_store_fence();
}

}  // namespace diffaccel::cpu
