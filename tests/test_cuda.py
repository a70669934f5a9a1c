"""What only a GPU can show: no op synchronizes with the host (each runs under
torch.cuda.set_sync_debug_mode("error")), each op can be captured in a CUDA
graph and replayed, small tensors take one launch per op (two for dynamic
thresholding), and the in-kernel noise is the documented Philox stream.
Every test runs on each GPU backend that is live; all are marked ``cuda`` and
skipped without a GPU."""

import contextlib

import pytest
import torch

from diffaccel import _extension, ops
from diffaccel.ops import autograd, backends, reference
from diffaccel.ops import triton as triton_backend

from conftest import assert_close

pytestmark = pytest.mark.cuda


def _gpu_backends():
    live = []
    if torch.cuda.is_available() and "cuda" in backends.COMPILED_DEVICE_TYPES["ei_step"]:
        live.append("cuda")
    if triton_backend.available("cuda"):
        live.append("triton")
    return live or ["cuda"]  # without a GPU every test is skipped anyway


@pytest.fixture(params=_gpu_backends())
def gpu_backend(request):
    return request.param


@contextlib.contextmanager
def no_host_sync():
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _randn(*shape, dtype=torch.float32, gen=None):
    return torch.randn(shape, generator=gen, device="cuda").to(dtype)


def _cases(gen):
    """name -> (fused call, reference call) on fresh CUDA inputs."""
    shape = (2, 4, 32, 32)
    x, m, h0, h1, z = (_randn(*shape, gen=gen) for _ in range(5))
    bf = m.bfloat16()
    coeffs = torch.randn(2, 7, generator=gen, device="cuda", dtype=torch.float64)
    # Contiguous: a sliced coefficient table costs one extra (tiny) copy kernel.
    combine_coeffs = coeffs[:, :3].contiguous()
    pair_coeffs = torch.randn(2, 2, 4, generator=gen, device="cuda", dtype=torch.float64)
    t = ops.Threshold("dynamic", 0.995, 1.5)
    clip = ops.Threshold("clip", max_value=0.5)
    return {
        "ei_step": (
            lambda: ops.ei_step(x, m, [h0, h1], coeffs, noise=z),
            lambda: reference.ei_step(x, m, [h0, h1], coeffs, noise=z),
        ),
        "ei_step_bf16_dynamic": (
            lambda: ops.ei_step(x, bf, [h0, h1], coeffs, threshold=t),
            lambda: reference.ei_step(x, bf, [h0, h1], coeffs, threshold=t),
        ),
        "ei_step_clip": (
            lambda: ops.ei_step(x, m, [h0, h1], coeffs, threshold=clip),
            lambda: reference.ei_step(x, m, [h0, h1], coeffs, threshold=clip),
        ),
        "multistep_combine": (
            lambda: ops.multistep_combine([x, m, h0], combine_coeffs),
            lambda: reference.multistep_combine([x, m, h0], combine_coeffs),
        ),
        "multistep_combine_pair": (
            lambda: ops.multistep_combine_pair([x, bf, h0, h1], pair_coeffs),
            lambda: reference.multistep_combine_pair([x, bf, h0, h1], pair_coeffs),
        ),
        "threshold_dynamic": (
            lambda: ops.threshold(x * 3, ratio=0.9, max_value=2.0),
            lambda: reference.threshold(x * 3, ratio=0.9, max_value=2.0),
        ),
        "threshold_clip": (
            lambda: ops.threshold(x, kind="clip", max_value=0.3),
            lambda: reference.threshold(x, kind="clip", max_value=0.3),
        ),
        "langevin_correct": (
            lambda: ops.langevin_correct(x, m, 0.16, noise=z),
            lambda: reference.langevin_correct(x, m, 0.16, noise=z),
        ),
        "error_norm": (
            lambda: ops.error_norm(x, m, h0, atol=0.0078, rtol=0.05),
            lambda: reference.error_norm(x, m, h0, atol=0.0078, rtol=0.05),
        ),
    }


CASES = [
    "ei_step",
    "ei_step_bf16_dynamic",
    "ei_step_clip",
    "multistep_combine",
    "multistep_combine_pair",
    "threshold_dynamic",
    "threshold_clip",
    "langevin_correct",
    "error_norm",
]


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


@pytest.mark.parametrize("case", CASES)
def test_no_host_synchronization(case, gpu_backend, gen):
    fused, ref = _cases(gen)[case]
    with ops.backend(gpu_backend):
        fused()  # compile / load outside the check
        with no_host_sync():
            got = fused()
    for g, w in zip(_as_tuple(got), _as_tuple(ref())):
        assert_close(g, w)


def test_threshold_backward_without_host_synchronization(gpu_backend, gen):
    x, grad = (_randn(2, 4, 32, 32, gen=gen) for _ in range(2))
    scale = _randn(2, gen=gen).abs() + 1
    with ops.backend(gpu_backend):
        autograd.threshold_backward(grad, x, scale)
        with no_host_sync():
            passed, dot = autograd.threshold_backward(grad, x, scale)
    want = reference.threshold_backward(grad, x, scale)
    assert_close(passed, want[0])
    torch.testing.assert_close(dot, want[1], rtol=1e-5, atol=1e-6)


def test_error_norm_backward_without_host_synchronization(gpu_backend, gen):
    """error_norm's gradient op: its per-sample factor is computed on the device."""
    x, m, h = (_randn(2, 4, 32, 32, gen=gen) for _ in range(3))
    error = reference.error_norm(x, m, h, atol=0.0078, rtol=0.05)
    grad = _randn(2, gen=gen)
    with ops.backend(gpu_backend):
        autograd.error_norm_backward(grad, error, x, m, h, atol=0.0078, rtol=0.05)
        with no_host_sync():
            got = autograd.error_norm_backward(grad, error, x, m, h, atol=0.0078, rtol=0.05)
    for g, w in zip(got, reference.error_norm_backward(grad, error, x, m, h, atol=0.0078, rtol=0.05)):
        assert_close(g, w)


@pytest.mark.parametrize("case", CASES)
def test_cuda_graph_capture_and_replay(case, gpu_backend, gen):
    """Captured once, replayed on new data written into the same inputs."""
    shape = (2, 4, 32, 32)
    x, m, h = (_randn(*shape, gen=gen) for _ in range(3))
    coeffs = torch.randn(2, 6, generator=gen, device="cuda", dtype=torch.float64)
    t = ops.Threshold("dynamic", 0.95, 1.5) if "dynamic" in case else None
    run = {
        "multistep_combine": lambda lib: lib.multistep_combine([x, m, h], coeffs[:, :3]),
        "multistep_combine_pair": lambda lib: lib.multistep_combine_pair([x, m, h], coeffs.reshape(2, 2, 3)),
        "threshold_dynamic": lambda lib: lib.threshold(x * 3, ratio=0.9, max_value=2.0),
        "threshold_clip": lambda lib: lib.threshold(x, kind="clip", max_value=0.3),
        "langevin_correct": lambda lib: lib.langevin_correct(x, m, 0.16, noise=h),
        "error_norm": lambda lib: lib.error_norm(x, m, h, atol=0.0078, rtol=0.05),
    }.get(case, lambda lib: lib.ei_step(x, m, [h], coeffs, threshold=t))
    with ops.backend(gpu_backend):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run(ops)  # warm-up (Triton compiles) outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = run(ops)
    for tensor in (x, m, h, coeffs):
        tensor.copy_(torch.randn(tensor.shape, generator=gen, device="cuda", dtype=tensor.dtype))
    graph.replay()
    torch.cuda.synchronize()
    for g, w in zip(_as_tuple(captured), _as_tuple(run(reference))):
        assert_close(g, w)


def _kernel_launches(fn):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [
        e.name
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and "memset" not in e.name.lower()
    ]


@pytest.mark.parametrize(
    "case,launches",
    [
        ("ei_step", 1),
        ("ei_step_bf16_dynamic", 2),
        ("multistep_combine", 1),
        ("multistep_combine_pair", 1),
        ("threshold_clip", 1),
        ("threshold_dynamic", 2),
    ],
)
def test_small_tensors_take_one_launch(case, launches, gpu_backend, gen):
    """On (1, 4, 64, 64)-sized data the ops are bound by launch latency: one
    kernel per op, two for dynamic thresholding (selection, then the pass)."""
    fused, _ = _cases(gen)[case]
    if case == "threshold_dynamic":
        x = _randn(1, 4, 64, 64, gen=gen)
        fused = lambda: ops.threshold(x)  # noqa: E731  (no x * 3 kernel in the count)
    with ops.backend(gpu_backend):
        names = _kernel_launches(fused)
    assert len(names) == launches, names


@pytest.mark.parametrize("shape", [(2, 3, 40, 40), (2, 3, 41, 41), (2, 40008)], ids=str)
def test_cuda_noise_is_the_documented_philox_stream(gpu_backend, shape):
    """noise=None on CUDA: element i of the draw is philox_normal(seed, offset, i)
    for the generator's seed and offset before the call (diffaccel/philox.h),
    which diffaccel._C.philox_normal recomputes on the CPU; the generator then
    moves on by 4, so the next draw differs. Shapes: 16-byte packs, one element
    at a time (odd sample size), and packs over several norm chunks per sample."""
    gen = torch.Generator(device="cuda").manual_seed(1234)
    x = torch.randn(shape, device="cuda")
    score = torch.randn(shape, device="cuda")
    seed, offset = gen.initial_seed(), gen.get_offset()
    with ops.backend(gpu_backend):
        x_new, x_mean = ops.langevin_correct(x, score, 0.16, generator=gen, reduction="sample")
        again = ops.langevin_correct(x, score, 0.16, generator=gen, reduction="sample")
    assert gen.get_offset() == offset + 8
    z = _extension._C.philox_normal(seed, offset, x.numel()).view(x.shape).cuda()
    want = reference.langevin_correct(x, score, 0.16, noise=z, reduction="sample")
    torch.testing.assert_close(x_new, want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_mean, want[1], rtol=1e-6, atol=1e-6)
    assert not torch.equal(again[0], x_new)


def test_backends_draw_the_same_noise():
    if len(_gpu_backends()) < 2:
        pytest.skip("needs both GPU backends")
    x = torch.randn(3, 4, 16, 16, device="cuda")
    score = torch.randn(3, 4, 16, 16, device="cuda")
    results = []
    for name in ("cuda", "triton"):
        with ops.backend(name):
            results.append(ops.langevin_correct(x, score, 0.2, generator=torch.Generator("cuda").manual_seed(5)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)


def test_explicit_backend_on_cpu_tensors_runs_the_cpu_kernels(gen):
    x = torch.randn(2, 3, 4, device="cpu")
    with ops.backend("cuda"):
        assert_close(ops.threshold(x, kind="clip", max_value=0.5), reference.threshold(x, kind="clip", max_value=0.5))
