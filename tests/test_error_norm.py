"""diffaccel.ops.error_norm (adaptive step-size control's error estimate)
against its reference, and the reference against the formula written the way
the official DPM-Solver writes it."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import autograd, reference

from conftest import DTYPES, LAYOUTS, SHAPES, TEST_BACKENDS, assert_close, make


def _trial(shape, dtype, layout, gen):
    """A plausible trial step: x_low near x_high, x_prev near both."""
    x_high = make(shape, dtype, layout, gen)
    x_low = (x_high.to(torch.float32) + 0.01 * make(shape, torch.float32, layout, gen)).to(dtype)
    x_prev = (x_high.to(torch.float32) + 0.1 * make(shape, torch.float32, layout, gen)).to(dtype)
    return x_high, x_low, x_prev


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 40000)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tolerances", [(0.0078, 0.05), (1e-3, 0.0), (0.5, 1.0), (0.0, 0.05)], ids=str)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_propagates_to_its_sample_only(dtype, gen):
    """A NaN in x_low, or in x_prev alone (then only the NaN of max(|x_low|, |x_prev|) makes the
    element's error NaN), of either sign, makes its own sample's error NaN and no other."""
    x_high, x_low, x_prev = _trial((5, 50), dtype, "contiguous", gen)
    x_low[1, 7] = float("nan")
    x_prev[2, 3] = float("inf")  # delta = inf there: that element's error is 0
    x_prev[3, 9] = float("nan")
    x_prev[4, 2] = float("nan")
    bits = x_prev.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x_prev.element_size()])
    bits[4, 2] |= torch.iinfo(bits.dtype).min  # the sign bit (torch's conversions can drop a NaN's sign)
    assert torch.signbit(x_prev[4, 2]) and not torch.signbit(x_prev[3, 9])
    got = ops.error_norm(x_high, x_low, x_prev, atol=0.01, rtol=0.05)
    want = reference.error_norm(x_high, x_low, x_prev, atol=0.01, rtol=0.05)
    assert got.isnan().tolist() == [False, True, False, True, True]
    assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("errors", ["tiny", "huge", "zero in runs"])
def test_sums_keep_their_precision_at_any_magnitude(dtype, errors, gen):
    """Scaled errors whose float squares underflow (below 2^-63) or overflow
    (from 2^64 up), or runs of exact zeros: the CPU's float runs give way to
    sums in double there (csrc/cpu/blocks.h add_squares)."""
    shape = (3, 4800)  # whole runs, a partial one, two norm chunks
    x_high, x_low, x_prev = _trial(shape, torch.float32, "contiguous", gen)
    atol, rtol = 0.0078, 0.05
    if errors == "tiny":  # errors around 1e-30 (delta = atol = 1)
        x_high, x_low = (1e-30 * make(shape, torch.float32, generator=gen) for _ in range(2))
        atol, rtol = 1.0, 0.0
    elif errors == "huge":  # errors around 1e23 (delta = atol = 1e-25)
        atol, rtol = 1e-25, 0.0
    else:
        x_low[:, ::2] = x_high[:, ::2]  # every even lane of every run sums to 0
    x_high, x_low, x_prev = x_high.to(dtype), x_low.to(dtype), x_prev.to(dtype)
    got = ops.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
    want = reference.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
    assert got.isfinite().all() and (got > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


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


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_atol_zero_divides_by_zero_as_the_formula_does(backend, dtype, gen):
    """atol = 0 (k-diffusion's and ComfyUI's dpm_adaptive take it): where x_low and
    x_prev are both 0, delta is 0: an error of inf where x_high is not 0 there (sample
    0), NaN where it is (0 / 0, sample 1); the other samples as usual. Across the
    CPU kernel's 4096-element blocks."""
    x_high, x_low, x_prev = (make((3, 2, 2100), dtype, "contiguous", gen) for _ in range(3))
    for b, high in ((0, 1.0), (1, 0.0)):
        x_low[b, 1, 2000] = x_prev[b, 1, 2000] = 0.0
        x_high[b, 1, 2000] = high
    with ops.backend(backend):
        got = ops.error_norm(x_high, x_low, x_prev, atol=0.0, rtol=0.05)
    want = reference.error_norm(x_high, x_low, x_prev, atol=0.0, rtol=0.05)
    assert torch.isinf(got[0]) and torch.isnan(got[1]) and torch.isfinite(got[2])
    torch.testing.assert_close(got, want, rtol=1e-6 if dtype != torch.float64 else 1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_input(backend):
    x = torch.randn(2, 3)
    with ops.backend(backend):
        with pytest.raises(ValueError, match="'atol'.*>= 0"):
            ops.error_norm(x, x, x, atol=-0.1, rtol=0.1)
        with pytest.raises(ValueError, match="'atol'.*>= 0"):
            ops.error_norm(x, x, x, atol=float("nan"), rtol=0.1)
        with pytest.raises(ValueError, match="'rtol'.*>= 0"):
            ops.error_norm(x, x, x, atol=0.1, rtol=-1.0)
        with pytest.raises(ValueError, match="'x_prev'.*shape"):
            ops.error_norm(x, x, torch.randn(2, 4), atol=0.1, rtol=0.1)
        with pytest.raises(TypeError, match="'x_low'.*float64 cannot be mixed"):
            ops.error_norm(x, x.double(), x, atol=0.1, rtol=0.1)


# --- error_norm_backward: the op of error_norm's gradient ------------------------


def _backward_case(shape, dtype, layout, gen, special):
    x_high, x_low, x_prev = _trial(shape, dtype, layout, gen)
    atol, rtol = 0.0078, 0.05
    if special == "ties":  # |x_low| == |x_prev|: torch.maximum's gradient is split in half
        x_prev = torch.where(torch.rand(shape, generator=gen) < 0.5, -x_low, x_low)
    elif special == "nan-inf" and x_high.numel() > 2:
        x_low, x_prev = x_low.clone(), x_prev.clone()
        x_low[(0,) * x_low.dim()] = float("nan")
        x_prev[(-1,) * x_prev.dim()] = float("inf")
    elif special == "zero-error" and x_high.shape[0] > 0:  # E = 0: k = inf, and 0 * inf = NaN
        x_high = x_high.clone()
        x_high[0] = x_low[0]
    elif special == "all-atol":
        atol = 100.0
    error = reference.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
    grad = torch.randn(error.shape, generator=gen)
    return (grad, error, x_high, x_low, x_prev), dict(atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 40000)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("special", ["finite", "ties", "nan-inf", "zero-error", "all-atol"])
def test_backward_matches_reference(dtype, shape, layout, special, gen):
    """The op computes the reference's terms in the same order: on the CPU
    (built with -ffp-contract=off) the same bits, NaN and Inf pattern included."""
    args, tolerances = _backward_case(shape, dtype, layout, gen, special)
    got = autograd.error_norm_backward(*args, **tolerances)
    want = reference.error_norm_backward(*args, **tolerances)
    for g, w, x in zip(got, want, args[2:]):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert torch.equal(g.isnan(), w.isnan())
        exact = g.device.type == "cpu"
        torch.testing.assert_close(g, w, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6, equal_nan=True)


def test_backward_mixed_dtypes(gen):
    """Each gradient comes back in its own input's dtype."""
    x_high, x_low, x_prev = _trial((2, 3, 8, 8), torch.float32, "contiguous", gen)
    args = (torch.ones(2), torch.full((2,), 0.5), x_high, x_low.to(torch.bfloat16), x_prev.to(torch.float16))
    got = autograd.error_norm_backward(*args, atol=0.01, rtol=0.05)
    want = reference.error_norm_backward(*args, atol=0.01, rtol=0.05)
    assert [g.dtype for g in got] == [torch.float32, torch.bfloat16, torch.float16]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_backward_bad_input(backend, gen):
    x = torch.randn(3, 4, generator=gen)
    good = dict(grad=torch.ones(3), error=torch.ones(3))
    with ops.backend(backend):
        with pytest.raises(ValueError, match=r"error_norm_backward: argument 'grad' must have shape \[3\]"):
            autograd.error_norm_backward(torch.ones(2), good["error"], x, x, x, atol=0.1, rtol=0.1)
        with pytest.raises(TypeError, match="error_norm_backward: argument 'error' must be a floating tensor"):
            autograd.error_norm_backward(good["grad"], torch.ones(3, dtype=torch.int64), x, x, x, atol=0.1, rtol=0.1)
        with pytest.raises(ValueError, match="error_norm_backward: argument 'atol' must be >= 0"):
            autograd.error_norm_backward(good["grad"], good["error"], x, x, x, atol=-0.1, rtol=0.1)
