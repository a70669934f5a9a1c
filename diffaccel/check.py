"""``diffaccel check``: every live backend against the reference on fresh
random inputs, what a user runs on a new machine (a new GPU box above all).

For each op and backend it runs a set of configurations (dtypes, an odd
non-contiguous shape and a latent-sized one, per-sample coefficients, history
lengths, thresholds, mixed dtypes) and compares with the pure-PyTorch
reference at the tolerances the test suite uses; it prints pass or fail per op
and backend and returns non-zero on any failure.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import torch

from diffaccel import ops
from diffaccel.noise import standard_normal
from diffaccel.ops import autograd, backends, reference
from diffaccel.ops import triton as triton_backend

# Tolerances of a kernel against the reference on identical inputs (shared with
# the test suite). Both compute in float32 (float64 for float64), so fp32
# results agree to the last bit or two; 16-bit outputs may round one unit apart.
TOLERANCES = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}

# Triton turns a*b + c into one fused multiply-add on the GPU (its default),
# where the C++ kernels round each product as the reference does (nvcc
# --fmad=false, the CPU build's -ffp-contract=off). After cancellation a Triton
# float32 result can then be a few units in the last place of its inputs off:
# 1.1e-6 on values of magnitude 5 in the H200 run of 2026-11-27.
TRITON_CUDA_FLOAT32 = dict(rtol=1e-6, atol=5e-6)


def tolerance(dtype: torch.dtype, triton_on_cuda: bool = False) -> dict:
    """The tolerance of a kernel's result against the reference."""
    return TRITON_CUDA_FLOAT32 if triton_on_cuda and dtype == torch.float32 else TOLERANCES[dtype]


# The six ops, and the two ops of their backward passes (diffaccel.ops.autograd).
OPS = (
    "ei_step",
    "multistep_combine",
    "multistep_combine_pair",
    "threshold",
    "langevin_correct",
    "error_norm",
    "error_norm_backward",
    "threshold_backward",
)


def live_backends(device: str) -> List[str]:
    """The kernel backends that run on this device type (the reference is the oracle)."""
    live = []
    if device in backends.COMPILED_DEVICE_TYPES["ei_step"]:
        live.append("cuda" if device == "cuda" else "cpu")
    if triton_backend.available(device):
        live.append("triton")
    return live


def _backend_setting(name: str) -> str:
    # The CPU kernels are what the "cuda" setting (compiled kernels) runs on CPU tensors.
    return "cuda" if name == "cpu" else name


def _cases(device: str, gen: torch.Generator) -> Dict[str, List[Tuple[Callable, Callable, torch.dtype]]]:
    """op -> [(fused call, reference call, output dtype)] on fresh inputs."""

    def randn(shape, dtype, transposed=False):
        t = standard_normal(tuple(reversed(shape)) if transposed else shape, generator=gen, device=device).to(dtype)
        return t.permute(*reversed(range(len(shape)))) if transposed else t

    def coeffs(rows, n):
        return standard_normal((rows, n) if rows else (n,), generator=gen, dtype=torch.float64, device=device)

    cases: Dict[str, list] = {op: [] for op in OPS}
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    for dtype in dtypes:
        for shape, transposed in (((3, 5, 7, 11), True), ((2, 4, 64, 64), False)):
            x, m, z = (randn(shape, dtype, transposed) * 2 for _ in range(3))
            hist = [randn(shape, dtype, transposed) for _ in range(4)]
            b = shape[0]
            for k, rows, t in (
                (0, 0, None),
                (1, b, ops.Threshold("clip", max_value=0.7)),
                (2, 0, ops.Threshold("dynamic", 0.995, 1.5)),
                (4, b, ops.Threshold("dynamic", 0.9, 1.0, "dpm-solver")),
            ):
                c, h = coeffs(rows, 5 + k), hist[:k]
                noise = z if t is None else None
                cases["ei_step"].append(
                    (
                        lambda x=x, m=m, h=h, c=c, t=t, n=noise: ops.ei_step(x, m, h, c, threshold=t, noise=n),
                        lambda x=x, m=m, h=h, c=c, t=t, n=noise: reference.ei_step(x, m, h, c, threshold=t, noise=n),
                        dtype,
                    )
                )
            for n, rows in ((1, 0), (3, b), (8, 0)):
                tensors, c = ([x, m] + hist + [z, x])[:n], coeffs(rows, n)
                cases["multistep_combine"].append(
                    (
                        lambda ts=tensors, c=c: ops.multistep_combine(ts, c),
                        lambda ts=tensors, c=c: reference.multistep_combine(ts, c),
                        dtype,
                    )
                )
            for n, rows in ((2, 0), (5, b)):
                tensors = ([x, m] + hist)[:n]
                c = torch.stack([coeffs(rows, n), coeffs(rows, n)], dim=-2)  # [2, n] / [B, 2, n]
                cases["multistep_combine_pair"].append(
                    (
                        lambda ts=tensors, c=c: ops.multistep_combine_pair(ts, c),
                        lambda ts=tensors, c=c: reference.multistep_combine_pair(ts, c),
                        dtype,
                    )
                )
            for options in (
                dict(kind="clip", max_value=0.5),
                dict(kind="dynamic", ratio=0.995, max_value=1.5),
                dict(kind="dynamic", ratio=0.9, max_value=1.0, style="dpm-solver"),
            ):
                cases["threshold"].append(
                    (
                        lambda x=x, o=options: ops.threshold(x, **o),
                        lambda x=x, o=options: reference.threshold(x, **o),
                        dtype,
                    )
                )
            for reduction in ("batch", "sample"):
                cases["langevin_correct"].append(
                    (
                        lambda x=x, m=m, z=z, r=reduction: ops.langevin_correct(x, m, 0.16, noise=z, reduction=r),
                        lambda x=x, m=m, z=z, r=reduction: reference.langevin_correct(x, m, 0.16, noise=z, reduction=r),
                        dtype,
                    )
                )
            low, prev = x + 0.01 * hist[0], x + 0.1 * hist[1]
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            cases["error_norm"].append(
                (
                    lambda x=x, lo=low, p=prev: ops.error_norm(x, lo, p, atol=0.0078, rtol=0.05),
                    lambda x=x, lo=low, p=prev: reference.error_norm(x, lo, p, atol=0.0078, rtol=0.05),
                    acc,
                )
            )
            grad, error = randn((shape[0],), acc), reference.error_norm(x, low, prev, atol=0.0078, rtol=0.05)
            cases["error_norm_backward"].append(
                (
                    lambda g=grad, e=error, x=x, lo=low, p=prev: autograd.error_norm_backward(
                        g, e, x, lo, p, atol=0.0078, rtol=0.05
                    ),
                    lambda g=grad, e=error, x=x, lo=low, p=prev: reference.error_norm_backward(
                        g, e, x, lo, p, atol=0.0078, rtol=0.05
                    ),
                    dtype,
                )
            )
            scale = randn((shape[0],), acc).abs() + 1
            cases["threshold_backward"].append(
                (
                    lambda g=m, x=x, s=scale: autograd.threshold_backward(g, x, s),
                    lambda g=m, x=x, s=scale: reference.threshold_backward(g, x, s),
                    acc,
                )
            )
    # A bf16 model output with a float32 state, as mixed-precision pipelines run.
    x32, m16 = randn((2, 4, 32, 32), torch.float32), randn((2, 4, 32, 32), torch.bfloat16)
    c = coeffs(2, 5)
    cases["ei_step"].append(
        (lambda: ops.ei_step(x32, m16, [], c), lambda: reference.ei_step(x32, m16, [], c), torch.float32)
    )
    return cases


def _compare(got, want, triton_on_cuda: bool) -> Tuple[bool, float]:
    """(within tolerance, the worst |got - want| / (atol + rtol |want|): <= 1 passes)."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    ok, worst = True, 0.0
    for g, w in zip(got, want):
        tol = tolerance(w.dtype, triton_on_cuda)
        ok &= g.shape == w.shape and g.dtype == w.dtype and bool(torch.allclose(g, w, equal_nan=True, **tol))
        if g.shape == w.shape and g.numel():
            g64, w64 = g.to(torch.float64), w.to(torch.float64)
            ratio = (g64 - w64).abs() / (tol["atol"] + tol["rtol"] * w64.abs())
            worst = max(worst, float(ratio.nan_to_num(0.0, posinf=0.0).max()))
    return ok, worst


def run(device: str = "cpu", backend_names=None, seed: int = None, out=print) -> int:
    """Checks every live backend on `device`; returns the number of failed (op, backend) pairs."""
    device_type = torch.device(device).type
    names = backend_names or live_backends(device_type)
    seed = int(time.time_ns() % (1 << 31)) if seed is None else seed
    out(f"diffaccel check on {device}: backends {', '.join(names) or 'none'}; inputs from seed {seed}")
    if not names:
        out("no kernel backend is live on this device: nothing to check (see `diffaccel info`)")
        return 0
    failures = 0
    out(f"{'op':<20} {'backend':<8} {'cases':>5}  result")
    for name in names:
        gen = torch.Generator().manual_seed(seed)
        cases = _cases(device, gen)
        for op in OPS:
            bad, worst, error = 0, 0.0, None
            for fused, ref, _ in cases[op]:
                try:
                    with ops.backend(_backend_setting(name)):
                        got = fused()
                    ok, err = _compare(got, ref(), name == "triton" and device_type == "cuda")
                except Exception as e:  # noqa: BLE001  (a crashing backend is a failed check, reported)
                    ok, err, error = False, float("nan"), f"{type(e).__name__}: {e}".splitlines()[0]
                bad += not ok
                worst = max(worst, err) if err == err else worst
            if device_type == "cuda":
                torch.cuda.synchronize()
            result = "pass" if not bad else f"FAIL ({bad} of {len(cases[op])})"
            detail = f"  worst error / tolerance {worst:.2f}" + (f"; {error}" if error else "")
            out(f"{op:<20} {name:<8} {len(cases[op]):>5}  {result}{detail}")
            failures += bool(bad)
    out("all passed" if not failures else f"{failures} op/backend pair(s) FAILED")
    return failures
