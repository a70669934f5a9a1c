// CPU kernel of diffaccel::multistep_combine: y = sum_j c_j * t_j in one pass.
#include "blocks.h"
#include "diffaccel/elementwise.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t, int N>
DA_INLINE void combine_spans(const CombineArgs<acc_t>& a, int64_t begin, int64_t end) {
  for_each_sample_span(a.per_sample, begin, end, [&](int64_t sample, int64_t first, int64_t count) DA_LAMBDA_INLINE {
    const acc_t* c = a.coeffs + sample * a.coeff_stride;
    for_each_block(first, count, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE {
      acc_t t_buf[N][kBlock], y_buf[kBlock];
      const acc_t* t[N];
      for (int j = 0; j < N; ++j) t[j] = load_block(a.tensors[j], offset, n, t_buf[j]);
      acc_t* y = output_block(a.y, offset, y_buf);
      DA_IVDEP for (int64_t i = 0; i < n; ++i) {
        acc_t v[N];
        for (int j = 0; j < N; ++j) v[j] = t[j][i];
        y[i] = combine_element<acc_t, N>(c, v);
      }
      commit_block(a.y, offset, n, y_buf, y);
    });
  });
}

template <typename acc_t>
DA_INLINE void combine_range_impl(const CombineArgs<acc_t>& a, int64_t begin, int64_t end) {
  switch (a.num_tensors) {
    case 1: return combine_spans<acc_t, 1>(a, begin, end);
    case 2: return combine_spans<acc_t, 2>(a, begin, end);
    case 3: return combine_spans<acc_t, 3>(a, begin, end);
    case 4: return combine_spans<acc_t, 4>(a, begin, end);
    case 5: return combine_spans<acc_t, 5>(a, begin, end);
    case 6: return combine_spans<acc_t, 6>(a, begin, end);
    case 7: return combine_spans<acc_t, 7>(a, begin, end);
    case 8: return combine_spans<acc_t, 8>(a, begin, end);
  }
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
