"""The Triton backend of the diffaccel ops (torch.ops.diffaccel_triton.*).

On CUDA the ops are registered with ``torch.library.triton_op`` and launch
their kernels through ``wrap_triton``, so torch.compile sees into them. Under
``TRITON_INTERPRET=1`` (the CPU machines, for tests) ``triton_op`` cannot be
traced or opchecked, so the same functions are registered with
``torch.library.custom_op`` for CPU tensors instead (DESIGN.md).

The schemas are those of torch.ops.diffaccel.* (csrc/torch/registration.cpp),
and the argument checks those of diffaccel.ops.validation. Tensors are made
contiguous before the kernels; a non-contiguous output is written through a
contiguous buffer and copied back.
"""

from __future__ import annotations

import importlib.util
import os
from typing import List, Optional, Tuple

import torch

from diffaccel.ops import validation

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable_reason() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not INTERPRET and not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly, for tests)"
    return None


unavailable_reason = _unavailable_reason()

# The device type the Triton ops take: CPU tensors under the interpreter, else CUDA.
DEVICE_TYPE = "cpu" if INTERPRET else "cuda"


def available(device_type: str) -> bool:
    return unavailable_reason is None and device_type == DEVICE_TYPE


if unavailable_reason is None:
    from diffaccel.ops.triton import launch

    Tensor = torch.Tensor
    # What each _out op writes.
    _MUTATES = {
        "ei_step_out": ("x_next_out", "d_out"),
        "multistep_combine_out": ("out",),
        "multistep_combine_pair_out": ("y0_out", "y1_out"),
        "threshold_out": ("out",),
        "langevin_correct_out": ("x_new_out", "x_mean_out"),
    }

    def _contiguous_like(x: Tensor) -> Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    # The op signatures are those of torch.ops.diffaccel (torch.library infers
    # them from these annotations), except langevin_correct: a custom op cannot
    # take a Generator, so it takes the Philox stream the front drew from one,
    # as [seed_lo, seed_hi, offset_lo, offset_hi] (launch.philox_words).
    def ei_step(
        x: Tensor,
        model_out: Tensor,
        history: List[Tensor],
        coeffs: Tensor,
        noise: Optional[Tensor],
        threshold_kind: Optional[str],
        threshold_ratio: float,
        threshold_max_value: float,
        threshold_style: str,
    ) -> Tuple[Tensor, Tensor]:
        validation.ei_step(x, model_out, history, coeffs, noise)
        x_next, d = _contiguous_like(x), _contiguous_like(x)
        launch.ei_step(
            x,
            model_out,
            history,
            coeffs,
            noise,
            threshold_kind,
            threshold_ratio,
            threshold_max_value,
            threshold_style,
            x_next,
            d,
        )
        return x_next, d

    def ei_step_out(
        x: Tensor,
        model_out: Tensor,
        history: List[Tensor],
        coeffs: Tensor,
        noise: Optional[Tensor],
        threshold_kind: Optional[str],
        threshold_ratio: float,
        threshold_max_value: float,
        threshold_style: str,
        x_next_out: Tensor,
        d_out: Tensor,
    ) -> None:
        launch.ei_step(
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
        )

    def multistep_combine(tensors: List[Tensor], coeffs: Tensor) -> Tensor:
        dtype = validation.multistep_combine(tensors, coeffs)
        y = torch.empty(tensors[0].shape, dtype=dtype, device=tensors[0].device)
        launch.multistep_combine(tensors, coeffs, y)
        return y

    def multistep_combine_out(tensors: List[Tensor], coeffs: Tensor, out: Tensor) -> None:
        launch.multistep_combine(tensors, coeffs, out)

    def multistep_combine_pair(tensors: List[Tensor], coeffs: Tensor) -> Tuple[Tensor, Tensor]:
        dtype = validation.multistep_combine_pair(tensors, coeffs)
        y0 = torch.empty(tensors[0].shape, dtype=dtype, device=tensors[0].device)
        y1 = torch.empty_like(y0)
        launch.multistep_combine_pair(tensors, coeffs, y0, y1)
        return y0, y1

    def multistep_combine_pair_out(tensors: List[Tensor], coeffs: Tensor, y0_out: Tensor, y1_out: Tensor) -> None:
        launch.multistep_combine_pair(tensors, coeffs, y0_out, y1_out)

    def threshold(x: Tensor, kind: str, ratio: float, max_value: float, style: str) -> Tensor:
        validation.threshold(x, kind, ratio, max_value, style)
        y = _contiguous_like(x)
        launch.threshold(x, kind, ratio, max_value, style, y)
        return y

    def threshold_out(x: Tensor, kind: str, ratio: float, max_value: float, style: str, out: Tensor) -> None:
        launch.threshold(x, kind, ratio, max_value, style, out)

    def langevin_correct(
        x: Tensor, score: Tensor, snr: float, alpha: Tensor, noise: Optional[Tensor], philox: List[int], reduction: str
    ) -> Tuple[Tensor, Tensor]:
        validation.langevin_correct(x, score, snr, alpha, noise, reduction)
        x_new, x_mean = _contiguous_like(x), _contiguous_like(x)
        launch.langevin_correct(x, score, snr, alpha, noise, philox, reduction, x_new, x_mean)
        return x_new, x_mean

    def langevin_correct_out(
        x: Tensor,
        score: Tensor,
        snr: float,
        alpha: Tensor,
        noise: Optional[Tensor],
        philox: List[int],
        reduction: str,
        x_new_out: Tensor,
        x_mean_out: Tensor,
    ) -> None:
        launch.langevin_correct(x, score, snr, alpha, noise, philox, reduction, x_new_out, x_mean_out)

    def error_norm(x_high: Tensor, x_low: Tensor, x_prev: Tensor, atol: float, rtol: float) -> Tensor:
        validation.error_norm(x_high, x_low, x_prev, atol, rtol)
        acc = torch.float64 if x_high.dtype == torch.float64 else torch.float32
        out = torch.empty(x_high.shape[0], dtype=acc, device=x_high.device)
        launch.error_norm(x_high, x_low, x_prev, atol, rtol, out)
        return out

    def error_norm_backward(
        grad: Tensor, error: Tensor, x_high: Tensor, x_low: Tensor, x_prev: Tensor, atol: float, rtol: float
    ) -> Tuple[Tensor, Tensor, Tensor]:
        validation.error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol)
        grads = tuple(_contiguous_like(t) for t in (x_high, x_low, x_prev))
        launch.error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol, *grads)
        return grads

    def threshold_backward(grad: Tensor, x: Tensor, scale: Tensor) -> Tuple[Tensor, Tensor]:
        validation.threshold_backward(grad, x, scale)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        passed = torch.empty(x.shape, dtype=acc, device=x.device)
        dot = torch.empty(x.shape[0], dtype=acc, device=x.device)
        launch.threshold_backward(grad, x, scale, passed, dot)
        return passed, dot

    def _fake(name):
        """The fake of an op under the interpreter (diffaccel.ops.fake; langevin
        takes philox words where the C++ op takes a generator)."""
        from diffaccel.ops import fake

        if name.startswith("langevin_correct"):
            return lambda x, score, snr, alpha, noise, philox, reduction, *outs: fake.FAKES[name](
                x, score, snr, alpha, noise, None, reduction, *outs
            )
        return fake.FAKES[name]

    for _fn in (
        ei_step,
        ei_step_out,
        multistep_combine,
        multistep_combine_out,
        multistep_combine_pair,
        multistep_combine_pair_out,
        threshold,
        threshold_out,
        langevin_correct,
        langevin_correct_out,
        error_norm,
        error_norm_backward,
        threshold_backward,
    ):
        _name = _fn.__name__
        _mutates = _MUTATES.get(_name, ())
        if INTERPRET:
            _op = torch.library.custom_op(f"diffaccel_triton::{_name}", _fn, mutates_args=_mutates, device_types="cpu")
            _op.register_fake(_fake(_name))
        else:
            torch.library.triton_op(f"diffaccel_triton::{_name}", _fn, mutates_args=_mutates)

    from diffaccel.ops import autograd

    autograd.register("diffaccel_triton")
