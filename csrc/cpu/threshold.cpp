// CPU kernels of diffaccel::threshold: clip, or Imagen's dynamic thresholding
// (per-sample quantile of |x| by sampled selection, selection.h, then clamp
// and rescale, while the sample is still in cache); and of
// diffaccel::threshold_backward (the gradient with the scales held fixed, and
// its per-sample sums, in one pass).
#include <cmath>

#include "blocks.h"
#include "diffaccel/elementwise.h"
#include "selection.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t, bool kCount>
DA_INLINE void threshold_range_impl(const ThresholdArgs<acc_t>& a, int64_t begin, int64_t end) {
  const PinCounter<acc_t> counter(a.counting);
  const Walk walk = walk_for<acc_t, kCount>(&a.x, 1, &a.y, 1);
  for_each_sample_span(a.per_sample, begin, end, [&](int64_t sample, int64_t first, int64_t count) DA_LAMBDA_INLINE {
    const acc_t limit = a.limit[sample * a.threshold_stride];
    const acc_t divisor = a.divisor[sample * a.threshold_stride];
    for_each_block(first, count, walk, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE {
      acc_t x_buf[kBlock], y_buf[kBlock];
      const acc_t* x = load_block(a.x, offset, n, x_buf);
      acc_t* y = output_block(a.y, offset, y_buf);
      typename PinCounter<acc_t>::Block counted;
      auto element = [&](int64_t i) DA_LAMBDA_INLINE {
        if (kCount) counted.add(counter, x[i]);
        y[i] = threshold_element(x[i], limit, divisor);
      };
      for_each_element<acc_t, kCount>(n, walk, element);
      if (kCount) counter.finish(counted);
      commit_block(a.y, offset, n, y_buf, y);
    });
  });
}

template <typename acc_t>
DA_INLINE void threshold_dynamic_samples_impl(const ThresholdArgs<acc_t>& a, const DynamicThreshold& t, acc_t* scale,
                                              int64_t sample_begin, int64_t sample_end, bool apply) {
  SelectionScratch<acc_t> scratch;
  const int64_t n = a.per_sample;
  auto selection = [&](int64_t b, auto&& use) DA_LAMBDA_INLINE {
    auto values = [&](int64_t offset, int64_t len, acc_t* buf)
                      DA_LAMBDA_INLINE { return load_block(a.x, b * n + offset, len, buf); };
    const acc_t* direct = is_direct<acc_t>(a.x) ? static_cast<const acc_t*>(a.x.data) + b * n : nullptr;
    SampledSelection<acc_t, decltype(values)> selected(n, t.ratio, direct, nullptr, values, scratch);
    use(selected);
  };
  auto pass = [&](int64_t b) DA_LAMBDA_INLINE { threshold_range_impl<acc_t, false>(a, b * n, (b + 1) * n); };
  auto pinned_pass = [&](int64_t b, const ScalePin<acc_t>& pin, PinCount& count) DA_LAMBDA_INLINE {
    ThresholdArgs<acc_t> pinned = a;
    pinned.limit = pinned.divisor = &pin.scale;
    pinned.threshold_stride = 0;
    pinned.counting = {&pin, &count};
    threshold_range_impl<acc_t, true>(pinned, b * n, (b + 1) * n);
  };
  dynamic_threshold_samples<acc_t>(t, n, scale, sample_begin, sample_end, apply, selection, pass, pinned_pass);
}

template <typename acc_t>
DA_INLINE void threshold_backward_chunks_impl(const ThresholdBackwardArgs<acc_t>& a, double* partial,
                                              int64_t chunk_begin, int64_t chunk_end) {
  // Not whole chunks: the kept values are buffered block by block.
  for_each_norm_chunk(
      a.per_sample, partial, chunk_begin, chunk_end, false,
      [&](double* lanes, int64_t offset, int64_t n) DA_LAMBDA_INLINE {
        const acc_t s = a.scale[offset / a.per_sample];
        acc_t g_buf[kBlock], x_buf[kBlock], kept[kBlock];
        const acc_t* g = load_block(a.grad, offset, n, g_buf);
        const acc_t* x = load_block(a.x, offset, n, x_buf);
        acc_t* passed = a.passed + offset;
        DA_IVDEP for (int64_t i = 0; i < n; ++i) passed[i] = threshold_backward_element(g[i], x[i], s, kept[i]);
        add_products(lanes, n, sizeof(acc_t) == 4,
                     [&](int64_t i) DA_LAMBDA_INLINE { return Factors{double(passed[i]), double(kept[i])}; });
      });
}

}  // namespace

DA_CPU_MULTIVERSION void threshold_backward_chunks(const ThresholdBackwardArgs<float>& a, double* partial,
                                                   int64_t chunk_begin, int64_t chunk_end) {
  threshold_backward_chunks_impl(a, partial, chunk_begin, chunk_end);
}
DA_CPU_MULTIVERSION void threshold_backward_chunks(const ThresholdBackwardArgs<double>& a, double* partial,
                                                   int64_t chunk_begin, int64_t chunk_end) {
  threshold_backward_chunks_impl(a, partial, chunk_begin, chunk_end);
}

DA_CPU_MULTIVERSION void threshold_range(const ThresholdArgs<float>& a, int64_t begin, int64_t end) {
  threshold_range_impl<float, false>(a, begin, end);
  streaming_store_fence();
}
DA_CPU_MULTIVERSION void threshold_range(const ThresholdArgs<double>& a, int64_t begin, int64_t end) {
  threshold_range_impl<double, false>(a, begin, end);
  streaming_store_fence();
}

DA_CPU_MULTIVERSION void threshold_dynamic_samples(const ThresholdArgs<float>& a, const DynamicThreshold& t,
                                                   float* scale, int64_t sample_begin, int64_t sample_end, bool apply) {
  threshold_dynamic_samples_impl(a, t, scale, sample_begin, sample_end, apply);
  streaming_store_fence();
}
DA_CPU_MULTIVERSION void threshold_dynamic_samples(const ThresholdArgs<double>& a, const DynamicThreshold& t,
                                                   double* scale, int64_t sample_begin, int64_t sample_end,
                                                   bool apply) {
  threshold_dynamic_samples_impl(a, t, scale, sample_begin, sample_end, apply);
  streaming_store_fence();
}

}  // namespace diffaccel::cpu
