// Selection of the linear-interpolation quantile (torch.quantile's semantics)
// without sorting: the out-of-line parts of the sampled selection of
// selection.h (the bracket from the sample, the pick among the candidates), and
// the exact selection it falls back on. Both use that the values are
// magnitudes (>= 0), whose IEEE bit patterns order like the values: a histogram
// of the top bits (exponent and a few mantissa bits) finds the bins holding the
// two order statistics in one pass; only the elements of those bins (a small
// fraction for real data) are then selected among (select_rank).
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
DA_INLINE typename MagnitudeBins<acc_t>::bits_t bits_of(acc_t v) {
  typename MagnitudeBins<acc_t>::bits_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

template <typename acc_t>
DA_INLINE int magnitude_bin(acc_t v) {
  return int(bits_of(v) >> MagnitudeBins<acc_t>::kShift);
}

// Interleaved sub-histograms, so that runs of equal bins (common: real data
// sits in a few octaves) do not serialize on one counter.
constexpr int kHistogramLanes = 4;

// A histogram of n >= 1 magnitudes (>= 0, no NaN) by their bit patterns
// (which order like the values), over the range of patterns they span, in
// about as many bins as values (16 to 1024) of 2^shift patterns each.
constexpr int64_t kRankBins = 1024;
template <typename acc_t>
struct RankBins {
  using bits_t = typename MagnitudeBins<acc_t>::bits_t;
  int64_t n;
  bits_t least, most;
  int shift = 0;
  int64_t bins;
  int64_t count[kRankBins];

  RankBins(const acc_t* v, int64_t n_values) : n(n_values) {
    least = most = bits_of(v[0]);
    for (int64_t i = 1; i < n; ++i) {
      const bits_t b = bits_of(v[i]);
      least = b < least ? b : least;
      most = b > most ? b : most;
    }
    int64_t max_bins = kRankBins;
    while (max_bins > 16 && max_bins / 2 >= n) max_bins /= 2;
    while (((most - least) >> shift) >= bits_t(max_bins)) ++shift;
    bins = int64_t((most - least) >> shift) + 1;
    std::fill(count, count + bins, 0);
    for (int64_t i = 0; i < n; ++i) ++count[bin_of(v[i])];
  }
  int64_t bin_of(acc_t v) const { return int64_t((bits_of(v) - least) >> shift); }
  // The bin that holds rank k (0 <= k < n), and how many values lie in the
  // bins below it; counted from the nearer end (a quantile near 1 is the
  // common case).
  int64_t bin_of_rank(int64_t k, int64_t* before) const {
    int64_t bin, below;
    if (2 * k < n) {
      for (bin = 0, below = 0; below + count[bin] <= k; ++bin) below += count[bin];
    } else {
      for (bin = bins - 1, below = n - count[bin]; below > k;) below -= count[--bin];
    }
    *before = below;
    return bin;
  }
  // The least and the largest value a bin can hold (the largest no more than
  // the largest value: a finite value or infinity, never a NaN pattern).
  acc_t lower_edge(int64_t bin) const { return value_of(least + (bits_t(bin) << shift)); }
  acc_t upper_edge(int64_t bin) const {
    const bits_t top = least + ((bits_t(bin + 1) << shift) - 1);
    return value_of(top < most ? top : most);
  }
  static acc_t value_of(bits_t bits) {
    acc_t v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
};

// The k-th smallest (0-based) of count >= 1 magnitudes (>= 0, no NaN), and
// with next the (k + 1)-th (k + 1 < count), without reordering them. Where
// std::nth_element mispredicts a branch on about every other element (some
// 10 ns each on fresh data: most of the selection's time), this bins the
// values (RankBins), and goes on with only the bins that hold the two ranks:
// again the same way while that narrows the values down, by nth_element once
// they are few (or all alike). The same values as nth_element, whatever the
// data.
constexpr int64_t kRankFew = 48;
template <typename acc_t>
acc_t select_rank(const acc_t* v, int64_t count, int64_t k, acc_t* next) {
  const RankBins<acc_t> histogram(v, count);
  if (histogram.bins == 1) {  // all alike (ties at the ranks: clipped data)
    if (next != nullptr) *next = v[0];
    return v[0];
  }
  int64_t before;  // the values in the bins below the first
  const int64_t first = histogram.bin_of_rank(k, &before);
  int64_t last = first;  // the bin of rank k + 1
  if (next != nullptr && k + 1 >= before + histogram.count[first]) {
    ++last;
    while (histogram.count[last] == 0) ++last;
  }
  // The bins in between are empty. Every value is stored and kept or not by
  // its bin (no branch to mispredict), so held has one slot to spare.
  std::vector<acc_t> held(size_t(histogram.count[first] + (last == first ? 0 : histogram.count[last]) + 1));
  int64_t kept = 0;
  for (int64_t i = 0; i < count; ++i) {
    held[size_t(kept)] = v[i];
    kept += uint64_t(histogram.bin_of(v[i]) - first) <= uint64_t(last - first);
  }
  held.pop_back();
  const int64_t at = k - before;
  if (kept > kRankFew && kept < count) return select_rank(held.data(), kept, at, next);
  std::nth_element(held.begin(), held.begin() + at, held.end());
  if (next != nullptr) *next = *std::min_element(held.begin() + at + 1, held.end());
  return held[size_t(at)];
}

// The quantile of the given rank from count magnitudes that hold both its
// order statistics, below of the values lying below them.
template <typename acc_t>
acc_t quantile_among(const acc_t* v, int64_t count, int64_t below, const QuantileRank<acc_t>& rank) {
  acc_t hi;
  const bool interpolated = rank.above > rank.below;
  const acc_t lo = select_rank(v, count, rank.below - below, interpolated ? &hi : nullptr);
  return lerp_like_torch(lo, interpolated ? hi : lo, rank.weight);
}

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
  return quantile_among(candidates.data(), int64_t(candidates.size()), before_below, rank);
}

// Each bracket reaches from the sample rank bracket_sample_ranks gives for
// its margin (kNarrowMargin or kWideMargin) below the wanted ranks to the one
// above them, out to the outer edges of the bins of one histogram of the sample that hold the
// values there (one pass for both brackets; the exact values would take a
// selection apiece, and a bin is a small part of a bracket).
template <typename acc_t>
SampleBrackets<acc_t> brackets_from_sample(const acc_t* sample, int64_t size, int64_t n,
                                           const QuantileRank<acc_t>& rank) {
  const RankBins<acc_t> histogram(sample, size);
  auto bracket = [&](const BracketMargin& margin) {
    const SampleRanks k = bracket_sample_ranks(rank, n, size, margin);
    int64_t before;
    Bracket<acc_t> b;
    b.lo = k.lo > 0 ? histogram.lower_edge(histogram.bin_of_rank(k.lo, &before)) : acc_t(0);
    b.hi = k.hi < size ? histogram.upper_edge(histogram.bin_of_rank(k.hi, &before))
                       : std::numeric_limits<acc_t>::infinity();
    // Room for four times the expected number of candidates.
    const int64_t expected = (std::min(k.hi, size) - std::max<int64_t>(k.lo, 0) + 1) * (n / size + 1);
    b.capacity = std::min(n, 4 * expected + 64);
    return b;
  };
  return {bracket(kNarrowMargin), bracket(kWideMargin)};
}

template <typename acc_t>
bool quantile_from_candidates(const acc_t* candidates, int64_t count, int64_t below, const QuantileRank<acc_t>& rank,
                              acc_t* quantile) {
  if (rank.below < below || rank.above >= below + count) return false;
  *quantile = quantile_among(candidates, count, below, rank);
  return true;
}

template float quantile_of_magnitudes<float>(const float*, int64_t, double);
template double quantile_of_magnitudes<double>(const double*, int64_t, double);
template SampleBrackets<float> brackets_from_sample<float>(const float*, int64_t, int64_t, const QuantileRank<float>&);
template SampleBrackets<double> brackets_from_sample<double>(const double*, int64_t, int64_t,
                                                             const QuantileRank<double>&);
template bool quantile_from_candidates<float>(const float*, int64_t, int64_t, const QuantileRank<float>&, float*);
template bool quantile_from_candidates<double>(const double*, int64_t, int64_t, const QuantileRank<double>&, double*);

}  // namespace diffaccel::cpu
