// Selection of the linear-interpolation quantile (torch.quantile's semantics)
// without sorting: one nth_element for the lower order statistic, then the
// upper one is the smallest value above it.
#include <algorithm>
#include <limits>

#include "blocks.h"

namespace diffaccel::cpu {

template <typename acc_t>
acc_t quantile_of_magnitudes(acc_t* values, int64_t n, double ratio) {
  // torch.quantile returns NaN for a row that holds a NaN.
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] != values[i]) return values[i];
  }
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(ratio, n);
  std::nth_element(values, values + rank.below, values + n);
  const acc_t lo = values[rank.below];
  acc_t hi = lo;
  if (rank.above > rank.below) {
    hi = *std::min_element(values + rank.below + 1, values + n);
  }
  return lerp_like_torch(lo, hi, rank.weight);
}

template float quantile_of_magnitudes<float>(float*, int64_t, double);
template double quantile_of_magnitudes<double>(double*, int64_t, double);

}  // namespace diffaccel::cpu
