"""diffaccel.ops.threshold against its reference, and the reference's quantile
against torch.quantile (the semantics both follow)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from diffaccel import ops
from diffaccel.benchmarking import quantile_threshold
from diffaccel.ops import autograd, reference

from conftest import (
    DEVICE,
    DTYPES,
    LAYOUTS,
    SAMPLED_SELECTION_MIN,
    SHAPES,
    assert_close,
    make,
    sampled_positions,
)

OPTIONS = [
    dict(kind="clip", max_value=1.0),
    dict(kind="clip", max_value=0.25),
    dict(kind="dynamic", ratio=0.995, max_value=1.0, style="diffusers"),
    dict(kind="dynamic", ratio=0.8, max_value=2.5, style="diffusers"),
    dict(kind="dynamic", ratio=0.5, max_value=0.5, style="diffusers"),
    dict(kind="dynamic", ratio=0.995, max_value=1.0, style="dpm-solver"),
    dict(kind="dynamic", ratio=1.0, max_value=0.1, style="dpm-solver"),
    dict(kind="dynamic", ratio=1e-3, max_value=1.0, style="dpm-solver"),
    # The quantile itself as the scale (1 < q < max_value), at a rank between two elements.
    dict(kind="dynamic", ratio=0.9, max_value=1e3, style="diffusers"),
    # The ends of the ranges (diffusers takes them): clip to 0; the 0-quantile, the
    # smallest |x|, as the scale.
    dict(kind="clip", max_value=0.0),
    dict(kind="dynamic", ratio=0.0, max_value=0.0, style="dpm-solver"),
]

# dpm-solver style scales by max(q, max_value): with a max_value below any
# quantile these data have, the scale is the quantile itself, so the selection
# is what gets compared (a max_value of 10 hid every rank but the largest).
SELECTION = dict(kind="dynamic", max_value=1e-3, style="dpm-solver")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(7, 1), (1, 1, 1, 3)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_matches_reference(dtype, shape, layout, options, gen):
    x = make(shape, dtype, layout, gen, scale=2.0)
    assert_close(ops.threshold(x, **options), reference.threshold(x, **options))


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000, 4097, 65536])
@pytest.mark.parametrize("ratio", [0.0, 1e-4, 0.3, 0.5, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_quantile_is_torch_quantile(n, ratio, dtype, gen):
    flat = torch.randn((3, n), generator=gen, dtype=dtype)
    flat[1] = flat[1].round()  # ties
    want = torch.quantile(flat.abs(), ratio, dim=1)
    torch.testing.assert_close(reference.quantile_of_magnitudes(flat, ratio), want, rtol=0, atol=0)


@pytest.mark.parametrize("ratio,max_value", [(0.995, 1.7), (0.0, 1.7), (1.0, 1.7), (0.5, 0.0)])
def test_diffusers_style_equals_torch_quantile_formulation(ratio, max_value, gen):
    """As diffusers writes it, at the ends of the ranges too (max_value 0: the
    scale is clamp(q, 1, 0) = 0, the result 0 / 0 = NaN everywhere)."""
    x = make((4, 4, 16, 16), torch.float32, generator=gen, scale=3.0)
    got = ops.threshold(x, kind="dynamic", ratio=ratio, max_value=max_value)
    assert_close(got, quantile_threshold(x, ratio=ratio, max_value=max_value))


def test_beyond_torch_quantile_limit(gen):
    """torch.quantile refuses more than 2**24 elements per sample; we do not."""
    n = (1 << 24) + 3
    x = torch.randn((1, n), generator=gen)
    with pytest.raises(RuntimeError):
        torch.quantile(x.abs(), 0.995, dim=1)
    options = dict(kind="dynamic", ratio=0.995, max_value=1.5)
    assert_close(ops.threshold(x, **options), reference.threshold(x, **options))


def test_nan_poisons_only_its_sample(gen):
    """torch.quantile gives NaN for a row holding NaN, so that sample's scale is
    NaN and all of it becomes NaN; other samples are untouched."""
    x = make((3, 100), torch.float32, generator=gen, scale=3.0)
    x[1, 42] = float("nan")
    x[2, 7] = float("inf")
    got = ops.threshold(x, kind="dynamic", ratio=0.9, max_value=2.0)
    assert_close(got, reference.threshold(x, kind="dynamic", ratio=0.9, max_value=2.0))
    assert got[1].isnan().all()
    assert not got[0].isnan().any() and not got[2].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_in_place(dtype, gen):
    x = make((3, 4, 20, 20), dtype, "transposed", gen, scale=2.0)
    want = reference.threshold(x, ratio=0.9, max_value=1.5)
    assert ops.threshold(x, ratio=0.9, max_value=1.5, out=x) is x
    assert_close(x, want)


def test_deterministic(gen):
    x = make((4, 4, 64, 64), torch.float32, generator=gen, scale=2.0)
    assert torch.equal(ops.threshold(x), ops.threshold(x.clone()))


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000, 4097, 65536])
@pytest.mark.parametrize("ratio", [0.0, 1e-4, 0.3, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_selection_matches_reference(n, ratio, ties, dtype, gen):
    """The selection (nth_element on CPU, radix select on GPU) at many sizes
    and ranks, with and without runs of equal magnitudes (the quantile's two
    order statistics then often coincide)."""
    x = torch.randn((3, n), generator=gen, dtype=dtype) * 3
    if ties:
        x = x.round()
    options = dict(SELECTION, ratio=ratio)
    assert_close(ops.threshold(x, **options), reference.threshold(x, **options))


@pytest.mark.parametrize("n", [1 << 16, 100_003, 1 << 18, (1 << 18) + 12345, 1_000_003])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.995, 1.0])
@pytest.mark.parametrize("values", ["distinct", "rounded", "three"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_selection_of_large_samples(n, ratio, values, dtype, gen):
    """Samples of 2^16 elements and more, where the GPU selection spreads each
    sample over many blocks (a partial last chunk included) and finishes on the
    candidates of its sampled bracket, or, when they miss or overflow a quarter
    of the sample, on the keys its second digit pass copied when they fit, else
    goes on over the whole sample ("three": magnitudes 0, 1 and 2 only, most of
    them 2, so neither the bracket's candidates nor the top ranks' group ever
    fit); a NaN still poisons only its own sample."""
    x = torch.randn((3, n), generator=gen, dtype=dtype) * 3
    if values == "rounded":
        x = x.round()
    elif values == "three":
        x = x.round().clamp(-2, 2)
    x[2, n // 2] = float("nan")
    options = dict(SELECTION, ratio=ratio)
    got = ops.threshold(x, **options)
    assert_close(got, reference.threshold(x, **options))
    assert got[2].isnan().all() and not got[:2].isnan().any()


def test_ei_step_dynamic_threshold_on_large_samples(gen):
    """The fused step's selection over d = c_x x + c_m m (never stored) at a size
    where the GPU uses the multi-block passes."""
    x, m = (torch.randn((2, 4, 256, 300), generator=gen) for _ in range(2))
    coeffs = torch.tensor([0.5, 2.0, 0.9, 0.1, 0.0], dtype=torch.float64)
    threshold = ops.Threshold("dynamic", 0.99, 1.5)
    got = ops.ei_step(x, m, [], coeffs, threshold=threshold)
    want = reference.ei_step(x, m, [], coeffs, threshold=threshold)
    for a, b in zip(got, want):
        assert_close(a, b)


# The GPU samples 512 magnitudes from GPU_SAMPLED_MIN elements a sample (its
# multi-block selection; csrc/cuda/radix_select.cuh, and the Triton kernels).
# SAMPLED_SIZES has one size for each of the CPU's sample sizes
# (conftest.sampled_positions), and one the GPU samples.
GPU_SAMPLED_MIN = 1 << 16
SAMPLED_SIZES = [3 * SAMPLED_SELECTION_MIN + 17, 5 * SAMPLED_SELECTION_MIN + 17, GPU_SAMPLED_MIN + 17]


def _exactly_equal(actual, expected):
    """On CPU the kernel selects the same order statistics and clamps and divides
    in the same order as the reference: the same bits, so that a neighbouring
    order statistic (close in value for dense data) cannot pass as rounding."""
    if actual.device.type == "cpu":
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    else:
        assert_close(actual, expected)


@pytest.mark.parametrize("n", SAMPLED_SIZES)
@pytest.mark.parametrize("hidden", ["large", "small", "nan", "nan sampled"])
@pytest.mark.parametrize("ratio", [0.5, 0.995, 1.0])
def test_selection_when_the_sample_misses(hidden, ratio, n, gen):
    """The sampled selection is exact even when the sample is as misleading as it
    can be: every sampled position holds a small (or a large) value and the rest
    the opposite, so the bracket the sample gives misses the quantile and the
    selection must fall back; a NaN where the sample does not look still poisons
    the sample, and one where it does gives no bracket at all. (On a GPU below
    GPU_SAMPLED_MIN, which it does not sample, an exactness test like others.)"""
    x = torch.rand((2, n), generator=gen, device=DEVICE) + 10
    sampled = sampled_positions(n).to(DEVICE)
    if hidden == "large":
        x[:, sampled] = torch.rand((2, len(sampled)), generator=gen, device=DEVICE)
    elif hidden == "small":
        x[:, sampled] = torch.rand((2, len(sampled)), generator=gen, device=DEVICE) + 100
    elif hidden == "nan":
        unsampled = next(p for p in range(n // 3, n) if p not in set(sampled.tolist()))
        x[1, unsampled] = float("nan")
    else:
        x[1, sampled[len(sampled) // 3]] = float("nan")
    options = dict(SELECTION, ratio=ratio)
    _exactly_equal(ops.threshold(x, **options), reference.threshold(x, **options))


@pytest.mark.parametrize("n", SAMPLED_SIZES)
@pytest.mark.parametrize("hidden", ["large", "small", "nan in x", "inf - inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ei_step_selection_when_the_sample_misses(hidden, dtype, n, gen):
    """ei_step selects over its data term d = c_x * x + c_m * m, which the tally
    computes in its own loop where x and m hold the kernel's dtype: the same
    misleading samples as above (laid out in x, with m small noise), a NaN in x
    and an inf - inf where the sample does not look: the same bits as the
    reference's d, thresholded and combined."""
    x = torch.rand((2, n), generator=gen, dtype=dtype) + 10
    m = torch.rand((2, n), generator=gen, dtype=dtype) * 0.1
    sampled = sampled_positions(n)
    unsampled = next(p for p in range(n // 3, n) if p not in set(sampled.tolist()))
    if hidden == "large":
        x[:, sampled] = torch.rand((2, len(sampled)), generator=gen, dtype=dtype)
    elif hidden == "small":
        x[:, sampled] = torch.rand((2, len(sampled)), generator=gen, dtype=dtype) + 100
    elif hidden == "nan in x":
        x[1, unsampled] = float("nan")
    else:  # c_x * inf + c_m * (-inf) with c_x, c_m > 0
        x[1, unsampled], m[1, unsampled] = float("inf"), -float("inf")
    x, m = x.to(DEVICE), m.to(DEVICE)
    h = torch.randn((2, n), generator=gen, dtype=dtype).to(DEVICE)
    coeffs = torch.tensor([0.8, 0.5, 0.9, 0.15, -0.05, 0.0], dtype=torch.float64, device=DEVICE)
    for ratio in (0.5, 0.995):
        threshold = ops.Threshold("dynamic", ratio, 1e-3, "dpm-solver")
        got = ops.ei_step(x, m, [h], coeffs, threshold=threshold)
        want = reference.ei_step(x, m, [h], coeffs, threshold=threshold)
        for g, w in zip(got, want):
            _exactly_equal(g, w)


def _sample_rank_below(n, ratio, margin_sds, margin_values):
    """The sample rank at the low end of a bracket of csrc/cpu/quantile.cpp
    (brackets_from_sample) for the lower order statistic of ratio."""
    size = len(sampled_positions(n))
    below = int(torch.tensor(ratio, dtype=torch.float32) * (n - 1))  # torch.quantile's rank, in float32
    p_below, p_above = below / n, (below + 2) / n
    sd = math.sqrt(size * max(p_below * (1 - p_below), p_above * (1 - p_above)))
    return math.floor(p_below * size - (margin_sds * sd + margin_values)), n - 1 - below


@pytest.mark.parametrize("n", SAMPLED_SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_selection_when_only_the_narrow_bracket_misses(n, dtype, gen):
    """The sample gives a narrow bracket, tried first, and a wide one, tried
    when it misses (csrc/cpu/selection.h: kNarrowMargin, kWideMargin, mirrored
    here). The sample's values are set so that the narrow bracket's low end
    lies above the quantile and the wide one's below it: the top sampled
    values (from the narrow end's rank up) are 10-15, the rest from the wide
    end's rank are in [1, 2), and elsewhere a group in [2, 4) holds the
    quantile over zeros. The narrow bracket then holds only the top sampled
    values and misses; the wide one holds the group and a few more, well
    within its capacity, and hits. (bfloat16: the tally runs block by block on
    converted values instead of over the input at once.)"""
    ratio = 0.995
    narrow, from_top = _sample_rank_below(n, ratio, 0.5, 1.0)
    wide, _ = _sample_rank_below(n, ratio, 3.0, 2.0)
    sampled = sampled_positions(n)
    size = len(sampled)
    assert 0 < wide < narrow < size and size - narrow <= from_top
    x = torch.zeros((2, n))
    order = torch.randperm(size, generator=gen)  # which sampled position gets which sample rank
    x[:, sampled[order[narrow:]]] = 10 + 5 * torch.rand((2, size - narrow), generator=gen)
    x[:, sampled[order[wide:narrow]]] = 1 + 0.9 * torch.rand((2, narrow - wide), generator=gen)
    unsampled = torch.ones(n, dtype=torch.bool)
    unsampled[sampled] = False
    group = unsampled.nonzero().flatten()[torch.randperm(int(unsampled.sum()), generator=gen)[: 2 * from_top]]
    x[:, group] = 2 + 2 * torch.rand((2, len(group)), generator=gen)
    x = (x * torch.where(torch.rand((2, n), generator=gen) < 0.5, -1.0, 1.0)).to(dtype).to(DEVICE)
    options = dict(SELECTION, ratio=ratio)
    _exactly_equal(ops.threshold(x, **options), reference.threshold(x, **options))


@pytest.mark.parametrize("n", [SAMPLED_SELECTION_MIN + 4099, GPU_SAMPLED_MIN + 4099])
@pytest.mark.parametrize("values", ["normal", "constant", "two", "heavy", "ulps", "tiny"])
@pytest.mark.parametrize("ratio", [0.0, 1e-3, 0.5, 0.9, 0.995, 1.0])
def test_sampled_selection_is_exact(values, ratio, n, gen):
    """Samples large enough to be selected by sampling, on data that sampling
    finds easy (normal), that fills the bracket past its capacity (constant, two
    values), with a heavy tail, a few ulps apart with many ties (ulps: the
    ranks' bins hold many values, so the pick among the candidates bins them
    again) and zeros, subnormals and normals mixed (tiny), at many ranks: the
    same bits as the reference."""
    x = torch.randn((3, n), generator=gen, device=DEVICE)
    if values == "constant":
        x = torch.full((3, n), -2.5, device=DEVICE)
    elif values == "two":
        x = torch.where(x > 1.5, 7.0, -0.25)
    elif values == "heavy":
        x = x / torch.rand((3, n), generator=gen, device=DEVICE).clamp_min(1e-3)
    elif values == "ulps":
        steps = torch.randint(-300, 300, (3, n), generator=gen, device=DEVICE).float()
        x = (1.0 + steps * 2.0**-23) * torch.where(x > 0, 1.0, -1.0)
    elif values == "tiny":
        x = x * torch.where(x.abs() > 1.0, 1.0, 1e-40) * (torch.rand((3, n), generator=gen, device=DEVICE) > 0.1)
    options = dict(SELECTION, ratio=ratio)
    _exactly_equal(ops.threshold(x, **options), reference.threshold(x, **options))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_sampled_selection_of_other_dtypes(dtype, gen):
    x = make((2, 4, 64, 65), dtype, "transposed", gen, scale=2.0)
    options = dict(SELECTION, ratio=0.995)
    assert_close(ops.threshold(x, **options), reference.threshold(x, **options))


# The pins of csrc/include/diffaccel/quantile.h (scale_pins): where the style's
# clamp holds the scale at a bound, whatever the quantile's exact value,
# decided by counting the magnitudes against the bound's edge. name ->
# (options, edge, side): side "above" holds for q >= edge, "below" for q <= edge.
PINS = {
    "diffusers-max": (dict(style="diffusers", max_value=1.5), 1.5, "above"),
    "diffusers-one": (dict(style="diffusers", max_value=1.5), 1.0, "below"),
    "dpm-solver-max": (dict(style="dpm-solver", max_value=1.25), 1.25, "below"),
    # max_value <= 1: clamp(q, 1, max_value) = max_value for every q (the edge 0).
    "diffusers-any": (dict(style="diffusers", max_value=1.0), 0.0, "above"),
}


def _quantile_ranks(ratio, n, dtype):
    """quantile_rank of diffaccel/quantile.h: the two order statistics' indices."""
    rank = torch.tensor(ratio, dtype=dtype) * torch.tensor(n - 1, dtype=dtype)
    return int(rank.floor()), min(int(rank.ceil()), n - 1)


def _pinned_sample(n, edge, side, off_side, dtype, gen):
    """n magnitudes, off_side of them strictly on the far side of edge, one of the
    rest exactly at it, the others well within; random signs and order."""
    far, within = (edge * 0.5, edge * 2) if side == "above" else (edge * 2, edge * 0.5)
    values = torch.full((n,), within, dtype=torch.float64)
    values[:off_side] = far
    values[off_side:][:1] = edge
    signs = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    order = torch.randperm(n, generator=gen)
    return (values * signs)[order].to(dtype)


@pytest.mark.parametrize("n", [1001, SAMPLED_SELECTION_MIN + 1001], ids=["exact", "sampled"])
@pytest.mark.parametrize("ratio", [0.5, 0.995, 1.0])
@pytest.mark.parametrize("pin", list(PINS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_pinned_scale_at_the_count_that_decides_it(n, ratio, pin, dtype, gen):
    """A sample whose scale a pin is expected to hold (its bracket says so, or the
    sample before it was pinned) is thresholded at once with the pinned scale
    while its magnitudes are counted against the edge, and selected only when
    the count disproves the pin. Each sample here is pinned by the smallest
    margin there is (exactly as many magnitudes off side as the pin allows, one
    at the edge) or misses it by one, after a sample the pin clearly holds for;
    a NaN disproves the pin too, and so does an infinity (torch's quantile is
    NaN where it interpolates between infinities, as at ratio 1 here). The same
    bits as the reference, in one thread (each sample expecting what the one
    before it was) and in several."""
    options, edge, side = PINS[pin]
    below, above = _quantile_ranks(ratio, n, dtype)
    allowed = below if side == "above" else n - 1 - above
    clear = 0 if side == "above" else max(allowed // 2, 0)
    off_side = [clear, allowed, clear, allowed + 1, allowed + 1, clear, clear, clear, clear]
    x = torch.stack([_pinned_sample(n, edge, side, k, dtype, gen) for k in off_side]).to(DEVICE)
    # A NaN and an infinity (where the sampled selection's sample does not look)
    # in samples the pin would otherwise hold for, each after one it held for.
    unsampled = next(p for p in range(n // 3, n) if p not in set(sampled_positions(n).tolist()))
    x[6, unsampled] = float("nan")
    x[8, unsampled] = -float("inf")
    options = dict(options, kind="dynamic", ratio=ratio)
    want = reference.threshold(x, **options)
    assert want[6].isnan().all() and not want[:6].isnan().any() and want[8].isnan().all() == (ratio == 1.0)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            _exactly_equal(ops.threshold(x, **options), want)
            coeffs = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.0], dtype=torch.float64, device=DEVICE)
            threshold = ops.Threshold(**options)
            got = ops.ei_step(x.flip(1), x, [], coeffs, threshold=threshold)
            for g, w in zip(got, reference.ei_step(x.flip(1), x, [], coeffs, threshold=threshold)):
                _exactly_equal(g, w)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("n", SAMPLED_SIZES)
@pytest.mark.parametrize("style", ["diffusers", "dpm-solver"])
def test_pinned_scale_when_the_bracket_misleads(style, n, gen):
    """The bracket of a thread's first sample predicts a pin (every sampled
    position holds a value on the pin's side) that the rest of the sample
    disproves: the pinned pass is thrown away and the sample selected."""
    sampled = sampled_positions(n).to(DEVICE)
    if style == "diffusers":  # the sample says q >= max_value = 1.5; q is about 0.9
        x = torch.rand((2, n), generator=gen, device=DEVICE)
        x[:, sampled] = 100.0
    else:  # the sample says q <= max_value = 5; q is about 10.9
        x = torch.rand((2, n), generator=gen, device=DEVICE) + 10
        x[:, sampled] = 1.0
    options = dict(kind="dynamic", ratio=0.9, max_value=1.5 if style == "diffusers" else 5.0, style=style)
    want = reference.threshold(x, **options)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _exactly_equal(ops.threshold(x, **options), want)
    finally:
        torch.set_num_threads(threads)


# Per-sample work is split by elements only for samples of at least this many
# elements (csrc/torch/common.h: kSplitSampleMin).
SPLIT_SAMPLE_MIN = 32768


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
@pytest.mark.parametrize("sample_shape", [(3, 70, 80), (4, 96, 100)], ids=["unsplit", "split"])
def test_selection_does_not_depend_on_the_thread_count(batch, sample_shape, gen):
    """With a sample per thread (or samples too small to split) each thread
    selects and thresholds its samples in one go; with fewer, larger samples
    than threads the selections run first and the elementwise pass is split by
    elements. Both give the same bits, with any number of threads, in place or
    not."""
    per_sample = sample_shape[0] * sample_shape[1] * sample_shape[2]
    assert (per_sample < SPLIT_SAMPLE_MIN) == (sample_shape == (3, 70, 80))
    x = make((batch,) + sample_shape, torch.float32, generator=gen, scale=2.0)
    want = reference.threshold(x, ratio=0.99, max_value=1.5)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            _exactly_equal(ops.threshold(x, ratio=0.99, max_value=1.5), want)
            y = x.clone()
            ops.threshold(y, ratio=0.99, max_value=1.5, out=y)
            _exactly_equal(y, want)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("sample_shape", [(4, 60, 70), (4, 96, 100)], ids=["unsplit", "split"])
def test_ei_step_dynamic_threshold_in_place_per_sample(batch, sample_shape, gen):
    """ei_step's selection and update per sample, while the sample is in cache,
    with x_next written over x and d over a history tensor: each sample's
    selection reads its own x before its update overwrites it."""
    shape = (batch,) + sample_shape
    x, m, h0, h1, z = (make(shape, torch.float32, generator=gen) for _ in range(5))
    coeffs = torch.tensor([0.3, 1.7, 0.9, 0.4, -0.2, 0.1, 0.05], dtype=torch.float64, device=DEVICE)
    threshold = ops.Threshold("dynamic", 0.995, 1.2)
    want = reference.ei_step(x, m, [h0, h1], coeffs, threshold=threshold, noise=z)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xs, h0s = x.clone(), h0.clone()
            ops.ei_step(xs, m, [h0s, h1], coeffs, threshold=threshold, noise=z, out=(xs, h0s))
            for got, expected in zip((xs, h0s), want):
                assert_close(got, expected)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("source", ["values", "data term"])
def test_every_version_of_the_selection_tally_agrees(dtype, source):
    """The selection's count-and-collect pass (csrc/cpu/tally.cpp) has a version
    per ISA level; the other tests run the CPU's own level, so here every
    version this CPU has runs on the same values against a plain count: blocks
    of awkward sizes up to the whole array, NaN, infinities, -0.0, candidates
    kept in order and cut at the capacity (reached at the start, in the middle
    and not at all: once it is outgrown the tally stops, saying so by a count
    past the capacity, as the exact fallback takes over). The values are read
    from memory, or computed in the tally's loop as ei_step's data term
    c_x * x + c_m * m (its selection over x and m in memory), which must give
    the bits torch's multiply and add give."""
    from diffaccel import _extension

    g = torch.Generator().manual_seed(7)
    v = torch.randn(3000, generator=g, dtype=dtype, device="cpu") * 3  # (CPU kernels, whatever DEVICE is)
    v[::97] = float("nan")
    v[5], v[6], v[7], v[8] = float("inf"), -float("inf"), -0.0, -1.0
    term = {}
    if source == "data term":
        m = torch.randn(3000, generator=g, dtype=dtype, device="cpu") * 3
        m[5], m[9], m[10], m[11] = float("inf"), float("nan"), -0.0, float("inf")  # (inf - inf at 5: NaN)
        c_x, c_m = 0.7, -1.3
        values = torch.tensor(c_x, dtype=dtype) * v + torch.tensor(c_m, dtype=dtype) * m
        term = {"model_out": m, "c_x": c_x, "c_m": c_m}
    else:
        values = v
    lo, hi = 1.0, 2.5
    magnitudes = values.abs()
    inside = magnitudes[(magnitudes >= lo) & (magnitudes <= hi)]
    below = int((magnitudes < lo).sum())
    assert len(inside) > 100 and below > 100
    ran = set()
    for level in ("avx512f", "avx2", "portable"):
        for block in (1, 7, 8, 16, 100, 256, 1000, 3000):  # (3000: the whole sample in one call)
            for capacity in (3000, len(inside) // 2, len(inside) // 5):
                result = _extension._C.tally(level, v, lo, hi, capacity, block, **term)
                if result is None:  # no such version on this CPU or build
                    continue
                ran.add(level)
                got_below, count, nan, stored = result
                if capacity >= len(inside):
                    assert (got_below, count, nan) == (below, len(inside), True), (level, block, capacity)
                else:
                    assert count > capacity, (level, block, capacity)
                assert torch.equal(stored, inside[:capacity]), (level, block, capacity)
    native = _extension._C.cpu_isa_level()
    assert "portable" in ran and (native.startswith("baseline") or native in ran)


# --- threshold_backward: the op of dynamic thresholding's gradient ---------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 40000)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("special", ["finite", "nan-inf", "nan-scale", "at-the-bounds"])
def test_backward_matches_reference(dtype, shape, layout, special, gen):
    """passed = grad / s where |x| <= s, else 0, and per sample <passed, x>
    over those elements: the same bits as the reference's passed on the CPU,
    its float64 sums to rounding."""
    x = make(shape, dtype, layout, gen, scale=2.0)
    grad = make(shape, dtype, layout, gen)
    scale = torch.rand(shape[:1], generator=gen) * 2 + 0.5
    if special == "nan-inf" and x.numel() > 2:
        x[(0,) * x.dim()] = float("nan")
        x[(-1,) * x.dim()] = float("inf")
        grad[(1,) + (0,) * (x.dim() - 1)] = float("inf")
    elif special == "nan-scale" and shape[0] > 0:
        scale[0] = float("nan")
    elif special == "at-the-bounds" and x.numel() > 2:  # |x| == s: torch.clamp passes it
        x[(0,) * x.dim()] = scale[0].to(dtype)
        x[(-1,) * x.dim()] = -scale[-1].to(dtype)
    passed, dot = autograd.threshold_backward(grad, x, scale)
    want_passed, want_dot = reference.threshold_backward(grad, x, scale)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert passed.dtype == acc and dot.dtype == acc and passed.shape == x.shape and dot.shape == shape[:1]
    exact = DEVICE == "cpu"
    torch.testing.assert_close(passed, want_passed, rtol=0 if exact else 1e-6, atol=0, equal_nan=True)
    torch.testing.assert_close(dot, want_dot, rtol=1e-6 if acc == torch.float32 else 1e-12, atol=1e-30, equal_nan=True)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_backward_bad_input(backend, gen):
    x = torch.randn(3, 4, generator=gen)
    with ops.backend(backend):
        with pytest.raises(ValueError, match=r"threshold_backward: argument 'scale' must have shape \[3\]"):
            autograd.threshold_backward(x, x, torch.ones(4))
        with pytest.raises(ValueError, match="threshold_backward: argument 'grad' must have shape"):
            autograd.threshold_backward(x[:2], x, torch.ones(3))
        with pytest.raises(TypeError, match="threshold_backward: argument 'scale' must be a floating tensor"):
            autograd.threshold_backward(x, x, torch.ones(3, dtype=torch.int64))


def test_gpu_selection_model():
    """The Python model of the GPU selection's control logic
    (scripts/radix_select_model.py: the sampled bracket, the digit passes, the
    compaction and their fallbacks) selects what sorting does, on random and
    misleading samples: a check of the algorithm the CUDA kernels implement that
    runs without a GPU."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "radix_select_model.py"
    spec = importlib.util.spec_from_file_location("radix_select_model", path)
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    assert model.main(trials=700) == 0
