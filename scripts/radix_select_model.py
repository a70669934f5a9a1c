"""A Python model of the control logic of csrc/cuda/radix_select.cuh (float32
keys), checked against sorting: the sampled bracket (its ends from the
sampled keys' ranks, the count below it, its candidates and the test that
they hold the wanted ranks), which digit each pass takes, the rank kept
between passes, pass 1's candidate compaction and its fallback, and the
interpolation's second order statistic found in the last pass (the next
nonzero single-key bin, else the smallest key above the group).

It is not a test of the kernels (nothing CUDA runs here); it checks the
algorithm they implement, on a machine without a GPU, before a GPU run does:

    python scripts/radix_select_model.py    # prints: mismatches 0, and how often each path ran

(The ranks are computed in float64 here, in the data's dtype by torch; the
model checks that the right order statistics are selected, not the rounding
of the interpolation between them, which the CPU kernels' tests cover.)
"""

import numpy as np

KEY_BITS, DIGIT_BITS, BINS = 31, 11, 2048
NONE = (1 << 64) - 1  # no key
INF_KEY = 0x7F800000
SAMPLE_LOG2 = 9  # selection_sample_log2 from 32768 values (the GPU samples from 65536)
WIDE_MARGIN = (3.0, 2.0)  # kWideMargin: standard deviations, sample values


def pass_shift(p):
    return max(KEY_BITS - DIGIT_BITS * (p + 1), 0)


def ranks(ratio, n):
    """The lower and upper order statistics torch.quantile interpolates."""
    position = np.float64(ratio) * (n - 1)
    return int(np.floor(position)), int(np.ceil(position))


def histogram(keys, matches, shift):
    return np.bincount(((keys[matches] >> shift) & (BINS - 1)).astype(np.int64), minlength=BINS)


def find_bin(hist, remaining):
    """(digit, keys before it, keys in it) of the bin holding rank `remaining`."""
    total = np.cumsum(hist)
    digit = int(np.searchsorted(total, remaining, side="right"))
    return digit, int(total[digit - 1]) if digit else 0, int(hist[digit])


def needs_next_key(below, above, remaining, count):
    return above != below and below - remaining + count <= above


def next_key(hist, digit, group, smallest_above):
    later = np.nonzero(hist[digit + 1 :])[0]
    return group | (digit + 1 + int(later[0])) if len(later) else smallest_above


def matching(keys, prefix, prefix_bits):
    low = KEY_BITS - prefix_bits
    if prefix_bits == 0:
        return np.ones(len(keys), bool), np.zeros(len(keys), bool)
    return (keys >> low) == (prefix >> low), (keys >> low) > (prefix >> low)


def block_select(keys, prefix, prefix_bits, shift, remaining, above_outside, below, above):
    """block_select: the passes left, over the keys one block holds."""
    while True:
        last = shift == 0
        matches, above_group = matching(keys, prefix, prefix_bits)
        hist = histogram(keys, matches, shift)
        smallest_above = min([above_outside] + ([int(keys[above_group].min())] if last and above_group.any() else []))
        digit, before, count = find_bin(hist, remaining)
        group, prefix = prefix, prefix | (digit << shift)
        prefix_bits, remaining = KEY_BITS - shift, remaining - before
        if last:
            upper = (
                next_key(hist, digit, group, smallest_above)
                if needs_next_key(below, above, remaining, count)
                else prefix
            )
            return prefix, upper
        shift = shift - DIGIT_BITS if shift > DIGIT_BITS else 0


def sample_positions(n):
    """diffaccel/quantile.h: sample_position for i < 2^SAMPLE_LOG2."""
    i = np.arange(1 << SAMPLE_LOG2, dtype=np.uint64)
    begin = (i * np.uint64(n)) >> np.uint64(SAMPLE_LOG2)
    window = (((i + np.uint64(1)) * np.uint64(n)) >> np.uint64(SAMPLE_LOG2)) - begin
    with np.errstate(over="ignore"):
        hashed = ((i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (begin + ((hashed * window) >> np.uint64(32))).astype(np.int64)


def bracket_sample_ranks(below, above, n, size):
    """diffaccel/quantile.h: bracket_sample_ranks with the wide margin."""
    p_below, p_above = below / n, (above + 1) / n
    sd = np.sqrt(size * max(p_below * (1 - p_below), p_above * (1 - p_above)))
    spread = WIDE_MARGIN[0] * sd + WIDE_MARGIN[1]
    return int(np.floor(p_below * size - spread)), int(np.ceil(p_above * size + spread))


def sampled_bracket(keys, below, above, capacity):
    """select_sample_bracket and select_bracket_pass, then select_finish_candidates
    on the bracket's candidates: (lower key, upper key), or None where the digit
    passes take over (a NaN sampled, candidates past the capacity, ranks outside them)."""
    sampled = keys[sample_positions(len(keys))]
    if (sampled > INF_KEY).any():
        return None
    k_lo, k_hi = bracket_sample_ranks(below, above, len(keys), len(sampled))
    ordered = sampled[np.argsort(sampled, kind="stable")]  # ties by position, as the kernel ranks them
    lo = int(ordered[k_lo]) if 0 <= k_lo < len(sampled) else 0
    hi = int(ordered[k_hi]) if k_hi < len(sampled) else INF_KEY
    return bracket_select(keys, lo, hi, below, above, capacity)


def bracket_select(keys, lo, hi, below, above, capacity):
    """select_bracket_pass's count and decision, then the finishing block on the
    candidates in [lo, hi]: (lower key, upper key), or None."""
    below_lo = int((keys < lo).sum())
    candidates = keys[(keys >= lo) & (keys <= hi)]
    if len(candidates) > capacity or below < below_lo or above >= below_lo + len(candidates):
        return None
    return block_select(candidates, 0, 0, pass_shift(0), below - below_lo, NONE, below, above)


def multi_block_select(values, ratio, capacity):
    """The sampled bracket, else select_digit_pass x 3 and select_finish_candidates:
    (lower key, upper key, ranks, path)."""
    keys = np.abs(values.astype(np.float32)).view(np.uint32).astype(np.uint64)
    below, above = ranks(ratio, len(keys))
    bracketed = sampled_bracket(keys, below, above, capacity)
    if bracketed is not None:
        return *bracketed, below, above, "bracketed"
    prefix, remaining, smallest_above = 0, below, NONE
    for p in range(3):
        shift, last = pass_shift(p), pass_shift(p) == 0
        prefix_bits = 0 if p == 0 else KEY_BITS - pass_shift(p - 1)
        matches, above_group = matching(keys, prefix, prefix_bits)
        hist = histogram(keys, matches, shift)
        if above_group.any():
            smallest_above = min(smallest_above, int(keys[above_group].min()))
        candidates = keys[matches] if p == 1 and not last else None
        digit, before, count = find_bin(hist, remaining)
        chosen = prefix | (digit << shift)
        if last:
            upper = (
                next_key(hist, digit, prefix, smallest_above)
                if needs_next_key(below, above, remaining - before, count)
                else chosen
            )
            return chosen, upper, below, above, "full passes"
        prefix, remaining = chosen, remaining - before
        if candidates is not None and len(candidates) <= capacity:
            lower, upper = block_select(
                candidates, prefix, KEY_BITS - pass_shift(1), pass_shift(2), remaining, smallest_above, below, above
            )
            return lower, upper, below, above, "compacted"


def as_float(key):
    return np.array([key], np.uint32).view(np.float32)[0]


def main(trials=3000):
    rng = np.random.default_rng(1)
    mismatches, paths = 0, {"bracketed": 0, "compacted": 0, "full passes": 0}
    for trial in range(trials):
        # Mostly small samples (fast), every seventh (all kinds) of the sizes the GPU samples.
        n = int(rng.integers(1, 5000)) if trial % 7 else int(rng.integers(1 << 16, 1 << 18))
        kind = trial % 6
        x = rng.standard_normal(n).astype(np.float32)
        if kind == 1:  # heavy ties
            x = np.round(x * 4) / 4
        elif kind == 2:  # tiny values and a few huge outliers
            x = (rng.standard_normal(n) * 1e-3).astype(np.float32)
            x[rng.integers(0, n, 3)] = 1e6
        elif kind == 3:
            x = rng.integers(0, 3, n).astype(np.float32)
        elif kind == 4:
            x = rng.random(n).astype(np.float32)
        elif kind == 5:  # a misleading sample: small where it looks, large elsewhere (or the reverse)
            x = (rng.random(n) + 10).astype(np.float32)
            x[sample_positions(n)] = rng.random(1 << SAMPLE_LOG2) * (1 if trial % 12 < 6 else 100)
        ratio = float(rng.choice([0.995, 0.5, 0.9, 1.0, 0.0, rng.random()]))
        capacity = -(-n // int(rng.choice([4, 64, 100000])))  # the kernels' quarter, and smaller, to force the fallback
        lower, upper, below, above, path = multi_block_select(x, ratio, capacity)
        paths[path] += 1
        # select_threshold_scales: block_select from the first pass, over the whole sample.
        keys = np.abs(x).view(np.uint32).astype(np.uint64)
        single = block_select(keys, 0, 0, pass_shift(0), below, NONE, below, above)
        ordered = np.sort(np.abs(x))
        # Brackets at the edges of the wanted ranks: tight, then one key short
        # of the upper or the lower order statistic (these must fall back).
        tight = (int(ordered[below:].view(np.uint32)[0]), int(ordered[above:].view(np.uint32)[0]))
        edges = [tight, (tight[0], max(tight[1] - 1, 0)), (tight[0] + 1, tight[1])]
        results = [bracket_select(keys, lo, hi, below, above, n) for lo, hi in edges]
        if results[0] is None:
            mismatches += 1
            print(f"tight bracket fell back: trial {trial}, n {n}, kind {kind}, ratio {ratio}")
        edge_results = [(f"edge bracket {i}", r) for i, r in enumerate(results) if r is not None]
        for name, (lo, hi) in [("multi-block", (lower, upper)), ("single-block", single)] + edge_results:
            if ordered[below] != as_float(lo) or ordered[above] != as_float(hi):
                mismatches += 1
                print(f"{name} mismatch: trial {trial}, n {n}, kind {kind}, ratio {ratio}, path {path}")
    print(f"mismatches {mismatches}; " + ", ".join(f"{path} {count}" for path, count in paths.items()))
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
