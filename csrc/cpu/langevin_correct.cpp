// CPU kernels of diffaccel::langevin_correct: per-sample sums of squares for
// the score and noise norms, then the elementwise Langevin update.
#include "blocks.h"
#include "diffaccel/elementwise.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t>
DA_INLINE void sum_squares_chunks_impl(In t, int64_t per_sample, double* partial, int64_t chunk_begin,
                                       int64_t chunk_end) {
  for_each_norm_chunk(per_sample, partial, chunk_begin, chunk_end, is_direct<acc_t>(t),
                      [&](double* lanes, int64_t offset, int64_t n) DA_LAMBDA_INLINE {
                        acc_t buf[kBlock];
                        const acc_t* v = load_block(t, offset, n, buf);
                        add_squares(lanes, n, [&](int64_t i) DA_LAMBDA_INLINE { return v[i]; });
                      });
}

template <typename acc_t>
DA_INLINE void langevin_range_impl(const LangevinArgs<acc_t>& a, int64_t begin, int64_t end) {
  const In inputs[3] = {a.x, a.score, a.noise};
  const Out outputs[2] = {a.x_new, a.x_mean};
  const Walk walk = walk_for<acc_t>(inputs, 3, outputs, 2);
  for_each_sample_span(a.per_sample, begin, end, [&](int64_t sample, int64_t first, int64_t count) DA_LAMBDA_INLINE {
    const acc_t step = a.step[sample];
    const acc_t noise_scale = a.noise_scale[sample];
    for_each_block(first, count, walk, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE {
      acc_t x_buf[kBlock], s_buf[kBlock], z_buf[kBlock], x_new_buf[kBlock], x_mean_buf[kBlock];
      const acc_t* x = load_block(a.x, offset, n, x_buf);
      const acc_t* s = load_block(a.score, offset, n, s_buf);
      const acc_t* z = load_block(a.noise, offset, n, z_buf);
      acc_t* x_new = output_block(a.x_new, offset, x_new_buf);
      acc_t* x_mean = output_block(a.x_mean, offset, x_mean_buf);
      for_each_element<acc_t>(n, walk, [&](int64_t i) DA_LAMBDA_INLINE {
        acc_t new_value, mean_value;
        langevin_element(x[i], s[i], z[i], step, noise_scale, new_value, mean_value);
        x_new[i] = new_value;
        x_mean[i] = mean_value;
      });
      commit_block(a.x_new, offset, n, x_new_buf, x_new);
      commit_block(a.x_mean, offset, n, x_mean_buf, x_mean);
    });
  });
}

}  // namespace

DA_CPU_MULTIVERSION void sum_squares_chunks(In t, int64_t per_sample, double* partial, int64_t chunk_begin,
                                            int64_t chunk_end) {
  if (t.dtype == DType::kFloat64) {
    sum_squares_chunks_impl<double>(t, per_sample, partial, chunk_begin, chunk_end);
  } else {
    sum_squares_chunks_impl<float>(t, per_sample, partial, chunk_begin, chunk_end);
  }
}

DA_CPU_MULTIVERSION void langevin_range(const LangevinArgs<float>& a, int64_t begin, int64_t end) {
  langevin_range_impl(a, begin, end);
  streaming_store_fence();
}
DA_CPU_MULTIVERSION void langevin_range(const LangevinArgs<double>& a, int64_t begin, int64_t end) {
  langevin_range_impl(a, begin, end);
  streaming_store_fence();
}

}  // namespace diffaccel::cpu
