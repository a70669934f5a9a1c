"""diffaccel.ops.error_norm (adaptive step-size control's error estimate)
against its reference, and the reference against the formula written the way
the official DPM-Solver writes it."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import reference

from conftest import DTYPES, LAYOUTS, SHAPES, assert_close, make


def _trial(shape, dtype, layout, gen):
    """A plausible trial step: x_low near x_high, x_prev near both."""
    x_high = make(shape, dtype, layout, gen)
    x_low = (x_high.to(torch.float32) + 0.01 * make(shape, torch.float32, layout, gen)).to(dtype)
    x_prev = (x_high.to(torch.float32) + 0.1 * make(shape, torch.float32, layout, gen)).to(dtype)
    return x_high, x_low, x_prev


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 40000)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tolerances", [(0.0078, 0.05), (1e-3, 0.0), (0.5, 1.0)], ids=str)
def test_matches_reference(dtype, shape, layout, tolerances, gen):
    x_high, x_low, x_prev = _trial(shape, dtype, layout, gen)
    atol, rtol = tolerances
    got = ops.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
    want = reference.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
    assert got.shape == (shape[0],)
    # The sums are float64 in both, in different orders; the result is rounded to float32.
    torch.testing.assert_close(got, want, rtol=1e-6 if dtype != torch.float64 else 1e-12, atol=0, equal_nan=True)


def test_reference_is_the_official_formula(gen):
    """dpm_solver_pytorch's dpm_solver_adaptive: delta = max(atol, rtol * max(|x_lower|, |x_prev|)),
    E = norm_fn((x - x_lower) / delta) with norm_fn = RMS over the non-batch dims."""
    x_high, x_low, x_prev = (torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    atol, rtol = 0.0078, 0.05
    delta = torch.max(torch.ones_like(x_low) * atol, rtol * torch.max(torch.abs(x_low), torch.abs(x_prev)))
    official = torch.sqrt(torch.square(((x_high - x_low) / delta).reshape(4, -1)).mean(dim=-1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(reference.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol), official)


def test_nan_propagates_to_its_sample_only(gen):
    x_high, x_low, x_prev = _trial((3, 50), torch.float32, "contiguous", gen)
    x_low[1, 7] = float("nan")
    x_prev[2, 3] = float("inf")  # delta = inf there: that element's error is 0
    got = ops.error_norm(x_high, x_low, x_prev, atol=0.01, rtol=0.05)
    want = reference.error_norm(x_high, x_low, x_prev, atol=0.01, rtol=0.05)
    assert got[1].isnan() and not got[0].isnan() and not got[2].isnan()
    assert_close(got, want)


def test_deterministic_across_calls_and_threads(gen):
    x_high, x_low, x_prev = _trial((4, 4, 64, 64), torch.float32, "contiguous", gen)
    first = ops.error_norm(x_high, x_low, x_prev, atol=0.0078, rtol=0.05)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.error_norm(x_high, x_low, x_prev, atol=0.0078, rtol=0.05)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, single)
    assert torch.equal(first, ops.error_norm(x_high, x_low, x_prev, atol=0.0078, rtol=0.05))


def test_mixed_dtypes(gen):
    x_high = make((2, 3, 10), torch.float32, generator=gen)
    x_low = make((2, 3, 10), torch.bfloat16, generator=gen)
    x_prev = make((2, 3, 10), torch.float16, generator=gen)
    got = ops.error_norm(x_high, x_low, x_prev, atol=0.01, rtol=0.1)
    assert got.dtype == torch.float32
    assert_close(got, reference.error_norm(x_high, x_low, x_prev, atol=0.01, rtol=0.1))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_input(backend):
    x = torch.randn(2, 3)
    with ops.backend(backend):
        with pytest.raises(ValueError, match="'atol'.*> 0"):
            ops.error_norm(x, x, x, atol=0.0, rtol=0.1)
        with pytest.raises(ValueError, match="'rtol'.*>= 0"):
            ops.error_norm(x, x, x, atol=0.1, rtol=-1.0)
        with pytest.raises(ValueError, match="'x_prev'.*shape"):
            ops.error_norm(x, x, torch.randn(2, 4), atol=0.1, rtol=0.1)
        with pytest.raises(TypeError, match="'x_low'.*float64 cannot be mixed"):
            ops.error_norm(x, x.double(), x, atol=0.1, rtol=0.1)
