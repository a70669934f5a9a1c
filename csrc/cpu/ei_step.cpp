// CPU kernel of diffaccel::ei_step: one pass over memory per call (with
// dynamic thresholding a selection pass over x and m first, whose per-sample
// scale needs all of d, then the update of that sample while it is in cache).
#include <cmath>

#include "blocks.h"
#include "diffaccel/elementwise.h"
#include "selection.h"

namespace diffaccel::cpu {
namespace {

// kCount: a pinned pass of dynamic thresholding (kernels.h: PinCounting),
// counting |d| before it is thresholded.
template <typename acc_t, int K, bool kNoise, bool kThreshold, bool kCount>
DA_INLINE void ei_step_span(const EiStepArgs<acc_t>& a, const PinCounter<acc_t>& counter, Walk walk, int64_t sample,
                            int64_t first, int64_t count) {
  const LocalRow<acc_t, kEiFixedCoeffs + K + (kNoise ? 1 : 0)> coeffs(a.coeffs + sample * a.coeff_stride);
  const acc_t* row = coeffs.at;
  acc_t limit = 0, divisor = 1;
  if (kThreshold) {
    limit = a.limit[sample * a.threshold_stride];
    divisor = a.divisor[sample * a.threshold_stride];
  }
  for_each_block(first, count, walk, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE {
    acc_t x_buf[kBlock], m_buf[kBlock], z_buf[kBlock], h_buf[K > 0 ? K : 1][kBlock];
    acc_t x_next_buf[kBlock], d_buf[kBlock];
    const acc_t* x = load_block(a.x, offset, n, x_buf);
    const acc_t* m = load_block(a.model_out, offset, n, m_buf);
    const acc_t* z = kNoise ? load_block(a.noise, offset, n, z_buf) : x;
    const acc_t* h[K > 0 ? K : 1];
    for (int j = 0; j < K; ++j) h[j] = load_block(a.history[j], offset, n, h_buf[j]);
    acc_t* x_next = output_block(a.x_next, offset, x_next_buf);
    acc_t* d_out = output_block(a.d, offset, d_buf);
    typename PinCounter<acc_t>::Block counted;
    auto element = [&](int64_t i) DA_LAMBDA_INLINE {
      acc_t d = ei_data_term(row, x[i], m[i]);
      if (kCount) counted.add(counter, d);
      if (kThreshold) d = threshold_element(d, limit, divisor);
      acc_t hv[K > 0 ? K : 1];
      for (int j = 0; j < K; ++j) hv[j] = h[j][i];
      x_next[i] = ei_combine<acc_t, K, kNoise>(row, x[i], d, hv, z[i]);
      d_out[i] = d;
    };
    for_each_element<acc_t, kCount>(n, walk, element);
    if (kCount) counter.finish(counted);
    commit_block(a.x_next, offset, n, x_next_buf, x_next);
    commit_block(a.d, offset, n, d_buf, d_out);
  });
}

// Each of the update's thirty variants is a function of its own, cloned per
// ISA level. Inlined into one function with the other twenty-nine (as the
// dispatch below had them), the SDE row's loop lost registers to theirs: gcc
// reloaded four of its six pointers from the stack every vector and stored x
// there. Apart, every loop keeps its pointers in registers: at (4,4,128,128)
// the SDE row 47.9 -> 46.5 us and the 2M row 41.3 -> 38.8 us (eight
// alternated runs on the 2-core VM, bench/results/2026-12-06-cpu.md).
template <typename acc_t, int K, bool kNoise, bool kThreshold, bool kCount>
DA_CPU_MULTIVERSION void ei_step_spans(const EiStepArgs<acc_t>& a, int64_t begin, int64_t end) {
  const PinCounter<acc_t> counter(a.counting);
  In inputs[3 + kMaxHistory] = {a.x, a.model_out};
  int num_inputs = 2;
  if (kNoise) inputs[num_inputs++] = a.noise;
  for (int j = 0; j < K; ++j) inputs[num_inputs++] = a.history[j];
  const Out outputs[2] = {a.x_next, a.d};
  const Walk walk = walk_for<acc_t, kCount>(inputs, num_inputs, outputs, 2);
  for_each_sample_span(a.per_sample, begin, end, [&](int64_t sample, int64_t first, int64_t n) DA_LAMBDA_INLINE {
    ei_step_span<acc_t, K, kNoise, kThreshold, kCount>(a, counter, walk, sample, first, n);
  });
}

template <typename acc_t, int K, bool kNoise>
DA_INLINE void ei_step_dispatch_threshold(const EiStepArgs<acc_t>& a, int64_t begin, int64_t end) {
  if (!a.has_threshold) ei_step_spans<acc_t, K, kNoise, false, false>(a, begin, end);
  else if (a.counting.pin_count == nullptr) ei_step_spans<acc_t, K, kNoise, true, false>(a, begin, end);
  else ei_step_spans<acc_t, K, kNoise, true, true>(a, begin, end);
}

template <typename acc_t, int K>
DA_INLINE void ei_step_dispatch_flags(const EiStepArgs<acc_t>& a, int64_t begin, int64_t end) {
  if (a.has_noise) ei_step_dispatch_threshold<acc_t, K, true>(a, begin, end);
  else ei_step_dispatch_threshold<acc_t, K, false>(a, begin, end);
}

template <typename acc_t>
DA_INLINE void ei_step_range_impl(const EiStepArgs<acc_t>& a, int64_t begin, int64_t end) {
  switch (a.num_history) {
    case 0: return ei_step_dispatch_flags<acc_t, 0>(a, begin, end);
    case 1: return ei_step_dispatch_flags<acc_t, 1>(a, begin, end);
    case 2: return ei_step_dispatch_flags<acc_t, 2>(a, begin, end);
    case 3: return ei_step_dispatch_flags<acc_t, 3>(a, begin, end);
    case 4: return ei_step_dispatch_flags<acc_t, 4>(a, begin, end);
  }
}

// The data term d = c_x * x + c_m * m is computed on the fly for
// the selection (d is not written twice); with apply, the sample's update
// follows at once, while its x and m are still in cache. (The update is a call
// of ei_step_range, not its body inlined again: each of this function's clones
// would otherwise compile all thirty of the update's variants a second time, and
// this file was the build's critical path: 8 of its 9 minutes on 2 cores.)
template <typename acc_t>
DA_INLINE void ei_step_dynamic_samples_impl(const EiStepArgs<acc_t>& a, const DynamicThreshold& t, acc_t* scale,
                                            int64_t sample_begin, int64_t sample_end, bool apply) {
  SelectionScratch<acc_t> scratch;
  const int64_t n = a.per_sample;
  auto selection = [&](int64_t b, auto&& use) DA_LAMBDA_INLINE {
    const acc_t* row = a.coeffs + b * a.coeff_stride;
    auto values = [&](int64_t offset, int64_t len, acc_t* buf) DA_LAMBDA_INLINE {
      acc_t x_buf[kBlock], m_buf[kBlock];
      const acc_t* x = load_block(a.x, b * n + offset, len, x_buf);
      const acc_t* m = load_block(a.model_out, b * n + offset, len, m_buf);
      DA_IVDEP for (int64_t i = 0; i < len; ++i) buf[i] = ei_data_term(row, x[i], m[i]);
      return static_cast<const acc_t*>(buf);
    };
    DataTerm<acc_t> term{};
    const bool in_memory = is_direct<acc_t>(a.x) && is_direct<acc_t>(a.model_out);
    if (in_memory) {
      term = {static_cast<const acc_t*>(a.x.data) + b * n, static_cast<const acc_t*>(a.model_out.data) + b * n, row};
    }
    SampledSelection<acc_t, decltype(values)> selected(n, t.ratio, nullptr, in_memory ? &term : nullptr, values,
                                                       scratch);
    use(selected);
  };
  auto pass = [&](int64_t b) DA_LAMBDA_INLINE { ei_step_range(a, b * n, (b + 1) * n); };
  auto pinned_pass = [&](int64_t b, const ScalePin<acc_t>& pin, PinCount& count) DA_LAMBDA_INLINE {
    EiStepArgs<acc_t> pinned = a;
    pinned.limit = pinned.divisor = &pin.scale;
    pinned.threshold_stride = 0;
    pinned.counting = {&pin, &count};
    ei_step_range(pinned, b * n, (b + 1) * n);
  };
  dynamic_threshold_samples<acc_t>(t, n, scale, sample_begin, sample_end, apply, selection, pass, pinned_pass);
}

}  // namespace

void ei_step_range(const EiStepArgs<float>& a, int64_t begin, int64_t end) {
  ei_step_range_impl(a, begin, end);
  streaming_store_fence();
}
void ei_step_range(const EiStepArgs<double>& a, int64_t begin, int64_t end) {
  ei_step_range_impl(a, begin, end);
  streaming_store_fence();
}

DA_CPU_MULTIVERSION void ei_step_dynamic_samples(const EiStepArgs<float>& a, const DynamicThreshold& t, float* scale,
                                                 int64_t sample_begin, int64_t sample_end, bool apply) {
  ei_step_dynamic_samples_impl(a, t, scale, sample_begin, sample_end, apply);
  streaming_store_fence();
}
DA_CPU_MULTIVERSION void ei_step_dynamic_samples(const EiStepArgs<double>& a, const DynamicThreshold& t, double* scale,
                                                 int64_t sample_begin, int64_t sample_end, bool apply) {
  ei_step_dynamic_samples_impl(a, t, scale, sample_begin, sample_end, apply);
  streaming_store_fence();
}

}  // namespace diffaccel::cpu
