"""A Python model of the control logic of csrc/cuda/radix_select.cuh (float32
keys), checked against sorting: which digit each pass takes, the rank kept
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


def multi_block_select(values, ratio, capacity):
    """select_digit_pass x 3 and select_finish_candidates: (lower key, upper key, ranks, compacted)."""
    keys = np.abs(values.astype(np.float32)).view(np.uint32).astype(np.uint64)
    below, above = ranks(ratio, len(keys))
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
            return chosen, upper, below, above, False
        prefix, remaining = chosen, remaining - before
        if candidates is not None and len(candidates) <= capacity:
            lower, upper = block_select(
                candidates, prefix, KEY_BITS - pass_shift(1), pass_shift(2), remaining, smallest_above, below, above
            )
            return lower, upper, below, above, True


def as_float(key):
    return np.array([key], np.uint32).view(np.float32)[0]


def main(trials=3000):
    rng = np.random.default_rng(1)
    mismatches, paths = 0, {True: 0, False: 0}
    for trial in range(trials):
        n = int(rng.integers(1, 5000))
        kind = trial % 5
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
        ratio = float(rng.choice([0.995, 0.5, 0.9, 1.0, 0.0, rng.random()]))
        capacity = -(-n // int(rng.choice([4, 64, 100000])))  # the kernels' quarter, and smaller, to force the fallback
        lower, upper, below, above, compacted = multi_block_select(x, ratio, capacity)
        paths[compacted] += 1
        # select_threshold_scales: block_select from the first pass, over the whole sample.
        keys = np.abs(x).view(np.uint32).astype(np.uint64)
        single = block_select(keys, 0, 0, pass_shift(0), below, NONE, below, above)
        ordered = np.sort(np.abs(x))
        for name, (lo, hi) in (("multi-block", (lower, upper)), ("single-block", single)):
            if ordered[below] != as_float(lo) or ordered[above] != as_float(hi):
                mismatches += 1
                print(f"{name} mismatch: trial {trial}, n {n}, kind {kind}, ratio {ratio}, compacted {compacted}")
    print(f"mismatches {mismatches}; compacted {paths[True]}, full passes {paths[False]}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
