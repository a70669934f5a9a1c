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

}  // namespace diffaccel
