"""Fake (meta) kernels of the compiled ops and of the Triton ops under the
interpreter, so torch.compile(fullgraph=True) and torch.export trace them
without running them. Each runs the op's argument checks, then describes its
outputs (contiguous, like the kernels'). The schemas of torch.ops.diffaccel and
torch.ops.diffaccel_triton are the same, so one set serves both."""

from __future__ import annotations

import torch

from diffaccel.ops import validation


def _empty_like_contiguous(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)


def _ei_step(
    x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style
):
    validation.ei_step(x, model_out, history, coeffs, noise)
    return _empty_like_contiguous(x), _empty_like_contiguous(x)


def _ei_step_out(
    x,
    model_out,
    history,
    coeffs,
    noise,
    threshold_kind,
    threshold_ratio,
    threshold_max_value,
    threshold_style,
    x_next_out,
    d_out,
):
    validation.ei_step(x, model_out, history, coeffs, noise)
    validation.check_out_pair("diffaccel.ei_step", ("x_next", "d"), (x_next_out, d_out), x)


def _multistep_combine(tensors, coeffs):
    dtype = validation.multistep_combine(tensors, coeffs)
    return _empty_like_contiguous(tensors[0], dtype)


def _multistep_combine_out(tensors, coeffs, out):
    dtype = validation.multistep_combine(tensors, coeffs)
    validation.check_out("diffaccel.multistep_combine", "out", out, tensors[0], dtype=dtype)


def _multistep_combine_pair(tensors, coeffs):
    dtype = validation.multistep_combine_pair(tensors, coeffs)
    return _empty_like_contiguous(tensors[0], dtype), _empty_like_contiguous(tensors[0], dtype)


def _multistep_combine_pair_out(tensors, coeffs, y0_out, y1_out):
    dtype = validation.multistep_combine_pair(tensors, coeffs)
    validation.check_out_pair("diffaccel.multistep_combine_pair", ("y0", "y1"), (y0_out, y1_out), tensors[0], dtype)


def _threshold(x, kind, ratio, max_value, style):
    validation.threshold(x, kind, ratio, max_value, style)
    return _empty_like_contiguous(x)


def _threshold_out(x, kind, ratio, max_value, style, out):
    validation.threshold(x, kind, ratio, max_value, style)
    validation.check_out("diffaccel.threshold", "out", out, x)


def _langevin_correct(x, score, snr, alpha, noise, generator, reduction):
    validation.langevin_correct(x, score, snr, alpha, noise, reduction)
    return _empty_like_contiguous(x), _empty_like_contiguous(x)


def _langevin_correct_out(x, score, snr, alpha, noise, generator, reduction, x_new_out, x_mean_out):
    validation.langevin_correct(x, score, snr, alpha, noise, reduction)
    validation.check_out_pair("diffaccel.langevin_correct", ("x_new", "x_mean"), (x_new_out, x_mean_out), x)


def _error_norm(x_high, x_low, x_prev, atol, rtol):
    validation.error_norm(x_high, x_low, x_prev, atol, rtol)
    acc = torch.float64 if x_high.dtype == torch.float64 else torch.float32
    return torch.empty(x_high.shape[0], dtype=acc, device=x_high.device)


def _error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol):
    validation.error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol)
    return _empty_like_contiguous(x_high), _empty_like_contiguous(x_low), _empty_like_contiguous(x_prev)


def _threshold_backward(grad, x, scale):
    validation.threshold_backward(grad, x, scale)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return _empty_like_contiguous(x, acc), torch.empty(x.shape[0], dtype=acc, device=x.device)


FAKES = {
    "ei_step": _ei_step,
    "ei_step_out": _ei_step_out,
    "multistep_combine": _multistep_combine,
    "multistep_combine_out": _multistep_combine_out,
    "multistep_combine_pair": _multistep_combine_pair,
    "multistep_combine_pair_out": _multistep_combine_pair_out,
    "threshold": _threshold,
    "threshold_out": _threshold_out,
    "langevin_correct": _langevin_correct,
    "langevin_correct_out": _langevin_correct_out,
    "error_norm": _error_norm,
    "error_norm_backward": _error_norm_backward,
    "threshold_backward": _threshold_backward,
}


def register_compiled() -> None:
    """Registers the fakes of torch.ops.diffaccel.* (the C++ ops)."""
    for name, fn in FAKES.items():
        torch.library.register_fake(f"diffaccel::{name}", fn)


def register(op, name: str) -> None:
    """Registers the fake of a torch.library.custom_op defined with the same schema."""
    op.register_fake(FAKES[name])
