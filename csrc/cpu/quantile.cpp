// Selection of the linear-interpolation quantile (torch.quantile's semantics)
// without sorting. The values are magnitudes (>= 0), whose IEEE bit patterns
// order like the values, so a histogram of the top bits (exponent and a few
// mantissa bits) finds the bins holding the two order statistics in one pass;
// only the elements of those bins (a small fraction for real data) are then
// partially ordered with nth_element.
#include <algorithm>
#include <cstring>
#include <vector>

#include "blocks.h"

namespace diffaccel::cpu {
namespace {

template <typename acc_t>
struct MagnitudeBins;

template <>
struct MagnitudeBins<float> {
  using bits_t = uint32_t;
  static constexpr int kShift = 23 - 3;  // 8 exponent + 3 mantissa bits
  static constexpr int kCount = 1 << 11;
};

template <>
struct MagnitudeBins<double> {
  using bits_t = uint64_t;
  static constexpr int kShift = 52 - 1;  // 11 exponent + 1 mantissa bit
  static constexpr int kCount = 1 << 12;
};

template <typename acc_t>
DA_INLINE int magnitude_bin(acc_t v) {
  typename MagnitudeBins<acc_t>::bits_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return int(bits >> MagnitudeBins<acc_t>::kShift);
}

// Interleaved sub-histograms, so that runs of equal bins (common: real data
// sits in a few octaves) do not serialize on one counter.
constexpr int kHistogramLanes = 4;

}  // namespace

template <typename acc_t>
acc_t quantile_of_magnitudes(const acc_t* values, int64_t n, double ratio) {
  using Bins = MagnitudeBins<acc_t>;
  // torch.quantile returns NaN for a row that holds a NaN.
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] != values[i]) return values[i];
  }
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(ratio, n);

  std::vector<int64_t> lanes(size_t(kHistogramLanes) * Bins::kCount, 0);
  int64_t i = 0;
  for (; i + kHistogramLanes <= n; i += kHistogramLanes) {
    for (int l = 0; l < kHistogramLanes; ++l) ++lanes[l * Bins::kCount + magnitude_bin(values[i + l])];
  }
  for (; i < n; ++i) ++lanes[magnitude_bin(values[i])];

  // The bins of the two order statistics, and how many elements sit below the first.
  int bin_below = -1, bin_above = -1;
  int64_t before_below = 0, seen = 0;
  for (int b = 0; b < Bins::kCount && bin_above < 0; ++b) {
    int64_t count = 0;
    for (int l = 0; l < kHistogramLanes; ++l) count += lanes[l * Bins::kCount + b];
    if (bin_below < 0 && seen + count > rank.below) {
      bin_below = b;
      before_below = seen;
    }
    if (seen + count > rank.above) bin_above = b;
    seen += count;
  }

  std::vector<acc_t> candidates;
  for (int64_t j = 0; j < n; ++j) {
    const int b = magnitude_bin(values[j]);
    if (b >= bin_below && b <= bin_above) candidates.push_back(values[j]);
  }
  const int64_t k = rank.below - before_below;
  std::nth_element(candidates.begin(), candidates.begin() + k, candidates.end());
  const acc_t lo = candidates[k];
  acc_t hi = lo;
  if (rank.above > rank.below) hi = *std::min_element(candidates.begin() + k + 1, candidates.end());
  return lerp_like_torch(lo, hi, rank.weight);
}

template float quantile_of_magnitudes<float>(const float*, int64_t, double);
template double quantile_of_magnitudes<double>(const double*, int64_t, double);

}  // namespace diffaccel::cpu
