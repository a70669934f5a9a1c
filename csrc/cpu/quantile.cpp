// Selection of the linear-interpolation quantile (torch.quantile's semantics)
// without sorting: the out-of-line parts of the sampled selection of
// selection.h (the bracket from the sample, the pick among the candidates), and
// the exact selection it falls back on. That one uses that the values are
// magnitudes (>= 0), whose IEEE bit patterns order like the values: a histogram
// of the top bits (exponent and a few mantissa bits) finds the bins holding the
// two order statistics in one pass; only the elements of those bins (a small
// fraction for real data) are then partially ordered with nth_element.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "blocks.h"
#include "selection.h"

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

// The ranks' position in the sample is binomially spread around
// rank / n * kSelectionSample; lo and hi sit 3 standard deviations (plus 2
// elements) to either side, so a miss (and the exact fallback) is rare.
template <typename acc_t>
Bracket<acc_t> bracket_from_sample(acc_t* sample, int64_t n, const QuantileRank<acc_t>& rank) {
  const int64_t s = kSelectionSample;
  const double p_below = double(rank.below) / double(n), p_above = double(rank.above + 1) / double(n);
  const double spread = 3.0 * std::sqrt(double(s) * std::max(p_below * (1 - p_below), p_above * (1 - p_above))) + 2;
  const int64_t k_lo = int64_t(std::floor(p_below * double(s) - spread));
  const int64_t k_hi = int64_t(std::ceil(p_above * double(s) + spread));
  Bracket<acc_t> b;
  b.hi = std::numeric_limits<acc_t>::infinity();
  if (k_hi < s) {
    std::nth_element(sample, sample + k_hi, sample + s);
    b.hi = sample[k_hi];
  }
  b.lo = acc_t(0);
  if (k_lo > 0) {
    std::nth_element(sample, sample + k_lo, sample + std::min(k_hi, s));
    b.lo = sample[k_lo];
  }
  // Room for four times the expected number of candidates.
  const int64_t expected = (std::min(k_hi, s) - std::max<int64_t>(k_lo, 0) + 1) * (n / s + 1);
  b.capacity = std::min(n, 4 * expected + 64);
  return b;
}

template <typename acc_t>
bool quantile_from_candidates(acc_t* candidates, int64_t count, int64_t below, const QuantileRank<acc_t>& rank,
                              acc_t* quantile) {
  if (rank.below < below || rank.above >= below + count) return false;
  const int64_t k = rank.below - below;
  std::nth_element(candidates, candidates + k, candidates + count);
  const acc_t lo = candidates[k];
  acc_t hi = lo;
  if (rank.above > rank.below) hi = *std::min_element(candidates + k + 1, candidates + count);
  *quantile = lerp_like_torch(lo, hi, rank.weight);
  return true;
}

template float quantile_of_magnitudes<float>(const float*, int64_t, double);
template double quantile_of_magnitudes<double>(const double*, int64_t, double);
template Bracket<float> bracket_from_sample<float>(float*, int64_t, const QuantileRank<float>&);
template Bracket<double> bracket_from_sample<double>(double*, int64_t, const QuantileRank<double>&);
template bool quantile_from_candidates<float>(float*, int64_t, int64_t, const QuantileRank<float>&, float*);
template bool quantile_from_candidates<double>(double*, int64_t, int64_t, const QuantileRank<double>&, double*);

}  // namespace diffaccel::cpu
