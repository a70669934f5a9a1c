"""The Triton backend (diffaccel/ops/triton) against the reference: on CUDA
tensors, and on CPU under TRITON_INTERPRET=1 (what `make test` sets), at sizes
the interpreter runs in seconds. Skipped where Triton cannot run on the test
device (no triton installed, or a CPU run without the interpreter)."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import autograd, reference
from diffaccel.ops import triton as triton_backend

from conftest import DEVICE, DTYPES, LAYOUTS, assert_close, make, random_coeffs, sampled_positions

pytestmark = pytest.mark.skipif(
    not triton_backend.available(DEVICE), reason=f"triton backend off: {triton_backend.unavailable_reason}"
)

SHAPES = [(1,), (3, 5, 7, 11), (0, 3, 4), (2, 3, 40)]
THRESHOLDS = [
    None,
    ops.Threshold("clip", max_value=0.7),
    ops.Threshold("dynamic", 0.9, 1.5),
    ops.Threshold("dynamic", 0.5, 0.2, "dpm-solver"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [0, 2, 4])
def test_ei_step(dtype, shape, layout, k, gen):
    x, m, z = (make(shape, dtype, layout, gen, scale=2.0) for _ in range(3))
    history = [make(shape, dtype, layout, gen) for _ in range(k)]
    for per_sample in (False, True):
        coeffs = random_coeffs(shape[0], 5 + k, per_sample, gen)
        for threshold in THRESHOLDS:
            noise = z if threshold is None else None
            with ops.backend("triton"):
                got = ops.ei_step(x, m, history, coeffs, noise=noise, threshold=threshold)
            want = reference.ei_step(x, m, history, coeffs, noise=noise, threshold=threshold)
            for g, w in zip(got, want):
                assert_close(g, w)


def test_ei_step_mixed_dtypes_and_aliasing(gen):
    shape = (3, 4, 9, 10)
    x = make(shape, torch.float32, "transposed", gen)
    m = make(shape, torch.bfloat16, generator=gen)
    h0, h1 = make(shape, torch.float16, generator=gen), make(shape, torch.float32, generator=gen)
    coeffs = random_coeffs(3, 7, True, gen).float()
    t = ops.Threshold("dynamic", 0.95, 1.2)
    want = reference.ei_step(x, m, [h0.float(), h1], coeffs, threshold=t)
    h0f = h0.float()
    with ops.backend("triton"):
        result = ops.ei_step(x, m, [h0f, h1], coeffs, threshold=t, out=(x, h0f))
    assert result[0] is x and result[1] is h0f
    assert_close(x, want[0])
    assert_close(h0f, want[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_multistep_combine(dtype, n, per_sample, gen):
    tensors = [make((3, 5, 7, 11), dtype, layout, gen) for layout in (LAYOUTS * 3)[:n]]
    coeffs = random_coeffs(3, n, per_sample, gen)
    with ops.backend("triton"):
        got = ops.multistep_combine(tensors, coeffs)
    assert_close(got, reference.multistep_combine(tensors, coeffs))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_multistep_combine_pair(dtype, n, per_sample, gen):
    tensors = [make((3, 5, 7, 11), dtype, layout, gen) for layout in (LAYOUTS * 3)[:n]]
    coeffs = torch.stack([random_coeffs(3, n, per_sample, gen) for _ in range(2)], dim=-2)
    with ops.backend("triton"):
        got = ops.multistep_combine_pair(tensors, coeffs)
    for g, w in zip(got, reference.multistep_combine_pair(tensors, coeffs)):
        assert_close(g, w)


def test_multistep_combine_pair_in_place(gen):
    tensors = [make((3, 5, 7), torch.float32, generator=gen) for _ in range(3)]
    coeffs = torch.randn(2, 3, generator=gen)
    want = reference.multistep_combine_pair(tensors, coeffs)
    with ops.backend("triton"):
        got = ops.multistep_combine_pair(tensors, coeffs, out=(tensors[2], tensors[0]))
    assert got[0] is tensors[2] and got[1] is tensors[0]
    assert_close(tensors[2], want[0])
    assert_close(tensors[0], want[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(7, 1)], ids=str)
@pytest.mark.parametrize(
    "options",
    [
        dict(kind="clip", max_value=0.25),
        dict(kind="dynamic", ratio=0.995),
        dict(kind="dynamic", ratio=0.8, max_value=2.5),
        dict(kind="dynamic", ratio=1.0, max_value=0.1, style="dpm-solver"),
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_threshold(dtype, shape, options, gen):
    x = make(shape, dtype, "sliced", gen, scale=2.0)
    with ops.backend("triton"):
        got = ops.threshold(x, **options)
    assert_close(got, reference.threshold(x, **options))


@pytest.mark.parametrize("n", [1, 2, 101, 4097])
@pytest.mark.parametrize("ratio", [1e-4, 0.5, 0.995, 1.0])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_threshold_selection(n, ratio, ties, gen):
    x = torch.randn((2, n), generator=gen) * 3
    if ties:
        x = x.round()
    x[1, 0] = float("nan") if n > 1 else x[1, 0]
    # max_value below any quantile here: the scale is the selected quantile itself.
    options = dict(kind="dynamic", ratio=ratio, max_value=1e-3, style="dpm-solver")
    with ops.backend("triton"):
        got = ops.threshold(x, **options)
    assert_close(got, reference.threshold(x, **options))


# Samples from this many elements take the sampled bracket first
# (diffaccel/ops/triton/selection.py: BRACKET_MIN).
BRACKETED = (1 << 16) + 17


@pytest.mark.parametrize("values", ["normal", "misleading", "nan", "nan sampled", "three"])
def test_threshold_selection_by_bracket(values, gen):
    """Large samples select among their sampled bracket's candidates when these
    hold the ranks (normal data), else over the whole sample: where the sample
    misleads (small values where it looks, large elsewhere), where it holds a
    NaN, and where the candidates overflow (magnitudes 0, 1 and 2 only); a NaN
    the sample does not see still poisons its own sample."""
    n = BRACKETED
    rows = 2 if values.startswith("nan") else 1  # (the interpreter's time grows with the elements)
    x = torch.randn((rows, n), generator=gen, device=DEVICE) * 3
    sampled = sampled_positions(n).to(DEVICE)
    if values == "misleading":
        x = torch.rand((rows, n), generator=gen, device=DEVICE) + 10
        x[:, sampled] = torch.rand((rows, len(sampled)), generator=gen, device=DEVICE)
    elif values == "nan":
        unsampled = next(p for p in range(n // 2, n) if p not in set(sampled.tolist()))
        x[1, unsampled] = float("nan")
    elif values == "nan sampled":
        x[1, sampled[100]] = float("nan")
    elif values == "three":
        x = x.round().clamp(-2, 2)
    options = dict(kind="dynamic", ratio=0.995, max_value=1e-3, style="dpm-solver")
    with ops.backend("triton"):
        got = ops.threshold(x, **options)
    assert_close(got, reference.threshold(x, **options))


def test_ei_step_selection_by_bracket(gen):
    """ei_step's selection over c_x x + c_m m by the bracket, in float64 (64-bit keys)."""
    x, m, h = (torch.randn((1, BRACKETED), generator=gen, dtype=torch.float64, device=DEVICE) for _ in range(3))
    coeffs = torch.tensor([0.8, 0.5, 0.9, 0.15, -0.05, 0.0], dtype=torch.float64, device=DEVICE)
    threshold = ops.Threshold("dynamic", 0.995, 1e-3, "dpm-solver")
    with ops.backend("triton"):
        got = ops.ei_step(x, m, [h], coeffs, threshold=threshold)
    want = reference.ei_step(x, m, [h], coeffs, threshold=threshold)
    for a, b in zip(got, want):
        assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7, 11), (0, 3, 4), (2, 17000)], ids=str)
@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_langevin_correct(dtype, shape, reduction, gen):
    x, score, z = (make(shape, dtype, "transposed", gen) for _ in range(3))
    alpha = torch.rand(shape[0], generator=gen) + 0.5
    with ops.backend("triton"):
        got = ops.langevin_correct(x, score, 0.16, alpha=alpha, noise=z, reduction=reduction)
    want = reference.langevin_correct(x, score, 0.16, alpha=alpha, noise=z, reduction=reduction)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7, 11), (0, 3, 4), (2, 0), (2, 17000)], ids=str)
def test_error_norm(dtype, shape, gen):
    x_high, x_low, x_prev = (make(shape, dtype, "sliced", gen) for _ in range(3))
    with ops.backend("triton"):
        got = ops.error_norm(x_high, x_low, x_prev, atol=0.0078, rtol=0.05)
    want = reference.error_norm(x_high, x_low, x_prev, atol=0.0078, rtol=0.05)
    torch.testing.assert_close(got, want, rtol=1e-6 if dtype != torch.float64 else 1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7, 11), (0, 3, 4), (2, 0), (2, 17000)], ids=str)
def test_error_norm_backward(dtype, shape, gen):
    x_high, x_low, x_prev = (make(shape, dtype, "sliced", gen) for _ in range(3))
    if x_low.numel() > 2:  # a tie |x_low| == |x_prev|, a NaN and an infinity
        first, last = (0,) * x_low.dim(), (-1,) * x_low.dim()
        x_prev[first] = -x_low[first]
        x_low[(0,) * (x_low.dim() - 1) + (1,)] = float("nan")
        x_prev[last] = float("inf")
    error = reference.error_norm(x_high, x_low, x_prev, atol=0.0078, rtol=0.05)
    args = (torch.randn(error.shape, generator=gen), error, x_high, x_low, x_prev)
    with ops.backend("triton"):
        got = autograd.error_norm_backward(*args, atol=0.0078, rtol=0.05)
    want = reference.error_norm_backward(*args, atol=0.0078, rtol=0.05)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7, 11), (0, 3, 4), (2, 0), (2, 17000)], ids=str)
def test_threshold_backward(dtype, shape, gen):
    x = make(shape, dtype, "sliced", gen, scale=2.0)
    grad = make(shape, dtype, "sliced", gen)
    scale = torch.rand(shape[:1], generator=gen) + 0.8
    if x.numel() > 2:  # a NaN, an infinity, an element at the bound
        x[(0,) * x.dim()] = float("nan")
        x[(-1,) * x.dim()] = float("inf")
        x[(shape[0] - 1,) + (0,) * (x.dim() - 1)] = scale[-1].to(dtype)
    with ops.backend("triton"):
        got = autograd.threshold_backward(grad, x, scale)
    want = reference.threshold_backward(grad, x, scale)
    assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-30, equal_nan=True)


def test_langevin_correct_draws_standard_normal_noise(gen):
    """noise=None: the in-kernel Philox noise, recovered from the outputs, is
    what the reference turns into the same outputs, and looks standard normal."""
    x, score = (make((4, 3, 32, 32), torch.float32, generator=gen) for _ in range(2))
    with ops.backend("triton"):
        x_new, x_mean = ops.langevin_correct(x, score, 0.16, reduction="sample")
    step = ((x_mean - x) / score).flatten(1).median(dim=1).values
    z = (x_new - x_mean) / (2 * step).sqrt().view(-1, 1, 1, 1)
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    want = reference.langevin_correct(x, score, 0.16, noise=z, reduction="sample")
    torch.testing.assert_close(x_new, want[0], rtol=1e-4, atol=1e-4)
