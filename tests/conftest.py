"""Shared test helpers: random inputs in every layout, per-dtype tolerances,
and the device and backends every op is checked on.

DIFFACCEL_TEST_DEVICE=cuda runs the suite on the GPU (tensors made without a
device land there), with whatever DIFFACCEL_BACKEND selects (bench/gpu_check.sh
runs it once per GPU backend). Tests marked ``cuda`` need a GPU and are skipped
without one; tests marked ``cpu_only`` check a CPU-only contract.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

from diffaccel import _extension, check
from diffaccel.ops import backends
from diffaccel.ops import triton as triton_backend

DEVICE = os.environ.get("DIFFACCEL_TEST_DEVICE", "cpu")
if DEVICE != "cpu":
    torch.set_default_device(DEVICE)

# How many seeds the random-configuration tests against diffusers and
# k-diffusion draw from (one by default; DIFFACCEL_RANDOM_SEEDS=15 is the
# longer sweep of 2026-11-27, about a minute on 2 cores).
RANDOM_SEEDS = range(int(os.environ.get("DIFFACCEL_RANDOM_SEEDS", "1")))


@pytest.fixture
def host_default_device():
    """The host as the default device for the test. diffusers makes a
    scheduler's tables on the default device and reads them with numpy, so stock
    diffusers cannot run under torch.set_default_device("cuda"); its schedulers
    are made on the host, as in a pipeline, and the tests' tensors name DEVICE."""
    with torch.device("cpu"):
        yield


@pytest.fixture
def exact_float32_convolutions():
    """Convolutions and matmuls in full float32 on CUDA, for the tests that
    compare whole pipelines (UNet plus scheduler). PyTorch lets cuDNN use TF32
    by default, which rounds a UNet's inputs to 10 bits: a last-bit difference
    in the scheduler's state can flip such a rounding and grow over the loop
    (1e-3 in the images on the H200, 2026-11-27), hiding what is compared."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


# Backends the front-end tests run each case on, for this device.
TEST_BACKENDS = ["auto", "reference"] + (["triton"] if triton_backend.available(DEVICE) else [])

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Odd, tiny (one element, batch 1), empty-batch and large-ish shapes.
SHAPES = [(1,), (3, 5, 7, 11), (2, 4, 64, 64), (0, 3, 4)]

LAYOUTS = ["contiguous", "sliced", "transposed"]


def assert_close(actual, expected, dtype=None):
    """Within the tolerance of a kernel against the reference (`diffaccel check`'s)."""
    dtype = dtype or expected.dtype
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    triton_on_cuda = actual.device.type == "cuda" and backends.current() == "triton"
    torch.testing.assert_close(actual, expected, equal_nan=True, **check.tolerance(dtype, triton_on_cuda))


def make(shape, dtype, layout="contiguous", generator=None, scale=1.0):
    """Fresh standard-normal data with the given shape and memory layout."""
    if layout == "contiguous" or len(shape) == 0:
        base = torch.randn(shape, generator=generator)
        return (base * scale).to(dtype)
    if layout == "sliced":  # every other element of a wider last dimension
        wide = tuple(shape[:-1]) + (2 * shape[-1] + 1,)
        base = (torch.randn(wide, generator=generator) * scale).to(dtype)
        view = base[..., 1::2]
    elif layout == "transposed":  # same elements, dimensions stored in reverse order
        base = (torch.randn(tuple(reversed(shape)), generator=generator) * scale).to(dtype)
        view = base.permute(*reversed(range(len(shape))))
    else:
        raise ValueError(layout)
    assert view.shape == tuple(shape)
    return view


def random_coeffs(batch, n, per_sample, generator, dtype=torch.float64):
    """n coefficients, shared ([n]) or one row per sample ([batch, n]), drawn in float64."""
    shape = (batch, n) if per_sample else (n,)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


# The sampled selection (diffaccel/quantile.h) samples 256 magnitudes of a
# sample of fewer than 32768 elements and 512 from there
# (selection_sample_log2); the CPU samples from SAMPLED_SELECTION_MIN elements.
SAMPLED_SELECTION_MIN = 8192


def sampled_positions(n):
    """The positions diffaccel/quantile.h samples in a sample of n elements (its
    sample_position), so that a test can put values where the sample cannot see them."""
    log2 = 8 if n < 4 * SAMPLED_SELECTION_MIN else 9
    i = torch.arange(1 << log2, dtype=torch.int64)
    begin = (i * n) >> log2
    window = (((i + 1) * n) >> log2) - begin
    hashed = [(((k + 1) * 0x9E3779B97F4A7C15) % (1 << 64)) >> 32 for k in range(1 << log2)]
    return begin + (torch.tensor(hashed, dtype=torch.int64) * window) // (1 << 32)


@pytest.fixture
def gen(request):
    """A seeded generator per test: each test case draws its own inputs, and a
    failure reproduces when the test is run again. DIFFACCEL_TEST_SEED varies
    all of them at once."""
    seed = zlib.crc32(request.node.nodeid.encode()) ^ int(os.environ.get("DIFFACCEL_TEST_SEED", "0"))
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.fixture(autouse=True, scope="session")
def _require_compiled_extension():
    """The suite checks the compiled kernels: without them it would silently
    test the reference against itself, so that is an error unless asked for."""
    if not _extension.available() and os.environ.get("DIFFACCEL_ALLOW_NO_EXTENSION") != "1":
        pytest.fail(f"diffaccel's compiled extension did not load: {_extension.load_error}")
    # make sanitize: the extension must be the sanitized build, not the normal one.
    expected = os.environ.get("DIFFACCEL_EXPECT_EXTENSION")
    if expected and not os.path.abspath(_extension._C.__file__).startswith(os.path.abspath(expected)):
        pytest.fail(f"diffaccel loaded {_extension._C.__file__}, expected the build in {expected}")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "cpu_only" in item.keywords and DEVICE != "cpu":
            item.add_marker(pytest.mark.skip(reason="checks a CPU-only contract"))


# DIFFACCEL_FAILURE_LOG=<path>: each failure's traceback appended to <path> as it
# happens (bench/gpu_check.sh: a run its time limit cuts prints no summary, and
# the GPU's minutes are too few to rerun it for the messages). Written by the
# process that reports (under xdist the controller, so once per failure).
_FAILURE_LOG = os.environ.get("DIFFACCEL_FAILURE_LOG")


def pytest_runtest_logreport(report):
    if _FAILURE_LOG and report.failed and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(_FAILURE_LOG, "a") as log:
            log.write(f"\n===== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n")
