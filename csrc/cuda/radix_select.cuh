// Dynamic thresholding's per-sample scale on the GPU: the ratio-quantile of
// |v| over each sample by radix select on the float bits, never a sort (large
// samples first narrow it to a sampled bracket's candidates: below).
//
// Magnitudes are >= 0, so their IEEE bit patterns (keys) order like the
// values. One block per sample builds a histogram of the top kDigitBits of the
// keys in shared memory, finds the bin that holds the wanted rank with a block
// scan, and repeats on the next digits of the keys in that bin: 3 passes over
// the sample for float, 6 for double. When the interpolation needs the next
// order statistic and it is not a copy of the first, no further pass is
// needed: the last pass's bins are single keys, so the next key is the next
// nonzero bin, or, when the first is the largest key of its bin's group, the
// smallest key above that group, which the last pass also takes. Ranks and
// interpolation are torch.quantile's (diffaccel/quantile.h); a sample holding
// a NaN gets a NaN scale, as in torch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "diffaccel/quantile.h"
#include "chunked_reduction.cuh"
#include "memory_access.cuh"

namespace diffaccel::cuda {

constexpr int kSelectThreads = 1024;
constexpr int kDigitBits = 11;
constexpr int kDigitBins = 1 << kDigitBits;  // two bins per thread

template <typename acc_t>
struct MagnitudeKey;
template <>
struct MagnitudeKey<float> {
  using type = uint32_t;
  static constexpr int kBits = 31;  // the sign bit of a magnitude is 0
  static constexpr type kInf = 0x7f800000u;
  static __device__ type of(float v) { return __float_as_uint(fabsf(v)); }
  static __device__ float value(type k) { return __uint_as_float(k); }
};
template <>
struct MagnitudeKey<double> {
  using type = unsigned long long;
  static constexpr int kBits = 63;
  static constexpr type kInf = 0x7ff0000000000000ull;
  static __device__ type of(double v) { return static_cast<type>(__double_as_longlong(fabs(v))); }
  static __device__ double value(type k) { return __longlong_as_double(static_cast<long long>(k)); }
};

// Exclusive prefix sum over the block (kSelectThreads threads); returns this
// thread's share and leaves the total in *total.
__device__ __forceinline__ unsigned int block_exclusive_scan(unsigned int v, unsigned int* total) {
  __shared__ unsigned int warp_sums[kSelectThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned int inclusive = v;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const unsigned int up = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    unsigned int w = lane < kSelectThreads / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const unsigned int up = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += up;
    }
    if (lane < kSelectThreads / 32) warp_sums[lane] = w;  // inclusive per warp
  }
  __syncthreads();
  const unsigned int before_warp = warp == 0 ? 0 : warp_sums[warp - 1];
  *total = warp_sums[kSelectThreads / 32 - 1];
  const unsigned int result = before_warp + inclusive - v;
  __syncthreads();  // warp_sums is reused by the next call
  return result;
}

// The bin of a kDigitBins histogram (shared memory, kSelectThreads threads)
// that holds the element of rank `remaining`, how many come before it, and how
// many it holds; every thread gets it.
struct FoundBin {
  unsigned int digit, before, count;
};

__device__ __forceinline__ FoundBin find_bin(const unsigned int* histogram, unsigned int remaining) {
  __shared__ FoundBin found;
  const unsigned int lo = histogram[2 * threadIdx.x], hi = histogram[2 * threadIdx.x + 1];
  unsigned int total;
  const unsigned int before = block_exclusive_scan(lo + hi, &total);
  if (remaining >= before && remaining < before + lo) {
    found = {2u * threadIdx.x, before, lo};
  } else if (remaining >= before + lo && remaining < before + lo + hi) {
    found = {2u * threadIdx.x + 1, before + lo, hi};
  }
  __syncthreads();
  const FoundBin result = found;
  __syncthreads();  // `found` is rewritten by the next call
  return result;
}

// Whether the interpolation needs the next larger key: it does unless the
// upper rank is the lower one or still a copy of it (remaining is the lower
// rank's position among the equal_count copies of its key).
template <typename acc_t>
__device__ __forceinline__ bool needs_next_key(const QuantileRank<acc_t>& rank, unsigned int remaining,
                                               unsigned int equal_count) {
  const int64_t at_most_below = rank.below - remaining + equal_count;  // keys <= the lower one
  return rank.above != rank.below && at_most_below <= rank.above;
}

// In the last pass (shift 0), whose bins are single keys: the first nonzero
// bin above `digit`, or kDigitBins when there is none. Every thread gets it.
__device__ __forceinline__ unsigned int next_nonzero_bin(const unsigned int* histogram, unsigned int digit) {
  __shared__ unsigned int first;
  if (threadIdx.x == 0) first = kDigitBins;
  __syncthreads();
  for (unsigned int j = threadIdx.x; j < kDigitBins; j += kSelectThreads) {
    if (j > digit && histogram[j] != 0) atomicMin(&first, j);
  }
  __syncthreads();
  const unsigned int result = first;
  __syncthreads();  // `first` is rewritten by the next call
  return result;
}

// Whether a key lies above every key of the group sharing the top bits of
// `prefix` above `low_bits` (the keys a pass histograms).
template <typename key_t>
__device__ __forceinline__ bool above_group(key_t key, key_t prefix, int low_bits) {
  return low_bits < int(8 * sizeof(key_t)) && (key >> low_bits) > (prefix >> low_bits);
}

// The scale from the lower and upper order statistics' keys.
template <typename acc_t, typename key_t>
__device__ __forceinline__ acc_t scale_of(key_t below, key_t above, const QuantileRank<acc_t>& rank,
                                          const ThresholdSelect& select) {
  using Key = MagnitudeKey<acc_t>;
  const acc_t q = lerp_like_torch(Key::value(below), Key::value(above), rank.weight);
  return dynamic_threshold_scale(q, select.style, acc_t(select.max_value));
}

// One key of a digit pass: a key in the group (the top prefix_bits bits of
// prefix) is counted in its digit's bin; with track_above, a key above the
// group lowers *above, the smallest seen. Returns whether the key is in the group.
template <typename acc_t, typename key_t = typename MagnitudeKey<acc_t>::type>
__device__ __forceinline__ bool tally_key(key_t key, key_t prefix, int prefix_bits, int shift, bool track_above,
                                          unsigned int* histogram, key_t* above) {
  const int low_bits = MagnitudeKey<acc_t>::kBits - prefix_bits;
  const bool in_group = prefix_bits == 0 || (key >> low_bits) == (prefix >> low_bits);
  if (in_group) {
    atomicAdd(&histogram[(key >> shift) & (kDigitBins - 1)], 1u);
  } else if (track_above && above_group(key, prefix, low_bits) && key < *above) {
    *above = key;
  }
  return in_group;
}

// After the last pass (bins are single keys) picked `bin` in `group`: the key
// of the interpolation's upper order statistic: the lower one itself, the next
// nonzero bin, or smallest_above. Called by every thread of the block.
template <typename acc_t, typename key_t>
__device__ __forceinline__ key_t upper_key(const unsigned int* histogram, const FoundBin& bin, key_t group,
                                           unsigned int remaining, const QuantileRank<acc_t>& rank,
                                           key_t smallest_above) {
  if (!needs_next_key(rank, remaining, bin.count)) return group | key_t(bin.digit);
  const unsigned int next = next_nonzero_bin(histogram, bin.digit);
  return next < kDigitBins ? (group | key_t(next)) : smallest_above;
}

// Where a block's selection starts: the digits fixed so far, and the wanted
// rank among the keys that match them.
template <typename key_t>
struct SelectStart {
  key_t prefix;
  int prefix_bits;  // how many top bits of the key are fixed
  int shift;        // bits below the next digit
  unsigned int remaining;
};

// One block's selection over `count` keys key_at(i) from `start`: the digit
// passes left, then the scale, written to *scale. above_outside is the smallest
// key above all of these that is not among them (~0: none). With check_nan, a
// NaN key found by the first pass makes the scale NaN.
template <typename acc_t, typename KeyAt>
__device__ void block_select(KeyAt key_at, int64_t count, SelectStart<typename MagnitudeKey<acc_t>::type> start,
                             bool check_nan, typename MagnitudeKey<acc_t>::type above_outside,
                             const QuantileRank<acc_t>& rank, const ThresholdSelect& select, acc_t* scale) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  __shared__ unsigned int histogram[kDigitBins];
  __shared__ key_t smallest_above;
  key_t prefix = start.prefix;
  int prefix_bits = start.prefix_bits, shift = start.shift;
  unsigned int remaining = start.remaining;
  for (bool first = true;; first = false) {
    for (int i = threadIdx.x; i < kDigitBins; i += kSelectThreads) histogram[i] = 0;
    if (threadIdx.x == 0) smallest_above = above_outside;
    __syncthreads();
    const bool last = shift == 0;
    bool saw_nan = false;
    key_t local_above = ~key_t(0);  // the last pass: the smallest key above the group
    for (int64_t i = threadIdx.x; i < count; i += kSelectThreads) {
      const key_t key = key_at(i);
      saw_nan |= key > Key::kInf;
      tally_key<acc_t>(key, prefix, prefix_bits, shift, last, histogram, &local_above);
    }
    if (check_nan && first && __syncthreads_or(saw_nan)) {
      if (threadIdx.x == 0) *scale = acc_t(NAN);
      return;
    }
    if (last) atomicMin(&smallest_above, local_above);
    __syncthreads();
    const FoundBin bin = find_bin(histogram, remaining);
    const key_t group = prefix;
    prefix |= key_t(bin.digit) << shift;
    prefix_bits = Key::kBits - shift;
    remaining -= bin.before;
    if (last) {
      // prefix is the key of the rank.below-th smallest magnitude; remaining is
      // its rank among the bin.count copies of it.
      const key_t above = upper_key(histogram, bin, group, remaining, rank, smallest_above);
      if (threadIdx.x == 0) *scale = scale_of<acc_t>(prefix, above, rank, select);
      return;
    }
    shift = shift > kDigitBits ? shift - kDigitBits : 0;
  }
}

// source(b, i) is element i of sample b, in acc_t. Launch: one block of
// kSelectThreads per sample; per_sample < 2^32 (checked by the caller).
template <typename acc_t, typename Source>
__global__ void __launch_bounds__(kSelectThreads)
    select_threshold_scales(Source source, int64_t per_sample, ThresholdSelect select, acc_t* scales) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  const int64_t b = blockIdx.x;
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(select.ratio, per_sample);
  const SelectStart<key_t> start{0, 0, Key::kBits - kDigitBits, static_cast<unsigned int>(rank.below)};
  block_select<acc_t>([&](int64_t i) { return Key::of(source(b, i)); }, per_sample, start, true, ~key_t(0), rank,
                      select, scales + b);
}

// ---- Multi-block selection for large samples ----
//
// First the sampled bracket (diffaccel/quantile.h, as on the CPU): one block
// per sample reads 512 spread-out magnitudes and takes the two at the wide
// margin's sample ranks as [lo, hi]; one pass over (chunks x samples) blocks
// counts the keys below lo and copies those in [lo, hi] (the candidates: about
// 3% of a sample at the 0.995 quantile) to a buffer of a quarter of the
// sample. When the wanted ranks fall among them, one block per sample finishes
// the selection on them (block_select) and the digit passes below return at
// once: the sample is read once before the pass that thresholds it.
//
// When the bracket misses (a misleading sample, heavy ties, a NaN in the
// sample), the digit passes run: pass 0 histograms the top digit of every key;
// pass 1 histograms the next digit of the keys in the chosen bin and also
// copies those keys to the buffer. When they fit, the finishing block selects
// on them; when they do not (heavy ties, or data that crowds the top of one
// bin), the digit passes go on over the whole sample.

// Samples from 2^16 elements are split into chunks of 4096 to 65536 elements
// (about 16 per sample below 2^20), one block each: a single block per sample
// leaves most SMs idle and waits on its own loads (on the H200 the whole op
// took 60 us for 4 samples of 65536 and 1.5 ms for 16 of 2^20 that way, the
// elementwise pass a few percent of it). Smaller samples keep the
// single-block kernel: two launches in all for the op.
constexpr int64_t kMultiBlockSelectMin = int64_t(1) << 16;
__host__ __device__ inline int64_t select_chunk(int64_t per_sample) {
  const int64_t sixteenth = (per_sample + 15) / 16;
  const int64_t rounded = (sixteenth + 1023) / 1024 * 1024;
  return rounded < 4096 ? 4096 : (rounded > 65536 ? 65536 : rounded);
}

// kBracketed: the candidates are the bracket's (with kCompacted); kNoBracket:
// the sample gave none (it holds a NaN), the digit passes select.
constexpr unsigned int kSawNan = 1u, kScaleDone = 2u, kCompacted = 4u, kBracketed = 8u, kNoBracket = 16u;

// What a sample's passes hand each other, in the zeroed scratch.
template <typename key_t>
struct SelectState {
  key_t prefix;              // the digits fixed so far
  key_t above_inverted;      // ~(the smallest key above a pass's group seen so far); zeroed: none
  key_t lo, hi;              // the sampled bracket's ends
  unsigned int below;        // keys below lo
  unsigned int remaining;    // the wanted rank among the keys matching prefix (or among the bracket's)
  unsigned int blocks_done;  // blocks of this pass finished (the last one picks)
  unsigned int flags;        // kSawNan, kScaleDone, kCompacted, kBracketed, kNoBracket
  unsigned int candidates;   // keys the bracket's pass or pass 1 found (may exceed the buffer)
};

__host__ __device__ inline int64_t candidate_capacity(int64_t per_sample) { return (per_sample + 3) / 4; }

// Bits below the digit a pass histograms.
__host__ __device__ constexpr int pass_shift(int pass, int key_bits) {
  return key_bits - kDigitBits * (pass + 1) > 0 ? key_bits - kDigitBits * (pass + 1) : 0;
}
__host__ __device__ constexpr int digit_passes(int key_bits) { return (key_bits + kDigitBits - 1) / kDigitBits; }

// Appends `key` where `take` to a sample's candidates: one global atomic per
// warp (the lanes agree on their slots with a ballot). Slots past `capacity`
// are counted but not written.
template <typename key_t>
__device__ __forceinline__ void append_candidate(bool take, key_t key, unsigned int* count, key_t* buffer,
                                                 unsigned int capacity) {
  const unsigned int active = __activemask();
  const unsigned int mask = __ballot_sync(active, take);
  if (mask == 0) return;  // the same for every active lane
  const int lane = threadIdx.x % 32;
  const int leader = __ffs(mask) - 1;
  unsigned int base = 0;
  if (lane == leader) base = atomicAdd(count, static_cast<unsigned int>(__popc(mask)));
  base = __shfl_sync(active, base, leader);
  if (take) {
    const unsigned int slot = base + static_cast<unsigned int>(__popc(mask & ((1u << lane) - 1u)));
    if (slot < capacity) buffer[slot] = key;
  }
}

// The multi-block selection samples 512 magnitudes, one per thread.
constexpr int kBracketSampleThreads = 512;
static_assert(kMultiBlockSelectMin >= 4 * kSampledSelectionMin, "selection_sample_log2 is 9 from 32768 values");

// The sampled bracket of each sample: the keys at sample ranks ranks.lo and
// ranks.hi (bracket_sample_ranks with the wide margin) among the sampled
// magnitudes, ties ordered by position; zero when ranks.lo <= 0, infinity when
// ranks.hi is past the sample. A NaN in the sample: kNoBracket. Launch: one
// block of kBracketSampleThreads per sample.
template <typename acc_t, typename Source>
__global__ void __launch_bounds__(kBracketSampleThreads)
    select_sample_bracket(Source source, int64_t per_sample, SampleRanks ranks,
                          SelectState<typename MagnitudeKey<acc_t>::type>* states) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  __shared__ key_t sampled[kBracketSampleThreads];
  const int64_t b = blockIdx.x;
  const int me = threadIdx.x;
  const key_t key = Key::of(source(b, sample_position(me, per_sample, selection_sample_log2(per_sample))));
  sampled[me] = key;
  SelectState<key_t>* state = states + b;
  if (__syncthreads_or(key > Key::kInf)) {
    if (me == 0) state->flags = kNoBracket;
    return;
  }
  // This key's rank among the sampled ones: 512 compares a thread, cheaper
  // than a sort for two order statistics.
  int64_t rank = 0;
  for (int j = 0; j < kBracketSampleThreads; ++j) {
    const key_t other = sampled[j];
    rank += other < key || (other == key && j < me);
  }
  if (rank == ranks.lo) state->lo = key;
  if (rank == ranks.hi) state->hi = key;
  if (me == 0 && ranks.hi >= kBracketSampleThreads) state->hi = Key::kInf;
}

// The bracket's pass: counts the keys below lo, copies those in [lo, hi] to
// the sample's candidates, notes a NaN. The sample's last block decides:
// a NaN makes the scale NaN; the wanted ranks among candidates that all fit
// make them the finishing block's (kCompacted | kBracketed); otherwise the
// digit passes run (the candidate count is reset for pass 1). Grid: (chunks,
// batch) blocks of kSelectThreads.
template <typename acc_t, typename Source>
__global__ void __launch_bounds__(kSelectThreads)
    select_bracket_pass(Source source, int64_t per_sample, ThresholdSelect select,
                        SelectState<typename MagnitudeKey<acc_t>::type>* states,
                        typename MagnitudeKey<acc_t>::type* candidates, acc_t* scales) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  __shared__ unsigned int block_below;
  const int64_t b = blockIdx.y;
  SelectState<key_t>* state = states + b;
  if (state->flags & kNoBracket) return;
  const key_t lo = state->lo, hi = state->hi;
  const unsigned int capacity = static_cast<unsigned int>(candidate_capacity(per_sample));
  key_t* buffer = candidates + b * int64_t(capacity);
  if (threadIdx.x == 0) block_below = 0;
  __syncthreads();
  const int64_t chunk = select_chunk(per_sample);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < per_sample ? begin + chunk : per_sample;
  bool saw_nan = false;
  unsigned int below = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSelectThreads) {
    const key_t key = Key::of(source(b, i));
    saw_nan |= key > Key::kInf;  // (above hi: not a candidate)
    below += key < lo;
    append_candidate(key >= lo && key <= hi, key, &state->candidates, buffer, capacity);
  }
  if (below != 0) atomicAdd(&block_below, below);
  if (__syncthreads_or(saw_nan) && threadIdx.x == 0) atomicOr(&state->flags, kSawNan);
  if (threadIdx.x == 0 && block_below != 0) atomicAdd(&state->below, block_below);
  if (!finished_last(&state->blocks_done, gridDim.x)) return;

  if (threadIdx.x != 0) return;
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(select.ratio, per_sample);
  const unsigned int flags = __ldcg(&state->flags);
  const int64_t found = __ldcg(&state->candidates), below_lo = __ldcg(&state->below);
  state->blocks_done = 0;  // for the digit passes
  if (flags & kSawNan) {
    scales[b] = acc_t(NAN);
    state->flags = flags | kScaleDone;
  } else if (found <= capacity && rank.below >= below_lo && rank.above < below_lo + found) {
    state->remaining = static_cast<unsigned int>(rank.below - below_lo);
    state->flags = flags | kCompacted | kBracketed;
  } else {
    state->candidates = 0;
  }
}

// One digit pass. Grid: (chunks, batch) blocks of kSelectThreads.
template <typename acc_t, typename Source>
__global__ void __launch_bounds__(kSelectThreads)
    select_digit_pass(Source source, int64_t per_sample, ThresholdSelect select, int pass,
                      SelectState<typename MagnitudeKey<acc_t>::type>* states, unsigned int* histograms,
                      typename MagnitudeKey<acc_t>::type* candidates, acc_t* scales) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  __shared__ unsigned int histogram[kDigitBins];
  __shared__ key_t smallest_above;
  const int64_t b = blockIdx.y;
  SelectState<key_t>* state = states + b;
  // The scale is written (a NaN was found), or the candidates are finishing it.
  if (state->flags & (kScaleDone | kCompacted)) return;
  const int shift = pass_shift(pass, Key::kBits);
  const bool last = shift == 0;
  const bool compacting = pass == 1 && !last;
  const int prefix_bits = pass == 0 ? 0 : Key::kBits - pass_shift(pass - 1, Key::kBits);
  const key_t prefix = state->prefix;
  const unsigned int capacity = static_cast<unsigned int>(candidate_capacity(per_sample));
  key_t* buffer = candidates + b * int64_t(capacity);
  for (int i = threadIdx.x; i < kDigitBins; i += kSelectThreads) histogram[i] = 0;
  if (threadIdx.x == 0) smallest_above = ~key_t(0);
  __syncthreads();
  const int64_t chunk = select_chunk(per_sample);
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < per_sample ? begin + chunk : per_sample;
  bool saw_nan = false;
  key_t local_above = ~key_t(0);  // the smallest key above this pass's group
  for (int64_t i = begin + threadIdx.x; i < end; i += kSelectThreads) {
    const key_t key = Key::of(source(b, i));
    saw_nan |= key > Key::kInf;
    const bool in_group = tally_key<acc_t>(key, prefix, prefix_bits, shift, true, histogram, &local_above);
    if (compacting) append_candidate(in_group, key, &state->candidates, buffer, capacity);
  }
  if (__syncthreads_or(saw_nan) && pass == 0 && threadIdx.x == 0) atomicOr(&state->flags, kSawNan);
  // Every key above this pass's group is above the last pass's group too, so
  // the smallest over the passes is the smallest above the last group.
  if (prefix_bits > 0) {
    atomicMin(&smallest_above, local_above);
    __syncthreads();
    if (threadIdx.x == 0 && smallest_above != ~key_t(0)) atomicMax(&state->above_inverted, ~smallest_above);
  }
  unsigned int* global = histograms + b * kDigitBins;
  for (int i = threadIdx.x; i < kDigitBins; i += kSelectThreads) {
    if (histogram[i] != 0) atomicAdd(&global[i], histogram[i]);
  }
  if (!finished_last(&state->blocks_done, gridDim.x)) return;

  // The sample's last block: pick the bin, reset the histogram for the next pass.
  for (int i = threadIdx.x; i < kDigitBins; i += kSelectThreads) {
    histogram[i] = __ldcg(&global[i]);
    global[i] = 0;
  }
  __syncthreads();
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(select.ratio, per_sample);
  if (pass == 0 && (__ldcg(&state->flags) & kSawNan)) {
    if (threadIdx.x == 0) {
      scales[b] = acc_t(NAN);
      state->flags |= kScaleDone;
    }
    return;
  }
  const unsigned int remaining = pass == 0 ? static_cast<unsigned int>(rank.below) : __ldcg(&state->remaining);
  const FoundBin bin = find_bin(histogram, remaining);
  const key_t chosen = prefix | (key_t(bin.digit) << shift);
  if (last) {  // chosen is the lower order statistic's key
    const key_t above =
        upper_key(histogram, bin, prefix, remaining - bin.before, rank, key_t(~__ldcg(&state->above_inverted)));
    if (threadIdx.x == 0) {
      scales[b] = scale_of<acc_t>(chosen, above, rank, select);
      state->flags |= kScaleDone;
    }
    return;
  }
  if (threadIdx.x == 0) {
    state->prefix = chosen;
    state->remaining = remaining - bin.before;
    state->blocks_done = 0;
    if (compacting && __ldcg(&state->candidates) <= capacity) state->flags |= kCompacted;
  }
}

// The selection of the samples whose bracket or pass 1 kept all its
// candidates: one block per sample over them.
template <typename acc_t>
__global__ void __launch_bounds__(kSelectThreads)
    select_finish_candidates(int64_t per_sample, ThresholdSelect select,
                             const SelectState<typename MagnitudeKey<acc_t>::type>* states,
                             const typename MagnitudeKey<acc_t>::type* candidates, acc_t* scales) {
  using Key = MagnitudeKey<acc_t>;
  using key_t = typename Key::type;
  const int64_t b = blockIdx.x;
  const SelectState<key_t>* state = states + b;
  if ((state->flags & (kScaleDone | kCompacted)) != kCompacted) return;
  const int64_t capacity = candidate_capacity(per_sample);
  const key_t* mine = candidates + b * capacity;
  const QuantileRank<acc_t> rank = quantile_rank<acc_t>(select.ratio, per_sample);
  // The bracket's candidates hold both order statistics: their digits from the
  // top. Pass 1's share the digits passes 0 and 1 fixed, and the upper order
  // statistic may lie above them all.
  const bool bracketed = state->flags & kBracketed;
  const SelectStart<key_t> start = bracketed ? SelectStart<key_t>{0, 0, pass_shift(0, Key::kBits), state->remaining}
                                             : SelectStart<key_t>{state->prefix, Key::kBits - pass_shift(1, Key::kBits),
                                                                  pass_shift(2, Key::kBits), state->remaining};
  block_select<acc_t>([&](int64_t i) { return mine[i]; }, state->candidates, start, false,
                      bracketed ? ~key_t(0) : ~state->above_inverted, rank, select, scales + b);
}

inline int64_t round256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// Scratch of the selection: the scales (acc_t per sample) first, then, for
// large samples, each sample's histogram and state (zeroed at each call), then
// its candidate buffer.
template <typename acc_t>
int64_t select_zeroed_bytes(int64_t batch) {
  using key_t = typename MagnitudeKey<acc_t>::type;
  return round256(batch * kDigitBins * int64_t(sizeof(unsigned int))) +
         round256(batch * int64_t(sizeof(SelectState<key_t>)));
}

template <typename acc_t>
int64_t select_workspace_bytes(int64_t batch, int64_t per_sample) {
  if (per_sample < kMultiBlockSelectMin) return 0;
  using key_t = typename MagnitudeKey<acc_t>::type;
  return select_zeroed_bytes<acc_t>(batch) + batch * candidate_capacity(per_sample) * int64_t(sizeof(key_t));
}

template <typename acc_t>
int64_t select_scratch_bytes_of(int64_t batch, int64_t per_sample) {
  return round256(batch * int64_t(sizeof(acc_t))) + select_workspace_bytes<acc_t>(batch, per_sample);
}

// Writes each sample's scale to the start of `scratch`
// (select_scratch_bytes(...) bytes of device memory).
template <typename acc_t, typename Source>
cudaError_t launch_select(Source source, int64_t batch, int64_t per_sample, const ThresholdSelect& select,
                          void* scratch, cudaStream_t stream) {
  using key_t = typename MagnitudeKey<acc_t>::type;
  acc_t* scales = static_cast<acc_t*>(scratch);
  if (select_workspace_bytes<acc_t>(batch, per_sample) == 0) {
    select_threshold_scales<acc_t>
        <<<static_cast<unsigned int>(batch), kSelectThreads, 0, stream>>>(source, per_sample, select, scales);
    return cudaGetLastError();
  }
  char* base = static_cast<char*>(scratch) + round256(batch * int64_t(sizeof(acc_t)));
  unsigned int* histograms = reinterpret_cast<unsigned int*>(base);
  auto* states =
      reinterpret_cast<SelectState<key_t>*>(base + round256(batch * kDigitBins * int64_t(sizeof(unsigned int))));
  auto* candidates = reinterpret_cast<key_t*>(base + select_zeroed_bytes<acc_t>(batch));
  cudaError_t status = cudaMemsetAsync(base, 0, static_cast<size_t>(select_zeroed_bytes<acc_t>(batch)), stream);
  if (status != cudaSuccess) return status;
  const int64_t chunk = select_chunk(per_sample);
  const dim3 grid(static_cast<unsigned int>((per_sample + chunk - 1) / chunk), static_cast<unsigned int>(batch));
  const SampleRanks ranks = bracket_sample_ranks(quantile_rank<acc_t>(select.ratio, per_sample), per_sample,
                                                 kBracketSampleThreads, kWideMargin);
  select_sample_bracket<acc_t>
      <<<static_cast<unsigned int>(batch), kBracketSampleThreads, 0, stream>>>(source, per_sample, ranks, states);
  select_bracket_pass<acc_t>
      <<<grid, kSelectThreads, 0, stream>>>(source, per_sample, select, states, candidates, scales);
  for (int pass = 0; pass < digit_passes(MagnitudeKey<acc_t>::kBits); ++pass) {
    select_digit_pass<acc_t>
        <<<grid, kSelectThreads, 0, stream>>>(source, per_sample, select, pass, states, histograms, candidates, scales);
  }
  select_finish_candidates<acc_t>
      <<<static_cast<unsigned int>(batch), kSelectThreads, 0, stream>>>(per_sample, select, states, candidates, scales);
  return cudaGetLastError();
}

}  // namespace diffaccel::cuda
