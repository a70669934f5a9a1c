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
from typing import Optional

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

    _SCHEMAS = {
        "ei_step": (
            "(Tensor x, Tensor model_out, Tensor[] history, Tensor coeffs, Tensor? noise, "
            "str? threshold_kind, float threshold_ratio, float threshold_max_value, "
            "str threshold_style) -> (Tensor, Tensor)"
        ),
        "ei_step_out": (
            "(Tensor x, Tensor model_out, Tensor[] history, Tensor coeffs, Tensor? noise, "
            "str? threshold_kind, float threshold_ratio, float threshold_max_value, "
            "str threshold_style, Tensor(a!) x_next_out, Tensor(b!) d_out) -> ()"
        ),
        "multistep_combine": "(Tensor[] tensors, Tensor coeffs) -> Tensor",
        "multistep_combine_out": "(Tensor[] tensors, Tensor coeffs, Tensor(a!) out) -> ()",
        "threshold": "(Tensor x, str kind, float ratio, float max_value, str style) -> Tensor",
        "threshold_out": "(Tensor x, str kind, float ratio, float max_value, str style, Tensor(a!) out) -> ()",
        "langevin_correct": (
            "(Tensor x, Tensor score, float snr, Tensor alpha, Tensor? noise, Generator? generator, "
            "str reduction) -> (Tensor, Tensor)"
        ),
        "langevin_correct_out": (
            "(Tensor x, Tensor score, float snr, Tensor alpha, Tensor? noise, Generator? generator, "
            "str reduction, Tensor(a!) x_new_out, Tensor(b!) x_mean_out) -> ()"
        ),
    }
    _MUTATES = {
        "ei_step_out": ("x_next_out", "d_out"),
        "multistep_combine_out": ("out",),
        "threshold_out": ("out",),
        "langevin_correct_out": ("x_new_out", "x_mean_out"),
    }

    def _register(name, fn):
        qualified = f"diffaccel_triton::{name}"
        mutates = _MUTATES.get(name, ())
        if INTERPRET:
            op = torch.library.custom_op(qualified, fn, mutates_args=mutates, device_types="cpu", schema=_SCHEMAS[name])
            from diffaccel.ops import fake

            fake.register(op, name)
        else:
            torch.library.triton_op(qualified, fn, mutates_args=mutates, schema=_SCHEMAS[name])

    def _ei_step(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style):
        validation.ei_step(x, model_out, history, coeffs, noise)
        x_next, d = torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(x, memory_format=torch.contiguous_format)
        launch.ei_step(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style, x_next, d)
        return x_next, d

    def _ei_step_out(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style, x_next_out, d_out):
        launch.ei_step(x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value, threshold_style, x_next_out, d_out)

    def _multistep_combine(tensors, coeffs):
        dtype = validation.multistep_combine(tensors, coeffs)
        y = torch.empty(tensors[0].shape, dtype=dtype, device=tensors[0].device)
        launch.multistep_combine(tensors, coeffs, y)
        return y

    def _multistep_combine_out(tensors, coeffs, out):
        launch.multistep_combine(tensors, coeffs, out)

    def _threshold(x, kind, ratio, max_value, style):
        validation.threshold(x, kind, ratio, max_value, style)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        launch.threshold(x, kind, ratio, max_value, style, y)
        return y

    def _threshold_out(x, kind, ratio, max_value, style, out):
        launch.threshold(x, kind, ratio, max_value, style, out)

    def _langevin_correct(x, score, snr, alpha, noise, generator, reduction):
        validation.langevin_correct(x, score, snr, alpha, noise, reduction)
        x_new, x_mean = torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(x, memory_format=torch.contiguous_format)
        launch.langevin_correct(x, score, snr, alpha, noise, generator, reduction, x_new, x_mean)
        return x_new, x_mean

    def _langevin_correct_out(x, score, snr, alpha, noise, generator, reduction, x_new_out, x_mean_out):
        launch.langevin_correct(x, score, snr, alpha, noise, generator, reduction, x_new_out, x_mean_out)

    for _name, _fn in {
        "ei_step": _ei_step,
        "ei_step_out": _ei_step_out,
        "multistep_combine": _multistep_combine,
        "multistep_combine_out": _multistep_combine_out,
        "threshold": _threshold,
        "threshold_out": _threshold_out,
        "langevin_correct": _langevin_correct,
        "langevin_correct_out": _langevin_correct_out,
    }.items():
        _register(_name, _fn)
