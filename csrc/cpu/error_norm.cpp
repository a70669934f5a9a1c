// CPU kernels of diffaccel::error_norm: per-chunk sums of squared scaled errors
// (the per-sample RMS is finished in csrc/torch/error_norm.cpp), and its
// backward pass, elementwise.
#include "blocks.h"
#include "diffaccel/elementwise.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t>
DA_INLINE void error_sum_squares_chunks_impl(const ErrorNormArgs<acc_t>& a, double* partial, int64_t chunk_begin,
                                             int64_t chunk_end) {
  const bool whole_chunks = is_direct<acc_t>(a.high) && is_direct<acc_t>(a.low) && is_direct<acc_t>(a.prev);
  for_each_norm_chunk(a.per_sample, partial, chunk_begin, chunk_end, whole_chunks,
                      [&](double* lanes, int64_t offset, int64_t n) DA_LAMBDA_INLINE {
                        acc_t h_buf[kBlock], l_buf[kBlock], p_buf[kBlock];
                        const acc_t* high = load_block(a.high, offset, n, h_buf);
                        const acc_t* low = load_block(a.low, offset, n, l_buf);
                        const acc_t* prev = load_block(a.prev, offset, n, p_buf);
                        add_squares(lanes, n, [&](int64_t i) DA_LAMBDA_INLINE {
                          return scaled_error(high[i], low[i], prev[i], a.atol, a.rtol);
                        });
                      });
}

template <typename acc_t>
DA_INLINE void error_norm_backward_range_impl(const ErrorNormBackwardArgs<acc_t>& a, int64_t begin, int64_t end) {
  for_each_sample_span(a.per_sample, begin, end, [&](int64_t sample, int64_t first, int64_t count) DA_LAMBDA_INLINE {
    const acc_t k = a.k[sample];
    for_each_block(first, count, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE {
      acc_t h_buf[kBlock], l_buf[kBlock], p_buf[kBlock], gh_buf[kBlock], gl_buf[kBlock], gp_buf[kBlock];
      const acc_t* high = load_block(a.high, offset, n, h_buf);
      const acc_t* low = load_block(a.low, offset, n, l_buf);
      const acc_t* prev = load_block(a.prev, offset, n, p_buf);
      acc_t* grad_high = output_block(a.grad_high, offset, gh_buf);
      acc_t* grad_low = output_block(a.grad_low, offset, gl_buf);
      acc_t* grad_prev = output_block(a.grad_prev, offset, gp_buf);
      DA_IVDEP for (int64_t i = 0; i < n; ++i) {
        acc_t gh, gl, gp;
        scaled_error_backward(k, high[i], low[i], prev[i], a.atol, a.rtol, gh, gl, gp);
        grad_high[i] = gh;
        grad_low[i] = gl;
        grad_prev[i] = gp;
      }
      commit_block(a.grad_high, offset, n, gh_buf, grad_high);
      commit_block(a.grad_low, offset, n, gl_buf, grad_low);
      commit_block(a.grad_prev, offset, n, gp_buf, grad_prev);
    });
  });
}

}  // namespace

DA_CPU_MULTIVERSION void error_norm_backward_range(const ErrorNormBackwardArgs<float>& a, int64_t begin, int64_t end) {
  error_norm_backward_range_impl(a, begin, end);
  streaming_store_fence();
}
DA_CPU_MULTIVERSION void error_norm_backward_range(const ErrorNormBackwardArgs<double>& a, int64_t begin, int64_t end) {
  error_norm_backward_range_impl(a, begin, end);
  streaming_store_fence();
}

DA_CPU_MULTIVERSION void error_sum_squares_chunks(const ErrorNormArgs<float>& a, double* partial, int64_t chunk_begin,
                                                  int64_t chunk_end) {
  error_sum_squares_chunks_impl(a, partial, chunk_begin, chunk_end);
}
DA_CPU_MULTIVERSION void error_sum_squares_chunks(const ErrorNormArgs<double>& a, double* partial, int64_t chunk_begin,
                                                  int64_t chunk_end) {
  error_sum_squares_chunks_impl(a, partial, chunk_begin, chunk_end);
}

}  // namespace diffaccel::cpu
