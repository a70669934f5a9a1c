// The per-sample quantile of dynamic thresholding by sampled selection, in
// about one vectorized read of the sample (Floyd and Rivest's idea):
//
//   1. a fixed, spread-out sample of 256 or 512 magnitudes gives two
//      values lo <= hi that bracket the wanted order statistics with high
//      probability (quantile.cpp: brackets_from_sample);
//   2. one pass counts the magnitudes below lo and collects those in [lo, hi]
//      (about 2% of them for ratio 0.995), with vector compares and counts
//      (tally.cpp);
//   3. the order statistics are selected among the candidates (by bins of
//      their bit patterns: quantile.cpp's select_rank).
//
// The sample gives a narrow bracket, tried first, and a wide one, tried when
// the narrow one misses (the ranks fall outside its candidates) or holds too
// many values; when the wide one fails too (a misleading sample, or constant
// data), the exact histogram selection of quantile.cpp runs instead. Each is
// exact, so the result is torch.quantile's whatever path was taken, and the
// same bits every run. The sample's size and positions and the brackets'
// margins are shared with the CUDA selection (diffaccel/quantile.h).
//
// Everything here is inlined into the kernels' ISA clones.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string_view>
#include <type_traits>

#include "blocks.h"
#include "diffaccel/elementwise.h"

namespace diffaccel::cpu {

template <typename acc_t>
struct Bracket {
  acc_t lo, hi;      // the candidates are the values in [lo, hi]
  int64_t capacity;  // more candidates than this: the bracket fails (as when it misses)
};

template <typename acc_t>
struct SampleBrackets {
  Bracket<acc_t> narrow, wide;
};

// Where to look, from the sample's magnitudes; the sample holds no NaN.
// Defined in quantile.cpp.
template <typename acc_t>
SampleBrackets<acc_t> brackets_from_sample(const acc_t* sample, int64_t size, int64_t n,
                                           const QuantileRank<acc_t>& rank);

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

  // The sample's positions (sample_position) in samples of n values: the
  // same for every sample of a call, so found once per thread and call
  // rather than per sample (their 64-bit multiplies, and the loops that
  // would find them twice, prefetch and read, cost about a third of a
  // draw's time).
  // (n decides everything about them, their count included: the cache is
  // keyed by n alone.)
  DA_INLINE const int64_t* sample_positions(int64_t n) {
    const int log2 = selection_sample_log2(n);
    const int64_t size = int64_t(1) << log2;
    int64_t* at = positions_.get(size);
    if (n != positions_n_) {
      for (int64_t i = 0; i < size; ++i) at[i] = sample_position(i, n, log2);
      positions_n_ = n;
    }
    return at;
  }

 private:
  ScratchBuffer<int64_t> positions_;
  int64_t positions_n_ = -1;
};

// The tally of step 2 (tally.cpp) over the magnitudes |v| of a block of
// values: below counts those < lo, nan notes a NaN, and those in [lo, hi] are
// appended to candidates in order, stored only within the capacity (plus
// kTallySlack slots, which a vector store may spill into). Once more than the
// capacity are found the tally stops (later blocks too): the next bracket or
// the exact fallback, which read the whole sample again, take over, and what
// the rest would add is not needed (below and nan cover only what was read).
constexpr int64_t kTallySlack = 16;
template <typename acc_t>
struct Tally {
  int64_t below = 0, count = 0;
  bool nan = false;
  acc_t* candidates = nullptr;
  int64_t capacity = 0;
  bool overflowed() const { return count > capacity; }
};
void tally_block(const float* v, int64_t n, const Bracket<float>& b, Tally<float>& t);
void tally_block(const double* v, int64_t n, const Bracket<double>& b, Tally<double>& t);
// The same over ei_step's data term v[i] = c_x * x[i] + c_m * m[i] (as
// ei_data_term computes it), computed in the tally's own loop instead of
// written to a buffer block by block and read back: ei_step with the
// quantile as the scale took 9-12% less time (a C++ loop over its kernel,
// one core of the 2-core VM, 16384 and 65536 values a sample) and 6% less in
// the op benchmark (bench/results/2026-12-05-cpu-3.md).
template <typename acc_t>
struct DataTerm {
  const acc_t *x, *m;
  const acc_t* row;  // ei_step's coefficient row: c_x = row[0], c_m = row[1]
  DA_INLINE acc_t at(int64_t i) const { return ei_data_term(row, x[i], m[i]); }
};

// A DataTerm copied into a local before a loop over it (LocalRow's reason:
// read through the DataTerm, gcc reloads its pointers and coefficients after
// every store, which might have changed them as far as it can tell).
template <typename acc_t>
struct LocalTerm {
  const acc_t *x, *m;
  LocalRow<acc_t, 2> row;  // c_x, c_m
  DA_INLINE explicit LocalTerm(const DataTerm<acc_t>& d) : x(d.x), m(d.m), row(d.row) {}
  DA_INLINE acc_t at(int64_t i) const { return ei_data_term(row.at, x[i], m[i]); }
};

void tally_block(const DataTerm<float>& v, int64_t n, const Bracket<float>& b, Tally<float>& t);
void tally_block(const DataTerm<double>& v, int64_t n, const Bracket<double>& b, Tally<double>& t);
// The same by the version of one level ("avx512f", "avx2" or "portable"), so
// that tests reach every version on one machine; false where this CPU or
// build has no such version.
bool tally_block_by(std::string_view level, const float* v, int64_t n, const Bracket<float>& b, Tally<float>& t);
bool tally_block_by(std::string_view level, const double* v, int64_t n, const Bracket<double>& b, Tally<double>& t);
bool tally_block_by(std::string_view level, const DataTerm<float>& v, int64_t n, const Bracket<float>& b,
                    Tally<float>& t);
bool tally_block_by(std::string_view level, const DataTerm<double>& v, int64_t n, const Bracket<double>& b,
                    Tally<double>& t);

// The ratio-quantile of |v| over the n values v that values(offset, len, buf)
// yields (a pointer to len values for elements [offset, offset + len), either
// into the data or into buf, which holds kBlock values), as torch.quantile
// finds it; NaN when any is NaN. direct, when not null, holds the n values in
// memory, and term, when not null, gives them as ei_step's data term over x
// and m in memory: the tally then runs over all of them in one call. In two
// steps, so that a caller can look at the bracket before the tally: draw()
// takes the sample (once), quantile() the rest. (Inlined, like everything the
// kernels' ISA clones call: a call out of a clone runs the baseline build.)
template <typename acc_t, typename Values>
class SampledSelection {
 public:
  SampledSelection(int64_t n, double ratio, const acc_t* direct, const DataTerm<acc_t>* term, Values& values,
                   SelectionScratch<acc_t>& scratch)
      : n_(n),
        ratio_(ratio),
        rank_(quantile_rank<acc_t>(ratio, n)),
        direct_(direct),
        term_(term),
        values_(values),
        scratch_(scratch) {}

  // The wide bracket from the sample (the one a prediction can trust), or null
  // when n is too small to sample (or the sample holds a NaN).
  DA_INLINE const Bracket<acc_t>* draw() {
    if (drawn_) return sampled_ ? &brackets_.wide : nullptr;
    drawn_ = true;
    if (n_ < kSampledSelectionMin) return nullptr;
    const int log2 = selection_sample_log2(n_);
    const int64_t size = int64_t(1) << log2;
    acc_t* sample = scratch_.sample.get(size);
    const int64_t* at = scratch_.sample_positions(n_);
    if (direct_ != nullptr) {
      // The sample's cache lines are fetched all at once (each is a miss when
      // the data is not in cache) before they are read. (Not over the data
      // term's x and m: no faster there.)
      for (int64_t i = 0; i < size; ++i) __builtin_prefetch(direct_ + at[i]);
      DA_IVDEP for (int64_t i = 0; i < size; ++i) sample[i] = std::abs(direct_[at[i]]);
    } else if (term_ != nullptr) {
      const LocalTerm<acc_t> term(*term_);
      for (int64_t i = 0; i < size; ++i) sample[i] = std::abs(term.at(at[i]));
    } else {
      for (int64_t i = 0; i < size; ++i) {
        acc_t buf[1];
        sample[i] = std::abs(*values_(at[i], 1, buf));
      }
    }
    bool nan = false;
    acc_t most = 0;
    for (int64_t i = 0; i < size; ++i) {
      const acc_t v = sample[i];
      nan |= v != v;
      most = v > most ? v : most;
    }
    nan_ = nan;
    sample_max_ = most;
    if (nan_) return nullptr;
    brackets_ = brackets_from_sample(sample, size, n_, rank_);
    sampled_ = true;
    return &brackets_.wide;
  }

  // The sample's largest magnitude (after a draw that gave a bracket): where
  // the bracket reaches past the sample (hi infinite, as for ratios near 1), a
  // prediction that the quantile stays below a value looks at this instead.
  acc_t sample_max() const { return sample_max_; }

  DA_INLINE acc_t quantile() {
    draw();
    if (nan_) return std::numeric_limits<acc_t>::quiet_NaN();
    if (sampled_) {
      for (const Bracket<acc_t>* bracket : {&brackets_.narrow, &brackets_.wide}) {
        Tally<acc_t> tally;
        tally.candidates = scratch_.candidates.get(bracket->capacity + kTallySlack);
        tally.capacity = bracket->capacity;
        if (direct_ != nullptr) {
          tally_block(direct_, n_, *bracket, tally);
        } else if (term_ != nullptr) {
          tally_block(*term_, n_, *bracket, tally);
        } else {
          for_each_block(0, n_, [&](int64_t offset, int64_t len) DA_LAMBDA_INLINE {
            acc_t buf[kBlock];
            if (!tally.overflowed()) tally_block(values_(offset, len, buf), len, *bracket, tally);
          });
        }
        if (tally.nan) return std::numeric_limits<acc_t>::quiet_NaN();
        acc_t q;
        if (!tally.overflowed() && quantile_from_candidates(tally.candidates, tally.count, tally.below, rank_, &q)) {
          return q;
        }
      }
    }
    acc_t* all = scratch_.all.get(n_);
    for_each_block(0, n_, [&](int64_t offset, int64_t len) DA_LAMBDA_INLINE {
      acc_t buf[kBlock];
      const acc_t* v = values_(offset, len, buf);
      DA_IVDEP for (int64_t i = 0; i < len; ++i) all[offset + i] = std::abs(v[i]);
    });
    return quantile_of_magnitudes(all, n_, ratio_);
  }

 private:
  int64_t n_;
  double ratio_;
  QuantileRank<acc_t> rank_;
  const acc_t* direct_;
  const DataTerm<acc_t>* term_;
  Values& values_;
  SelectionScratch<acc_t>& scratch_;
  bool drawn_ = false, sampled_ = false, nan_ = false;
  acc_t sample_max_ = 0;
  SampleBrackets<acc_t> brackets_{};
};

// A pinned pass's count (PinCount), kept in the pass's own loop over a
// block: the magnitudes are compared as bit patterns (which order like the
// values; a NaN's lies above infinity's), so that the count is integer adds
// and one max a vector, which vectorize beside the pass's float math:
//   PinCounter<acc_t>::Block block;                       // before the loop
//   block.add(counter, v);                                // each value
//   counter.finish(block);                                // after it
template <typename acc_t>
class PinCounter {
 public:
  using bits_t = std::conditional_t<sizeof(acc_t) == 4, uint32_t, uint64_t>;
  struct Block {
    bits_t off_side = 0, most = 0;  // most: the largest magnitude's bits
    DA_INLINE void add(const PinCounter& c, acc_t v) {
      const bits_t m = bits_of(v) & kMagnitudeMask;
      off_side += ((m - c.edge_) ^ c.flip_) >> kSignShift;
      most = m > most ? m : most;
    }
  };
  DA_INLINE explicit PinCounter(const PinCounting<acc_t>& counting) : count_(counting.pin_count) {
    if (counting.pin == nullptr) return;
    // Off side: m < edge (from above), or m >= edge + 1, i.e. m > edge (from
    // below): the sign of m - edge, flipped for the latter. (+ 0 makes a -0
    // edge +0; edges are >= 0.)
    const ScalePin<acc_t>& pin = *counting.pin;
    edge_ = bits_of(pin.edge + acc_t(0)) + (pin.from_above ? 0 : 1);
    flip_ = pin.from_above ? bits_t(0) : ~bits_t(0);
  }
  DA_INLINE void finish(const Block& block) const {
    count_->off_side += int64_t(block.off_side);
    count_->nonfinite += block.most >= bits_of(std::numeric_limits<acc_t>::infinity());
  }

 private:
  static constexpr int kSignShift = 8 * sizeof(bits_t) - 1;
  static constexpr bits_t kMagnitudeMask = ~bits_t(0) >> 1;
  static DA_INLINE bits_t bits_of(acc_t v) {
    bits_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  }
  PinCount* count_;
  bits_t edge_ = 0, flip_ = 0;
};

// Dynamic thresholding's per-sample loop over samples [begin, end) of n
// values each, shared by threshold and ei_step:
//   selection(b, use) calls use(s) with sample b's SampledSelection s;
//   pass(b) runs sample b's elementwise pass with scale[b];
//   pinned_pass(b, pin, count) runs it with pin.scale, adding to count.
// With speculate (set when no output shares memory with an input, so that a
// pass can be run again), a sample whose scale a pin is expected to hold runs
// its pass pinned at once, and falls back on the selection and a second pass
// only when the count disproves the pin. Expected: a pin that holds for every
// quantile, from the start; else the previous sample's outcome; for a
// thread's first sample, a pin whose side the sampled selection's bracket
// (or its sample's largest value) lies on. The scales are the selection's
// whichever way a sample goes.
template <typename acc_t, typename Selection, typename Pass, typename PinnedPass>
DA_INLINE void dynamic_threshold_samples(const DynamicThreshold& t, int64_t n, acc_t* scale, int64_t begin, int64_t end,
                                         bool apply, Selection&& selection, Pass&& pass, PinnedPass&& pinned_pass) {
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(t.ratio, n);
  const ScalePins<acc_t> pins = scale_pins<acc_t>(t.style, acc_t(t.max_value));
  const bool speculate = apply && t.speculate;
  constexpr int kUnknown = -2;
  int expected = pins.unconditional();  // the pin expected to hold (-1: none)
  if (expected < 0) expected = kUnknown;
  for (int64_t b = begin; b < end; ++b) {
    selection(b, [&](auto& selected) DA_LAMBDA_INLINE {
      int pin = -1;
      if (speculate && expected == kUnknown) {
        if (const Bracket<acc_t>* bracket = selected.draw()) {
          for (int i = 0; i < pins.count && pin < 0; ++i) {
            const ScalePin<acc_t>& p = pins.pin[i];
            const acc_t top = bracket->hi < selected.sample_max() ? bracket->hi : selected.sample_max();
            if (p.from_above ? bracket->lo >= p.edge : top <= p.edge) pin = i;
          }
        }
      } else if (speculate) {
        pin = expected;
      }
      if (pin >= 0) {
        scale[b] = pins.pin[pin].scale;
        PinCount count;
        pinned_pass(b, pins.pin[pin], count);
        if (count.confirms(pins.pin[pin], rank, n)) {
          expected = pin;
          return;
        }
      }
      const acc_t q = selected.quantile();
      scale[b] = dynamic_threshold_scale(q, t.style, acc_t(t.max_value));
      expected = pins.holding(q);
      if (apply) pass(b);
    });
  }
}

}  // namespace diffaccel::cpu
