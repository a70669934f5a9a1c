"""Benchmark cases shared by ``python -m diffaccel bench`` (the quick table of
``make demo``) and the pytest-benchmark suites in bench/: what each op is fed,
its reference, and how many bytes it must move, so GB/s means the same in both.

These ops are memory-bound: the floor of their time is the bytes they must
read and write over the machine's copy bandwidth, measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from diffaccel import ops

# Latent-sized float32 tensors: 64 KiB, 1 MiB and 1 MiB per tensor (these stay
# in the last-level cache, as they do between the steps of a sampling loop),
# and 16 MiB per tensor, beyond the cache.
SHAPES = {
    "small": (1, 4, 64, 64),
    "medium": (4, 4, 128, 128),
    "batch16": (16, 4, 64, 64),
    "large": (16, 16, 128, 128),
}


@dataclass(frozen=True)
class Case:
    """One op configuration. make(shape, dtype, device, generator) returns the
    positional args and kwargs that both fused and reference take."""

    name: str
    description: str
    fused: Callable
    reference: Callable
    make: Callable
    tensors_moved: int  # full tensors the op must read plus write, at the data dtype


def _randn(shape, dtype, device, g):
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def _make_ei_2m(shape, dtype, device, g):
    x, m, h = (_randn(shape, dtype, device, g) for _ in range(3))
    # A DPM-Solver++(2M) row: c_x=0, c_m=1 (sample prediction), one history d.
    coeffs = torch.tensor([0.0, 1.0, 0.9, 0.15, -0.05, 0.0], dtype=torch.float64, device=device)
    return (x, m, [h], coeffs), {}


def _make_ei_sde(shape, dtype, device, g):
    (x, m, hist, coeffs), _ = _make_ei_2m(shape, dtype, device, g)
    coeffs = coeffs.clone()
    coeffs[-1] = 0.3
    return (x, m, hist, coeffs), {"noise": _randn(shape, dtype, device, g)}


def _make_ei_dynamic(shape, dtype, device, g):
    args, _ = _make_ei_2m(shape, dtype, device, g)
    return args, {"threshold": ops.Threshold("dynamic", 0.995, 1.5)}


def _make_combine3(shape, dtype, device, g):
    tensors = [_randn(shape, dtype, device, g) for _ in range(3)]
    return (tensors, torch.tensor([1.5, -0.75, 0.25], dtype=torch.float64, device=device)), {}


def _make_threshold(shape, dtype, device, g):
    return (_randn(shape, dtype, device, g) * 2,), {"kind": "dynamic", "ratio": 0.995, "max_value": 1.5}


def _make_langevin(shape, dtype, device, g):
    x, score, z = (_randn(shape, dtype, device, g) for _ in range(3))
    return (x, score, 0.16), {"noise": z}


def _make_error_norm(shape, dtype, device, g):
    x_high, x_low, x_prev = (_randn(shape, dtype, device, g) for _ in range(3))
    return (x_high, x_low, x_prev), {"atol": 0.0078, "rtol": 0.05}


CASES: Dict[str, Case] = {
    c.name: c
    for c in (
        Case("ei_step_2m", "ei_step, DPM-Solver++(2M) row (1 history)", ops.ei_step, ops.reference.ei_step, _make_ei_2m, 5),
        Case("ei_step_sde", "ei_step, SDE row (1 history + noise)", ops.ei_step, ops.reference.ei_step, _make_ei_sde, 6),
        Case("ei_step_dynamic", "ei_step, 2M row + dynamic threshold", ops.ei_step, ops.reference.ei_step, _make_ei_dynamic, 5),
        Case("multistep_combine3", "multistep_combine, 3 tensors", ops.multistep_combine, ops.reference.multistep_combine, _make_combine3, 4),
        Case("threshold_dynamic", "threshold, dynamic (quantile 0.995)", ops.threshold, ops.reference.threshold, _make_threshold, 2),
        Case("langevin_correct", "langevin_correct (noise given)", ops.langevin_correct, ops.reference.langevin_correct, _make_langevin, 5),
        Case("error_norm", "error_norm (adaptive step control)", ops.error_norm, ops.reference.error_norm, _make_error_norm, 3),
    )
}


def bytes_moved(case: Case, shape: Tuple[int, ...], dtype: torch.dtype) -> int:
    numel = 1
    for s in shape:
        numel *= s
    return case.tensors_moved * numel * torch.empty((), dtype=dtype).element_size()


def quantile_threshold(x, *, kind="dynamic", ratio=0.995, max_value=1.0, style="diffusers"):
    """Dynamic thresholding written the way diffusers writes it (torch.quantile
    on the flattened |x|), the baseline the selection kernel is measured against."""
    flat = x.float().reshape(x.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x.shape).to(x.dtype)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device="cpu", min_time: float = 0.2, repeats: int = 5) -> float:
    """Median over `repeats` runs of the mean time of one call, each run lasting
    about min_time / repeats seconds (after a warm-up call)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def copy_bandwidth(shape, dtype=torch.float32, device="cpu") -> float:
    """Bytes per second of dst.copy_(src) at this size: read plus write."""
    src = torch.randn(shape).to(device=device, dtype=dtype)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds
