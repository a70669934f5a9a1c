// Block staging for the CPU kernels: each kernel walks its range in blocks of
// kBlock elements. Inputs that already hold acc_t are read in place; 16-bit
// ones are converted into small stack buffers. Results go straight into
// outputs that hold acc_t, else into stack buffers converted on store (and
// into stack buffers too when the output is written with streaming stores).
// This keeps one kernel body per acc_t whatever the mix of dtypes (a bf16
// model output with a float32 state, say).
//
// Aliasing: an output may be exactly one of the inputs (x_next may be x, d a
// history tensor); partial overlap is refused before any kernel runs. With
// exact aliasing, element i is read and written only in iteration i, so the
// loops carry no dependence and are marked DA_IVDEP (vectorized without
// run-time alias checks, which would fail exactly in the in-place case).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
// DIFFACCEL_CPU_BASELINE_ONLY (setup.py, DIFFACCEL_CPU_CLONES=0) builds one
// baseline clone: a quicker build where CPU speed does not matter (the GPU check).
#if defined(__x86_64__) && !defined(DIFFACCEL_CPU_BASELINE_ONLY)
#define DA_CPU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DA_CPU_MULTIVERSION
#endif
#define DA_IVDEP _Pragma("GCC ivdep")

// Everything a multiversioned kernel calls must be inlined into it to be
// compiled for the clone's ISA; lambdas are not inlined by default.
#define DA_LAMBDA_INLINE __attribute__((always_inline))

namespace diffaccel::cpu {

constexpr int64_t kBlock = 256;

DA_INLINE float float_from_bits(uint32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
DA_INLINE uint32_t bits_from_float(float f) {
  uint32_t w;
  std::memcpy(&w, &f, sizeof w);
  return w;
}

DA_INLINE float bfloat16_to_float(uint16_t h) { return float_from_bits(uint32_t(h) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
DA_INLINE uint16_t float_to_bfloat16(float f) {
  const uint32_t w = bits_from_float(f);
  if (f != f) return uint16_t((w >> 16) | 0x0040u);
  return uint16_t((w + 0x7FFFu + ((w >> 16) & 1u)) >> 16);
}

// IEEE half <-> float without branches on the value, so the loops vectorize:
// normal halves are rebased by an exponent shift and a multiply, subnormals by
// a magic-number subtraction.
DA_INLINE float float16_to_float(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? bits_from_float(subnormal) : bits_from_float(normal);
  return float_from_bits(sign | magnitude);
}

// Rounds to nearest even by letting the float adder do it: the value is scaled
// so that its bits below half precision fall off in one addition.
DA_INLINE uint16_t float_to_float16(float f) {
  const uint32_t w = bits_from_float(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  const float magnitude = (f < 0 ? -f : f) * 0x1.0p+112f * 0x1.0p-110f;
  const float rounded = float_from_bits((bias >> 1) + 0x07800000u) + magnitude;
  const uint32_t r = bits_from_float(rounded);
  const uint32_t nonsign = ((r >> 13) & 0x00007C00u) + (r & 0x00000FFFu);
  return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// Returns a pointer to n acc_t values of src starting at element offset:
// src itself when it already holds acc_t, else buf filled by conversion.
template <typename acc_t>
DA_INLINE const acc_t* load_block(In src, int64_t offset, int64_t n, acc_t* buf) {
  switch (src.dtype) {
    case DType::kFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(src.data) + offset;
      for (int64_t i = 0; i < n; ++i) buf[i] = acc_t(float16_to_float(p[i]));
      return buf;
    }
    case DType::kBFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(src.data) + offset;
      for (int64_t i = 0; i < n; ++i) buf[i] = acc_t(bfloat16_to_float(p[i]));
      return buf;
    }
    case DType::kFloat32:
      if constexpr (sizeof(acc_t) == sizeof(float)) {
        return static_cast<const acc_t*>(src.data) + offset;
      } else {
        const float* p = static_cast<const float*>(src.data) + offset;
        for (int64_t i = 0; i < n; ++i) buf[i] = acc_t(p[i]);
        return buf;
      }
    case DType::kFloat64:
      if constexpr (sizeof(acc_t) == sizeof(double)) {
        return static_cast<const acc_t*>(src.data) + offset;
      } else {
        const double* p = static_cast<const double*>(src.data) + offset;
        for (int64_t i = 0; i < n; ++i) buf[i] = acc_t(p[i]);
        return buf;
      }
  }
  __builtin_unreachable();  // (DType has no other value)
}

template <typename acc_t>
DA_INLINE void store_block(Out dst, int64_t offset, int64_t n, const acc_t* values) {
  switch (dst.dtype) {
    case DType::kFloat16: {
      uint16_t* p = static_cast<uint16_t*>(dst.data) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_float16(float(values[i]));
      return;
    }
    case DType::kBFloat16: {
      uint16_t* p = static_cast<uint16_t*>(dst.data) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bfloat16(float(values[i]));
      return;
    }
    case DType::kFloat32: {
      float* p = static_cast<float*>(dst.data) + offset;
#if defined(__x86_64__)
      if (dst.streaming) {
        int64_t i = 0;
        for (; i < n && (reinterpret_cast<uintptr_t>(p + i) & 15u) != 0; ++i) p[i] = float(values[i]);
        for (; i + 4 <= n; i += 4) {
          _mm_stream_ps(
              p + i, _mm_setr_ps(float(values[i]), float(values[i + 1]), float(values[i + 2]), float(values[i + 3])));
        }
        for (; i < n; ++i) p[i] = float(values[i]);
        return;
      }
#endif
      for (int64_t i = 0; i < n; ++i) p[i] = float(values[i]);
      return;
    }
    case DType::kFloat64: {
      double* p = static_cast<double*>(dst.data) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = double(values[i]);
      return;
    }
  }
}

// Orders this thread's streaming stores before whatever follows the kernel.
DA_INLINE void streaming_store_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// A sample's N coefficients, copied out of the arguments before a loop:
// read through the arguments' pointer, gcc reloads (and broadcasts again)
// every coefficient every vector, since an output store might change them as
// far as it can tell; a local copy stays in registers.
template <typename acc_t, int N>
struct LocalRow {
  acc_t at[N];
  DA_INLINE explicit LocalRow(const acc_t* row) {
    for (int j = 0; j < N; ++j) at[j] = row[j];
  }
};

template <typename acc_t>
constexpr DType dtype_of() {
  return sizeof(acc_t) == sizeof(double) ? DType::kFloat64 : DType::kFloat32;
}

// Whether load_block hands back src itself (src holds acc_t), so a block of
// it can be any length.
template <typename acc_t>
DA_INLINE bool is_direct(In src) {
  return src.dtype == dtype_of<acc_t>();
}

// Where a block's results are computed: the output itself when it holds acc_t
// and is written normally, else buf (then stored by commit_block).
template <typename acc_t>
DA_INLINE acc_t* output_block(Out dst, int64_t offset, acc_t* buf) {
  if (dst.dtype == dtype_of<acc_t>() && !dst.streaming) return static_cast<acc_t*>(dst.data) + offset;
  return buf;
}

template <typename acc_t>
DA_INLINE void commit_block(Out dst, int64_t offset, int64_t n, const acc_t* buf, const acc_t* written) {
  if (written == buf) store_block(dst, offset, n, buf);
}

// Calls body(sample, first_element, count) for each per-sample piece of the
// flat range [begin, end), so kernels can pick the sample's coefficient row.
template <typename Body>
DA_INLINE void for_each_sample_span(int64_t per_sample, int64_t begin, int64_t end, Body&& body) {
  if (per_sample <= 0) return;
  while (begin < end) {
    const int64_t sample = begin / per_sample;
    const int64_t sample_end = (sample + 1) * per_sample;
    const int64_t stop = end < sample_end ? end : sample_end;
    body(sample, begin, stop - begin);
    begin = stop;
  }
}

// The order an elementwise pass visits its elements in. A load whose address
// matches an earlier, still pending store's in its low 12 bits waits as if it
// depended on it (4 KiB aliasing). Walking upwards, a pass that stores
// out[i] and soon after loads in[i + k] meets that where out lies k elements
// after in, modulo 4 KiB, for small k: which is where the heap puts a tensor
// allocated just after another (glibc: 64 bytes on). Walking downwards the
// loads after a store are below it. On the 2-core VM's Zen 4 (one core, in
// L2), y = a x + b m took 8.4 us upwards and 7.1 downwards with y 64 bytes
// after x modulo 4 KiB, 7.5 against 7.1 at 128, the same (7.1) from 256 on;
// and the mirror image with y before x. (docs/benchmarks.md: ei_step 2M at
// (4,4,128,128) took 38-40 us or 43-52 us by placement alone.)
enum class Walk { kUp, kDown };
constexpr int64_t kAliasReach = 256;  // bytes: how close counts, from the measurements above
// A pass that counts as it goes (for_each_element's kCarriesSum) walks
// downwards with the lanes of every load and store reversed, which costs it
// about what the aliasing does at 64 and 128 bytes and more beyond. On the
// 2-core VM at (4,4,128,128), one thread, each tensor placed by hand the
// given distance after the one before it modulo 4 KiB: threshold's pinned
// pass took 41-42 us either way at 64 and 128 bytes, 41-47 us downwards
// against 35-37 upwards at 192 and 256 (34 us where nothing aliases);
// ei_step's (x, model_out, a history, then its two outputs) 85-88 us either
// way at 64 and 128, 85-88 downwards against 70-73 upwards at 192 (69-70).
// So it goes down only within this.
constexpr int64_t kCountingAliasReach = 128;

// The walk for a pass that loads inputs and stores outputs at the same
// element offsets: each (input, output) pair whose distance modulo 4 KiB is
// within kAliasReach (kCountingAliasReach for a pass that counts as it goes,
// kCarriesSum as for_each_element's) votes for the direction that leaves it
// behind. Only pairs that the loop itself loads and stores count (direct
// operands, the same element size, so the distance is the same for every
// element); an output that is exactly an input (in place) does not vote.
template <typename acc_t, bool kCarriesSum = false>
DA_INLINE Walk walk_for(const In* inputs, int num_inputs, const Out* outputs, int num_outputs) {
  constexpr int64_t reach = kCarriesSum ? kCountingAliasReach : kAliasReach;
  int votes_down = 0;
  for (int o = 0; o < num_outputs; ++o) {
    if (outputs[o].dtype != dtype_of<acc_t>() || outputs[o].streaming) continue;
    for (int i = 0; i < num_inputs; ++i) {
      if (!is_direct<acc_t>(inputs[i])) continue;
      const int64_t after =
          int64_t((reinterpret_cast<uintptr_t>(outputs[o].data) - reinterpret_cast<uintptr_t>(inputs[i].data)) % 4096);
      if (after != 0 && after <= reach) ++votes_down;
      if (after != 0 && after >= 4096 - reach) --votes_down;
    }
  }
  return votes_down > 0 ? Walk::kDown : Walk::kUp;
}

// Splits a span into blocks, body(first_element, count), taken in the walk's
// order. One loop for both walks (a start, a step and a bound, not a
// branch), so the body, which the kernels inline, is compiled once (a branch
// between two loops doubled ei_step.cpp's build time).
template <typename Body>
DA_INLINE void for_each_block(int64_t first, int64_t count, Walk walk, Body&& body) {
  if (count <= 0) return;
  const int64_t end = first + count;
  const int64_t last = first + (count - 1) / kBlock * kBlock;
  const int64_t step = walk == Walk::kUp ? kBlock : -kBlock;
  const int64_t stop = walk == Walk::kUp ? last + kBlock : first - kBlock;
  for (int64_t offset = walk == Walk::kUp ? first : last; offset != stop; offset += step) {
    body(offset, end - offset < kBlock ? end - offset : kBlock);
  }
}
template <typename Body>
DA_INLINE void for_each_block(int64_t first, int64_t count, Body&& body) {
  for_each_block(first, count, Walk::kUp, body);
}

// Calls element(i) for each i in [0, n) of a block, in runs of 64 bytes of
// acc_t (one AVX-512 vector) taken in the walk's order, the leftover above
// the last whole run first. A run is one vectorized loop, upwards: a run of
// several vectors would store one and then load the next, 64 bytes on. One
// loop for both walks, as for_each_block. kCarriesSum: the body adds into sums from one
// element to the next (a pinned pass's counts), which runs would reduce across
// lanes at every run (ei_step's pinned pass took 80 us at (4,4,128,128)
// instead of 48): one loop over the block instead, upwards or downwards (gcc
// vectorizes the downward loop, reversing the lanes of each load and store;
// the counts are integers, the same in any order). Walking downwards where
// the walk says so took that pass from 63 to 52 us with its outputs 64 bytes
// after its inputs modulo 4 KiB, against 48 us at distances that do not
// alias.
template <typename acc_t, bool kCarriesSum = false, typename Element>
DA_INLINE void for_each_element(int64_t n, Walk walk, Element&& element) {
  if constexpr (kCarriesSum) {
    if (walk == Walk::kUp) {
      DA_IVDEP for (int64_t i = 0; i < n; ++i) element(i);
    } else {
      DA_IVDEP for (int64_t i = n - 1; i >= 0; --i) element(i);
    }
  } else {
    constexpr int64_t kRun = 64 / sizeof(acc_t);
    const int64_t runs = n / kRun;
    DA_IVDEP for (int64_t i = runs * kRun; i < n; ++i) element(i);
    const int64_t step = walk == Walk::kUp ? kRun : -kRun;
    const int64_t stop = walk == Walk::kUp ? runs * kRun : -kRun;
    for (int64_t start = walk == Walk::kUp ? 0 : (runs - 1) * kRun; start != stop; start += step) {
      // Not unrolled: gcc would unroll a loop of 16 into scalar code first and
      // not always vectorize that (langevin_correct's update ran 2x slower).
      DA_IVDEP _Pragma("GCC unroll 1") for (int64_t l = 0; l < kRun; ++l) element(start + l);
    }
  }
}

// Sums of squares in double keep 32 interleaved accumulators (four AVX-512
// registers, so the adds of consecutive vectors do not wait on each other)
// over a whole chunk, combined in a fixed order at its end: the loops
// vectorize without -ffast-math and the result does not depend on the ISA.
constexpr int kSumLanes = 32;

// Whether the kernels' clone in use has fused multiply-add instructions (the
// AVX-512 clone, which the resolver picks exactly where the CPU has AVX-512F;
// aarch64): in the AVX2 and baseline clones __builtin_fma is a call into libm.
DA_INLINE bool clone_has_fma() {
#if defined(__x86_64__) && !defined(DIFFACCEL_CPU_BASELINE_ONLY)
  static const bool avx512 = std::strcmp(cpu_isa_level(), "avx512f") == 0;
  return avx512;
#elif defined(__aarch64__)
  return true;
#else
  return false;
#endif
}

// The two factors of one term of a sum of products.
struct Factors {
  double a, b;
};

// lanes[l] += a * b for {a, b} = product(i), i in [0, n), element i into lane
// i % 32 (n is a multiple of 32 but for a chunk's last block). The sums run
// in a local copy, which the compiler keeps in registers (lanes itself could
// alias a float64 input, so every add would be stored back). Every add into
// sums has a constant lane, the partial tail's too (its missing terms are
// 0 * 0, which leaves a sum's bits as they are: a sum that starts at +0 is
// never -0): a lane picked at run time would put sums in memory, and every
// step would store them.
// exact: every product is exact in double (factors of 16- or 32-bit floats:
// at most 48 significant bits), so a fused multiply-add gives the bits of
// the multiply and the add, in one instruction where the clone has one (on
// the 2-core VM's AVX-512 clone: 18% less time in langevin_correct's sums of
// squares at (4,4,128,128) on one thread; error_norm 7-8% faster in cache).
template <bool kFused, typename Product>
DA_INLINE void add_products_with(double* lanes, int64_t n, Product&& product) {
  auto add = [](double sum, Factors f)
                 DA_LAMBDA_INLINE { return kFused ? __builtin_fma(f.a, f.b, sum) : sum + f.a * f.b; };
  double sums[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) sums[l] = lanes[l];
  int64_t i = 0;
  // Not unrolled: a block of kBlock elements has at most 8 steps (a whole
  // chunk 128), which gcc would peel whole, with an exit after each step that
  // stores the sums for the code after the loop.
#pragma GCC unroll 1
  for (; i + kSumLanes <= n; i += kSumLanes) {
    for (int l = 0; l < kSumLanes; ++l) sums[l] = add(sums[l], product(i + l));
  }
  if (i < n) {
    Factors tail[kSumLanes] = {};
    for (int l = 0; i + l < n; ++l) tail[l] = product(i + l);
    for (int l = 0; l < kSumLanes; ++l) sums[l] = add(sums[l], tail[l]);
  }
  for (int l = 0; l < kSumLanes; ++l) lanes[l] = sums[l];
}
template <typename Product>
DA_INLINE void add_products(double* lanes, int64_t n, bool exact, Product&& product) {
  if (exact && clone_has_fma()) {
    add_products_with<true>(lanes, n, product);
  } else {
    add_products_with<false>(lanes, n, product);
  }
}

// Squares of float values are summed in float over runs of kFloatRun
// elements (element i into lane i % 32, each lane's 8 squares added as a
// tree), and each run's lane sums are added into the double lanes.
// Converting every element to double was the bound: one 512-bit
// float-to-double conversion per 1.85 cycles on the 2-core VM's Zen 4 (3.6
// elements a cycle, 0.082 ns an element of langevin_correct's norms on one
// core against 0.052 in runs). A run's sum is within 4 float roundings (2^-22)
// of the exact one; the sum of squares too, whatever the sample's size, as the
// runs are added in double. That holds where no square underflowed or
// overflowed: where some lane sum of a call's runs is below
// kSmallestAccurateRunSum (a square below 2^-126 loses bits to underflow, at
// most 2^-150 each, 2^-45 of such a sum for eight; zeros land here too) or is
// not finite (squares from 2^64 up overflow; NaN), the call's squares are
// summed exactly in double instead. Multiplies and adds are not fused, so
// every clone gives the same bits. (docs/ops.md, "Sums of squares".)
constexpr int64_t kFloatRun = 8 * kSumLanes;
constexpr float kSmallestAccurateRunSum = 0x1p-102f;

// lanes[l] += value(i)^2 over i in [0, n), as add_products: exactly in double
// for float64 values, in float runs (above) for float ones.
template <typename Value>
DA_INLINE void add_squares(double* lanes, int64_t n, Value&& value) {
  constexpr bool kFloatValues = sizeof(decltype(value(int64_t(0)))) <= 4;
  // Squares of values first, first + 1, ...; first is a multiple of kSumLanes.
  auto add_double_squares = [&](int64_t first, int64_t count) DA_LAMBDA_INLINE {
    add_products(lanes, count, kFloatValues, [&](int64_t i) DA_LAMBDA_INLINE {
      const double e = double(value(first + i));
      return Factors{e, e};
    });
  };
  int64_t start = 0;
  if constexpr (kFloatValues) {
    const int64_t runs_end = n - n % kFloatRun;
    double sums[kSumLanes];
    for (int l = 0; l < kSumLanes; ++l) sums[l] = lanes[l];
    // How far each lane's run sums reached above the accurate range's low end,
    // as unsigned integers on their bit patterns (which order non-negative
    // floats and put every NaN above inf): one vectorized max a run, and one
    // horizontal max for the call.
    const uint32_t low = bits_from_float(kSmallestAccurateRunSum);
    uint32_t worst[kSumLanes] = {};
    for (; start < runs_end; start += kFloatRun) {
      float squares[kFloatRun];
      for (int64_t i = 0; i < kFloatRun; ++i) {
        const float v = float(value(start + i));
        squares[i] = v * v;
      }
      // A tree: fewer roundings on a lane's path than a chain, and adds that
      // wait on three others, not seven.
      float run[kSumLanes];
      for (int l = 0; l < kSumLanes; ++l) {
        const float* q = squares + l;
        constexpr int64_t k = kSumLanes;
        run[l] = ((q[0] + q[k]) + (q[2 * k] + q[3 * k])) + ((q[4 * k] + q[5 * k]) + (q[6 * k] + q[7 * k]));
      }
      for (int l = 0; l < kSumLanes; ++l) {
        const uint32_t above_low = bits_from_float(run[l]) - low;
        worst[l] = above_low > worst[l] ? above_low : worst[l];
      }
      for (int l = 0; l < kSumLanes; ++l) sums[l] = sums[l] + double(run[l]);
    }
    uint32_t overall = 0;
    for (int l = 0; l < kSumLanes; ++l) overall = worst[l] > overall ? worst[l] : overall;
    if (overall <= bits_from_float(std::numeric_limits<float>::max()) - low) {
      for (int l = 0; l < kSumLanes; ++l) lanes[l] = sums[l];
    } else {
      start = 0;
    }
  }
  if (start < n) add_double_squares(start, n - start);
}

DA_INLINE double combine_lanes(const double* lanes) {
  double half[kSumLanes / 2];
  for (int l = 0; l < kSumLanes / 2; ++l) half[l] = lanes[l] + lanes[l + kSumLanes / 2];
  for (int width = kSumLanes / 4; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) half[l] = half[l] + half[l + width];
  }
  return half[0];
}

// Per-sample reductions run over fixed chunks of kNormChunk elements, chunks
// [chunk_begin, chunk_end) flat over the batch: add_block(lanes, offset, n)
// adds the squares of each of the chunk's blocks, in order (kNormChunk is a
// multiple of kBlock, and kBlock of kSumLanes), and partial[c] is their
// combined total, so the result does not depend on the thread split.
// whole_chunks (every operand direct, nothing kept in a block buffer): the
// chunk is one block. Element i still goes to lane i % kSumLanes and only the
// chunk's end can be partial, so the sums have the same bits as by blocks
// (but where add_squares falls back on double: it does so for a whole call,
// a chunk here, a block there); a loop set up once per chunk instead of once
// per 256 elements took 17% less time per element in error_norm's sums on
// the 2-core VM.
template <typename AddBlock>
DA_INLINE void for_each_norm_chunk(int64_t per_sample, double* partial, int64_t chunk_begin, int64_t chunk_end,
                                   bool whole_chunks, AddBlock&& add_block) {
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t first = norm_chunk_start(c, per_sample);
    const int64_t len = norm_chunk_start(c + 1, per_sample) - first;  // (a sample's last chunk may be short)
    double lanes[kSumLanes] = {};
    if (whole_chunks) {
      add_block(lanes, first, len);
    } else {
      for_each_block(first, len, [&](int64_t offset, int64_t n) DA_LAMBDA_INLINE { add_block(lanes, offset, n); });
    }
    partial[c] = combine_lanes(lanes);
  }
}

// The linear-interpolation quantile of n >= 1 values that are all >= 0 or NaN
// (absolute values), found by selection (csrc/cpu/quantile.cpp).
template <typename acc_t>
acc_t quantile_of_magnitudes(const acc_t* values, int64_t n, double ratio);

}  // namespace diffaccel::cpu
