"""diffaccel.ops.langevin_correct against its reference."""

import pytest
import torch

from diffaccel import check, ops
from diffaccel.ops import reference

from conftest import DEVICE, DTYPES, LAYOUTS, SHAPES, assert_close, make


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 5000), (2, 40008)], ids=str)  # 40008: several norm chunks
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["batch", "sample"])
@pytest.mark.parametrize("alpha", ["one", "number", "per_sample"])
def test_matches_reference(dtype, shape, layout, reduction, alpha, gen):
    x, score, z = (make(shape, dtype, layout, gen) for _ in range(3))
    alpha = {"one": 1.0, "number": 0.37, "per_sample": torch.rand(shape[0], generator=gen) + 0.5}[alpha]
    got = ops.langevin_correct(x, score, 0.16, alpha=alpha, noise=z, reduction=reduction)
    want = reference.langevin_correct(x, score, 0.16, alpha=alpha, noise=z, reduction=reduction)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["batch", "sample"])
@pytest.mark.parametrize("alpha", ["float64", "strided", "expanded"])
def test_alpha_tensor_layouts(dtype, reduction, alpha, gen):
    """alpha is read in place: a float64 [B] tensor, a [B] view at stride 2, a
    0-d value expanded to [B] (stride 0); (test_matches_reference has float32
    [B] tensors, converted)."""
    shape = (4, 3, 10, 10)
    x, score, z = (make(shape, dtype, generator=gen) for _ in range(3))
    alpha = {
        "float64": lambda: torch.rand(4, generator=gen, dtype=torch.float64) + 0.5,
        "strided": lambda: (torch.rand(8, generator=gen, dtype=torch.float64) + 0.5)[::2],
        "expanded": lambda: torch.full((), 0.6, dtype=torch.float64).expand(4),
    }[alpha]()
    got = ops.langevin_correct(x, score, 0.16, alpha=alpha, noise=z, reduction=reduction)
    want = reference.langevin_correct(x, score, 0.16, alpha=alpha, noise=z, reduction=reduction)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.cpu_only  # CUDA draws in-kernel Philox noise instead: tests/test_cuda.py checks it
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_draws_noise_like_torch_randn(dtype):
    shape = (2, 3, 16, 16)
    x = torch.randn(shape).to(dtype)
    score = torch.randn(shape).to(dtype)
    got = ops.langevin_correct(x, score, 0.2, generator=torch.Generator().manual_seed(7))
    want = reference.langevin_correct(x, score, 0.2, generator=torch.Generator().manual_seed(7))
    explicit = reference.langevin_correct(
        x, score, 0.2, noise=torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    )
    for g, w, e in zip(got, want, explicit):
        assert_close(g, w)
        assert torch.equal(w, e)


def test_sample_reduction_is_independent_of_the_batch(gen):
    x, score, z = (make((4, 3, 10, 10), torch.float32, generator=gen) for _ in range(3))
    whole = ops.langevin_correct(x, score, 0.16, noise=z, reduction="sample")
    alone = ops.langevin_correct(x[1:2], score[1:2], 0.16, noise=z[1:2], reduction="sample")
    assert torch.equal(whole[0][1:2], alone[0])


def test_in_place(gen):
    x, score, z = (make((2, 3, 20, 20), torch.float32, generator=gen) for _ in range(3))
    x_mean = torch.empty_like(x)
    want = reference.langevin_correct(x.clone(), score, 0.16, noise=z)
    result = ops.langevin_correct(x, score, 0.16, noise=z, out=(x, x_mean))
    assert result[0] is x and result[1] is x_mean
    assert_close(x, want[0])
    assert_close(x_mean, want[1])


def test_zero_score_propagates_like_reference(gen):
    x, z = make((2, 30), torch.float32, generator=gen), make((2, 30), torch.float32, generator=gen)
    score = torch.zeros_like(x)
    got = ops.langevin_correct(x, score, 0.16, noise=z, reduction="sample")
    want = reference.langevin_correct(x, score, 0.16, noise=z, reduction="sample")
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("data", ["tiny", "huge", "zeros in runs", "one tiny run"])
def test_norms_keep_their_precision_at_any_magnitude(dtype, data, gen):
    """The CPU sums float squares in float runs, where a square below 2^-126
    underflows and one from 2^64 up overflows (csrc/cpu/blocks.h add_squares):
    a call whose runs lost precision so is summed in double instead, which
    these data need (the norms would be 0/0 or inf/inf) or take."""
    shape = (2, 3, 64, 48)  # 9216 elements a sample: 36 whole runs, three norm chunks
    x, score, z = (make(shape, torch.float32, generator=gen) for _ in range(3))
    scale = {"tiny": 1e-25, "huge": 1e22}.get(data, 1.0)
    if data in ("tiny", "huge"):
        x, score, z = x * scale, score * scale, z * scale
    elif data == "zeros in runs":
        score[..., ::2] = 0  # every even lane of every run sums to 0
    else:
        score.view(2, -1)[0, :256] *= 1e-25  # the first run
    x, score, z = x.to(dtype), score.to(dtype), z.to(dtype)
    for reduction in ("batch", "sample"):
        got = ops.langevin_correct(x, score, 0.16, noise=z, reduction=reduction)
        want = reference.langevin_correct(x, score, 0.16, noise=z, reduction=reduction)
        for g, w in zip(got, want):
            assert g.isfinite().all()
            # The tolerance scaled with the data: at 1e-25 any result would pass an absolute one.
            tol = check.tolerance(dtype)
            torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("shape", [(4, 4, 64, 64), (3, 5, 70, 71), (5, 9000)], ids=str)  # whole, partial norm chunks
@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_deterministic_for_a_seed_at_any_thread_count(shape, reduction):
    """The norms are summed in fixed chunks, whichever thread sums them, and
    the update runs in the same parallel region: the same bits at 1, 2 and 3
    threads (3: more threads than chunks of some samples, and than cores on
    CI)."""
    x = torch.randn(shape)
    score = torch.randn(shape)

    def run():
        return ops.langevin_correct(
            x, score, 0.16, generator=torch.Generator(DEVICE).manual_seed(3), reduction=reduction
        )

    first = run()
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for u, v in zip(first, run()):
                assert torch.equal(u, v), f"{count} threads"
    finally:
        torch.set_num_threads(threads)
    z = torch.randn(shape, generator=torch.Generator(DEVICE).manual_seed(3))
    want = reference.langevin_correct(x, score, 0.16, noise=z, reduction=reduction)
    for g, w in zip(first, want):
        assert_close(g, w)


def test_alpha_one_as_a_number_or_a_tensor(gen):
    """alpha=1.0 on the CPU reads a tensor made once (not one per call): the
    same bits as a tensor given, also when first used under inference_mode
    and then where autograd records the call."""
    x, score, z = (make((2, 3, 8, 8), torch.float32, generator=gen) for _ in range(3))
    given = ops.langevin_correct(x, score, 0.16, alpha=torch.tensor(1.0, dtype=torch.float64), noise=z)
    with torch.inference_mode():
        number = ops.langevin_correct(x, score, 0.16, alpha=1.0, noise=z)
    for g, n in zip(given, number):
        assert torch.equal(g, n)
    leaf = x.clone().requires_grad_()
    x_new, x_mean = ops.langevin_correct(leaf, score, 0.16, noise=z)
    (x_new.sum() + x_mean.sum()).backward()
    assert torch.equal(x_new.detach(), given[0]) and torch.equal(leaf.grad, torch.full_like(x, 2.0))


def test_large_data_streaming_stores(gen):
    x, score, z = (make((2, 2_000_003), torch.float32, generator=gen) for _ in range(3))
    got = ops.langevin_correct(x, score, 0.16, noise=z)
    want = reference.langevin_correct(x, score, 0.16, noise=z)
    for g, w in zip(got, want):
        assert_close(g, w)


def test_nan_and_inf_propagate(gen):
    x, score, z = (make((3, 40), torch.float32, generator=gen) for _ in range(3))
    x[0, 5] = float("nan")
    score[1, 2] = float("inf")
    for reduction in ("batch", "sample"):
        got = ops.langevin_correct(x, score, 0.16, noise=z, reduction=reduction)
        want = reference.langevin_correct(x, score, 0.16, noise=z, reduction=reduction)
        for g, w in zip(got, want):
            assert_close(g, w)
        assert got[0][0, 5].isnan()
