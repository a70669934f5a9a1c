// CPU kernel of diffaccel::error_norm: per-chunk sums of squared scaled errors
// (the per-sample RMS is finished in csrc/torch/error_norm.cpp).
#include "blocks.h"
#include "diffaccel/elementwise.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t>
DA_INLINE void error_sum_squares_chunks_impl(const ErrorNormArgs<acc_t>& a, double* partial, int64_t chunk_begin,
                                             int64_t chunk_end) {
  for_each_norm_chunk(
      a.per_sample, partial, chunk_begin, chunk_end, [&](double* lanes, int64_t offset, int64_t n) DA_LAMBDA_INLINE {
        acc_t h_buf[kBlock], l_buf[kBlock], p_buf[kBlock];
        const acc_t* high = load_block(a.high, offset, n, h_buf);
        const acc_t* low = load_block(a.low, offset, n, l_buf);
        const acc_t* prev = load_block(a.prev, offset, n, p_buf);
        add_squares(lanes, n,
                    [&](int64_t i) DA_LAMBDA_INLINE { return scaled_error(high[i], low[i], prev[i], a.atol, a.rtol); });
      });
}

}  // namespace

DA_CPU_MULTIVERSION void error_sum_squares_chunks(const ErrorNormArgs<float>& a, double* partial, int64_t chunk_begin,
                                                  int64_t chunk_end) {
  error_sum_squares_chunks_impl(a, partial, chunk_begin, chunk_end);
}
DA_CPU_MULTIVERSION void error_sum_squares_chunks(const ErrorNormArgs<double>& a, double* partial, int64_t chunk_begin,
                                                  int64_t chunk_end) {
  error_sum_squares_chunks_impl(a, partial, chunk_begin, chunk_end);
}

}  // namespace diffaccel::cpu
