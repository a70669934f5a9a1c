// The per-sample quantile of dynamic thresholding by sampled selection, in
// about one vectorized read of the sample (Floyd and Rivest's idea):
//
//   1. a fixed, spread-out sample of kSelectionSample magnitudes gives two
//      values lo <= hi that bracket the wanted order statistics with high
//      probability (quantile.cpp: bracket_from_sample);
//   2. one pass counts the magnitudes below lo and collects those in [lo, hi]
//      (about 2% of them for ratio 0.995), with vector compares and counts
//      (tally.cpp);
//   3. the order statistics are selected among the candidates (by bins of
//      their bit patterns: quantile.cpp's select_rank).
//
// When the bracket misses (the ranks fall outside the candidates) or holds too
// many values (say, constant data), the exact histogram selection of
// quantile.cpp runs instead. Both are exact, so the result is torch.quantile's
// whatever path was taken, and the same bits every run.
//
// Everything here is inlined into the kernels' ISA clones.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string_view>

#include "blocks.h"

namespace diffaccel::cpu {

// Samples below this size are selected exactly: the sampling would cost as
// much as it saves.
constexpr int64_t kSampledSelectionMin = 8192;
constexpr int64_t kSelectionSample = 512;

// Element i of the sample (0 <= i < kSelectionSample) out of n: one element
// from each of kSelectionSample equal windows, at a position within its window
// that a hash of i picks, so that the sample does not line up with the rows or
// channels of an image.
DA_INLINE int64_t sample_position(int64_t i, int64_t n) {
  const int64_t window_begin = i * n / kSelectionSample;
  const int64_t window = (i + 1) * n / kSelectionSample - window_begin;
  const uint64_t hash = ((uint64_t(i) + 1) * 0x9E3779B97F4A7C15ull) >> 32;
  return window_begin + int64_t((hash * uint64_t(window)) >> 32);  // (hash / 2^32 of the window: no division)
}

template <typename acc_t>
struct Bracket {
  acc_t lo, hi;      // the candidates are the values in [lo, hi]
  int64_t capacity;  // more candidates than this: fall back to exact selection
};

// Where to look, from the sample's magnitudes; the sample holds no NaN.
// Defined in quantile.cpp.
template <typename acc_t>
Bracket<acc_t> bracket_from_sample(const acc_t* sample, int64_t n, const QuantileRank<acc_t>& rank);

// The quantile from the candidates, given how many values lie below them;
// false when the ranks fall outside the candidates.
template <typename acc_t>
bool quantile_from_candidates(const acc_t* candidates, int64_t count, int64_t below, const QuantileRank<acc_t>& rank,
                              acc_t* quantile);

// Scratch memory of one thread's selections, reused across its samples;
// grown, never zeroed (every slot read was written first).
template <typename acc_t>
class ScratchBuffer {
 public:
  acc_t* get(int64_t size) {
    if (size > size_) {
      data_.reset(new acc_t[size]);
      size_ = size;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<acc_t[]> data_;
  int64_t size_ = 0;
};
template <typename acc_t>
struct SelectionScratch {
  ScratchBuffer<acc_t> sample, candidates, all;
};

// The tally of step 2 (tally.cpp) over the magnitudes |v| of a block of
// values: below counts those < lo, nan notes a NaN, and those in [lo, hi] are
// appended to candidates in order, counted
// past the capacity but stored only within it (plus kTallySlack slots, which a
// vector store may spill into).
constexpr int64_t kTallySlack = 16;
template <typename acc_t>
struct Tally {
  int64_t below = 0, count = 0;
  bool nan = false;
  acc_t* candidates = nullptr;
  int64_t capacity = 0;
};
void tally_block(const float* v, int64_t n, const Bracket<float>& b, Tally<float>& t);
void tally_block(const double* v, int64_t n, const Bracket<double>& b, Tally<double>& t);
// The same by the version of one level ("avx512f", "avx2" or "portable"), so
// that tests reach every version on one machine; false where this CPU or
// build has no such version.
bool tally_block_by(std::string_view level, const float* v, int64_t n, const Bracket<float>& b, Tally<float>& t);
bool tally_block_by(std::string_view level, const double* v, int64_t n, const Bracket<double>& b, Tally<double>& t);

// The ratio-quantile of |v| over the n values v that values(offset, len, buf)
// yields (a pointer to len values for elements [offset, offset + len), either
// into the data or into buf, which holds kBlock values), as torch.quantile
// finds it; NaN when any is NaN. direct, when not null, holds the n values in
// memory: the tally then runs over all of them in one call.
template <typename acc_t, typename Values>
DA_INLINE acc_t select_quantile(int64_t n, double ratio, const acc_t* direct, Values&& values,
                                SelectionScratch<acc_t>& scratch) {
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(ratio, n);
  if (n >= kSampledSelectionMin) {
    acc_t* sample = scratch.sample.get(kSelectionSample);
    bool nan = false;
    if (direct != nullptr) {
      // The sample's cache lines are fetched all at once (each is a miss when
      // the data is not in cache) before they are read.
      for (int64_t i = 0; i < kSelectionSample; ++i) __builtin_prefetch(direct + sample_position(i, n));
    }
    for (int64_t i = 0; i < kSelectionSample; ++i) {
      const int64_t at = sample_position(i, n);
      acc_t buf[1];
      const acc_t v = std::abs(direct != nullptr ? direct[at] : *values(at, 1, buf));
      sample[i] = v;
      nan |= v != v;
    }
    if (nan) return std::numeric_limits<acc_t>::quiet_NaN();
    const Bracket<acc_t> bracket = bracket_from_sample(sample, n, rank);
    Tally<acc_t> tally;
    tally.candidates = scratch.candidates.get(bracket.capacity + kTallySlack);
    tally.capacity = bracket.capacity;
    if (direct != nullptr) {
      tally_block(direct, n, bracket, tally);
    } else {
      for_each_block(0, n, [&](int64_t offset, int64_t len) DA_LAMBDA_INLINE {
        acc_t buf[kBlock];
        tally_block(values(offset, len, buf), len, bracket, tally);
      });
    }
    if (tally.nan) return std::numeric_limits<acc_t>::quiet_NaN();
    acc_t q;
    if (tally.count <= tally.capacity &&
        quantile_from_candidates(tally.candidates, tally.count, tally.below, rank, &q)) {
      return q;
    }
  }
  acc_t* all = scratch.all.get(n);
  for_each_block(0, n, [&](int64_t offset, int64_t len) DA_LAMBDA_INLINE {
    acc_t buf[kBlock];
    const acc_t* v = values(offset, len, buf);
    DA_IVDEP for (int64_t i = 0; i < len; ++i) all[offset + i] = std::abs(v[i]);
  });
  return quantile_of_magnitudes(all, n, ratio);
}

}  // namespace diffaccel::cpu
