// The per-sample scale of dynamic thresholding (Imagen; diffusers'
// _threshold_sample and the official DPM-Solver's dynamic_thresholding_fn):
// the linear-interpolation quantile of |x| as torch.quantile defines it, then
// the style's clamp. Shared by the CPU and CUDA selection kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "diffaccel/config.h"

namespace diffaccel {

enum class ThresholdStyle : int { kDiffusers = 0, kDpmSolver = 1 };

// Above this many elements torch.quantile refuses; up to it, ranks are computed
// as torch does (ratio rounded to acc_t, times n - 1, in acc_t). Beyond it a
// float rank could not even name the element, so the rank is computed in double.
constexpr int64_t kTorchQuantileMaxSize = int64_t(1) << 24;

template <typename acc_t>
struct QuantileRank {
  int64_t below;  // index of the lower order statistic
  int64_t above;  // index of the upper order statistic
  acc_t weight;   // interpolation weight of the upper one
};

template <typename acc_t>
DA_HOST_DEVICE inline QuantileRank<acc_t> quantile_rank(double ratio, int64_t n) {
  QuantileRank<acc_t> r;
  if (n <= kTorchQuantileMaxSize) {
    const acc_t rank = static_cast<acc_t>(ratio) * static_cast<acc_t>(n - 1);
    r.below = static_cast<int64_t>(rank);
    r.weight = rank - static_cast<acc_t>(r.below);
    r.above = static_cast<int64_t>(std::ceil(rank));
  } else {
    const double rank = ratio * static_cast<double>(n - 1);
    r.below = static_cast<int64_t>(rank);
    r.weight = static_cast<acc_t>(rank - static_cast<double>(r.below));
    r.above = static_cast<int64_t>(std::ceil(rank));
  }
  if (r.above > n - 1) r.above = n - 1;
  return r;
}

// ---- The sampled bracket (Floyd and Rivest's idea), shared by the CPU
// selection (csrc/cpu/selection.h) and the CUDA multi-block one
// (csrc/cuda/radix_select.cuh): a fixed, spread-out sample of a sample's
// magnitudes gives two values lo <= hi that bracket the wanted order
// statistics with high probability; one pass then counts the magnitudes below
// lo and collects those in [lo, hi], and the order statistics are selected
// among those candidates. A bracket that misses (or holds too many) costs a
// fallback, never a wrong result.

// Samples below this size are selected exactly (CPU): the sampling would cost
// as much as it saves.
constexpr int64_t kSampledSelectionMin = 8192;
// The sample holds 2^log2 magnitudes: 256 below 32768 values, 512 from there.
// Chosen on the CPU, where each element of it is a random read (some 8 ns
// apiece on the 2-core VM where it was measured, the data in cache); a larger
// sample narrows the bracket (fewer candidates to tally and select among) but
// costs more than that saves on the benchmark's sizes: 2^9 at 16384 values was
// 15% slower than 2^8, 2^10 slower at 65536 and 262144. (The GPU, which
// samples from 65536 values, takes the same 512.)
DA_HOST_DEVICE inline int selection_sample_log2(int64_t n) { return n < 4 * kSampledSelectionMin ? 8 : 9; }

// Element i of the sample (0 <= i < 2^log2) out of n: one element from each
// of 2^log2 equal windows, at a position within its window that a hash of i
// picks, so that the sample does not line up with the rows or channels of an
// image.
DA_HOST_DEVICE inline int64_t sample_position(int64_t i, int64_t n, int log2) {
  const int64_t window_begin = (i * n) >> log2;
  const int64_t window = (((i + 1) * n) >> log2) - window_begin;
  const uint64_t hash = ((uint64_t(i) + 1) * 0x9E3779B97F4A7C15ull) >> 32;
  return window_begin + int64_t((hash * uint64_t(window)) >> 32);  // (hash / 2^32 of the window: no division)
}

// How far a bracket reaches beyond the ranks' expected position in the
// sample: sds standard deviations of that position plus values sample values.
// The narrow bracket misses about one sample in ten (at ratio 0.995, 9% of
// 400 normal samples of 16384 values, 12% of 200 of 65536), which then costs
// a second tally, with the wide one, over data the first brought into cache;
// the wide one misses about one in 4000 or fewer, for the exact selection.
// Measured on the 2-core VM (a C++ loop over the CPU kernel on 16 x 16384
// float32, one thread, 64 different samples): the narrow one first took 12%
// less time than the wide one alone, for it collects and picks among about
// half the candidates; with no margin at all it missed half the time and was
// no faster than the wide one alone. In the op benchmark:
// bench/results/2026-12-04-cpu-2.md. (The GPU tries the wide one only: a miss
// there costs three more passes over the sample.)
struct BracketMargin {
  double sds, values;
};
constexpr BracketMargin kNarrowMargin{0.5, 1.0}, kWideMargin{3.0, 2.0};

// The sample ranks (0 = the smallest of `size` sampled magnitudes) at a
// bracket's ends for `rank` in n values: lo <= 0 means from zero, hi >= size
// up to infinity.
struct SampleRanks {
  int64_t lo, hi;
};
template <typename acc_t>
inline SampleRanks bracket_sample_ranks(const QuantileRank<acc_t>& rank, int64_t n, int64_t size,
                                        const BracketMargin& margin) {
  const double p_below = double(rank.below) / double(n), p_above = double(rank.above + 1) / double(n);
  const double q_below = p_below * (1 - p_below), q_above = p_above * (1 - p_above);
  const double sd = std::sqrt(double(size) * (q_below > q_above ? q_below : q_above));
  const double spread = margin.sds * sd + margin.values;
  return {int64_t(std::floor(p_below * double(size) - spread)), int64_t(std::ceil(p_above * double(size) + spread))};
}

// torch.lerp's formula, which switches ends at weight 0.5 for accuracy.
template <typename acc_t>
DA_HOST_DEVICE inline acc_t lerp_like_torch(acc_t lo, acc_t hi, acc_t weight) {
  const acc_t diff = hi - lo;
  return weight < acc_t(0.5) ? lo + weight * diff : hi - diff * (acc_t(1) - weight);
}

// From the quantile q of |x| to the scale s of clamp(x, -s, s) / s.
// diffusers: s = clamp(q, 1, max_value) (torch.clamp: min first, then max);
// dpm-solver: s = max(q, max_value). A NaN quantile stays NaN, as in torch.
template <typename acc_t>
DA_HOST_DEVICE inline acc_t dynamic_threshold_scale(acc_t q, ThresholdStyle style, acc_t max_value) {
  if (q != q) return q;
  if (style == ThresholdStyle::kDpmSolver) return q < max_value ? max_value : q;
  const acc_t at_least_one = q < acc_t(1) ? acc_t(1) : q;
  return at_least_one > max_value ? max_value : at_least_one;
}

// Where the style's clamp holds the scale at one of its bounds, the scale is
// known without the quantile's exact value, from a count: for finite values,
// q >= edge when at most rank.below magnitudes lie below edge (the lower order
// statistic is then >= edge, and lerp_like_torch never leaves [lower, upper]),
// and q <= edge when at most n - 1 - rank.above lie above it. (An infinity
// disproves every pin: torch's lerp between infinities is NaN.) A sample's
// elementwise pass can then run at once with the pinned scale while it
// counts, and only a sample whose count disproves the pin (or that holds a
// NaN or an infinity) needs the selection: one pass over memory instead of two
// where the clamp saturates, as it does whenever |x| is mostly beyond
// max_value, mostly within 1, or (diffusers' default sample_max_value = 1)
// always.
template <typename acc_t>
struct ScalePin {
  acc_t scale;  // dynamic_threshold_scale(q) for every q the pin holds for
  acc_t edge;   // it holds for q >= edge (from_above), else for q <= edge
  bool from_above;
  DA_HOST_DEVICE bool holds_for(acc_t q) const { return from_above ? q >= edge : q <= edge; }
  // How many of n magnitudes may lie off side (strictly below the edge from
  // above, strictly above it from below) with the pin still holding. (The CPU
  // counts them on bit patterns: csrc/cpu/selection.h, PinCounter.)
  DA_HOST_DEVICE int64_t allowed_off_side(const QuantileRank<acc_t>& rank, int64_t n) const {
    return from_above ? rank.below : n - 1 - rank.above;
  }
};

// The pins of a style: diffusers' clamp(q, 1, max_value) holds at max_value
// for q >= max_value and at 1 for q <= 1 (for max_value <= 1 at max_value for
// every q: the edge 0, which no magnitude lies below); dpm-solver's
// max(q, max_value) at max_value for q <= max_value.
template <typename acc_t>
struct ScalePins {
  ScalePin<acc_t> pin[2];
  int count;
  // The index of a pin that holds for every quantile (the edge 0, from above),
  // or -1.
  DA_HOST_DEVICE int unconditional() const {
    for (int i = 0; i < count; ++i) {
      if (pin[i].from_above && pin[i].edge <= acc_t(0)) return i;
    }
    return -1;
  }
  // The index of the first pin that holds for q, or -1 (also for NaN).
  DA_HOST_DEVICE int holding(acc_t q) const {
    for (int i = 0; i < count; ++i) {
      if (pin[i].holds_for(q)) return i;
    }
    return -1;
  }
};

template <typename acc_t>
DA_HOST_DEVICE inline ScalePins<acc_t> scale_pins(ThresholdStyle style, acc_t max_value) {
  ScalePins<acc_t> p;
  if (style == ThresholdStyle::kDpmSolver) {
    p.pin[0] = {max_value, max_value, false};
    p.count = 1;
  } else if (max_value <= acc_t(1)) {
    p.pin[0] = {max_value, acc_t(0), true};
    p.count = 1;
  } else {
    p.pin[0] = {max_value, max_value, true};
    p.pin[1] = {acc_t(1), acc_t(1), false};
    p.count = 2;
  }
  return p;
}

}  // namespace diffaccel
