"""torch.library.opcheck on every op (schema, fake kernel, dispatch), and
torch.compile(fullgraph=True) over each op's front."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import backends, reference
from diffaccel.ops import triton as triton_backend

from conftest import DEVICE, assert_close

# The C++ ops, and the Triton ops where they run on this device.
NAMESPACES = ["diffaccel"] + (["diffaccel_triton"] if triton_backend.available(DEVICE) else [])


def _inputs(gen):
    shape = (2, 3, 8, 8)
    return [torch.randn(shape, generator=gen) for _ in range(4)]


def _opcheck_cases(gen, namespace):
    lib = getattr(torch.ops, namespace)
    x, m, h, z = _inputs(gen)
    c = torch.randn(6, generator=gen, dtype=torch.float64)
    cs = torch.randn(2, 6, generator=gen)
    bf = m.bfloat16()
    # The Triton langevin op takes the Philox stream words where the C++ op takes a generator.
    no_generator = None if namespace == "diffaccel" else [0, 0, 0, 0]
    return {
        "ei_step": (lib.ei_step.default, (x, m, [h], c, z, None, 0.995, 1.0, "diffusers")),
        "ei_step_dynamic": (lib.ei_step.default, (x, bf, [h], cs, None, "dynamic", 0.9, 1.5, "dpm-solver")),
        "ei_step_out": (
            lib.ei_step_out.default,
            (x, m, [h], c, z, "clip", 0.995, 1.0, "diffusers", torch.empty_like(x), torch.empty_like(x)),
        ),
        "multistep_combine": (lib.multistep_combine.default, ([x, m, h], torch.randn(3, generator=gen))),
        "multistep_combine_out": (
            lib.multistep_combine_out.default,
            ([x, m], torch.randn(2, 2, generator=gen), torch.empty_like(x)),
        ),
        "multistep_combine_pair": (lib.multistep_combine_pair.default, ([x, bf, h], torch.randn(2, 3, generator=gen))),
        "multistep_combine_pair_out": (
            lib.multistep_combine_pair_out.default,
            ([x, m], torch.randn(2, 2, 2, generator=gen), torch.empty_like(x), torch.empty_like(x)),
        ),
        "threshold": (lib.threshold.default, (x * 3, "dynamic", 0.995, 1.0, "diffusers")),
        "threshold_bracketed": (
            lib.threshold.default,
            (torch.randn(2, (1 << 16) + 17, generator=gen) * 3, "dynamic", 0.995, 2.0, "diffusers"),
        ),
        "threshold_out": (lib.threshold_out.default, (x * 3, "clip", 0.995, 1.0, "diffusers", torch.empty_like(x))),
        "error_norm": (lib.error_norm.default, (x, m, h, 0.0078, 0.05)),
        "error_norm_backward": (
            lib.error_norm_backward.default,
            (torch.randn(2, generator=gen), torch.rand(2, generator=gen) + 0.5, x, bf, h, 0.0078, 0.05),
        ),
        "threshold_backward": (lib.threshold_backward.default, (bf, x * 3, torch.rand(2, generator=gen) + 1)),
        "langevin_correct": (lib.langevin_correct.default, (x, m, 0.16, torch.ones(()), z, no_generator, "batch")),
        "langevin_correct_out": (
            lib.langevin_correct_out.default,
            (x, m, 0.16, torch.rand(2), z, no_generator, "sample", torch.empty_like(x), torch.empty_like(x)),
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "ei_step",
        "ei_step_dynamic",
        "ei_step_out",
        "multistep_combine",
        "multistep_combine_out",
        "multistep_combine_pair",
        "multistep_combine_pair_out",
        "threshold",
        "threshold_out",
        "langevin_correct",
        "langevin_correct_out",
        "error_norm",
        "error_norm_backward",
        "threshold_backward",
    ]
    # Samples of 2^16 elements and more, whose GPU selection takes the sampled
    # bracket: opchecked (the Triton op through wrap_triton) where they run fast.
    + (["threshold_bracketed"] if DEVICE == "cuda" else []),
)
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_opcheck(name, namespace, gen):
    op, args = _opcheck_cases(gen, namespace)[name]
    torch.library.opcheck(op, args)


def _fronts(gen):
    x, m, h, z = _inputs(gen)
    c = torch.randn(6, generator=gen, dtype=torch.float64)
    t = ops.Threshold("dynamic", 0.9, 1.5)
    return {
        "ei_step": (
            lambda: ops.ei_step(x, m, [h], c, noise=z, threshold=t),
            lambda: reference.ei_step(x, m, [h], c, noise=z, threshold=t),
        ),
        "multistep_combine": (
            lambda: ops.multistep_combine([x, m, h], c[:3]),
            lambda: reference.multistep_combine([x, m, h], c[:3]),
        ),
        "multistep_combine_pair": (
            lambda: ops.multistep_combine_pair([x, m, h], c.reshape(2, 3)),
            lambda: reference.multistep_combine_pair([x, m, h], c.reshape(2, 3)),
        ),
        "threshold": (lambda: ops.threshold(x * 3), lambda: reference.threshold(x * 3)),
        "langevin_correct": (
            lambda: ops.langevin_correct(x, m, 0.16, noise=z),
            lambda: reference.langevin_correct(x, m, 0.16, noise=z),
        ),
        "error_norm": (
            lambda: ops.error_norm(x, m, h, atol=0.0078, rtol=0.05),
            lambda: reference.error_norm(x, m, h, atol=0.0078, rtol=0.05),
        ),
    }


@pytest.mark.parametrize(
    "name", ["ei_step", "multistep_combine", "multistep_combine_pair", "threshold", "langevin_correct", "error_norm"]
)
def test_compile_fullgraph(name, gen):
    fused, ref = _fronts(gen)[name]
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    got, want = compiled(), ref()
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert_close(g, w)


@pytest.mark.parametrize("backend", sorted({backends.current(), "reference"}))  # DIFFACCEL_BACKEND's, and the reference
def test_compile_inductor_in_place_loop(gen, backend):
    """A multistep loop body with out= (mutating ops) under inductor, on the
    selected backend and on the reference (whose Python argument checks dynamo
    traces: a storage-address check there once broke it)."""
    x, m, h, _ = _inputs(gen)
    c = torch.randn(6, generator=gen, dtype=torch.float64)

    def step(x, m, h):
        ops.ei_step(x, m, [h], c, out=(x, h))
        return x, h

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    want = reference.ei_step(x, m, [h], c)
    with ops.backend(backend):
        got = compiled(x.clone(), m, h.clone())
    for g, w in zip(got, want):
        assert_close(g, w)
