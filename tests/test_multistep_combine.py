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
