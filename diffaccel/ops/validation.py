"""Argument checks of every op, run before any kernel on every backend.

The compiled ops repeat these checks in C++ (csrc/torch/common.h) with the same
wording, for callers that go straight to ``torch.ops.diffaccel``; here they
guard the reference backend and the fake (meta) kernels, so a bad call fails
the same way on every backend and at torch.compile trace time. Messages name
the argument and say what was expected.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

MAX_HISTORY = 4  # csrc/include/diffaccel/config.h: kMaxHistory
MAX_COMBINE = 8  # kMaxCombine
EI_FIXED_COEFFS = 4  # c_x, c_m, a, b_0

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
THRESHOLD_KINDS = ("clip", "dynamic")
THRESHOLD_STYLES = ("diffusers", "dpm-solver")
REDUCTIONS = ("batch", "sample")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")


def real_scalar(op: str, name: str, value) -> float:
    """A real number given as a Python or numpy number or a 0-d tensor, as a
    float (the same rule on every backend; a 0-d CUDA tensor is read to the
    host). Anything else is a TypeError naming the argument."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
            return float(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    got = f"a tensor of shape {_shape(value)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise TypeError(f"{op}: argument '{name}' must be a real number (Python, numpy or a 0-d tensor), got {got}")


def check_tensor_list(op: str, name: str, tensors) -> None:
    """A list or tuple of tensors (a stacked tensor is refused: its first
    dimension could be the batch, and splitting it would be silently wrong)."""
    if isinstance(tensors, torch.Tensor):
        raise TypeError(
            f"{op}: argument '{name}' must be a list or tuple of tensors, got a tensor of shape {_shape(tensors)} "
            "(pass [t] for one tensor, or list(stacked.unbind(0)) for tensors stacked along a new first dimension)"
        )
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: argument '{name}' must be a list or tuple of tensors, got {type(tensors).__name__}")
    for j, t in enumerate(tensors):
        check_tensor(op, f"{name}[{j}]", t)


def check_batched(op: str, name: str, x: torch.Tensor) -> None:
    check_tensor(op, name, x)
    if x.dim() < 1:
        raise ValueError(f"{op}: argument '{name}' must have a batch dimension, got shape {_shape(x)}")


def check_float_dtype(op: str, name: str, t: torch.Tensor, state_dtype: torch.dtype) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: argument '{name}' must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if (t.dtype == torch.float64) != (state_dtype == torch.float64):
        raise TypeError(
            f"{op}: argument '{name}' has dtype {t.dtype} but the state is {state_dtype}; "
            "float64 cannot be mixed with 16/32-bit tensors"
        )


def check_like(op: str, name: str, t, x: torch.Tensor, x_name: str) -> None:
    check_tensor(op, name, t)
    if t.device != x.device:
        raise ValueError(f"{op}: argument '{name}' is on {t.device} but '{x_name}' is on {x.device}")
    if t.shape != x.shape:
        raise ValueError(f"{op}: argument '{name}' must have shape {_shape(x)} like '{x_name}', got {_shape(t)}")


def check_coeffs(op: str, coeffs, x: torch.Tensor, n: int, layout: str) -> None:
    check_tensor(op, "coeffs", coeffs)
    if coeffs.device != x.device:
        raise ValueError(f"{op}: argument 'coeffs' is on {coeffs.device} but the data is on {x.device}")
    if not coeffs.dtype.is_floating_point:
        raise TypeError(f"{op}: argument 'coeffs' must be a floating tensor, got {coeffs.dtype}")
    shared = coeffs.dim() == 1 and coeffs.shape[0] == n
    per_sample = coeffs.dim() == 2 and coeffs.shape[0] == x.shape[0] and coeffs.shape[1] == n
    if not (shared or per_sample):
        raise ValueError(
            f"{op}: argument 'coeffs' must have shape [{n}] or [{x.shape[0]}, {n}] ({layout}), got {_shape(coeffs)}"
        )


def check_out(op: str, name: str, out, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> None:
    """out must match x's device and shape, and dtype (x's dtype by default)."""
    dtype = x.dtype if dtype is None else dtype
    check_tensor(op, name, out)
    if out.device != x.device:
        raise ValueError(f"{op}: argument '{name}' is on {out.device} but must be on {x.device}")
    if out.shape != x.shape:
        raise ValueError(f"{op}: argument '{name}' must have shape {_shape(x)}, got {_shape(out)}")
    if out.dtype != dtype:
        raise TypeError(f"{op}: argument '{name}' must have dtype {dtype}, got {out.dtype}")


def check_pair(op: str, names: tuple, out) -> None:
    """out is None or a pair of tensors."""
    if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 2):
        raise TypeError(f"{op}: argument 'out' must be a pair of tensors ({names[0]}, {names[1]})")


def check_out_pair(op: str, names: tuple, out, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> None:
    check_pair(op, names, out)
    check_out(op, f"out[0] ({names[0]})", out[0], x, dtype)
    check_out(op, f"out[1] ({names[1]})", out[1], x, dtype)
    if out[0] is out[1]:
        raise ValueError(f"{op}: the two outputs ({names[0]}, {names[1]}) must not share memory")


def check_threshold_options(op: str, kind, ratio, max_value, style) -> None:
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f'{op}: argument \'kind\' must be "clip" or "dynamic", got {kind!r}')
    # The ends are diffusers' too: ratio 0 is the smallest |x|; max_value 0 clips to 0
    # (a dynamic threshold's scale is then 0, and the result 0 / 0, as in diffusers).
    if not 0.0 <= real_scalar(op, "ratio", ratio) <= 1.0:
        raise ValueError(f"{op}: argument 'ratio' must be in [0, 1], got {float(ratio)}")
    if not real_scalar(op, "max_value", max_value) >= 0.0:
        raise ValueError(f"{op}: argument 'max_value' must be >= 0, got {float(max_value)}")
    if style not in THRESHOLD_STYLES:
        raise ValueError(f'{op}: argument \'style\' must be "diffusers" or "dpm-solver", got {style!r}')


def ei_step(x, model_out, history: Sequence, coeffs, noise: Optional[torch.Tensor]) -> None:
    op = "diffaccel.ei_step"
    check_batched(op, "x", x)
    check_float_dtype(op, "x", x, x.dtype)
    check_like(op, "model_out", model_out, x, "x")
    check_float_dtype(op, "model_out", model_out, x.dtype)
    check_tensor_list(op, "history", history)
    if len(history) > MAX_HISTORY:
        raise ValueError(f"{op}: argument 'history' holds {len(history)} tensors, at most {MAX_HISTORY} are supported")
    for h in history:  # (the C++ checks' wording: 'history')
        check_like(op, "history", h, x, "x")
        check_float_dtype(op, "history", h, x.dtype)
    check_coeffs(
        op,
        coeffs,
        x,
        EI_FIXED_COEFFS + 1 + len(history),
        "[c_x, c_m, a, b_0, b_1..b_k, s] for k history tensors",
    )
    if noise is not None:
        check_like(op, "noise", noise, x, "x")
        check_float_dtype(op, "noise", noise, x.dtype)


def combine_result_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def multistep_combine(tensors: Sequence, coeffs, op: str = "diffaccel.multistep_combine") -> torch.dtype:
    """The checks of multistep_combine, and of multistep_combine_pair but its
    coefficients' shape (:func:`multistep_combine_pair`); returns the result dtype."""
    check_tensor_list(op, "tensors", tensors)
    if not 1 <= len(tensors) <= MAX_COMBINE:
        raise ValueError(f"{op}: argument 'tensors' must hold 1 to {MAX_COMBINE} tensors, got {len(tensors)}")
    first = tensors[0]
    check_batched(op, "tensors", first)
    result = combine_result_dtype(tensors)
    for t in tensors:
        check_like(op, "tensors", t, first, "tensors[0]")
        check_float_dtype(op, "tensors", t, result)
    if op == "diffaccel.multistep_combine":
        check_coeffs(op, coeffs, first, len(tensors), "one coefficient per tensor")
    return result


def multistep_combine_pair(tensors: Sequence, coeffs) -> torch.dtype:
    op = "diffaccel.multistep_combine_pair"
    result = multistep_combine(tensors, coeffs, op)
    first, n = tensors[0], len(tensors)
    check_tensor(op, "coeffs", coeffs)
    if coeffs.device != first.device:
        raise ValueError(f"{op}: argument 'coeffs' is on {coeffs.device} but the data is on {first.device}")
    if not coeffs.dtype.is_floating_point:
        raise TypeError(f"{op}: argument 'coeffs' must be a floating tensor, got {coeffs.dtype}")
    shared = coeffs.dim() == 2 and tuple(coeffs.shape) == (2, n)
    per_sample = coeffs.dim() == 3 and tuple(coeffs.shape) == (first.shape[0], 2, n)
    if not (shared or per_sample):
        raise ValueError(
            f"{op}: argument 'coeffs' must have shape [2, {n}] or [{first.shape[0]}, 2, {n}] (a row of one "
            f"coefficient per tensor for each output), got {_shape(coeffs)}"
        )
    return result


def threshold(x, kind, ratio, max_value, style) -> None:
    op = "diffaccel.threshold"
    check_batched(op, "x", x)
    check_float_dtype(op, "x", x, x.dtype)
    check_threshold_options(op, kind, ratio, max_value, style)


def langevin_correct(x, score, snr, alpha, noise, reduction) -> None:
    op = "diffaccel.langevin_correct"
    check_batched(op, "x", x)
    check_float_dtype(op, "x", x, x.dtype)
    check_like(op, "score", score, x, "x")
    check_float_dtype(op, "score", score, x.dtype)
    if not real_scalar(op, "snr", snr) >= 0.0:
        raise ValueError(f"{op}: argument 'snr' must be >= 0, got {float(snr)}")
    if isinstance(alpha, torch.Tensor):
        if alpha.device != x.device:
            raise ValueError(f"{op}: argument 'alpha' is on {alpha.device} but 'x' is on {x.device}")
        if not (alpha.dim() == 0 or (alpha.dim() == 1 and alpha.shape[0] == x.shape[0])):
            raise ValueError(
                f"{op}: argument 'alpha' must be a number, a 0-d tensor or shape [{x.shape[0]}], "
                f"got shape {_shape(alpha)}"
            )
    elif not real_scalar(op, "alpha", alpha) >= 0.0:
        raise ValueError(f"{op}: argument 'alpha' must be a number >= 0 or a tensor, got {float(alpha)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f'{op}: argument \'reduction\' must be "batch" or "sample", got {reduction!r}')
    if noise is not None:
        check_like(op, "noise", noise, x, "x")
        check_float_dtype(op, "noise", noise, x.dtype)


def error_norm(x_high, x_low, x_prev, atol, rtol, op: str = "diffaccel.error_norm") -> None:
    check_batched(op, "x_high", x_high)
    check_float_dtype(op, "x_high", x_high, x_high.dtype)
    for name, t in (("x_low", x_low), ("x_prev", x_prev)):
        check_like(op, name, t, x_high, "x_high")
        check_float_dtype(op, name, t, x_high.dtype)
    if not real_scalar(op, "atol", atol) >= 0.0:
        raise ValueError(f"{op}: argument 'atol' must be >= 0, got {float(atol)}")
    if not real_scalar(op, "rtol", rtol) >= 0.0:
        raise ValueError(f"{op}: argument 'rtol' must be >= 0, got {float(rtol)}")


def check_per_sample_vector(op: str, name: str, t, x: torch.Tensor, x_name: str) -> None:
    """A floating [B] tensor on x's device (B = x's batch)."""
    check_tensor(op, name, t)
    if t.device != x.device:
        raise ValueError(f"{op}: argument '{name}' is on {t.device} but '{x_name}' is on {x.device}")
    if t.shape != x.shape[:1]:
        raise ValueError(f"{op}: argument '{name}' must have shape [{x.shape[0]}], got {_shape(t)}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: argument '{name}' must be a floating tensor, got {t.dtype}")


def error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol) -> None:
    """grad (dL/dE) and error (the forward's E): floating [B] tensors on the data's device."""
    op = "diffaccel.error_norm_backward"
    error_norm(x_high, x_low, x_prev, atol, rtol, op)
    check_per_sample_vector(op, "grad", grad, x_high, "x_high")
    check_per_sample_vector(op, "error", error, x_high, "x_high")


def threshold_backward(grad, x, scale) -> None:
    """grad like x; scale: a floating [B] tensor on x's device."""
    op = "diffaccel.threshold_backward"
    check_batched(op, "x", x)
    check_float_dtype(op, "x", x, x.dtype)
    check_like(op, "grad", grad, x, "x")
    check_float_dtype(op, "grad", grad, x.dtype)
    check_per_sample_vector(op, "scale", scale, x, "x")


def check_no_partial_overlap(op: str, outputs: dict, inputs: dict) -> None:
    """An output may be exactly one of the inputs (in place) but may not overlap
    one partially. The compiled ops check this in C++; this conservative
    version (same storage, different view) guards the reference and Triton
    backends in eager calls; under torch.compile the traced tensors have no
    storage address to compare, and the check is skipped; so is it on the meta
    device, where every storage's address is 0 (and nothing is written)."""
    if torch.compiler.is_compiling():
        return
    for out_name, out in outputs.items():
        for in_name, t in inputs.items():
            if t is None or out.numel() == 0 or t.numel() == 0 or out.device.type == "meta":
                continue
            if out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
                continue
            same_view = out.data_ptr() == t.data_ptr() and out.shape == t.shape and out.stride() == t.stride()
            if not same_view:
                raise ValueError(
                    f"{op}: argument '{out_name}' partially overlaps '{in_name}'; an output may be "
                    "the very same tensor as an input, or not overlap it"
                )
