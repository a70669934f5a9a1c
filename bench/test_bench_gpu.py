"""GPU benchmarks of every op x backend (pytest-benchmark), run by
bench/gpu_check.sh on the GPU machine; skipped without a GPU.

For each case, shape and dtype (float32, bfloat16) one run times the cuda and
triton kernels, the eager reference, torch.compile of the reference, and a
device-to-device copy at the same size (the bandwidth floor of these
memory-bound ops); the dynamic threshold also against torch.quantile written
the diffusers way. A timed call runs the op REPS times, then synchronizes
once, so the numbers are per-op device time plus launch, not a host round
trip; bench/report.py divides by REPS. Calls are captured in a CUDA graph and
replayed where they can be (device time, without the host's per-call work),
and a few are also timed as a plain Python loop (test_host_loop).
"""

import pytest
import torch

from diffaccel import benchmarking, ops
from diffaccel.ops import backends
from diffaccel.ops import triton as triton_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (1,4,64,64) is launch-bound; (16,16,256,256) float32 is 64 MiB a tensor, beyond the L2.
SHAPES = {name: benchmarking.SHAPES[name] for name in ("small", "medium", "large")}
SHAPES["xlarge"] = (16, 16, 256, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ["cuda", "triton", "eager_reference", "compiled_reference"]
REPS = 20


def _available(impl):
    if impl == "cuda":
        return "cuda" in backends.COMPILED_DEVICE_TYPES["ei_step"]
    if impl == "triton":
        return triton_backend.available("cuda")
    return True


def _callable(case, impl):
    if impl in ("cuda", "triton"):

        def run(*args, **kwargs):
            with ops.backend(impl):
                return case.fused(*args, **kwargs)

        return run
    if impl == "eager_reference":
        return case.reference
    # dynamic=True: one compilation serves every shape of the case.
    return benchmarking.compiled_reference(case, dynamic=True)


def _capture(body):
    """body() captured in a CUDA graph (after a warm-up on a side stream), or
    None when it cannot be captured."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        return graph
    except Exception:  # noqa: BLE001  (not capturable: timed as a host loop instead)
        torch.cuda.synchronize()
        return None


def _time(benchmark, timing, fn, *args, **kwargs):
    """timing="graph": REPS calls captured in one CUDA graph and replayed, so
    the time is the device's (launch gaps included, host overhead not);
    "loop": REPS calls from Python, what an eager caller waits for."""

    def repeated():
        for _ in range(REPS):
            fn(*args, **kwargs)

    fn(*args, **kwargs)  # warm-up: compilation, autotuning, allocator
    torch.cuda.synchronize()
    graph = _capture(repeated) if timing == "graph" else None
    benchmark.extra_info["timing"] = "graph" if graph is not None else "loop"
    if graph is not None:

        def run():
            graph.replay()
            torch.cuda.synchronize()
    else:

        def run():
            repeated()
            torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=7, warmup_rounds=1)


def _record(benchmark, case_name, shape_name, dtype_name, impl, nbytes):
    benchmark.group = f"{case_name} {shape_name} {dtype_name}"
    benchmark.extra_info.update(
        case=case_name,
        shape=shape_name,
        dtype=dtype_name,
        impl=impl,
        bytes=nbytes,
        reps=REPS,
        device=torch.cuda.get_device_name(),
    )


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("case_name", list(benchmarking.CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_op(benchmark, case_name, shape_name, dtype_name, impl):
    if not _available(impl):
        pytest.skip(f"{impl} backend not available")
    case = benchmarking.CASES[case_name]
    shape, dtype = SHAPES[shape_name], DTYPES[dtype_name]
    args, kwargs = case.make(shape, dtype, "cuda", torch.Generator().manual_seed(0))
    _record(benchmark, case_name, shape_name, dtype_name, impl, benchmarking.bytes_moved(case, shape, dtype))
    _time(benchmark, "graph", _callable(case, impl), *args, **kwargs)


@pytest.mark.parametrize("case_name", ["ei_step_2m", "threshold_dynamic"])
@pytest.mark.parametrize("impl", ["cuda", "triton", "eager_reference"])
def test_host_loop(benchmark, case_name, impl):
    """What an eager caller pays per call at the launch-bound size: the host's
    work (Python front, dispatcher, launches), which a CUDA graph removes."""
    if not _available(impl):
        pytest.skip(f"{impl} backend not available")
    case = benchmarking.CASES[case_name]
    args, kwargs = case.make(SHAPES["small"], torch.float32, "cuda", torch.Generator().manual_seed(0))
    _record(
        benchmark,
        case_name,
        "small",
        "fp32",
        f"{impl}_host_loop",
        benchmarking.bytes_moved(case, SHAPES["small"], torch.float32),
    )
    _time(benchmark, "loop", _callable(case, impl), *args, **kwargs)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_copy(benchmark, shape_name, dtype_name):
    src = torch.randn(SHAPES[shape_name], device="cuda").to(DTYPES[dtype_name])
    dst = torch.empty_like(src)
    _record(benchmark, "copy", shape_name, dtype_name, "copy", 2 * src.numel() * src.element_size())
    _time(benchmark, "graph", dst.copy_, src)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_threshold_torch_quantile(benchmark, shape_name, dtype_name):
    case = benchmarking.CASES["threshold_dynamic"]
    shape, dtype = SHAPES[shape_name], DTYPES[dtype_name]
    (x,), kwargs = case.make(shape, dtype, "cuda", torch.Generator().manual_seed(0))
    _record(
        benchmark,
        "threshold_dynamic",
        shape_name,
        dtype_name,
        "torch_quantile",
        benchmarking.bytes_moved(case, shape, dtype),
    )
    _time(benchmark, "graph", benchmarking.quantile_threshold, x, **kwargs)
