"""Gradients of the fused ops (``torch.library.register_autograd``), for the
compiled ops (torch.ops.diffaccel) and the Triton ones (torch.ops.diffaccel_triton).

The updates are linear in their tensor inputs, so their backward passes are
fused ops themselves: ``multistep_combine`` with the transposed coefficients
(``ei_step``: dL/dx = a gx + c_x g, dL/dm = c_m g, dL/dh_j = b_j gx,
dL/dz = s gx, with g = b_0 gx + gd the gradient of the data term). Clipping
passes the gradient where ``-max_value <= d <= max_value``, as
``torch.clamp``'s does. Where the forward depends on the data beyond that
(dynamic thresholding's quantile, ``langevin_correct``'s norms,
``error_norm``), the backward recomputes the reference twin under autograd,
so the gradient is exactly the one ``torch.quantile`` / ``torch.linalg``
would give. Gradients of the coefficient rows are reductions over the data.

The ``*_out`` forms write into caller buffers and are not differentiable: the
fronts refuse ``out=`` when an input requires grad (as torch's ``out=`` does).
"""

from __future__ import annotations

from typing import Optional

import torch

from diffaccel.ops import reference


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


def _vjp(fn, inputs, grads):
    """The reference twin's gradient: fn recomputed under autograd from detached inputs."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in inputs]
    with torch.enable_grad():
        outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    if not pairs:
        return [None for _ in leaves]
    found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return [next(found) if t is not None and t.requires_grad else None for t in leaves]


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
            g = g * ((pre >= -max_value) & (pre <= max_value)).to(g.dtype)
        else:
            (g,) = _vjp(lambda v: reference._threshold_compute(v, kind, ratio, max_value, style), [pre], [g])
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


def _combine_backward(ctx, grad):
    coeffs, *tensors = ctx.saved_tensors
    grads = [_like(_combine([(grad, coeffs[..., j])]), t) for j, t in enumerate(tensors)]
    grad_coeffs = None
    if ctx.needs_input_grad[1]:
        acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
        columns = [_per_sample_sum(grad.to(acc) * t.to(acc), coeffs) for t in tensors]
        grad_coeffs = torch.stack(columns, dim=-1).to(coeffs.dtype)
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
        return _like(grad * ((x >= -max_value) & (x <= max_value)).to(grad.dtype), x), None, None, None, None
    (grad_x,) = _vjp(
        lambda v: reference.threshold(v, kind=kind, ratio=ratio, max_value=max_value, style=style), [x], [grad]
    )
    return grad_x, None, None, None, None


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
    x, score, alpha, noise = ctx.saved_tensors
    snr, reduction = ctx.options

    def forward(x, score, alpha, noise):
        return reference.langevin_correct(x, score, snr, alpha=alpha, noise=noise, reduction=reduction)

    grad_x, grad_score, grad_alpha, grad_noise = _vjp(forward, [x, score, alpha, noise], [grad_new, grad_mean])
    return grad_x, grad_score, None, grad_alpha, grad_noise if ctx.has_noise else None, None, None


# --- error_norm ---------------------------------------------------------------


def _error_norm_setup(ctx, inputs, output):
    x_high, x_low, x_prev, atol, rtol = inputs
    ctx.tolerances = (atol, rtol)
    ctx.save_for_backward(x_high, x_low, x_prev)


def _error_norm_backward(ctx, grad):
    atol, rtol = ctx.tolerances

    def forward(high, low, prev):
        return reference.error_norm(high, low, prev, atol=atol, rtol=rtol)

    return (*_vjp(forward, list(ctx.saved_tensors), [grad]), None, None)


_FORMULAS = {
    "ei_step": (_ei_step_backward, _ei_step_setup),
    "multistep_combine": (_combine_backward, _combine_setup),
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
