"""diffaccel.ops.ei_step (compiled CPU kernel) against its reference."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import reference

from conftest import DTYPES, LAYOUTS, SHAPES, assert_close, make, random_coeffs


def _coeffs(batch, k, per_sample, gen, dtype=torch.float64):
    """An ei_step row for k history tensors: 5 + k coefficients."""
    return random_coeffs(batch, 5 + k, per_sample, gen, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_matches_reference(dtype, shape, layout, per_sample, k, gen):
    x, m, z = (make(shape, dtype, layout, gen) for _ in range(3))
    history = [make(shape, dtype, layout, gen) for _ in range(k)]
    coeffs = _coeffs(shape[0], k, per_sample, gen)
    got = ops.ei_step(x, m, history, coeffs, noise=z)
    want = reference.ei_step(x, m, history, coeffs, noise=z)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_without_noise_ignores_s(dtype, gen):
    x, m, h = (make((2, 3, 8), dtype, generator=gen) for _ in range(3))
    coeffs = _coeffs(2, 1, False, gen)
    coeffs[-1] = float("nan")  # s is not used without noise, so it cannot poison x_next
    got = ops.ei_step(x, m, [h], coeffs)
    want = reference.ei_step(x, m, [h], coeffs)
    assert not got[0].isnan().any()
    for g, w in zip(got, want):
        assert_close(g, w)


THRESHOLDS = [
    ops.Threshold("clip", max_value=0.7),
    ops.Threshold("dynamic", 0.995, 1.0, "diffusers"),
    ops.Threshold("dynamic", 0.9, 1.5, "diffusers"),
    ops.Threshold("dynamic", 0.5, 0.2, "dpm-solver"),
    ops.Threshold("dynamic", 1.0, 1.0, "dpm-solver"),
    # diffusers' style with the interpolated quantile itself as the scale (above 1, below
    # max_value): the clamped cases above never use its value. (On the H200 the Triton
    # backend's diffusers loops differed from diffusers in such cases, 2026-11-27.)
    ops.Threshold("dynamic", 0.9, 10.0, "diffusers"),
    ops.Threshold("dynamic", 0.995, 10.0, "diffusers"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7, 11), (2, 4, 16, 16), (2, 4, 64, 64), (0, 3, 4), (5, 1)], ids=str)
@pytest.mark.parametrize("threshold", THRESHOLDS, ids=repr)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_threshold_inside_step(dtype, shape, threshold, per_sample, gen):
    x = make(shape, dtype, "sliced", gen, scale=2.0)
    m = make(shape, dtype, "transposed", gen, scale=2.0)
    h = make(shape, dtype, generator=gen)
    coeffs = _coeffs(shape[0], 1, per_sample, gen)
    got = ops.ei_step(x, m, [h], coeffs, threshold=threshold)
    want = reference.ei_step(x, m, [h], coeffs, threshold=threshold)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("history_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mixed_dtypes(model_dtype, history_dtype, state_dtype, gen):
    shape = (3, 4, 9, 10)
    x = make(shape, state_dtype, generator=gen)
    m = make(shape, model_dtype, generator=gen)
    hist = [make(shape, history_dtype, generator=gen) for _ in range(2)]
    z = make(shape, model_dtype, generator=gen)
    coeffs = _coeffs(3, 2, True, gen, dtype=torch.float32)
    got = ops.ei_step(x, m, hist, coeffs, noise=z, threshold=ops.Threshold("dynamic", 0.95, 1.2))
    want = reference.ei_step(x, m, hist, coeffs, noise=z, threshold=ops.Threshold("dynamic", 0.95, 1.2))
    assert got[0].dtype == got[1].dtype == state_dtype
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("threshold", [None, ops.Threshold("dynamic", 0.9, 1.5)], ids=["plain", "dynamic"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_in_place_aliasing(dtype, threshold, layout, gen):
    """out=(x, history[0]): the multistep pattern of overwriting the state and
    the oldest history slot; and x_next into a non-contiguous x."""
    shape = (2, 3, 33, 5)
    x, m, h0, h1 = (make(shape, dtype, layout, gen) for _ in range(4))
    coeffs = _coeffs(2, 2, True, gen)
    want = reference.ei_step(x.clone(), m, [h0.clone(), h1], coeffs, threshold=threshold)
    result = ops.ei_step(x, m, [h0, h1], coeffs, threshold=threshold, out=(x, h0))
    assert result[0] is x and result[1] is h0
    assert_close(x, want[0])
    assert_close(h0, want[1])


def test_out_buffers_non_contiguous(gen):
    shape = (4, 6, 10)
    x, m = make(shape, torch.float32, generator=gen), make(shape, torch.float32, generator=gen)
    coeffs = _coeffs(4, 0, False, gen)
    x_next = make(shape, torch.float32, "sliced", gen)
    d = make(shape, torch.float32, "transposed", gen)
    ops.ei_step(x, m, [], coeffs, out=(x_next, d))
    want = reference.ei_step(x, m, [], coeffs)
    assert_close(x_next, want[0])
    assert_close(d, want[1])


def test_nan_and_inf_propagate(gen):
    shape = (3, 50)
    x, m, h = (make(shape, torch.float32, generator=gen) for _ in range(3))
    x[0, 3] = float("nan")
    m[1, 7] = float("inf")
    h[2, 9] = float("-inf")
    coeffs = _coeffs(3, 1, False, gen)
    for threshold in (None, ops.Threshold("clip", max_value=1.0), ops.Threshold("dynamic", 0.9, 2.0)):
        got = ops.ei_step(x, m, [h], coeffs, threshold=threshold)
        want = reference.ei_step(x, m, [h], coeffs, threshold=threshold)
        for g, w in zip(got, want):
            assert_close(g, w)
        assert got[0][0, 3].isnan()


def test_deterministic_across_calls_and_threads(gen):
    shape = (4, 4, 64, 64)
    x, m, h, z = (make(shape, torch.float32, generator=gen) for _ in range(4))
    coeffs = _coeffs(4, 1, True, gen)
    t = ops.Threshold("dynamic", 0.995, 1.5)
    first = ops.ei_step(x, m, [h], coeffs, noise=z, threshold=t)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.ei_step(x, m, [h], coeffs, noise=z, threshold=t)
    finally:
        torch.set_num_threads(threads)
    again = ops.ei_step(x, m, [h], coeffs, noise=z, threshold=t)
    for a, b, c in zip(first, single, again):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("in_place", [False, True])
def test_large_data_streaming_stores(in_place, gen):
    """Data beyond the last-level cache takes the streaming-store path (and odd
    sizes its unaligned head and tail)."""
    shape = (3, 1_500_001)
    x, m, h, z = (make(shape, torch.float32, generator=gen) for _ in range(4))
    coeffs = _coeffs(3, 1, True, gen)
    want = reference.ei_step(x, m, [h], coeffs, noise=z)
    got = ops.ei_step(x, m, [h], coeffs, noise=z, out=(x, h) if in_place else None)
    for g, w in zip(got, want):
        assert_close(g, w)
