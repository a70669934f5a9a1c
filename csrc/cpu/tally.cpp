// Step 2 of the sampled selection (selection.h) over one block of values:
// count the magnitudes below lo, collect those in [lo, hi], note any NaN. The
// values are read from memory, or computed in the same loop as ei_step's data
// term c_x * x + c_m * m (DataTerm).
// This is the one loop of dynamic thresholding that reads every element, and
// the auto-vectorizer makes poor code of its count-and-append, so it is
// written with intrinsics per ISA level (the level cpu_isa_level() reports,
// as for the kernels' clones) over a portable version. All versions give the
// same tally, candidates in the same order (tests/test_threshold.py runs each
// one the CPU has through diffaccel._C.tally).
#include <cmath>
#include <string_view>

#include "selection.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace diffaccel::cpu {
namespace {

template <typename acc_t>
DA_INLINE void append(Tally<acc_t>& t, acc_t v) {
  if (t.count < t.capacity) t.candidates[t.count] = v;
  ++t.count;
}

// Value i of a block: the values themselves, or the data term (ei_data_term:
// multiply, multiply, add, with no fused multiply-add, which the vector
// versions below do alike: the same bits in every version).
template <typename acc_t>
DA_INLINE acc_t value_at(const acc_t* v, int64_t i) {
  return v[i];
}
template <typename acc_t>
DA_INLINE acc_t value_at(const DataTerm<acc_t>& d, int64_t i) {
  return d.at(i);
}

// Values [begin, n) of src.
template <typename acc_t, typename Source>
void tally_portable(const Source& src, int64_t begin, int64_t n, const Bracket<acc_t>& b, Tally<acc_t>& t) {
  if (t.overflowed()) return;
  for (int64_t i = begin; i < n; ++i) {
    const acc_t a = std::abs(value_at(src, i));
    if (a != a) {
      t.nan = true;
    } else if (a < b.lo) {
      ++t.below;
    } else if (a <= b.hi) {
      append(t, a);
      if (t.overflowed()) return;
    }
  }
}

#if defined(__x86_64__) && !defined(DIFFACCEL_CPU_BASELINE_ONLY)
// A vector of values from element j of a source, by ISA level and vector
// type: the values themselves, or the data term (as value_at says). A tally
// reads through its source's local form (name##_source: a DataTerm becomes a
// LocalTerm), so that the data term's pointers and coefficients stay in
// registers and its broadcasts leave the loop (read through the DataTerm, gcc
// broadcast c_x and c_m from memory again every two vectors).
#define DA_VECTOR_VALUES(name, isa, vec, acc_t, loadu, mul, add, set1)                                \
  __attribute__((target(isa))) DA_INLINE const acc_t* name##_source(const acc_t* v) { return v; }     \
  __attribute__((target(isa))) DA_INLINE LocalTerm<acc_t> name##_source(const DataTerm<acc_t>& d) {   \
    return LocalTerm<acc_t>(d);                                                                       \
  }                                                                                                   \
  __attribute__((target(isa))) DA_INLINE vec name(const acc_t* v, int64_t j) { return loadu(v + j); } \
  __attribute__((target(isa))) DA_INLINE vec name(const LocalTerm<acc_t>& d, int64_t j) {             \
    return add(mul(set1(d.row.at[0]), loadu(d.x + j)), mul(set1(d.row.at[1]), loadu(d.m + j)));       \
  }
DA_VECTOR_VALUES(avx512_values, "avx512f", __m512, float, _mm512_loadu_ps, _mm512_mul_ps, _mm512_add_ps, _mm512_set1_ps)
DA_VECTOR_VALUES(avx512_values, "avx512f", __m512d, double, _mm512_loadu_pd, _mm512_mul_pd, _mm512_add_pd,
                 _mm512_set1_pd)
DA_VECTOR_VALUES(avx2_values, "avx2", __m256, float, _mm256_loadu_ps, _mm256_mul_ps, _mm256_add_ps, _mm256_set1_ps)
DA_VECTOR_VALUES(avx2_values, "avx2", __m256d, double, _mm256_loadu_pd, _mm256_mul_pd, _mm256_add_pd, _mm256_set1_pd)
#undef DA_VECTOR_VALUES

// Stretches of kTallyStretch elements, two vectors a step, each stretch taken
// this way only while its candidates cannot outgrow the capacity (the rest
// goes to the portable loop). The count below lo goes into vectors of
// per-lane counters (a masked add: no popcount on the common path; no
// overflow below 2^36 elements a call), and a pair of vectors with no lane
// >= lo (or NaN) skips the rest. Otherwise the candidate lanes are compressed
// to the front of a register that is stored whole at the end of the
// candidates, the rest of it spilling into the kTallySlack slots or being
// overwritten by the next store. ("Below" is x < lo, false for NaN, so NaN
// lanes are "not below", where the unordered test finds them and the inside
// test drops them.)
constexpr int64_t kTallyStretch = 256;
// The sum of the lane counters (gcc 12's _mm512_reduce_add_* draw a false
// -Wuninitialized warning).
template <typename lane_t>
__attribute__((target("avx512f"))) DA_INLINE int64_t sum_of_lanes(__m512i counters) {
  lane_t lanes[64 / sizeof(lane_t)];
  _mm512_storeu_si512(lanes, counters);
  int64_t sum = 0;
  for (lane_t lane : lanes) sum += lane;
  return sum;
}
#define DA_TALLY_AVX512(acc_t, lanes, vec, ivec, abs, set1, cmp_mask, mask_cmp_mask, compress, store, iset1, izero, \
                        imask_add, iadd, ireduce, full)                                                             \
  const vec lo = set1(b.lo), hi = set1(b.hi);                                                                       \
  const ivec one = iset1(1);                                                                                        \
  ivec below0 = izero(), below1 = izero();                                                                          \
  if (t.overflowed()) return;                                                                                       \
  acc_t* candidates = t.candidates + t.count;                                                                       \
  const auto values = avx512_values_source(src);                                                                    \
  unsigned unordered = 0;                                                                                           \
  int64_t i = 0;                                                                                                    \
  for (; i + kTallyStretch <= n && (candidates - t.candidates) + kTallyStretch <= t.capacity; i += kTallyStretch) { \
    for (int64_t j = i; j < i + kTallyStretch; j += 2 * lanes) {                                                    \
      const vec x0 = abs(avx512_values(values, j)), x1 = abs(avx512_values(values, j + lanes));                     \
      const auto below_0 = cmp_mask(x0, lo, _CMP_LT_OQ), below_1 = cmp_mask(x1, lo, _CMP_LT_OQ);                    \
      below0 = imask_add(below0, below_0, below0, one);                                                             \
      below1 = imask_add(below1, below_1, below1, one);                                                             \
      if (unsigned(below_0 & below_1) != full) {                                                                    \
        const auto inside0 = mask_cmp_mask(~below_0, x0, hi, _CMP_LE_OQ);                                           \
        const auto inside1 = mask_cmp_mask(~below_1, x1, hi, _CMP_LE_OQ);                                           \
        unordered |= mask_cmp_mask(~below_0, x0, x0, _CMP_UNORD_Q) | mask_cmp_mask(~below_1, x1, x1, _CMP_UNORD_Q); \
        store(candidates, compress(inside0, x0));                                                                   \
        candidates += __builtin_popcount(unsigned(inside0));                                                        \
        store(candidates, compress(inside1, x1));                                                                   \
        candidates += __builtin_popcount(unsigned(inside1));                                                        \
      }                                                                                                             \
    }                                                                                                               \
  }                                                                                                                 \
  t.count = candidates - t.candidates;                                                                              \
  t.below += ireduce(iadd(below0, below1));                                                                         \
  t.nan |= unordered != 0;                                                                                          \
  tally_portable<acc_t>(src, i, n, b, t);

template <typename Source>
__attribute__((target("avx512f,popcnt"))) void tally_avx512(const Source& src, int64_t n, const Bracket<float>& b,
                                                            Tally<float>& t) {
  DA_TALLY_AVX512(float, 16, __m512, __m512i, _mm512_abs_ps, _mm512_set1_ps, _mm512_cmp_ps_mask,
                  _mm512_mask_cmp_ps_mask, _mm512_maskz_compress_ps, _mm512_storeu_ps, _mm512_set1_epi32,
                  _mm512_setzero_si512, _mm512_mask_add_epi32, _mm512_add_epi32, sum_of_lanes<int32_t>, 0xFFFFu)
}
template <typename Source>
__attribute__((target("avx512f,popcnt"))) void tally_avx512(const Source& src, int64_t n, const Bracket<double>& b,
                                                            Tally<double>& t){
    DA_TALLY_AVX512(double, 8, __m512d, __m512i, _mm512_abs_pd, _mm512_set1_pd, _mm512_cmp_pd_mask,
                    _mm512_mask_cmp_pd_mask, _mm512_maskz_compress_pd, _mm512_storeu_pd, _mm512_set1_epi64,
                    _mm512_setzero_si512, _mm512_mask_add_epi64, _mm512_add_epi64, sum_of_lanes<int64_t>, 0xFFu)}
#undef DA_TALLY_AVX512

// AVX2 has no compress: the few candidate lanes are appended one by one.
#define DA_TALLY_AVX2(acc_t, lanes, vec, andnot, set1, cmp, movemask)                                     \
  if (t.overflowed()) return;                                                                             \
  const vec lo = set1(b.lo), hi = set1(b.hi), sign = set1(acc_t(-0.0));                                   \
  const auto values = avx2_values_source(src);                                                            \
  int64_t i = 0, not_below = 0;                                                                           \
  unsigned unordered = 0;                                                                                 \
  while (i + lanes <= n && !t.overflowed()) {                                                             \
    const vec x = andnot(sign, avx2_values(values, i));                                                   \
    const unsigned at_least_lo = movemask(cmp(x, lo, _CMP_GE_OQ));                                        \
    const unsigned nan = movemask(cmp(x, x, _CMP_UNORD_Q));                                               \
    not_below += __builtin_popcount(at_least_lo | nan);                                                   \
    unordered |= nan;                                                                                     \
    if (at_least_lo) {                                                                                    \
      unsigned inside = at_least_lo & unsigned(movemask(cmp(x, hi, _CMP_LE_OQ)));                         \
      for (; inside; inside &= inside - 1) append(t, std::abs(value_at(src, i + __builtin_ctz(inside)))); \
    }                                                                                                     \
    i += lanes;                                                                                           \
  }                                                                                                       \
  t.below += i - not_below;                                                                               \
  t.nan |= unordered != 0;                                                                                \
  tally_portable<acc_t>(src, i, n, b, t);

template <typename Source>
__attribute__((target("avx2,popcnt"))) void tally_avx2(const Source& src, int64_t n, const Bracket<float>& b,
                                                       Tally<float>& t) {
  DA_TALLY_AVX2(float, 8, __m256, _mm256_andnot_ps, _mm256_set1_ps, _mm256_cmp_ps, _mm256_movemask_ps)
}
template <typename Source>
__attribute__((target("avx2,popcnt"))) void tally_avx2(const Source& src, int64_t n, const Bracket<double>& b,
                                                       Tally<double>& t) {
  DA_TALLY_AVX2(double, 4, __m256d, _mm256_andnot_pd, _mm256_set1_pd, _mm256_cmp_pd, _mm256_movemask_pd)
}
#undef DA_TALLY_AVX2
#endif

enum class TallyVersion { kNone, kPortable, kAvx2, kAvx512 };

// The version of a level name, where this CPU and build have it.
TallyVersion version_of(std::string_view level) {
#if defined(__x86_64__) && !defined(DIFFACCEL_CPU_BASELINE_ONLY)
  __builtin_cpu_init();
  if (level == "avx512f") return __builtin_cpu_supports("avx512f") ? TallyVersion::kAvx512 : TallyVersion::kNone;
  if (level == "avx2") return __builtin_cpu_supports("avx2") ? TallyVersion::kAvx2 : TallyVersion::kNone;
#endif
  if (level == "portable" || level.substr(0, 8) == "baseline") return TallyVersion::kPortable;
  return TallyVersion::kNone;
}

template <typename acc_t, typename Source>
void tally_with(TallyVersion version, const Source& src, int64_t n, const Bracket<acc_t>& b, Tally<acc_t>& t) {
  switch (version) {
#if defined(__x86_64__) && !defined(DIFFACCEL_CPU_BASELINE_ONLY)
    case TallyVersion::kAvx512: return tally_avx512(src, n, b, t);
    case TallyVersion::kAvx2: return tally_avx2(src, n, b, t);
#endif
    default: return tally_portable(src, 0, n, b, t);
  }
}

// The level cpu_isa_level() reports, as the kernels' clones pick it: found once.
TallyVersion native_version() {
  static const TallyVersion version = version_of(cpu_isa_level());
  return version;
}

template <typename acc_t, typename Source>
bool tally_by(std::string_view level, const Source& src, int64_t n, const Bracket<acc_t>& b, Tally<acc_t>& t) {
  const TallyVersion version = version_of(level);
  if (version != TallyVersion::kNone) tally_with(version, src, n, b, t);
  return version != TallyVersion::kNone;
}

}  // namespace

void tally_block(const float* v, int64_t n, const Bracket<float>& b, Tally<float>& t) {
  tally_with(native_version(), v, n, b, t);
}
void tally_block(const double* v, int64_t n, const Bracket<double>& b, Tally<double>& t) {
  tally_with(native_version(), v, n, b, t);
}
void tally_block(const DataTerm<float>& d, int64_t n, const Bracket<float>& b, Tally<float>& t) {
  tally_with(native_version(), d, n, b, t);
}
void tally_block(const DataTerm<double>& d, int64_t n, const Bracket<double>& b, Tally<double>& t) {
  tally_with(native_version(), d, n, b, t);
}
bool tally_block_by(std::string_view level, const float* v, int64_t n, const Bracket<float>& b, Tally<float>& t) {
  return tally_by(level, v, n, b, t);
}
bool tally_block_by(std::string_view level, const double* v, int64_t n, const Bracket<double>& b, Tally<double>& t) {
  return tally_by(level, v, n, b, t);
}
bool tally_block_by(std::string_view level, const DataTerm<float>& d, int64_t n, const Bracket<float>& b,
                    Tally<float>& t) {
  return tally_by(level, d, n, b, t);
}
bool tally_block_by(std::string_view level, const DataTerm<double>& d, int64_t n, const Bracket<double>& b,
                    Tally<double>& t) {
  return tally_by(level, d, n, b, t);
}

}  // namespace diffaccel::cpu
