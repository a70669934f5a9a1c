// Per-element math of every diffaccel op, written once and used by both the
// CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda). acc_t is float for
// 16- and 32-bit inputs and double for float64 inputs.
//
// The operations are written as separate multiplies and adds, in the same
// order as the PyTorch reference (diffaccel/ops/reference.py); the CPU build
// uses -ffp-contract=off so no fused multiply-add changes the rounding between
// ISA levels.
#pragma once

#include <math.h>

#include "diffaccel/config.h"

namespace diffaccel {

// |v|, one and-not on the sign bit (-0.0 gives +0.0: every use below only
// compares magnitudes or scales them into a clamp at atol > 0, where the sign
// of a zero does not matter).
DA_HOST_DEVICE DA_INLINE float magnitude(float v) { return ::fabsf(v); }
DA_HOST_DEVICE DA_INLINE double magnitude(double v) { return ::fabs(v); }

// The larger of two magnitudes (each >= 0 or a NaN with its sign clear, as
// magnitude() gives them), NaN where either is, as torch.maximum: such floats
// order as their bit patterns read as signed integers, and every NaN's
// pattern lies above +inf's, so one integer max is the whole operation where
// a NaN-propagating float max takes two compares, an or of their masks and a
// blend (error_norm's sums: 11% less time per element on the 2-core VM).
// Which NaN comes out when both are NaN is not specified (torch.maximum does
// not say either).
DA_HOST_DEVICE DA_INLINE float larger_magnitude(float a, float b) {
  const int ia = __builtin_bit_cast(int, a), ib = __builtin_bit_cast(int, b);
  return __builtin_bit_cast(float, ia > ib ? ia : ib);
}
DA_HOST_DEVICE DA_INLINE double larger_magnitude(double a, double b) {
  const long long ia = __builtin_bit_cast(long long, a), ib = __builtin_bit_cast(long long, b);
  return __builtin_bit_cast(double, ia > ib ? ia : ib);
}

// clamp(v, lo, hi) that keeps a NaN v, like torch.clamp (min first, then
// max). Two selects of this form are one max and one min instruction each on
// x86 (whose max / min return the second operand when either is NaN), where
// a nested select compiles to compares and blends.
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t clamp_keep_nan(acc_t v, acc_t lo, acc_t hi) {
  const acc_t at_least_lo = v < lo ? lo : v;
  return at_least_lo > hi ? hi : at_least_lo;
}

// Thresholding of a data prediction: clamp(d, -limit, limit) / divisor.
// kind="clip" uses limit=max_value, divisor=1 (x / 1 is exact);
// kind="dynamic" uses limit=divisor=s, the per-sample scale.
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t threshold_element(acc_t d, acc_t limit, acc_t divisor) {
  return clamp_keep_nan(d, -limit, limit) / divisor;
}

// ei_step, part 1: the data term d = c_x * x + c_m * m.
// row points at [c_x, c_m, a, b_0, b_1 .. b_K, s].
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t ei_data_term(const acc_t* row, acc_t x, acc_t m) {
  return row[0] * x + row[1] * m;
}

// ei_step, part 2: x_next = a * x + b_0 * d + sum_j b_j * h_j (+ s * z).
// Without noise the s * z term is left out entirely (not multiplied by zero),
// so an unused s column can hold anything.
template <typename acc_t, int K, bool kNoise>
DA_HOST_DEVICE DA_INLINE acc_t ei_combine(const acc_t* row, acc_t x, acc_t d, const acc_t* h, acc_t z) {
  acc_t y = row[2] * x + row[3] * d;
  DA_UNROLL
  for (int j = 0; j < K; ++j) y = y + row[kEiFixedCoeffs + j] * h[j];
  if (kNoise) y = y + row[kEiFixedCoeffs + K] * z;
  return y;
}

// multistep_combine: y = sum_j c_j * t_j, summed left to right.
template <typename acc_t, int N>
DA_HOST_DEVICE DA_INLINE acc_t combine_element(const acc_t* c, const acc_t* t) {
  acc_t y = c[0] * t[0];
  DA_UNROLL
  for (int j = 1; j < N; ++j) y = y + c[j] * t[j];
  return y;
}

// langevin_correct: x_mean = x + step * score; x_new = x_mean + noise_scale * z,
// with noise_scale = sqrt(2 * step) computed once per sample.
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE void langevin_element(acc_t x, acc_t score, acc_t z, acc_t step, acc_t noise_scale,
                                               acc_t& x_new, acc_t& x_mean) {
  x_mean = x + step * score;
  x_new = x_mean + noise_scale * z;
}

// error_norm's tolerance of an element: |low|, |prev|, scaled = rtol *
// max(|low|, |prev|) and delta = max(atol, scaled). NaN propagates as through
// torch.maximum and torch.clamp.
template <typename acc_t>
struct ErrorTolerance {
  acc_t a, b, scaled, delta;
};
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE ErrorTolerance<acc_t> error_tolerance(acc_t low, acc_t prev, acc_t atol, acc_t rtol) {
  ErrorTolerance<acc_t> t;
  t.a = magnitude(low);
  t.b = magnitude(prev);
  t.scaled = rtol * larger_magnitude(t.a, t.b);
  t.delta = t.scaled < atol ? atol : t.scaled;
  return t;
}

// error_norm: the scaled difference of adaptive step-size control (the
// official DPM-Solver's dpm_solver_adaptive, k-diffusion's DPM-Solver-12/23):
// (high - low) / max(atol, rtol * max(|low|, |prev|)).
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t scaled_error(acc_t high, acc_t low, acc_t prev, acc_t atol, acc_t rtol) {
  return (high - low) / error_tolerance(low, prev, atol, rtol).delta;
}

// Dynamic thresholding's gradient through clamp(v, -s, s) / s with the scale
// s held fixed (the reference's threshold_backward): g / s where |v| <= s
// (torch.clamp passes its bounds), else 0 (a NaN v or s passes nothing).
// kept_v is v where it passed, else 0: the scale's gradient needs the sum of
// passed * v over those elements.
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t threshold_backward_element(acc_t g, acc_t v, acc_t s, acc_t& kept_v) {
  const bool inside = magnitude(v) <= s;
  kept_v = inside ? v : acc_t(0);
  return inside ? g / s : acc_t(0);
}

// torch.sgn of a real number, (0 < v) - (v < 0): -1, 0 or 1, and 0 for NaN
// (abs's gradient).
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE acc_t sign_of(acc_t v) {
  return acc_t(acc_t(0) < v) - acc_t(v < acc_t(0));
}

// error_norm's gradient, the closed form of autograd through its reference
// (diffaccel/ops/reference.py, error_norm_backward, has the same terms in the
// same order). k = dL/dE / (N E) for the element's sample; with e the scaled
// error, dL/dhigh = k e / delta, and dL/ddelta = -(dL/dhigh) e reaches low and
// prev through the clamp at atol (where rtol * max(|low|, |prev|) >= atol),
// torch.maximum's backward (all to the larger, half each at a tie, all to both
// beside a NaN, exactly 0 to the smaller) and abs's (the sign).
template <typename acc_t>
DA_HOST_DEVICE DA_INLINE void scaled_error_backward(acc_t k, acc_t high, acc_t low, acc_t prev, acc_t atol, acc_t rtol,
                                                    acc_t& grad_high, acc_t& grad_low, acc_t& grad_prev) {
  const ErrorTolerance<acc_t> t = error_tolerance(low, prev, atol, rtol);
  const acc_t e = (high - low) / t.delta;
  grad_high = k * e / t.delta;
  const acc_t through = t.scaled >= atol ? grad_high * e * -rtol : acc_t(0);
  const acc_t shared = t.a == t.b ? through / acc_t(2) : through;
  grad_low = (t.a < t.b ? acc_t(0) : shared) * sign_of(low) - grad_high;
  grad_prev = (t.b < t.a ? acc_t(0) : shared) * sign_of(prev);
}

}  // namespace diffaccel
