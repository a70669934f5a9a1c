// Counter-based random numbers for noise drawn inside a kernel (langevin_correct
// with noise=None on CUDA): Philox4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011) and the Box-Muller transform.
//
// Element i of a draw with generator state (seed, offset) is
//   philox_normal<acc_t>(seed, offset, i)
// a pure function of its arguments: the noise is never written to memory, and
// any element can be recomputed anywhere (the CPU build exposes the same
// function for tests and for users who want to reproduce a GPU draw).
#pragma once

#include <cmath>
#include <cstdint>

#include "diffaccel/config.h"

namespace diffaccel {

struct Philox4 {
  uint32_t v[4];
};

DA_HOST_DEVICE DA_INLINE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(product >> 32);
  return uint32_t(product);
}

// Ten rounds of Philox4x32 on counter ctr with key (k0, k1).
DA_HOST_DEVICE DA_INLINE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  DA_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, ctr.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, ctr.v[2], &hi1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// The four uint32 of block `block` (= element index / 4) of stream (seed, offset).
DA_HOST_DEVICE DA_INLINE Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  const Philox4 ctr{{uint32_t(block), uint32_t(block >> 32), uint32_t(offset), uint32_t(offset >> 32)}};
  return philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
}

// Box-Muller on the pair (a, b): u1 in (0, 1], u2 in [0, 1).
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE void box_muller(uint32_t a, uint32_t b, acc_t* z0, acc_t* z1) {
  constexpr acc_t kTwoPi = acc_t(6.283185307179586);
  constexpr acc_t kInv2Pow32 = acc_t(2.3283064365386963e-10);
  const acc_t u1 = (acc_t(a) + acc_t(1)) * kInv2Pow32;
  const acc_t u2 = acc_t(b) * kInv2Pow32;
  using std::cos;
  using std::log;
  using std::sin;
  using std::sqrt;
  const acc_t radius = sqrt(acc_t(-2) * log(u1));
  *z0 = radius * cos(kTwoPi * u2);
  *z1 = radius * sin(kTwoPi * u2);
}

// The four normals of block `block`: elements 4 * block .. 4 * block + 3.
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE void philox_normal4(uint64_t seed, uint64_t offset, uint64_t block, acc_t* z) {
  const Philox4 r = philox_block(seed, offset, block);
  box_muller(r.v[0], r.v[1], &z[0], &z[1]);
  box_muller(r.v[2], r.v[3], &z[2], &z[3]);
}

template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  acc_t z[4];
  philox_normal4(seed, offset, i / 4, z);
  return z[i % 4];
}

}  // namespace diffaccel
