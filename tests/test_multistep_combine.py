"""diffaccel.ops.multistep_combine against its reference, and the 16-bit
conversions every kernel uses, checked exhaustively against torch."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import reference

from conftest import DTYPES, LAYOUTS, SHAPES, assert_close, make


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_matches_reference(dtype, shape, layout, per_sample, n, gen):
    tensors = [make(shape, dtype, layout, gen) for _ in range(n)]
    coeffs = torch.randn((shape[0], n) if per_sample else (n,), generator=gen, dtype=torch.float64)
    assert_close(ops.multistep_combine(tensors, coeffs), reference.multistep_combine(tensors, coeffs))


def test_mixed_dtypes_promote(gen):
    shape = (2, 3, 17)
    tensors = [make(shape, d, generator=gen) for d in (torch.bfloat16, torch.float16, torch.float32)]
    coeffs = torch.randn(3, generator=gen)
    got = ops.multistep_combine(tensors, coeffs)
    assert got.dtype == torch.float32
    assert_close(got, reference.multistep_combine(tensors, coeffs))
    half_and_bf16 = ops.multistep_combine(tensors[:2], coeffs[:2])
    assert half_and_bf16.dtype == torch.float32  # torch.promote_types(bf16, fp16)


@pytest.mark.parametrize("alias", [0, 2])
def test_out_may_be_an_input(alias, gen):
    tensors = [make((3, 4, 31), torch.float32, generator=gen) for _ in range(3)]
    coeffs = torch.randn(3, generator=gen)
    want = reference.multistep_combine(tensors, coeffs)
    assert ops.multistep_combine(tensors, coeffs, out=tensors[alias]) is tensors[alias]
    assert_close(tensors[alias], want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16bit_conversions_exhaustive(dtype):
    """Every 16-bit pattern through load (to float32), a multiply, and store
    (round to nearest even), against torch's own conversions."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).reshape(256, 256)
    for c in (1.0, 1.0 / 3.0, 4097.0, 2.0**-20):
        coeffs = torch.tensor([c])
        got = ops.multistep_combine([values], coeffs)
        want = (torch.tensor(c, dtype=torch.float32) * values.float()).to(dtype)
        same = (got.view(torch.int16) == want.view(torch.int16)) | (got.isnan() & want.isnan())
        assert same.all(), f"{int((~same).sum())} patterns differ for c={c}"


def test_deterministic(gen):
    tensors = [make((4, 4, 64, 64), torch.bfloat16, generator=gen) for _ in range(4)]
    coeffs = torch.randn((4, 4), generator=gen)
    assert torch.equal(ops.multistep_combine(tensors, coeffs), ops.multistep_combine(tensors, coeffs))


def test_large_data_streaming_stores(gen):
    tensors = [make((2, 2_000_003), torch.float32, generator=gen) for _ in range(3)]
    coeffs = torch.randn(2, 3, generator=gen)
    assert_close(ops.multistep_combine(tensors, coeffs), reference.multistep_combine(tensors, coeffs))


# --- multistep_combine_pair: two sums of the same tensors in one pass ---------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pair_matches_reference(dtype, shape, layout, per_sample, n, gen):
    tensors = [make(shape, dtype, layout, gen) for _ in range(n)]
    coeffs = torch.randn((shape[0], 2, n) if per_sample else (2, n), generator=gen, dtype=torch.float64)
    got = ops.multistep_combine_pair(tensors, coeffs)
    want = reference.multistep_combine_pair(tensors, coeffs)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_pair_equals_two_single_combines_bit_for_bit(per_sample, gen):
    """Each output is the single-output op with its row: the same kernel, the
    same order of the sum."""
    shape = (3, 4, 37)
    tensors = [make(shape, d, generator=gen) for d in (torch.float32, torch.bfloat16, torch.float32, torch.float16)]
    coeffs = torch.randn((3, 2, 4) if per_sample else (2, 4), generator=gen, dtype=torch.float64)
    y0, y1 = ops.multistep_combine_pair(tensors, coeffs)
    assert y0.dtype == y1.dtype == torch.float32
    assert torch.equal(y0, ops.multistep_combine(tensors, coeffs[..., 0, :]))
    assert torch.equal(y1, ops.multistep_combine(tensors, coeffs[..., 1, :]))


@pytest.mark.parametrize("aliases", [(0, None), (None, 2), (1, 0), (2, 1)], ids=str)
def test_pair_outputs_may_be_inputs(aliases, gen):
    tensors = [make((3, 4, 31), torch.float32, generator=gen) for _ in range(3)]
    coeffs = torch.randn(2, 3, generator=gen)
    want = reference.multistep_combine_pair(tensors, coeffs)
    out = tuple(torch.empty_like(tensors[0]) if a is None else tensors[a] for a in aliases)
    got = ops.multistep_combine_pair(tensors, coeffs, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert_close(out[0], want[0])
    assert_close(out[1], want[1])


def test_pair_non_contiguous_outputs(gen):
    tensors = [make((2, 5, 9), torch.bfloat16, generator=gen) for _ in range(2)]
    coeffs = torch.randn(2, 2, 2, generator=gen)
    out = tuple(torch.empty(2, 9, 5, dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    ops.multistep_combine_pair(tensors, coeffs, out=out)
    for got, want in zip(out, reference.multistep_combine_pair(tensors, coeffs)):
        assert_close(got, want)


def test_pair_large_data_streaming_stores(gen):
    tensors = [make((2, 2_000_003), torch.float32, generator=gen) for _ in range(3)]
    coeffs = torch.randn(2, 2, 3, generator=gen)
    for got, want in zip(
        ops.multistep_combine_pair(tensors, coeffs), reference.multistep_combine_pair(tensors, coeffs)
    ):
        assert_close(got, want)


def test_pair_empty_batch():
    y0, y1 = ops.multistep_combine_pair([torch.empty(0, 3)], torch.ones(0, 2, 1))
    assert y0.shape == y1.shape == (0, 3)
