"""The Triton kernels of the diffaccel ops.

The per-element math is the same as csrc/include/diffaccel/elementwise.h,
operation for operation (the Triton language cannot include that header; the
tests hold both to the one reference). Tensors reach these kernels contiguous;
ACC is tl.float32, or tl.float64 when the state is float64.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from diffaccel.ops.triton import INTERPRET

# Box-Muller's log, cos and sin: on the GPU libdevice's, the functions CUDA C++'s
# logf / cosf / sinf are, so both GPU backends draw the same noise to the last
# bit or two; the interpreter has no libdevice and uses numpy's.
_INTERPRET = tl.constexpr(INTERPRET)


@triton.jit
def _log(v):
    if _INTERPRET:
        return tl.log(v)
    else:
        return libdevice.log(v)


@triton.jit
def _cos(v):
    if _INTERPRET:
        return tl.cos(v)
    else:
        return libdevice.cos(v)


@triton.jit
def _sin(v):
    if _INTERPRET:
        return tl.sin(v)
    else:
        return libdevice.sin(v)


@triton.jit
def _product(a, b):
    # a * b rounded by itself (mul.rn, which is never fused): the GPU compiler
    # otherwise fuses a product into the add after it, and not alike in every
    # kernel, so the dynamic threshold's keys of d = c_x x + c_m m in one
    # selection kernel and another, and d in the step, could differ in the last
    # bit (the selection then found an order statistic next to the one it had
    # counted: scales 1e-3 - 1e-2 off on the H200, 2026-12-04). Rounded alike,
    # they are the reference's d bit for bit.
    if _INTERPRET:
        return a * b
    else:
        return libdevice.mul_rn(a, b)


@triton.jit
def _quotient(a, b):
    # a / b correctly rounded, as in C++: Triton's float32 division is div.full
    # (within 2 ulp), which put the dynamic threshold's per-sample sums in its
    # gradient 2-5e-6 off the reference's (H200, 2026-12-04).
    if _INTERPRET:
        return a / b
    else:
        return libdevice.div_rn(a, b)


# Elements per program of the elementwise kernels, and per loop step of the
# norm kernels.
BLOCK = 1024
# Elements of one sample per norms program of langevin_correct.
NORM_CHUNK = 16384


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    # A float argument passed as a float32 pair (launch._split).
    if ACC == tl.float64:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return tl.cast(hi, tl.float32)


@triton.jit
def _sqrt(v, ACC: tl.constexpr):
    # Correctly rounded, like sqrtf / sqrt in C++ (tl.sqrt is approximate in float32).
    if ACC == tl.float64:
        return tl.sqrt(v)
    else:
        return tl.sqrt_rn(v)


@triton.jit
def _clamp_keep_nan(v, lo, hi):
    # torch.clamp's order (min first, then max), as the C++ clamp_keep_nan.
    at_least_lo = tl.where(v < lo, lo, v)
    return tl.where(at_least_lo > hi, hi, at_least_lo)


@triton.jit
def _coeff(row_ptr, j, mask, PER_SAMPLE: tl.constexpr, ACC: tl.constexpr):
    # One coefficient: gathered per element when rows differ per sample, else one scalar.
    if PER_SAMPLE:
        return tl.load(row_ptr + j, mask=mask, other=0).to(ACC)
    else:
        return tl.load(row_ptr + j).to(ACC)


@triton.jit
def ei_step_kernel(
    x_ptr,
    m_ptr,
    h0_ptr,
    h1_ptr,
    h2_ptr,
    h3_ptr,
    z_ptr,
    c_ptr,
    c_stride,
    scale_ptr,
    clip_hi,
    clip_lo,
    x_next_ptr,
    d_ptr,
    n,
    per_sample,
    K: tl.constexpr,
    NOISE: tl.constexpr,
    THRESHOLD: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # THRESHOLD: 0 none, 1 clip at clip_max, 2 dynamic with scale_ptr[b].
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if PER_SAMPLE:
        b = offs // per_sample
        row = c_ptr + b * c_stride
    else:
        b = 0
        row = c_ptr
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    m = tl.load(m_ptr + offs, mask=mask, other=0).to(ACC)
    d = _product(_coeff(row, 0, mask, PER_SAMPLE, ACC), x) + _product(_coeff(row, 1, mask, PER_SAMPLE, ACC), m)
    if THRESHOLD == 1:
        clip_max = _scalar(clip_hi, clip_lo, ACC)
        d = _clamp_keep_nan(d, -clip_max, clip_max)
    if THRESHOLD == 2:
        s = tl.load(scale_ptr + b, mask=mask, other=1).to(ACC)
        d = _quotient(_clamp_keep_nan(d, -s, s), s)
    y = _coeff(row, 2, mask, PER_SAMPLE, ACC) * x + _coeff(row, 3, mask, PER_SAMPLE, ACC) * d
    if K > 0:
        y = y + _coeff(row, 4, mask, PER_SAMPLE, ACC) * tl.load(h0_ptr + offs, mask=mask, other=0).to(ACC)
    if K > 1:
        y = y + _coeff(row, 5, mask, PER_SAMPLE, ACC) * tl.load(h1_ptr + offs, mask=mask, other=0).to(ACC)
    if K > 2:
        y = y + _coeff(row, 6, mask, PER_SAMPLE, ACC) * tl.load(h2_ptr + offs, mask=mask, other=0).to(ACC)
    if K > 3:
        y = y + _coeff(row, 7, mask, PER_SAMPLE, ACC) * tl.load(h3_ptr + offs, mask=mask, other=0).to(ACC)
    if NOISE:
        y = y + _coeff(row, 4 + K, mask, PER_SAMPLE, ACC) * tl.load(z_ptr + offs, mask=mask, other=0).to(ACC)
    # All loads above come before both stores: x_next may be x, d a history tensor.
    tl.store(d_ptr + offs, d.to(d_ptr.dtype.element_ty), mask=mask)
    tl.store(x_next_ptr + offs, y.to(x_next_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _combine_row(
    row, v0, v1, v2, v3, v4, v5, v6, v7, mask, N: tl.constexpr, PER_SAMPLE: tl.constexpr, ACC: tl.constexpr
):
    # sum_j row[j] * v_j over the first N values, left to right.
    y = _coeff(row, 0, mask, PER_SAMPLE, ACC) * v0
    if N > 1:
        y = y + _coeff(row, 1, mask, PER_SAMPLE, ACC) * v1
    if N > 2:
        y = y + _coeff(row, 2, mask, PER_SAMPLE, ACC) * v2
    if N > 3:
        y = y + _coeff(row, 3, mask, PER_SAMPLE, ACC) * v3
    if N > 4:
        y = y + _coeff(row, 4, mask, PER_SAMPLE, ACC) * v4
    if N > 5:
        y = y + _coeff(row, 5, mask, PER_SAMPLE, ACC) * v5
    if N > 6:
        y = y + _coeff(row, 6, mask, PER_SAMPLE, ACC) * v6
    if N > 7:
        y = y + _coeff(row, 7, mask, PER_SAMPLE, ACC) * v7
    return y


@triton.jit
def multistep_combine_kernel(
    t0,
    t1,
    t2,
    t3,
    t4,
    t5,
    t6,
    t7,
    c_ptr,
    c_stride,
    y0_ptr,
    y1_ptr,
    n,
    per_sample,
    N: tl.constexpr,
    M: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # M = 1: multistep_combine; M = 2: multistep_combine_pair, output 1's
    # coefficients N entries after output 0's in a row.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if PER_SAMPLE:
        row = c_ptr + (offs // per_sample) * c_stride
    else:
        row = c_ptr
    v0 = tl.load(t0 + offs, mask=mask, other=0).to(ACC)
    v1 = v0
    if N > 1:
        v1 = tl.load(t1 + offs, mask=mask, other=0).to(ACC)
    v2 = v0
    if N > 2:
        v2 = tl.load(t2 + offs, mask=mask, other=0).to(ACC)
    v3 = v0
    if N > 3:
        v3 = tl.load(t3 + offs, mask=mask, other=0).to(ACC)
    v4 = v0
    if N > 4:
        v4 = tl.load(t4 + offs, mask=mask, other=0).to(ACC)
    v5 = v0
    if N > 5:
        v5 = tl.load(t5 + offs, mask=mask, other=0).to(ACC)
    v6 = v0
    if N > 6:
        v6 = tl.load(t6 + offs, mask=mask, other=0).to(ACC)
    v7 = v0
    if N > 7:
        v7 = tl.load(t7 + offs, mask=mask, other=0).to(ACC)
    y0 = _combine_row(row, v0, v1, v2, v3, v4, v5, v6, v7, mask, N, PER_SAMPLE, ACC)
    # All loads above come before the stores: an output may be one of the tensors.
    if M > 1:
        y1 = _combine_row(row + N, v0, v1, v2, v3, v4, v5, v6, v7, mask, N, PER_SAMPLE, ACC)
        tl.store(y1_ptr + offs, y1.to(y1_ptr.dtype.element_ty), mask=mask)
    tl.store(y0_ptr + offs, y0.to(y0_ptr.dtype.element_ty), mask=mask)


@triton.jit
def threshold_kernel(
    x_ptr,
    scale_ptr,
    clip_hi,
    clip_lo,
    y_ptr,
    n,
    per_sample,
    DYNAMIC: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    if DYNAMIC:
        s = tl.load(scale_ptr + offs // per_sample, mask=mask, other=1).to(ACC)
        y = _quotient(_clamp_keep_nan(x, -s, s), s)
    else:
        clip_max = _scalar(clip_hi, clip_lo, ACC)
        y = _clamp_keep_nan(x, -clip_max, clip_max)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _philox_normal(seed_lo, seed_hi, offset_lo, offset_hi, i, ACC: tl.constexpr):
    """Element i of the in-kernel normal stream: diffaccel/philox.h's
    philox_normal (Triton's tl.philox is the same Philox4x32-10 with the same
    key and counter layout), so the cuda and triton backends draw the same noise."""
    block = i // 4
    lane = i % 4
    seed = (tl.cast(seed_hi, tl.uint64) << 32) | tl.cast(seed_lo, tl.uint64)
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((block >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.zeros_like(c0) + tl.cast(offset_lo, tl.uint32)
    c3 = tl.zeros_like(c0) + tl.cast(offset_hi, tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    a = tl.where(lane < 2, r0, r2)
    bb = tl.where(lane < 2, r1, r3)
    u1 = (a.to(ACC) + 1) * 2.3283064365386963e-10
    u2 = bb.to(ACC) * 2.3283064365386963e-10
    radius = _sqrt((-2.0 * _log(u1.to(ACC))).to(ACC), ACC)
    angle = (6.283185307179586 * u2).to(ACC)
    return tl.where(lane % 2 == 0, radius * _cos(angle), radius * _sin(angle)).to(ACC)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi"])
def langevin_norms_kernel(
    score_ptr,
    z_ptr,
    partial_ptr,
    per_sample,
    chunks,
    seed_lo,
    seed_hi,
    offset_lo,
    offset_hi,
    HAS_NOISE: tl.constexpr,
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    score_sq = tl.zeros([BLOCK], tl.float64)
    noise_sq = tl.zeros([BLOCK], tl.float64)
    for start in range(0, CHUNK, BLOCK):
        offs = c * CHUNK + start + tl.arange(0, BLOCK)
        mask = offs < per_sample
        i = b * per_sample + offs
        g = tl.load(score_ptr + i, mask=mask, other=0).to(ACC).to(tl.float64)
        if HAS_NOISE:
            z = tl.load(z_ptr + i, mask=mask, other=0).to(ACC).to(tl.float64)
        else:
            z = tl.where(mask, _philox_normal(seed_lo, seed_hi, offset_lo, offset_hi, i, ACC), 0).to(tl.float64)
        score_sq += g * g
        noise_sq += z * z
    out = partial_ptr + (b * chunks + c) * 2 + tl.arange(0, 1)
    tl.store(out, tl.sum(score_sq, 0) + tl.zeros([1], tl.float64))
    tl.store(out + 1, tl.sum(noise_sq, 0) + tl.zeros([1], tl.float64))


@triton.jit
def langevin_steps_kernel(
    partial_ptr,
    alpha_ptr,
    alpha_stride,
    step_ptr,
    noise_scale_ptr,
    batch,
    chunks,
    snr_hi,
    snr_lo,
    PER_SAMPLE: tl.constexpr,
    BATCH_BLOCK: tl.constexpr,
):
    """One program: every sample's norms (chunks added in order), then its step."""
    samples = tl.arange(0, BATCH_BLOCK)
    valid = samples < batch
    grad_sq = tl.zeros([BATCH_BLOCK], tl.float64)
    noise_sq = tl.zeros([BATCH_BLOCK], tl.float64)
    c = 0
    while c < chunks:
        grad_sq += tl.load(partial_ptr + (samples * chunks + c) * 2, mask=valid, other=1)  # no 0/0 in padding lanes
        noise_sq += tl.load(partial_ptr + (samples * chunks + c) * 2 + 1, mask=valid, other=0)
        c += 1
    grad = _sqrt(grad_sq, tl.float64)
    noise = _sqrt(noise_sq, tl.float64)
    if not PER_SAMPLE:
        grad = tl.zeros([BATCH_BLOCK], tl.float64) + tl.sum(tl.where(valid, grad, 0), 0) / batch
        noise = tl.zeros([BATCH_BLOCK], tl.float64) + tl.sum(tl.where(valid, noise, 0), 0) / batch
    alpha = tl.load(alpha_ptr + samples * alpha_stride, mask=valid, other=0).to(tl.float64)
    r = _scalar(snr_hi, snr_lo, tl.float64) * noise / grad
    step = 2.0 * alpha * r * r
    tl.store(step_ptr + samples, step.to(step_ptr.dtype.element_ty), mask=valid)
    tl.store(noise_scale_ptr + samples, _sqrt(2.0 * step, tl.float64).to(noise_scale_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi"])
def langevin_update_kernel(
    x_ptr,
    score_ptr,
    z_ptr,
    step_ptr,
    noise_scale_ptr,
    x_new_ptr,
    x_mean_ptr,
    n,
    per_sample,
    seed_lo,
    seed_hi,
    offset_lo,
    offset_hi,
    HAS_NOISE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b = offs // per_sample
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    g = tl.load(score_ptr + offs, mask=mask, other=0).to(ACC)
    if HAS_NOISE:
        z = tl.load(z_ptr + offs, mask=mask, other=0).to(ACC)
    else:
        z = _philox_normal(seed_lo, seed_hi, offset_lo, offset_hi, offs, ACC)
    step = tl.load(step_ptr + b, mask=mask, other=0)
    scale = tl.load(noise_scale_ptr + b, mask=mask, other=0)
    x_mean = x + step * g
    x_new = x_mean + scale * z
    tl.store(x_mean_ptr + offs, x_mean.to(x_mean_ptr.dtype.element_ty), mask=mask)
    tl.store(x_new_ptr + offs, x_new.to(x_new_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _error_tolerance(low, prev, atol, rtol):
    # elementwise.h's error_tolerance: (|low|, |prev|, scaled, delta); NaN propagates
    # as through torch.maximum / clamp.
    a = tl.abs(low)
    b = tl.abs(prev)
    scaled = rtol * tl.where((a != a) | (a > b), a, b)
    return a, b, scaled, tl.where(scaled < atol, atol, scaled)


@triton.jit
def _scaled_error(high, low, prev, atol, rtol):
    # elementwise.h's scaled_error.
    _, _, _, delta = _error_tolerance(low, prev, atol, rtol)
    return (high - low) / delta


@triton.jit
def error_norm_partials_kernel(
    high_ptr,
    low_ptr,
    prev_ptr,
    partial_ptr,
    per_sample,
    chunks,
    atol_hi,
    atol_lo,
    rtol_hi,
    rtol_lo,
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (chunk, sample): the sum of squared scaled errors of the chunk, in float64."""
    c = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    atol = _scalar(atol_hi, atol_lo, ACC)
    rtol = _scalar(rtol_hi, rtol_lo, ACC)
    total = tl.zeros([BLOCK], tl.float64)
    for start in range(0, CHUNK, BLOCK):
        offs = c * CHUNK + start + tl.arange(0, BLOCK)
        mask = offs < per_sample
        i = b * per_sample + offs
        high = tl.load(high_ptr + i, mask=mask, other=0).to(ACC)
        low = tl.load(low_ptr + i, mask=mask, other=0).to(ACC)
        prev = tl.load(prev_ptr + i, mask=mask, other=0).to(ACC)
        e = tl.where(mask, _scaled_error(high, low, prev, atol, rtol), 0).to(tl.float64)
        total += e * e
    tl.store(partial_ptr + b * chunks + c + tl.arange(0, 1), tl.sum(total, 0) + tl.zeros([1], tl.float64))


@triton.jit
def error_norm_finish_kernel(partial_ptr, out_ptr, batch, chunks, per_sample, BATCH_BLOCK: tl.constexpr):
    """One program: each sample's chunks added in order, then the RMS."""
    samples = tl.arange(0, BATCH_BLOCK)
    valid = samples < batch
    total = tl.zeros([BATCH_BLOCK], tl.float64)
    c = 0
    while c < chunks:
        total += tl.load(partial_ptr + samples * chunks + c, mask=valid, other=0)
        c += 1
    rms = _sqrt(total / per_sample, tl.float64)
    tl.store(out_ptr + samples, rms.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _sign_of(v):
    # elementwise.h's sign_of: torch.sgn of a real number, (0 < v) - (v < 0) (0 for NaN).
    return (v > 0).to(v.dtype) - (v < 0).to(v.dtype)


@triton.jit
def error_norm_backward_kernel(
    high_ptr,
    low_ptr,
    prev_ptr,
    k_ptr,
    grad_high_ptr,
    grad_low_ptr,
    grad_prev_ptr,
    n,
    per_sample,
    atol_hi,
    atol_lo,
    rtol_hi,
    rtol_lo,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """elementwise.h's scaled_error_backward, with k = dL/dE / (N E) per sample."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    atol = _scalar(atol_hi, atol_lo, ACC)
    rtol = _scalar(rtol_hi, rtol_lo, ACC)
    high = tl.load(high_ptr + offs, mask=mask, other=0).to(ACC)
    low = tl.load(low_ptr + offs, mask=mask, other=0).to(ACC)
    prev = tl.load(prev_ptr + offs, mask=mask, other=0).to(ACC)
    k = tl.load(k_ptr + offs // per_sample, mask=mask, other=0).to(ACC)
    a, b, scaled, delta = _error_tolerance(low, prev, atol, rtol)
    e = (high - low) / delta
    grad_high = k * e / delta
    through = tl.where(scaled >= atol, grad_high * e * -rtol, 0.0).to(ACC)
    shared = tl.where(a == b, through / 2, through)
    grad_low = tl.where(a < b, 0.0, shared).to(ACC) * _sign_of(low) - grad_high
    grad_prev = tl.where(b < a, 0.0, shared).to(ACC) * _sign_of(prev)
    tl.store(grad_high_ptr + offs, grad_high.to(grad_high_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_low_ptr + offs, grad_low.to(grad_low_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_prev_ptr + offs, grad_prev.to(grad_prev_ptr.dtype.element_ty), mask=mask)


@triton.jit
def threshold_backward_partials_kernel(
    grad_ptr,
    x_ptr,
    scale_ptr,
    passed_ptr,
    partial_ptr,
    per_sample,
    chunks,
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (chunk, sample): elementwise.h's threshold_backward_element over
    the chunk (passed = g / s where |x| <= s, else 0, written), and the chunk's
    sum of passed * x over those elements, in float64."""
    c = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    s = tl.load(scale_ptr + b + tl.arange(0, 1)).to(ACC)
    total = tl.zeros([BLOCK], tl.float64)
    for start in range(0, CHUNK, BLOCK):
        offs = c * CHUNK + start + tl.arange(0, BLOCK)
        mask = offs < per_sample
        i = b * per_sample + offs
        g = tl.load(grad_ptr + i, mask=mask, other=0).to(ACC)
        x = tl.load(x_ptr + i, mask=mask, other=0).to(ACC)
        inside = (tl.abs(x) <= s) & mask
        passed = tl.where(inside, _quotient(g, s), 0.0).to(ACC)
        tl.store(passed_ptr + i, passed.to(passed_ptr.dtype.element_ty), mask=mask)
        total += passed.to(tl.float64) * tl.where(inside, x, 0.0).to(tl.float64)
    tl.store(partial_ptr + b * chunks + c + tl.arange(0, 1), tl.sum(total, 0) + tl.zeros([1], tl.float64))
