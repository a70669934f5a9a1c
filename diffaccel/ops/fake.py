"""Fake (meta) kernels of the compiled ops, so torch.compile(fullgraph=True)
and torch.export trace them without running them. Each runs the op's
argument checks, then describes its outputs (contiguous, like the kernels')."""

from __future__ import annotations

import torch

from diffaccel.ops import validation


def _empty_like_contiguous(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)


@torch.library.register_fake("diffaccel::ei_step")
def _ei_step(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style):
    validation.ei_step(x, model_out, history, coeffs, noise)
    return _empty_like_contiguous(x), _empty_like_contiguous(x)


@torch.library.register_fake("diffaccel::ei_step_out")
def _ei_step_out(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style, x_next_out, d_out):
    validation.ei_step(x, model_out, history, coeffs, noise)
    validation.check_out_pair("diffaccel.ei_step", ("x_next", "d"), (x_next_out, d_out), x)


@torch.library.register_fake("diffaccel::multistep_combine")
def _multistep_combine(tensors, coeffs):
    dtype = validation.multistep_combine(tensors, coeffs)
    return _empty_like_contiguous(tensors[0], dtype)


@torch.library.register_fake("diffaccel::multistep_combine_out")
def _multistep_combine_out(tensors, coeffs, out):
    dtype = validation.multistep_combine(tensors, coeffs)
    validation.check_out("diffaccel.multistep_combine", "out", out, tensors[0], dtype=dtype)


@torch.library.register_fake("diffaccel::threshold")
def _threshold(x, kind, ratio, max_value, style):
    validation.threshold(x, kind, ratio, max_value, style)
    return _empty_like_contiguous(x)


@torch.library.register_fake("diffaccel::threshold_out")
def _threshold_out(x, kind, ratio, max_value, style, out):
    validation.threshold(x, kind, ratio, max_value, style)
    validation.check_out("diffaccel.threshold", "out", out, x)


@torch.library.register_fake("diffaccel::langevin_correct")
def _langevin_correct(x, score, snr, alpha, noise, generator, reduction):
    validation.langevin_correct(x, score, snr, alpha, noise, reduction)
    return _empty_like_contiguous(x), _empty_like_contiguous(x)


@torch.library.register_fake("diffaccel::langevin_correct_out")
def _langevin_correct_out(x, score, snr, alpha, noise, generator, reduction, x_new_out, x_mean_out):
    validation.langevin_correct(x, score, snr, alpha, noise, reduction)
    validation.check_out_pair("diffaccel.langevin_correct", ("x_new", "x_mean"), (x_new_out, x_mean_out), x)
