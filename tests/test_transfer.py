"""diffaccel.transfer: host values onto the device without a synchronization
(to_device), and ConstantCache, which hands out equal coefficient tensors again."""

import pytest
import torch

from diffaccel.transfer import ConstantCache, DeviceConstants

from conftest import DEVICE


def test_equal_values_get_the_same_tensor():
    cache = ConstantCache()
    first = cache.get([1.0, -0.5, 2.0], DEVICE)
    assert first.dtype == torch.float64 and first.device.type == torch.device(DEVICE).type
    assert first.tolist() == [1.0, -0.5, 2.0]
    assert cache.get([1.0, -0.5, 2.0], DEVICE) is first
    assert cache.get((1, -0.5, 2), DEVICE) is first  # the same numbers in another container


def test_values_are_compared_bit_for_bit():
    """-0.0 is not 0.0 (a coefficient's sign of zero reaches the result's),
    nor is one ulp off the same value; the dtype is part of the key."""
    cache = ConstantCache()
    zero, negative_zero = cache.get([0.0], DEVICE), cache.get([-0.0], DEVICE)
    assert zero is not negative_zero
    assert torch.signbit(negative_zero).item() and not torch.signbit(zero).item()
    one, next_one = cache.get([1.0], DEVICE), cache.get([1.0000000000000002], DEVICE)
    assert one is not next_one and next_one.item() == 1.0000000000000002
    single = cache.get([1.0], DEVICE, torch.float32)
    assert single is not one and single.dtype == torch.float32
    assert cache.get([1.0], DEVICE, torch.float32) is single


def test_rows_are_views_of_one_cached_table():
    """rows(): a loop's coefficient rows from one copy, handed out again for the same
    rows; the width is part of the key (the same numbers in rows of 2 are not rows of 3)."""
    cache = ConstantCache()
    rows = cache.rows([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], DEVICE)
    assert [r.tolist() for r in rows] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert rows[0]._base is rows[1]._base is not None and rows[0].dtype == torch.float64
    assert cache.rows([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], DEVICE) is rows
    narrow = cache.rows([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], DEVICE)
    assert len(narrow) == 3 and narrow[2].tolist() == [5.0, 6.0]
    assert cache.get([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], DEVICE).shape == (6,)
    cache.clear()
    assert cache.rows([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], DEVICE) is not rows


def test_a_full_cache_starts_over():
    cache = ConstantCache(capacity=3)
    kept = [cache.get([float(i)], DEVICE) for i in range(3)]
    assert cache.get([0.0], DEVICE) is kept[0]
    fourth = cache.get([3.0], DEVICE)  # over capacity: the old entries are dropped
    assert cache.get([0.0], DEVICE) is not kept[0]
    assert cache.get([3.0], DEVICE) is fourth
    assert [t.item() for t in kept] == [0.0, 1.0, 2.0]  # handed-out tensors stay valid


def test_the_cache_steps_aside_for_device_constants():
    """Inside DeviceConstants.reuse() (a graph's warm-up and capture) every
    request goes to to_device, which DeviceConstants records in order."""
    cache = ConstantCache()
    outside = cache.get([1.0, 2.0], DEVICE)
    with DeviceConstants().reuse():
        inside = cache.get([1.0, 2.0], DEVICE)
        assert inside is not outside and cache.get([1.0, 2.0], DEVICE) is not inside
    assert cache.get([1.0, 2.0], DEVICE) is outside


@pytest.mark.cuda
def test_cuda_constants_are_kept_per_stream_and_never_served_in_a_capture():
    """A tensor copied on one stream is not handed to another (it could be read
    before its copy ran); inside a capture the cache refuses as to_device does,
    even for values it holds."""
    cache = ConstantCache()
    default = cache.get([1.0, 2.0], "cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        on_side = cache.get([1.0, 2.0], "cuda")
        assert on_side is not default and cache.get([1.0, 2.0], "cuda") is on_side
    torch.cuda.synchronize()
    assert on_side.tolist() == default.tolist() == [1.0, 2.0]
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="inside a CUDA graph capture"):
        with torch.cuda.graph(graph):
            cache.get([1.0, 2.0], "cuda")
