"""GPU benchmarks of every op x backend (pytest-benchmark), run by
bench/gpu_check.sh on the GPU machine; skipped without a GPU.

For each case, shape and dtype (float32, bfloat16) one run times the cuda and
triton kernels, the eager reference, torch.compile of the reference, and a
device-to-device copy at the same size (the bandwidth floor of these
memory-bound ops); the dynamic threshold also against torch.quantile written
the diffusers way. A timed call runs the op REPS times, then synchronizes
once, so the numbers are per-op device time plus launch, not a host round
trip; bench/report.py divides by REPS.
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

_compiled = {}


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
    if case.name not in _compiled:
        # dynamic=True: one compilation serves every shape of the case.
        _compiled[case.name] = torch.compile(case.reference, dynamic=True)
    return _compiled[case.name]


def _time(benchmark, fn, *args, **kwargs):
    def repeated():
        for _ in range(REPS):
            fn(*args, **kwargs)
        torch.cuda.synchronize()

    fn(*args, **kwargs)  # warm-up: compilation, autotuning, allocator
    torch.cuda.synchronize()
    benchmark.pedantic(repeated, rounds=7, warmup_rounds=1)


def _record(benchmark, case_name, shape_name, dtype_name, impl, nbytes):
    benchmark.group = f"{case_name} {shape_name} {dtype_name}"
    benchmark.extra_info.update(case=case_name, shape=shape_name, dtype=dtype_name, impl=impl, bytes=nbytes,
                                reps=REPS, device=torch.cuda.get_device_name())


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
    _time(benchmark, _callable(case, impl), *args, **kwargs)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_copy(benchmark, shape_name, dtype_name):
    src = torch.randn(SHAPES[shape_name], device="cuda").to(DTYPES[dtype_name])
    dst = torch.empty_like(src)
    _record(benchmark, "copy", shape_name, dtype_name, "copy", 2 * src.numel() * src.element_size())
    _time(benchmark, dst.copy_, src)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_threshold_torch_quantile(benchmark, shape_name, dtype_name):
    case = benchmarking.CASES["threshold_dynamic"]
    shape, dtype = SHAPES[shape_name], DTYPES[dtype_name]
    (x,), kwargs = case.make(shape, dtype, "cuda", torch.Generator().manual_seed(0))
    _record(benchmark, "threshold_dynamic", shape_name, dtype_name, "torch_quantile",
            benchmarking.bytes_moved(case, shape, dtype))
    _time(benchmark, benchmarking.quantile_threshold, x, **kwargs)
