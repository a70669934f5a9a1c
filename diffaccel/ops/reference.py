"""Pure-PyTorch twins of every diffaccel op: the oracle of every test, and the
backend used where no compiled kernel exists.

Each function has the same signature and semantics as its fused counterpart in
:mod:`diffaccel.ops`, written the plain way: one PyTorch op per term, math in
float32 for 16/32-bit inputs and in float64 for float64 inputs, in the same
order as the per-element math of csrc/include/diffaccel/elementwise.h.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

# Up to this many elements per sample the quantile rank is computed as
# torch.quantile computes it (ratio rounded to the compute dtype, times n - 1,
# in that dtype); beyond it, where torch.quantile refuses, in double.
TORCH_QUANTILE_MAX_SIZE = 1 << 24


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [B] or [1] vector shaped to broadcast over a [B, ...] tensor."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


def _coeff_column(coeffs: torch.Tensor, j: int, like: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    rows = coeffs.to(acc)
    rows = rows.unsqueeze(0) if rows.dim() == 1 else rows
    return _per_sample(rows[:, j], like)


def quantile_rank(n: int, ratio: float, dtype: torch.dtype) -> Tuple[int, int, torch.Tensor]:
    """(below, above, weight): the positions of the two order statistics the
    ratio-quantile of n values interpolates between, and the weight of the
    upper one (a 0-d tensor of dtype), as torch.quantile computes them."""
    if n <= TORCH_QUANTILE_MAX_SIZE:
        rank = torch.scalar_tensor(ratio, dtype=dtype) * (n - 1)
        below = int(rank)
        weight = rank - below
        above = math.ceil(rank.item())
    else:
        rank = ratio * (n - 1)
        below = int(rank)
        weight = torch.scalar_tensor(rank - below, dtype=dtype)
        above = math.ceil(rank)
    return below, min(above, n - 1), weight


def last_nan_positions(magnitudes: torch.Tensor) -> torch.Tensor:
    """Per row of magnitudes ([B, n]), the position of its last NaN (n - 1 where
    it holds none): the element a row's quantile is taken from when it holds NaN."""
    return magnitudes.shape[1] - 1 - magnitudes.isnan().flip(1).to(torch.uint8).argmax(dim=1)


def quantile_of_magnitudes(flat: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-row linear-interpolation quantile of |flat| ([B, n], compute dtype),
    with torch.quantile's semantics (a row holding NaN gives NaN) at any n."""
    batch, n = flat.shape
    if n == 0:
        return torch.full((batch,), float("nan"), dtype=flat.dtype, device=flat.device)
    magnitudes = flat.abs()
    values = magnitudes.sort(dim=1).values
    below, above, weight = quantile_rank(n, ratio, flat.dtype)
    # A row holding NaN gives its last NaN (as a stable sort that puts NaN last
    # would, and so autograd sends that element the gradient), looked for rather
    # than read off the sort's end: on the H200 (2026-12-04) a float64 row whose
    # NaN came from 0 * -inf did not sort it last, and got a finite quantile.
    has_nan = magnitudes.isnan().any(dim=1)
    last_nan = magnitudes.gather(1, last_nan_positions(magnitudes)[:, None])[:, 0]
    lo = torch.where(has_nan, last_nan, values[:, below])
    hi = torch.where(has_nan, last_nan, values[:, above])
    return torch.lerp(lo, hi, weight.to(flat.device))


def dynamic_threshold_scale(q: torch.Tensor, max_value: float, style: str) -> torch.Tensor:
    """The scale s of clamp(v, -s, s) / s from the quantile q, per style."""
    if style == "diffusers":
        return torch.clamp(q, min=1.0, max=max_value)
    return torch.maximum(q, torch.full_like(q, max_value))


def _threshold_compute(v: torch.Tensor, kind: str, ratio: float, max_value: float, style: str) -> torch.Tensor:
    """Thresholds v, already in the compute dtype."""
    if kind == "clip":
        return torch.clamp(v, -max_value, max_value)
    q = quantile_of_magnitudes(v.reshape(v.shape[0], math.prod(v.shape[1:])), ratio)
    s = _per_sample(dynamic_threshold_scale(q, max_value, style), v)
    return torch.clamp(v, -s, s) / s


def _write(out, results):
    for buffer, value in zip(out, results):
        buffer.copy_(value)
    return tuple(out)


def ei_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    history: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    *,
    threshold=None,
    noise: Optional[torch.Tensor] = None,
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`diffaccel.ops.ei_step`."""
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    col = lambda j: _coeff_column(coeffs, j, x, acc)  # noqa: E731
    d = col(0) * xa + col(1) * model_out.to(acc)
    if threshold is not None:
        d = _threshold_compute(d, threshold.kind, threshold.ratio, threshold.max_value, threshold.style)
    y = col(2) * xa + col(3) * d
    for j, h in enumerate(history):
        y = y + col(4 + j) * h.to(acc)
    if noise is not None:
        y = y + col(4 + len(history)) * noise.to(acc)
    results = (y.to(x.dtype), d.to(x.dtype))
    return results if out is None else _write(out, results)


def multistep_combine(
    tensors: Sequence[torch.Tensor], coeffs: torch.Tensor, *, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Reference of :func:`diffaccel.ops.multistep_combine`."""
    result_dtype = tensors[0].dtype
    for t in tensors:
        result_dtype = torch.promote_types(result_dtype, t.dtype)
    acc = compute_dtype(result_dtype)
    y = _coeff_column(coeffs, 0, tensors[0], acc) * tensors[0].to(acc)
    for j in range(1, len(tensors)):
        y = y + _coeff_column(coeffs, j, tensors[0], acc) * tensors[j].to(acc)
    y = y.to(result_dtype)
    return y if out is None else _write((out,), (y,))[0]


def multistep_combine_pair(
    tensors: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    *,
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`diffaccel.ops.multistep_combine_pair`: two
    multistep_combine of the same tensors, with rows coeffs[..., 0, :] and
    coeffs[..., 1, :]."""
    results = tuple(multistep_combine(tensors, coeffs[..., m, :]) for m in range(2))
    return results if out is None else _write(out, results)


def threshold(
    x: torch.Tensor,
    *,
    kind: str = "dynamic",
    ratio: float = 0.995,
    max_value: float = 1.0,
    style: str = "diffusers",
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference of :func:`diffaccel.ops.threshold`."""
    y = _threshold_compute(x.to(compute_dtype(x.dtype)), kind, ratio, max_value, style).to(x.dtype)
    return y if out is None else _write((out,), (y,))[0]


def _sample_norms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], math.prod(t.shape[1:])).to(torch.float64), dim=1)


def langevin_correct(
    x: torch.Tensor,
    score: torch.Tensor,
    snr: float,
    *,
    alpha: Union[float, torch.Tensor] = 1.0,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`diffaccel.ops.langevin_correct`."""
    z = noise if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    grad_norm = _sample_norms(score)
    noise_norm = _sample_norms(z)
    if reduction == "batch":
        grad_norm = grad_norm.mean().expand(batch)
        noise_norm = noise_norm.mean().expand(batch)
    alpha_b = torch.as_tensor(alpha, dtype=torch.float64, device=x.device).expand(batch)
    r = snr * noise_norm / grad_norm
    step = 2.0 * alpha_b * r * r
    noise_scale = torch.sqrt(2.0 * step)
    acc = compute_dtype(x.dtype)
    step = _per_sample(step.to(acc), x)
    noise_scale = _per_sample(noise_scale.to(acc), x)
    x_mean = x.to(acc) + step * score.to(acc)
    x_new = x_mean + noise_scale * z.to(acc)
    results = (x_new.to(x.dtype), x_mean.to(x.dtype))
    return results if out is None else _write(out, results)


def _error_tolerance(low: torch.Tensor, prev: torch.Tensor, atol: float, rtol: float):
    """(|low|, |prev|, scaled, delta): error_norm's tolerance, delta =
    clamp(scaled, min=atol) with scaled = rtol * max(|low|, |prev|)."""
    a, b = low.abs(), prev.abs()
    scaled = rtol * torch.maximum(a, b)
    return a, b, scaled, torch.clamp(scaled, min=atol)


def error_norm(
    x_high: torch.Tensor, x_low: torch.Tensor, x_prev: torch.Tensor, *, atol: float, rtol: float
) -> torch.Tensor:
    """Reference of :func:`diffaccel.ops.error_norm`."""
    acc = compute_dtype(x_high.dtype)
    low = x_low.to(acc)
    delta = _error_tolerance(low, x_prev.to(acc), atol, rtol)[3]
    e = ((x_high.to(acc) - low) / delta).reshape(x_high.shape[0], math.prod(x_high.shape[1:]))
    return e.to(torch.float64).pow(2).mean(dim=1).sqrt().to(acc)


def error_norm_backward(
    grad: torch.Tensor,
    error: torch.Tensor,
    x_high: torch.Tensor,
    x_low: torch.Tensor,
    x_prev: torch.Tensor,
    atol: float,
    rtol: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of the op ``error_norm_backward`` (its schema's arguments): the gradients of
    :func:`error_norm`'s three inputs from ``grad`` (dL/dE, [B]) and the
    forward's ``error`` (E, [B]), written out as autograd through
    :func:`error_norm` computes them, term for term as
    csrc/include/diffaccel/elementwise.h's scaled_error_backward:
    dL/de = k e with k = grad / (N E); dL/dhigh = k e / delta; dL/ddelta =
    -(dL/dhigh) e through torch.clamp's mask at atol, torch.maximum's
    backward (all to the larger, half each at a tie, all to both beside a
    NaN, 0 to the smaller) and abs's sign."""
    acc = compute_dtype(x_high.dtype)
    h, lo, p = x_high.to(acc), x_low.to(acc), x_prev.to(acc)
    count = math.prod(x_high.shape[1:])
    k = _per_sample((grad.to(torch.float64) / (count * error.to(torch.float64))).to(acc), h)
    a, b, scaled, delta = _error_tolerance(lo, p, atol, rtol)
    e = (h - lo) / delta
    grad_high = k * e / delta
    zero = torch.zeros((), dtype=acc, device=h.device)
    through = torch.where(scaled >= atol, grad_high * e * -rtol, zero)
    shared = torch.where(a == b, through / 2, through)
    to_low = torch.where(a < b, zero, shared) * torch.sgn(lo)
    to_prev = torch.where(b < a, zero, shared) * torch.sgn(p)
    return grad_high.to(x_high.dtype), (to_low - grad_high).to(x_low.dtype), to_prev.to(x_prev.dtype)


def threshold_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of the op ``threshold_backward``: dynamic thresholding's
    gradient through ``clamp(x, -s, s) / s`` with the per-sample scale ``s``
    ([B]) held fixed, and what the scale's own gradient needs, as
    csrc/include/diffaccel/elementwise.h's threshold_backward_element:
    ``passed = grad / s`` where ``|x| <= s`` (torch.clamp passes the bounds),
    0 elsewhere (a NaN x or s passes nothing); ``dot[b] = sum(passed * x)``
    over those elements (in float64). dL/ds is then ``-dot / s``. Both in the
    compute dtype."""
    acc = compute_dtype(x.dtype)
    v, g = x.to(acc), grad.to(acc)
    s = _per_sample(scale.to(acc), v)
    inside = v.abs() <= s
    zero = torch.zeros((), dtype=acc, device=x.device)
    passed = torch.where(inside, g / s, zero)
    flat = (x.shape[0], math.prod(x.shape[1:]))
    kept = torch.where(inside, v, zero)
    dot = (passed.reshape(flat).double() * kept.reshape(flat).double()).sum(dim=1)
    return passed, dot.to(acc)
