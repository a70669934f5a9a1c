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
