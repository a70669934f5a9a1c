"""The Triton kernels of dynamic thresholding's per-sample quantile (the
selection; the elementwise pass that applies the scale is
kernels.threshold_kernel / kernels.ei_step_kernel): a radix select on the bit
patterns of the magnitudes, many programs per sample, their histograms added
up atomically, as csrc/cuda/radix_select.cuh does it; from BRACKET_MIN
elements a sample, over a sampled bracket's candidates first.
"""

from __future__ import annotations

import triton
import triton.language as tl

from diffaccel.ops.triton.kernels import _product, _scalar

# Radix select: bits of the key resolved per pass (fewer bins make tl.histogram
# cheaper: its warp-level algorithm's work grows with the bins per thread), and
# elements per loop step of a selection program.
DIGIT_BITS = 8
SELECT_BLOCK = 2048
# The sampled bracket (csrc/include/diffaccel/quantile.h, as the CPU and CUDA
# selections take it): from BRACKET_MIN elements a sample, 2^BRACKET_SAMPLE_LOG2
# sampled magnitudes give a bracket; one pass counts the keys below it and
# copies those inside, and the digit passes select among those.
BRACKET_MIN = 1 << 16
BRACKET_SAMPLE_LOG2 = 9
# The bracket's margin, kWideMargin: standard deviations of the ranks' position
# in the sample, plus sample values (the GPU tries the wide bracket only).
BRACKET_MARGIN_SDS, BRACKET_MARGIN_VALUES = 3.0, 2.0


@triton.jit
def _magnitude_key(x_ptr, m_ptr, cx, cm, base, offs, mask, FROM_EI: tl.constexpr, ACC: tl.constexpr, KEY: tl.constexpr):
    v = tl.load(x_ptr + base + offs, mask=mask, other=0).to(ACC)
    if FROM_EI:
        v = _product(cx, v) + _product(cm, tl.load(m_ptr + base + offs, mask=mask, other=0).to(ACC))
    return tl.abs(v).to(KEY, bitcast=True)


@triton.jit
def _ei_coefficients(c_ptr, c_stride, b, FROM_EI: tl.constexpr, ACC: tl.constexpr):
    # (c_x, c_m) of sample b: the selection of ei_step runs over c_x x + c_m m.
    cx = 0.0
    cm = 0.0
    if FROM_EI:
        cx = tl.load(c_ptr + b * c_stride).to(ACC)
        cm = tl.load(c_ptr + b * c_stride + 1).to(ACC)
    return cx, cm


@triton.jit
def _resolved_prefix(
    hist_ptr, b, batch, below, passes, KEY: tl.constexpr, KEY_BITS: tl.constexpr, DIGIT_BITS: tl.constexpr
):
    """What the first `passes` digit passes resolved for sample b, read off their
    histograms (each program of a pass recomputes it: a few cumulative sums of
    BINS counts): the key prefix of the order statistic of rank `below`, its rank
    among the keys with that prefix, and how many keys have the prefix."""
    BINS: tl.constexpr = 1 << DIGIT_BITS
    bins = tl.arange(0, BINS)
    prefix = tl.zeros([1], KEY)
    remaining = below
    group = 0
    p = 0
    while p < passes:  # (a while loop: the interpreter cannot range() over an argument)
        shift = tl.maximum(tl.zeros([1], tl.int32) + (KEY_BITS - DIGIT_BITS * (p + 1)), 0).to(KEY)
        hist = tl.load(hist_ptr + (p * batch + b) * BINS + bins)
        cumulative = tl.cumsum(hist, 0)
        digit = tl.sum((cumulative <= remaining).to(tl.int32))
        remaining = remaining - tl.sum(tl.where(bins < digit, hist, 0))
        group = tl.sum(tl.where(bins == digit, hist, 0))
        prefix = prefix | (digit.to(KEY) << shift)
        p += 1
    return prefix, remaining, group


@triton.jit
def _chunk_span(chunk, per_sample):
    # [start, stop) of this program's chunk of its sample.
    start = tl.program_id(1).to(tl.int64) * chunk
    return start, tl.minimum(start + chunk, per_sample)


@triton.jit
def _block_keys(
    x_ptr,
    m_ptr,
    cx,
    cm,
    base,
    start,
    stop,
    FROM_EI: tl.constexpr,
    ACC: tl.constexpr,
    KEY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The keys of the chunk's block from `start`, and which of them are in the chunk.
    offs = start + tl.arange(0, BLOCK)
    mask = offs < stop
    return _magnitude_key(x_ptr, m_ptr, cx, cm, base, offs, mask, FROM_EI, ACC, KEY), mask


@triton.jit(do_not_specialize=["per_sample", "k_lo", "k_hi"])
def select_bracket_ends_kernel(
    x_ptr,
    m_ptr,
    c_ptr,
    c_stride,
    ends_ptr,
    flags_ptr,
    per_sample,
    k_lo,
    k_hi,
    FROM_EI: tl.constexpr,
    ACC: tl.constexpr,
    KEY: tl.constexpr,
    INF_KEY: tl.constexpr,
    LOG2: tl.constexpr,
):
    """Program per sample: the sampled bracket's ends, the keys at sample ranks
    k_lo and k_hi (bracket_sample_ranks) of the 2^LOG2 magnitudes at
    diffaccel/quantile.h's sample_position; zero where k_lo is below the
    sample, INF_KEY where k_hi is past it. A NaN among them flags the sample:
    the digit passes select it over all its keys."""
    SIZE: tl.constexpr = 1 << LOG2
    b = tl.program_id(0).to(tl.int64)
    cx, cm = _ei_coefficients(c_ptr, c_stride, b, FROM_EI, ACC)
    i = tl.arange(0, SIZE).to(tl.int64)
    window_begin = (i * per_sample) >> LOG2
    window = (((i + 1) * per_sample) >> LOG2) - window_begin
    hashed = ((i + 1).to(tl.uint64) * 0x9E3779B97F4A7C15) >> 32
    at = window_begin + ((hashed * window.to(tl.uint64)) >> 32).to(tl.int64)
    keys = _magnitude_key(x_ptr, m_ptr, cx, cm, b * per_sample, at, at < per_sample, FROM_EI, ACC, KEY)
    ordered = tl.sort(keys)
    lo = tl.sum(tl.where(i == k_lo, ordered, 0))  # (no such rank: zero)
    hi = tl.sum(tl.where(i == k_hi, ordered, 0))
    hi = tl.where(k_hi < SIZE, hi, INF_KEY)
    tl.store(ends_ptr + 2 * b + tl.arange(0, 2), tl.where(tl.arange(0, 2) == 0, lo, hi).to(KEY))
    tl.store(flags_ptr + b + tl.arange(0, 1), (tl.max(keys) > INF_KEY).to(tl.int32) + tl.zeros([1], tl.int32))


@triton.jit(do_not_specialize=["per_sample", "chunk", "capacity"])
def select_bracket_kernel(
    x_ptr,
    m_ptr,
    c_ptr,
    c_stride,
    ends_ptr,
    flags_ptr,
    found_ptr,
    under_ptr,
    nan_ptr,
    candidates_ptr,
    per_sample,
    chunk,
    capacity,
    FROM_EI: tl.constexpr,
    ACC: tl.constexpr,
    KEY: tl.constexpr,
    INF_KEY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (sample, chunk) of the bracket's pass: counts the keys below the
    bracket and the NaNs, and copies the keys inside it to the sample's
    candidates, at slots an atomic add on the sample's count hands out a block
    at a time (the order varies from run to run; the order statistics do not).
    Keys past the capacity are counted, not stored."""
    b = tl.program_id(0).to(tl.int64)
    if tl.load(flags_ptr + b) == 0:
        base = b * per_sample
        cx, cm = _ei_coefficients(c_ptr, c_stride, b, FROM_EI, ACC)
        lo = tl.load(ends_ptr + 2 * b)
        hi = tl.load(ends_ptr + 2 * b + 1)
        mine = candidates_ptr + b * capacity
        under = 0
        nans = 0
        start, stop = _chunk_span(chunk, per_sample)
        while start < stop:
            key, mask = _block_keys(x_ptr, m_ptr, cx, cm, base, start, stop, FROM_EI, ACC, KEY, BLOCK)
            start += BLOCK
            under += tl.sum((mask & (key < lo)).to(tl.int32))
            nans += tl.sum((mask & (key > INF_KEY)).to(tl.int32))
            take = mask & (key >= lo) & (key <= hi)
            taken = tl.sum(take.to(tl.int32))
            if taken > 0:
                first = tl.atomic_add(found_ptr + b, taken)
                slot = first + tl.cumsum(take.to(tl.int32), 0) - 1
                tl.store(mine + slot, key, mask=take & (slot < capacity))
        tl.atomic_add(under_ptr + b, under)
        tl.atomic_add(nan_ptr + b, nans)


@triton.jit
def _sample_ranks(found_ptr, under_ptr, flags_ptr, b, below, above, per_sample, capacity, BRACKET: tl.constexpr):
    """What sample b selects among: its bracket's candidates when the bracket
    ran (BRACKET), its sample held no NaN, its candidates all fit and the
    wanted ranks fall among them; else all its keys. Returns (among the
    candidates, the two ranks there, how many keys)."""
    inside = below < 0  # (false)
    below_b = below
    above_b = above
    count = per_sample
    if BRACKET:
        found = tl.load(found_ptr + b)
        under = tl.load(under_ptr + b)
        inside = (tl.load(flags_ptr + b) == 0) & (found <= capacity) & (below >= under) & (above < under + found)
        below_b = tl.where(inside, below - under, below)
        above_b = tl.where(inside, above - under, above)
        count = tl.where(inside, found, per_sample)
    return inside, below_b, above_b, count


@triton.jit
def _source_keys(
    inside, candidates_ptr, x_ptr, m_ptr, cx, cm, base, start, stop, FROM_EI: tl.constexpr, ACC: tl.constexpr,
    KEY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # The keys of a block from `start` of what the sample selects among
    # (_sample_ranks), and which of them are in its chunk.
    if inside:
        offs = start + tl.arange(0, BLOCK)
        mask = offs < stop
        key = tl.load(candidates_ptr + offs, mask=mask, other=0)
    else:
        key, mask = _block_keys(x_ptr, m_ptr, cx, cm, base, start, stop, FROM_EI, ACC, KEY, BLOCK)
    return key, mask


@triton.jit(do_not_specialize=["per_sample", "chunk", "below", "above", "batch", "pass_index", "capacity"])
def select_histogram_kernel(
    x_ptr,
    m_ptr,
    c_ptr,
    c_stride,
    hist_ptr,
    nan_ptr,
    found_ptr,
    under_ptr,
    flags_ptr,
    candidates_ptr,
    per_sample,
    chunk,
    below,
    above,
    batch,
    pass_index,
    capacity,
    BRACKET: tl.constexpr,
    FROM_EI: tl.constexpr,
    ACC: tl.constexpr,
    KEY: tl.constexpr,
    KEY_BITS: tl.constexpr,
    INF_KEY: tl.constexpr,
    BLOCK: tl.constexpr,
    DIGIT_BITS: tl.constexpr,
):
    """Program (sample, chunk) of digit pass `pass_index` of the radix select of
    the ratio-quantile of |v| (v = x, or c_x x + c_m m for ei_step), on the bit
    patterns of the magnitudes (csrc/cuda/radix_select.cuh): the histogram of the
    next digit of the keys that match the prefix the earlier passes resolved,
    over its chunk, added to the sample's histogram of this pass; the first pass
    also counts the NaNs. Many programs per sample, so that one sample fills the
    GPU. Over the sample's bracket's candidates where they hold the ranks
    (_sample_ranks), else over the whole sample."""
    BINS: tl.constexpr = 1 << DIGIT_BITS
    b = tl.program_id(0).to(tl.int64)
    base = b * per_sample
    cx, cm = _ei_coefficients(c_ptr, c_stride, b, FROM_EI, ACC)
    inside, below, above, count = _sample_ranks(
        found_ptr, under_ptr, flags_ptr, b, below, above, per_sample, capacity, BRACKET
    )
    prefix, remaining, group = _resolved_prefix(hist_ptr, b, batch, below, pass_index, KEY, KEY_BITS, DIGIT_BITS)
    shift = tl.maximum(tl.zeros([1], tl.int32) + (KEY_BITS - DIGIT_BITS * (pass_index + 1)), 0).to(KEY)
    fixed = (tl.zeros([1], tl.int32) + (KEY_BITS - DIGIT_BITS * pass_index)).to(KEY)  # bits from here up: the prefix's
    hist = tl.zeros([BINS], tl.int32)
    nans = 0
    mine = candidates_ptr + b * capacity
    start, stop = _chunk_span(chunk, count)
    while start < stop:
        key, mask = _source_keys(inside, mine, x_ptr, m_ptr, cx, cm, base, start, stop, FROM_EI, ACC, KEY, BLOCK)
        start += BLOCK
        nans += tl.sum((mask & (key > INF_KEY)).to(tl.int32))
        match = mask & ((key >> fixed) == (prefix >> fixed))
        digit = ((key >> shift) & (BINS - 1)).to(tl.int32)
        hist += tl.histogram(digit, BINS, mask=match)
    tl.atomic_add(hist_ptr + (pass_index * batch + b) * BINS + tl.arange(0, BINS), hist)
    if pass_index == 0:
        tl.atomic_add(nan_ptr + b, nans)


@triton.jit
def _above_needed(below, above, remaining, group):
    # The order statistic of rank `above` lies past the keys equal to the prefix
    # (those of ranks below - remaining .. below - remaining + group - 1).
    return (above != below) & (below - remaining + group <= above)


@triton.jit(do_not_specialize=["per_sample", "chunk", "below", "above", "batch", "passes", "capacity"])
def select_above_kernel(
    x_ptr,
    m_ptr,
    c_ptr,
    c_stride,
    hist_ptr,
    above_ptr,
    found_ptr,
    under_ptr,
    flags_ptr,
    candidates_ptr,
    per_sample,
    chunk,
    below,
    above,
    batch,
    passes,
    capacity,
    BRACKET: tl.constexpr,
    FROM_EI: tl.constexpr,
    ACC: tl.constexpr,
    KEY: tl.constexpr,
    KEY_BITS: tl.constexpr,
    MAX_KEY: tl.constexpr,
    BLOCK: tl.constexpr,
    DIGIT_BITS: tl.constexpr,
):
    """Program (sample, chunk): where the quantile interpolates towards a larger
    key than the selected one, the smallest key above it over the chunk, folded
    into the sample's by an atomic minimum (the keys are non-negative integers).
    Over what the digit passes selected among (_sample_ranks)."""
    b = tl.program_id(0).to(tl.int64)
    inside, below, above, count = _sample_ranks(
        found_ptr, under_ptr, flags_ptr, b, below, above, per_sample, capacity, BRACKET
    )
    prefix, remaining, group = _resolved_prefix(hist_ptr, b, batch, below, passes, KEY, KEY_BITS, DIGIT_BITS)
    if _above_needed(below, above, remaining, group):
        base = b * per_sample
        cx, cm = _ei_coefficients(c_ptr, c_stride, b, FROM_EI, ACC)
        mine = candidates_ptr + b * capacity
        smallest = tl.full([1], MAX_KEY, KEY)
        start, stop = _chunk_span(chunk, count)
        while start < stop:
            key, mask = _source_keys(inside, mine, x_ptr, m_ptr, cx, cm, base, start, stop, FROM_EI, ACC, KEY, BLOCK)
            start += BLOCK
            candidate = tl.where(mask & (key > prefix), key, tl.full([BLOCK], MAX_KEY, KEY))
            smallest = tl.minimum(smallest, tl.min(candidate, 0))
        tl.atomic_min(above_ptr + b + tl.arange(0, 1), smallest)


@triton.jit(do_not_specialize=["per_sample", "below", "above", "batch", "passes", "capacity"])
def select_scale_kernel(
    hist_ptr,
    nan_ptr,
    above_ptr,
    found_ptr,
    under_ptr,
    flags_ptr,
    scale_ptr,
    per_sample,
    below,
    above,
    batch,
    passes,
    capacity,
    w_hi,
    w_lo,
    mv_hi,
    mv_lo,
    BRACKET: tl.constexpr,
    DPM_SOLVER_STYLE: tl.constexpr,
    ACC: tl.constexpr,
    KEY: tl.constexpr,
    KEY_BITS: tl.constexpr,
    DIGIT_BITS: tl.constexpr,
):
    """Program per sample: the quantile between the two order statistics
    (torch.quantile's interpolation), then the style's scale; NaN where the
    sample holds a NaN."""
    b = tl.program_id(0).to(tl.int64)
    _, below, above, _ = _sample_ranks(found_ptr, under_ptr, flags_ptr, b, below, above, per_sample, capacity, BRACKET)
    prefix, remaining, group = _resolved_prefix(hist_ptr, b, batch, below, passes, KEY, KEY_BITS, DIGIT_BITS)
    above_key = prefix
    if _above_needed(below, above, remaining, group):
        above_key = tl.load(above_ptr + b + tl.arange(0, 1))
    lo = prefix.to(ACC, bitcast=True)
    hi = above_key.to(ACC, bitcast=True)
    w = _scalar(w_hi, w_lo, ACC)
    diff = hi - lo
    q = tl.where(w < 0.5, lo + w * diff, hi - diff * (1 - w))
    mv = _scalar(mv_hi, mv_lo, ACC)
    if DPM_SOLVER_STYLE:
        s = tl.where(q < mv, mv, q)
    else:
        s = tl.where(q < 1, 1, q)
        s = tl.where(s > mv, mv, s)
    s = tl.where(q != q, q, s)
    s = tl.where(tl.load(nan_ptr + b) > 0, float("nan"), s)
    tl.store(scale_ptr + b + tl.arange(0, 1), s.to(scale_ptr.dtype.element_ty))
