"""CPU benchmarks of every op (pytest-benchmark), run by `make bench`.

For each case and shape, one run times: the fused op, the eager reference,
torch.compile of the reference, dst.copy_(src) at the same size (the copy
bandwidth that bounds these memory-bound ops), STREAM's triad (a second
floor, with two reads per write) and a copy of as many bytes as each op
moves (a third, with the working set in the same level of the memory).
bench/report.py turns the JSON into the table of ratios and GB/s in
bench/results/. The dynamic threshold is
also timed against torch.quantile written the diffusers way.
"""

import math

import pytest
import torch

from diffaccel import benchmarking

SHAPES = benchmarking.SHAPES
IMPLS = ["fused", "eager_reference", "compiled_reference"]


def _callable(case, impl):
    if impl == "fused":
        return case.fused
    if impl == "eager_reference":
        return case.reference
    return benchmarking.compiled_reference(case)


def _record(benchmark, case_name, shape_name, impl, nbytes):
    benchmark.group = f"{case_name} {shape_name}"
    benchmark.extra_info.update(case=case_name, shape=shape_name, impl=impl, bytes=nbytes)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("case_name", list(benchmarking.CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_op(benchmark, case_name, shape_name, impl):
    case = benchmarking.CASES[case_name]
    shape = SHAPES[shape_name]
    args, kwargs = case.make(shape, torch.float32, "cpu", torch.Generator().manual_seed(0))
    fn = _callable(case, impl)
    fn(*args, **kwargs)  # warm-up (and compilation)
    _record(benchmark, case_name, shape_name, impl, benchmarking.bytes_moved(case, shape, torch.float32))
    benchmark(fn, *args, **kwargs)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_copy(benchmark, shape_name):
    src = torch.randn(SHAPES[shape_name])
    dst = torch.empty_like(src)
    _record(benchmark, "copy", shape_name, "copy", 2 * src.numel() * src.element_size())
    benchmark(dst.copy_, src)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("tensors", sorted({case.tensors_moved for case in benchmarking.CASES.values()} - {2}))
def test_copy_same_bytes(benchmark, shape_name, tensors):
    """dst.copy_(src) moving as many bytes as an op that reads and writes
    `tensors` tensors of the shape (src holds half of them): a third floor,
    with the working set where the op's is. The copy of one tensor can sit in
    a cache the op's tensors overflow: at "large" the copy reads and writes
    32 MiB, the size of the 2-core VM's L3, while ei_step moves 80 MiB."""
    numel = math.prod(SHAPES[shape_name]) * tensors // 2
    src = torch.randn(numel)
    dst = torch.empty_like(src)
    _record(benchmark, f"copy_same_bytes_{tensors}", shape_name, "copy", 2 * numel * src.element_size())
    benchmark(dst.copy_, src)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_triad(benchmark, shape_name):
    """STREAM's triad a = b + s * c (two reads, one write) at the same size: a
    second floor, for ops that read more tensors than they write."""
    b, c = torch.randn(SHAPES[shape_name]), torch.randn(SHAPES[shape_name])
    a = torch.empty_like(b)
    _record(benchmark, "triad", shape_name, "triad", 3 * b.numel() * b.element_size())
    benchmark(torch.add, b, c, alpha=0.5, out=a)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_threshold_torch_quantile(benchmark, shape_name):
    case = benchmarking.CASES["threshold_dynamic"]
    shape = SHAPES[shape_name]
    (x,), kwargs = case.make(shape, torch.float32, "cpu", torch.Generator().manual_seed(0))
    _record(
        benchmark,
        "threshold_dynamic",
        shape_name,
        "torch_quantile",
        benchmarking.bytes_moved(case, shape, torch.float32),
    )
    benchmark(benchmarking.quantile_threshold, x, **kwargs)
