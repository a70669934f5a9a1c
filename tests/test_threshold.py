"""diffaccel.ops.threshold against its reference, and the reference's quantile
against torch.quantile (the semantics both follow)."""

import pytest
import torch

from diffaccel import ops
from diffaccel.benchmarking import quantile_threshold
from diffaccel.ops import reference

from conftest import DTYPES, LAYOUTS, SHAPES, assert_close, make

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
@pytest.mark.parametrize("ratio", [1e-4, 0.3, 0.5, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_quantile_is_torch_quantile(n, ratio, dtype, gen):
    flat = torch.randn((3, n), generator=gen, dtype=dtype)
    flat[1] = flat[1].round()  # ties
    want = torch.quantile(flat.abs(), ratio, dim=1)
    torch.testing.assert_close(reference.quantile_of_magnitudes(flat, ratio), want, rtol=0, atol=0)


def test_diffusers_style_equals_torch_quantile_formulation(gen):
    x = make((4, 4, 16, 16), torch.float32, generator=gen, scale=3.0)
    got = ops.threshold(x, kind="dynamic", ratio=0.995, max_value=1.7)
    assert_close(got, quantile_threshold(x, ratio=0.995, max_value=1.7))


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
@pytest.mark.parametrize("ratio", [1e-4, 0.3, 0.9, 0.995, 1.0])
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
@pytest.mark.parametrize("ratio", [0.3, 0.995, 1.0])
@pytest.mark.parametrize("values", ["distinct", "rounded", "three"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_selection_of_large_samples(n, ratio, values, dtype, gen):
    """Samples of 2^16 elements and more, where the GPU selection spreads each
    sample over many blocks (a partial last chunk included) and finishes on the
    keys its second pass copied when they fit in a quarter of the sample, else
    goes on over the whole sample ("three": magnitudes 0, 1 and 2 only, most of
    them 2, so the top ranks' group never fits); a NaN still poisons only its
    own sample."""
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
