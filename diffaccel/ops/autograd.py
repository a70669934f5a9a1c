"""Gradients of the fused ops (``torch.library.register_autograd``), for the
compiled ops (torch.ops.diffaccel) and the Triton ones (torch.ops.diffaccel_triton).

Every backward pass is closed-form: nothing recomputes the forward under
autograd. The updates are linear in their tensor inputs, so their backward
passes are fused ops themselves: ``multistep_combine`` with the transposed
coefficients (``multistep_combine_pair``: dL/dt_j = c_0j g_0 + c_1j g_1;
``ei_step``: dL/dx = a gx + c_x g, dL/dm = c_m g, dL/dh_j = b_j gx, dL/dz = s
gx, with g = b_0 gx + gd the gradient of the data term).
Where the forward depends on the data through per-sample numbers (dynamic
thresholding's quantile, ``langevin_correct``'s norms, ``error_norm``'s RMS),
those numbers' gradients are per-sample sums, and the input gradients
elementwise terms with per-sample factors (``multistep_combine`` where they are
linear, an op of their own where they are not):

- clipping passes the gradient where ``-max_value <= d <= max_value``, as
  ``torch.clamp``'s does;
- dynamic thresholding ``y = clamp(v, -s, s) / s``: dL/dv = g / s where
  ``|v| <= s``, and dL/ds = -<that, v> / s (both in one pass: the op
  ``threshold_backward``, a kernel on every backend; its reference twin is
  ``reference.threshold_backward``) flows through the style's bound
  (``torch.clamp`` / ``torch.maximum``'s masks) and ``torch.lerp`` to the two
  order statistics of ``|v|`` the quantile interpolates (found by ``torch.topk``,
  not a sort; at ties the gradient goes to the element topk picks, where
  ``torch.quantile``'s goes to the one its stable sort puts there);
- ``langevin_correct``: the step and noise scale's gradients are <g, score>
  and <g_new, z>; through the norms they add multiples of score and z;
- ``error_norm``: k = grad / (N E) per sample, then the three inputs'
  gradients with the masks of ``torch.maximum`` (ties split in half) and
  ``torch.clamp``, in one pass: the op ``error_norm_backward`` (a kernel on
  every backend; its reference twin is ``reference.error_norm_backward``).

Each matches the reference's autograd (``tests/test_autograd.py``), including
its NaN pattern. Gradients of the coefficient rows are reductions over the data.

The ``*_out`` forms write into caller buffers and are not differentiable: the
fronts refuse ``out=`` when an input requires grad (as torch's ``out=`` does).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from diffaccel.ops import reference, validation


def _combine(pairs) -> Optional[torch.Tensor]:
    """sum_j c_j * t_j over (tensor, coefficient column) pairs whose tensor is not
    None, in one fused pass; None when there is nothing to add."""
    from diffaccel import ops

    pairs = [(t, c) for t, c in pairs if t is not None]
    if not pairs:
        return None
    tensors = [t for t, _ in pairs]
    return ops.multistep_combine(tensors, torch.stack([c for _, c in pairs], dim=-1))  # [n] or [B, n]


def _like(grad: Optional[torch.Tensor], tensor: torch.Tensor) -> Optional[torch.Tensor]:
    if grad is None:
        return None
    return grad.to(tensor.dtype) if grad.dtype != tensor.dtype else grad


def _per_sample_sum(product: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """The gradient of one coefficient column: the sum of grad * tensor, per
    sample for a [B, n] table, over everything for an [n] one."""
    flat = product.reshape(product.shape[0], -1).sum(dim=1)
    return flat if coeffs.dim() == 2 else flat.sum()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_b, b_b> per sample, [B], in the dtype of a * b."""
    return torch.linalg.vecdot(_flat(a), _flat(b), dim=1)


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample [B] vector shaped to broadcast over like ([B, ...])."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


# --- ei_step ------------------------------------------------------------------


def _ei_step_setup(ctx, inputs, output):
    x, model_out, history, coeffs, noise, kind, ratio, max_value, style = inputs
    ctx.threshold = (kind, ratio, max_value, style)
    ctx.history_count = len(history)
    ctx.has_noise = noise is not None
    ctx.save_for_backward(x, model_out, coeffs, noise, output[1], *history)


def _ei_step_backward(ctx, grad_x_next, grad_d):
    x, model_out, coeffs, noise, d, *history = ctx.saved_tensors
    kind, ratio, max_value, style = ctx.threshold
    k = ctx.history_count
    col = lambda j: coeffs[..., j]  # noqa: E731
    c_x, c_m, a, b0, s = col(0), col(1), col(2), col(3), col(4 + k)
    # The gradient of the data term before thresholding.
    g = _combine([(grad_x_next, b0), (grad_d, torch.ones_like(b0))])
    if g is not None and kind is not None:
        acc = reference.compute_dtype(x.dtype)
        pre = _combine([(x.to(acc), c_x.to(acc)), (model_out.to(acc), c_m.to(acc))])
        if kind == "clip":
            g = _clip_backward(g, pre, max_value)
        else:
            g = _dynamic_threshold_backward(g, pre, ratio, max_value, style)
    grad_x = _combine([(grad_x_next, a), (g, c_x)])
    grad_m = _combine([(g, c_m)])
    grad_h = [_like(_combine([(grad_x_next, col(3 + j))]), h) for j, h in enumerate(history, start=1)]
    grad_noise = _like(_combine([(grad_x_next, s)]), noise) if ctx.has_noise else None
    grad_coeffs = None
    if ctx.needs_input_grad[3]:
        acc = reference.compute_dtype(x.dtype)
        zero = torch.zeros((), dtype=acc, device=x.device)
        total = lambda grad, t: (  # noqa: E731
            _per_sample_sum(grad.to(acc) * t.to(acc), coeffs) if grad is not None else zero.expand(b0.shape)
        )
        columns = [total(g, x), total(g, model_out), total(grad_x_next, x), total(grad_x_next, d)]
        columns += [total(grad_x_next, h) for h in history]
        columns.append(total(grad_x_next, noise) if ctx.has_noise else zero.expand(b0.shape))
        grad_coeffs = torch.stack(columns, dim=-1).to(coeffs.dtype)
    return _like(grad_x, x), _like(grad_m, model_out), grad_h, grad_coeffs, grad_noise, None, None, None, None


# --- multistep_combine ----------------------------------------------------------


def _combine_setup(ctx, inputs, output):
    tensors, coeffs = inputs
    ctx.count = len(tensors)
    ctx.save_for_backward(coeffs, *tensors)


def _row_grad(grad: Optional[torch.Tensor], tensors, row: torch.Tensor) -> torch.Tensor:
    """The gradient of a coefficient row ([n], or [B, n] per sample) of a sum
    whose gradient is grad: per column, the sum of grad * tensor."""
    if grad is None:
        return torch.zeros_like(row)
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return torch.stack([_per_sample_sum(grad.to(acc) * t.to(acc), row) for t in tensors], dim=-1).to(row.dtype)


def _combine_backward(ctx, grad):
    coeffs, *tensors = ctx.saved_tensors
    grads = [_like(_combine([(grad, coeffs[..., j])]), t) for j, t in enumerate(tensors)]
    grad_coeffs = _row_grad(grad, tensors, coeffs) if ctx.needs_input_grad[1] else None
    return grads, grad_coeffs


# --- multistep_combine_pair ------------------------------------------------------


def _combine_pair_backward(ctx, grad_y0, grad_y1):
    coeffs, *tensors = ctx.saved_tensors
    grads = [
        _like(_combine([(grad_y0, coeffs[..., 0, j]), (grad_y1, coeffs[..., 1, j])]), t) for j, t in enumerate(tensors)
    ]
    grad_coeffs = None
    if ctx.needs_input_grad[1]:
        rows = [_row_grad(g, tensors, coeffs[..., m, :]) for m, g in enumerate((grad_y0, grad_y1))]
        grad_coeffs = torch.stack(rows, dim=-2)
    return grads, grad_coeffs


# --- threshold ----------------------------------------------------------------


def _threshold_setup(ctx, inputs, output):
    x, kind, ratio, max_value, style = inputs
    ctx.options = (kind, ratio, max_value, style)
    ctx.save_for_backward(x)


def _threshold_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    kind, ratio, max_value, style = ctx.options
    if kind == "clip":
        return _like(_clip_backward(grad, x, max_value), x), None, None, None, None
    acc = reference.compute_dtype(x.dtype)
    grad_x = _dynamic_threshold_backward(grad, x.to(acc), ratio, max_value, style)
    return _like(grad_x, x), None, None, None, None


def _clip_backward(grad: torch.Tensor, v: torch.Tensor, max_value: float) -> torch.Tensor:
    """torch.clamp(v, -max_value, max_value)'s gradient: grad where v is in the range (bounds included)."""
    return grad * ((v >= -max_value) & (v <= max_value)).to(grad.dtype)


def _order_statistics(magnitudes: torch.Tensor, below: int, above: int):
    """Per row of magnitudes ([B, n]): the values and positions of the
    below-th and above-th smallest entries (above is below or below + 1), by
    torch.topk on the shorter side of the rank, and whether the row holds a
    NaN (looked for, not inferred from where the sort put it: see
    reference.quantile_of_magnitudes)."""
    n = magnitudes.shape[1]
    span = above - below + 1
    if n - below <= above + 1:  # the upper tail is the shorter: the n - below largest
        values, positions = torch.topk(magnitudes, n - below, dim=1, largest=True, sorted=False)
        ends = torch.topk(values, span, dim=1, largest=False, sorted=True)
        lo, hi = 0, span - 1
    else:  # the above + 1 smallest
        values, positions = torch.topk(magnitudes, above + 1, dim=1, largest=False, sorted=False)
        ends = torch.topk(values, span, dim=1, largest=True, sorted=True)
        lo, hi = span - 1, 0
    has_nan = magnitudes.isnan().any(dim=1)
    where = positions.gather(1, ends.indices)
    return ends.values[:, lo], where[:, lo], ends.values[:, hi], where[:, hi], has_nan


def _dynamic_threshold_backward(grad, v, ratio: float, max_value: float, style: str) -> torch.Tensor:
    """The gradient of y = clamp(v, -s, s) / s (dynamic thresholding, s from
    the ratio-quantile of |v_b|) with respect to v, from grad = dL/dy ([B, ...];
    v in the compute dtype), in the compute dtype. The same chain as the
    reference's autograd (quantile via sort and torch.lerp, the style's bound,
    clamp, the division), in closed form: dL/dv = g / s on |v| <= s (clamp
    passes it), 0 beyond, and dL/ds = -<that, v> / s (one pass: the op
    threshold_backward), plus dL/dq times lerp's weights at the two order
    statistics of |v| (times their signs)."""
    flat_v = _flat(v)
    n = flat_v.shape[1]
    if n == 0:
        return torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    magnitudes = flat_v.abs()
    below, above, weight = reference.quantile_rank(n, ratio, v.dtype)
    weight = weight.to(v.device)
    lo, lo_at, hi, hi_at, has_nan = _order_statistics(magnitudes, below, above)
    q = torch.where(has_nan, torch.full_like(lo, float("nan")), torch.lerp(lo, hi, weight))
    s = reference.dynamic_threshold_scale(q, max_value, style)
    # dL/dv through clamp(v, -s, s) / s with s fixed, and dL/ds: -sum g v / s^2
    # over the passed elements (the clamped ones' two terms cancel).
    passed, dot = threshold_backward(grad, v, s)
    grad_s = -dot / s
    if style == "diffusers":  # torch.clamp(q, 1, max_value): passes where 1 <= q <= max_value
        grad_q = torch.where((q >= 1.0) & (q <= max_value), grad_s, torch.zeros_like(grad_s))
    else:  # torch.maximum(q, max_value): all of it to the larger, half each at a tie
        grad_q = torch.where(q == max_value, grad_s / 2, grad_s).masked_fill(q < max_value, 0.0)
    # torch.lerp(lo, hi, w): (1 - w) to lo, w to hi; a row holding NaN sends both to
    # its last NaN (the quantile's where picks the last sorted value, and the stable
    # sort keeps NaNs in order). (With diffusers' bound such a row's grad_q is 0.)
    if style != "diffusers":
        last_nan = reference.last_nan_positions(magnitudes)
        lo_at = torch.where(has_nan, last_nan, lo_at)
        hi_at = torch.where(has_nan, last_nan, hi_at)
    at = torch.stack([lo_at, hi_at], dim=1)
    ends = torch.stack([grad_q * (1 - weight), grad_q * weight], dim=1) * torch.sgn(flat_v.gather(1, at))
    _flat(passed).scatter_add_(1, at, ends)
    return passed


def threshold_backward(grad, x, scale):
    """(passed, dot): dynamic thresholding's gradient through clamp(x, -s, s)
    / s with the scales s ([B]) held fixed, and per sample <passed, x> over
    the passed elements: the op threshold_backward."""
    return _backward_op("threshold_backward", "threshold", x)(grad, x, scale)


def _backward_op(name: str, forward: str, x: torch.Tensor):
    """The op `name` (called with its schema's arguments) of the backend that
    runs the op `forward` on x's device: the compiled or the Triton op, or on
    the reference backend the reference twin after the argument checks."""
    from diffaccel.ops import backends  # (not at import: backends imports the Triton backend, which imports this)

    impl = backends.resolve(forward, x.device.type)
    if impl == "reference":
        check, twin = getattr(validation, name), getattr(reference, name)

        def checked(*args):
            check(*args)
            return twin(*args)

        return checked
    return getattr(torch.ops.diffaccel_triton if impl == "triton" else torch.ops.diffaccel, name)


# --- langevin_correct ---------------------------------------------------------


def _langevin_setup(ctx, inputs, output):
    x, score, snr, alpha, noise, _generator, reduction = inputs
    ctx.options = (snr, reduction)
    ctx.has_noise = noise is not None
    if noise is None:
        # The op drew z itself: x_new - x_mean = sqrt(2 step) z, and sqrt(2 step)
        # follows from the norms (step = 2 alpha (snr n / g)^2 with n = ||z||, so
        # ||x_new - x_mean|| = sqrt(2 step) n solves to step = snr sqrt(alpha) ||w|| / g).
        noise = _noise_of(output[0] - output[1], score, snr, alpha, reduction)
    ctx.save_for_backward(x, score, alpha, noise)


def _norms(t: torch.Tensor, reduction: str) -> torch.Tensor:
    acc = reference.compute_dtype(t.dtype)
    norms = torch.linalg.vector_norm(t.reshape(t.shape[0], -1).to(acc), dim=1)
    return norms.mean().expand(t.shape[0]) if reduction == "batch" else norms


def _noise_of(w, score, snr, alpha, reduction) -> torch.Tensor:
    acc = reference.compute_dtype(w.dtype)
    g = _norms(score, reduction)
    alpha = alpha.to(device=w.device, dtype=acc)
    step = snr * torch.sqrt(alpha) * _norms(w, reduction) / g
    scale = torch.sqrt(2 * step).reshape(-1, *([1] * (w.dim() - 1)))
    return (w.to(acc) / scale).to(w.dtype)


def _langevin_backward(ctx, grad_new, grad_mean):
    """x_mean = x + step * score, x_new = x_mean + scale * z, with step =
    2 alpha r^2, scale = sqrt(2 step), r = snr n / g (g, n: the norms of score
    and z, or their batch means). The gradient of x_mean is gm = grad_new +
    grad_mean; dL/dstep = <gm, score> + <grad_new, z> / scale per sample, and
    through r and the norms (d||t||/dt = t / ||t||, as torch.linalg.vector_norm's)
    dL/dscore = step gm + c_g score and dL/dz = scale grad_new + c_n z: one
    multistep_combine each."""
    x, score, alpha, noise = ctx.saved_tensors
    snr, reduction = ctx.options
    batch = x.shape[0]
    f64 = torch.float64
    if grad_new is None or grad_mean is None:
        grad_state = grad_mean if grad_new is None else grad_new
    else:
        one = torch.ones((), dtype=f64, device=x.device)
        grad_state = _combine([(grad_new, one), (grad_mean, one)])
    score_norms = torch.linalg.vector_norm(_flat(score), dim=1).to(f64)
    noise_norms = torch.linalg.vector_norm(_flat(noise), dim=1).to(f64)
    g, n = score_norms, noise_norms
    if reduction == "batch":
        g, n = g.mean().expand(batch), n.mean().expand(batch)
    alpha_b = alpha.to(f64).expand(batch)
    r = snr * n / g
    step = 2.0 * alpha_b * r * r
    scale = torch.sqrt(2.0 * step)
    grad_step = _dot(grad_state, score).to(f64)
    if grad_new is not None:
        grad_step = grad_step + _dot(grad_new, noise).to(f64) / scale
    grad_r = grad_step * 4.0 * alpha_b * r
    grad_n = grad_r * snr / g
    grad_g = -grad_r * snr * n / (g * g)
    if reduction == "batch":  # mean().expand(): each sample gets the sum over the batch / B
        grad_g, grad_n = (grad_g.sum() / batch).expand(batch), (grad_n.sum() / batch).expand(batch)
    # vector_norm's backward divides by the norm taken as inf where it is 0
    # (0 for a finite gradient, NaN for a non-finite one).
    c_g = grad_g / score_norms.masked_fill(score_norms == 0, math.inf)
    c_n = grad_n / noise_norms.masked_fill(noise_norms == 0, math.inf)
    grad_score = _combine([(grad_state, step), (score, c_g)])
    grad_noise = _combine([(grad_new, scale), (noise, c_n)]) if ctx.has_noise else None
    grad_alpha = None
    if ctx.needs_input_grad[3]:
        grad_alpha = grad_step * 2.0 * r * r
        grad_alpha = (grad_alpha.sum() if alpha.dim() == 0 else grad_alpha).to(alpha.dtype)
    return (_like(grad_state, x), _like(grad_score, score), None, grad_alpha, _like(grad_noise, noise), None, None)


# --- error_norm ---------------------------------------------------------------


def _error_norm_setup(ctx, inputs, output):
    x_high, x_low, x_prev, atol, rtol = inputs
    ctx.tolerances = (atol, rtol)
    ctx.save_for_backward(x_high, x_low, x_prev, output)


def _error_norm_backward(ctx, grad):
    high, low, prev, error = ctx.saved_tensors
    atol, rtol = ctx.tolerances
    return (*error_norm_backward(grad, error, high, low, prev, atol=atol, rtol=rtol), None, None)


def error_norm_backward(grad, error, x_high, x_low, x_prev, *, atol: float, rtol: float):
    """The gradients (x_high, x_low, x_prev) of error_norm from grad = dL/dE
    and the forward's E: the op error_norm_backward."""
    return _backward_op("error_norm_backward", "error_norm", x_high)(grad, error, x_high, x_low, x_prev, atol, rtol)


_FORMULAS = {
    "ei_step": (_ei_step_backward, _ei_step_setup),
    "multistep_combine": (_combine_backward, _combine_setup),
    "multistep_combine_pair": (_combine_pair_backward, _combine_setup),
    "threshold": (_threshold_backward, _threshold_setup),
    "langevin_correct": (_langevin_backward, _langevin_setup),
    "error_norm": (_error_norm_backward, _error_norm_setup),
}


def register(namespace: str) -> None:
    """Registers the gradients of every functional op of ``namespace``
    ("diffaccel" or "diffaccel_triton")."""
    for name, (backward, setup) in _FORMULAS.items():
        torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)


def records(tensors) -> bool:
    """Whether autograd would record an op on these tensors (grad mode on and
    one of them requires grad; None among them is skipped). Called for every
    op call: a plain loop, which costs less than any() of a generator."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def check_out_allowed(op: str, out, inputs) -> None:
    """out= writes into caller buffers, which autograd cannot record: refused,
    naming the op, when grad mode is on and an input requires grad."""
    if out is None or not torch.is_grad_enabled():  # (the drop-ins' out= calls, under no_grad: nothing to do)
        return
    if records([t for t in inputs if isinstance(t, torch.Tensor)]):
        raise RuntimeError(
            f"diffaccel.{op}: out= writes into given buffers and does not support automatic differentiation; "
            "an input requires grad: call it without out= (or under torch.no_grad())"
        )
