"""Gradients through the ops (pytest-benchmark, in `make bench`): one forward
and backward pass, the fused ops with their registered backward
(diffaccel.ops.autograd) against autograd through the reference twin, with the
fused forward alone (no grad) beside them as the scale. float32, every data
tensor requires grad (coefficient rows do not, as in a sampler), fixed
upstream gradients; on the CPU, or on the GPU with
DIFFACCEL_BENCH_DEVICE=cuda (the GPU check; each timed call then ends with a
synchronization). bench/report.py prints the table.
"""

import os

import pytest
import torch

from diffaccel import benchmarking, ops

CASE_NAMES = ["ei_step_2m", "ei_step_dynamic", "threshold_dynamic", "langevin_correct", "error_norm"]
SHAPE_NAMES = ["medium", "large"]
IMPLS = {"fused": "auto", "reference": "reference", "fused_forward": "auto"}
DEVICE = os.environ.get("DIFFACCEL_BENCH_DEVICE", "cpu")


def _inputs(case, shape):
    args, kwargs = case.make(shape, torch.float32, DEVICE, torch.Generator(DEVICE).manual_seed(0))
    leaves = []

    def lift(value):  # the data tensors require grad; coefficient rows stay constants, as in a sampler
        if isinstance(value, torch.Tensor) and value.shape == shape:
            leaf = value.detach().clone().requires_grad_()
            leaves.append(leaf)
            return leaf
        if isinstance(value, list):
            return [lift(v) for v in value]
        return value

    return [lift(a) for a in args], {k: lift(v) for k, v in kwargs.items()}, leaves


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape_name", SHAPE_NAMES)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_gradient(benchmark, case_name, shape_name, impl):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("DIFFACCEL_BENCH_DEVICE=cuda without a GPU")
    case = benchmarking.CASES[case_name]
    args, kwargs, leaves = _inputs(case, benchmarking.SHAPES[shape_name])
    with torch.no_grad():
        outputs = case.fused(*args, **kwargs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator(DEVICE).manual_seed(1)
    upstream = [torch.randn(o.shape, generator=gen, device=DEVICE) for o in outputs]

    def finished(result):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return result

    def forward_backward():
        with ops.backend(IMPLS[impl]):
            result = case.fused(*args, **kwargs)
        result = result if isinstance(result, tuple) else (result,)
        return finished(torch.autograd.grad(result, leaves, upstream))

    def forward_only():
        with torch.no_grad():
            return finished(case.fused(*args, **kwargs))

    run = forward_only if impl == "fused_forward" else forward_backward
    run()  # warm-up
    benchmark.group = f"gradient {case_name} {shape_name}"
    benchmark.extra_info.update(case=f"gradient_{case_name}", shape=shape_name, impl=impl, bytes=0, device=DEVICE)
    benchmark.pedantic(run, rounds=7 if shape_name == "large" else 30, warmup_rounds=1)
