"""The fused sampler-update ops.

Each op runs the compiled kernel registered under ``torch.ops.diffaccel`` for
the tensors' device, which checks its arguments in C++, or, where there is
none, checks them in :mod:`diffaccel.ops.validation` (same wording) and runs
its pure-PyTorch twin in :mod:`diffaccel.ops.reference` (see
:mod:`diffaccel.ops.backends`). Math is done in float32 for 16/32-bit
inputs and in float64 for float64 inputs; inputs may be non-contiguous; no op
synchronizes with the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from diffaccel import _extension
from diffaccel.ops import autograd, fake, reference, validation
from diffaccel.ops.backends import backend, resolve

if _extension.available():
    fake.register_compiled()
    autograd.register("diffaccel")

__all__ = [
    "Threshold",
    "backend",
    "ei_step",
    "error_norm",
    "langevin_correct",
    "multistep_combine",
    "multistep_combine_pair",
    "reference",
    "threshold",
]


def _namespace(impl: str):
    """The torch.ops namespace of a backend: the C++ ops or the Triton ops."""
    return torch.ops.diffaccel_triton if impl == "triton" else torch.ops.diffaccel


# The dispatch key sets a call below autograd goes to (CPU, CUDA tensors).
_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
_CUDA_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)

# The C++ ops' unboxed entry points below the autograd key (diffaccel._C.below_autograd,
# one per op form it defines), by op form name ("ei_step", "ei_step_out", ...): the same
# kernels op.default.redispatch reaches, about 1 us a call sooner.
# _GUARDED: the same entries behind _call's checks of autograd, functorch
# transforms and dispatch modes, made in C++ (diffaccel._C.guarded): they
# return NotImplemented where the dispatcher has work to do.
# (Keyed by name, not by torch.ops packet: finding the packet by getattr on the
# torch.ops namespace, and hashing it, cost the fronts 0.3-0.45 us a call on the
# dev VM.)
_BELOW_AUTOGRAD, _GUARDED = {}, {}
if _extension.available():
    _below, _guarded = _extension._C.below_autograd, _extension._C.guarded
    _BELOW_AUTOGRAD = {name: getattr(_below, name) for name in dir(_below) if not name.startswith("_")}
    _GUARDED = {name: getattr(_guarded, name) for name in _BELOW_AUTOGRAD}


def _device_type(x: torch.Tensor) -> str:
    """x.device.type, without building a torch.device for the common cases."""
    if x.is_cuda:
        return "cuda"
    if x.is_cpu:
        return "cpu"
    return x.device.type


def _call(impl: str, name: str, args, tensors, explain, outs=()):
    """The op form ``name`` ("ei_step", "ei_step_out", ...) of backend impl
    ("compiled" or "triton") on args, where autograd records it through the
    op's registered gradient (diffaccel.ops.autograd), and otherwise straight
    to the device's kernel, below the autograd dispatch key: the registered
    gradient is a Python kernel that costs every call about 4 us on the dev
    VM, half an eager step's host time. (Under torch.compile, functorch
    transforms, a dispatch mode or a tensor subclass the dispatcher takes the
    call as usual.)
    tensors: the call's tensors, x first and any out= buffers among them;
    outs: the out= buffers, whose version counters a call below autograd bumps
    as the dispatcher's ADInplaceOrView step would (so autograd notices a
    saved tensor overwritten; the C++ entry points do it themselves). A call
    the op's schema refuses (a list of coefficients, None among the tensors)
    gets the message explain() raises, where it names the problem."""
    x = tensors[0]
    try:
        if x.__class__ is torch.Tensor and not torch.compiler.is_compiling():
            guarded = _GUARDED.get(name) if impl == "compiled" else None
            if guarded is not None:  # the C++ ops: the rest of the checks in C++
                result = guarded(*args)
                if result is not NotImplemented:
                    return result
            elif (
                not autograd.records(tensors)
                and not torch._C._are_functorch_transforms_active()
                and not torch._C._len_torch_dispatch_stack()
            ):
                op = getattr(_namespace(impl), name)
                result = op.default.redispatch(_CUDA_KEYS if x.is_cuda else _CPU_KEYS, *args)
                for t in outs:
                    if not t.is_inference():
                        torch.autograd.graph.increment_version(t)
                return result
        return getattr(_namespace(impl), name)(*args)
    except (RuntimeError, AttributeError, TypeError):  # (records() meets a list where a tensor belongs)
        explain()
        raise


def loop_entry(op_name: str, x: torch.Tensor):
    """For a sampler loop that calls the op ``op_name`` once a step, under
    no_grad, on tensors like ``x``: the C++ kernel's entry below autograd
    (``diffaccel._C.below_autograd.<op_name>``, the ``torch.ops.diffaccel``
    schema's arguments in order), where the checks :func:`_call` makes every
    call hold for the whole loop: grad mode off, the compiled backend chosen
    for x's device, no torch.compile, functorch transform or dispatch mode.
    None where they do not: the loop then calls the op's front as usual.

    It skips the front's per-call work (a few us of an eager step's host
    time); the caller keeps the rest of :func:`_call`'s contract: it passes
    only plain ``torch.Tensor`` arguments (a model's output may be a
    subclass: test ``t.__class__ is torch.Tensor``) and nothing the schema
    refuses. The kernel still checks every argument and names it."""
    if (
        x.__class__ is not torch.Tensor
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch._C._len_torch_dispatch_stack()
        or resolve(op_name, _device_type(x)) != "compiled"
    ):
        return None
    return _BELOW_AUTOGRAD.get(op_name)


@dataclass(frozen=True)
class Threshold:
    """Thresholding of a data prediction, as diffusers' ``thresholding`` /
    ``clip_sample`` and the official DPM-Solver's ``dynamic_thresholding``.

    kind: ``"clip"`` clamps to ``[-max_value, max_value]``; ``"dynamic"`` (Imagen)
        takes per sample ``s = quantile(|x_b|, ratio)`` (torch.quantile's linear
        interpolation), then ``y = clamp(x, -s, s) / s``.
    ratio: the quantile, in [0, 1] (diffusers' ``dynamic_thresholding_ratio``).
    max_value: >= 0 (diffusers' ``sample_max_value`` / ``clip_sample_range``,
        DPM-Solver's ``thresholding_max_val``; at 0 a dynamic threshold's scale
        is 0 and its result 0 / 0 = NaN, as in diffusers).
    style: how ``s`` is bounded: ``"diffusers"``: ``s = clamp(s, 1, max_value)``;
        ``"dpm-solver"``: ``s = max(s, max_value)``.
    """

    kind: str = "dynamic"
    ratio: float = 0.995
    max_value: float = 1.0
    style: str = "diffusers"

    def __post_init__(self):
        validation.check_threshold_options("diffaccel.Threshold", self.kind, self.ratio, self.max_value, self.style)
        # Any real scalar (numpy, 0-d tensor) is kept as the float the kernels take.
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "max_value", float(self.max_value))


# The placeholder threshold options passed to the ops when none is asked for
# (made once: a Threshold validates itself when built, and ei_step runs per step).
_NO_THRESHOLD = Threshold()


def ei_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    history: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    *,
    threshold: Optional[Threshold] = None,
    noise: Optional[torch.Tensor] = None,
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One exponential-integrator / multistep sampler update, fused::

        d      = threshold(c_x * x + c_m * model_out)
        x_next = a * x + b_0 * d + sum_j b_j * history[j] + s * noise

    Args:
        x: the state the model was evaluated at, ``[B, ...]``.
        model_out: the raw model output, shaped like ``x``; may be another
            floating dtype than ``x`` (a bf16 model with a float32 state).
        history: 0 to 4 earlier tensors shaped like ``x`` (earlier ``d``'s or an
            earlier state), any 16/32-bit dtype.
        coeffs: ``[5 + k]`` shared by the batch, or ``[B, 5 + k]`` (a row per
            sample, so each sample may sit at its own step), laid out
            ``[c_x, c_m, a, b_0, b_1 .. b_k, s]`` for ``k = len(history)``.
            Any floating dtype, on ``x``'s device.
        threshold: a :class:`Threshold` applied to ``d`` inside the fused pass.
        noise: standard normal noise shaped like ``x``; without it the ``s``
            term is left out (``s`` is ignored).
        out: ``(x_next_buf, d_buf)`` to write in place; ``x_next_buf`` may be
            ``x`` and ``d_buf`` may be any history tensor.

    Returns:
        ``(x_next, d)``, both with ``x``'s dtype.
    """
    validation.check_tensor("diffaccel.ei_step", "x", x)
    if isinstance(history, torch.Tensor):  # would be split into slices by list(): refused
        validation.check_tensor_list("diffaccel.ei_step", "history", history)
    if threshold is not None and not isinstance(threshold, Threshold):
        raise TypeError("diffaccel.ei_step: argument 'threshold' must be None or a diffaccel.ops.Threshold")
    validation.check_pair("diffaccel.ei_step", ("x_next", "d"), out)
    if out is not None:
        autograd.check_out_allowed("ei_step", out, (x, model_out, coeffs, noise, *history))
    impl = resolve("ei_step", _device_type(x))
    if impl != "compiled":  # the C++ ops check their own arguments
        validation.ei_step(x, model_out, history, coeffs, noise)
        if out is not None:
            validation.check_out_pair("diffaccel.ei_step", ("x_next", "d"), out, x)
            inputs = {"x": x, "model_out": model_out, "noise": noise}
            inputs.update({f"history[{j}]": h for j, h in enumerate(history)})
            validation.check_no_partial_overlap(
                "diffaccel.ei_step", {"out[0] (x_next)": out[0], "out[1] (d)": out[1]}, inputs
            )
    if impl == "reference":
        return reference.ei_step(x, model_out, history, coeffs, threshold=threshold, noise=noise, out=out)
    t = threshold or _NO_THRESHOLD

    def explain():
        validation.check_tensor_list("diffaccel.ei_step", "history", history)
        validation.check_tensor("diffaccel.ei_step", "coeffs", coeffs)

    args = (
        x,
        model_out,
        list(history),
        coeffs,
        noise,
        None if threshold is None else t.kind,
        t.ratio,
        t.max_value,
        t.style,
    )
    if out is None:
        return _call(impl, "ei_step", args, (x, model_out, coeffs, noise, *history), explain)
    _call(impl, "ei_step_out", (*args, *out), (x, model_out, coeffs, noise, *history, *out), explain, out)
    return out[0], out[1]


def multistep_combine(
    tensors: Sequence[torch.Tensor], coeffs: torch.Tensor, *, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``y = sum_j coeffs[..., j] * tensors[j]`` in one pass: the history combine
    of LMS / Adams-Bashforth and UniPC's corrector.

    Args:
        tensors: 1 to 8 tensors of one shape ``[B, ...]``; dtypes may differ.
        coeffs: ``[n]`` shared by the batch or ``[B, n]`` per sample.
        out: a buffer to write in place; it may be one of ``tensors``.

    Returns:
        ``y`` with the promoted dtype of ``tensors`` (``torch.promote_types``).
    """
    result = _combine("multistep_combine", tensors, coeffs, None if out is None else (out,))
    return result if out is None else out


def multistep_combine_pair(
    tensors: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    *,
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two sums of the same tensors in one pass, each read once::

        y0 = sum_j coeffs[..., 0, j] * tensors[j]
        y1 = sum_j coeffs[..., 1, j] * tensors[j]

    Each output equals :func:`multistep_combine` with its row, bit for bit.
    A step that makes two states from the same inputs takes one pass instead
    of two: UniPC's corrected state and the next step's prediction (the
    model's next input), an embedded pair's two solutions.

    Args:
        tensors: 1 to 8 tensors of one shape ``[B, ...]``; dtypes may differ.
        coeffs: ``[2, n]`` shared by the batch or ``[B, 2, n]`` per sample.
        out: ``(y0_buf, y1_buf)`` to write in place; each may be one of
            ``tensors``, not both the same memory.

    Returns:
        ``(y0, y1)`` with the promoted dtype of ``tensors``.
    """
    validation.check_pair("diffaccel.multistep_combine_pair", ("y0", "y1"), out)
    result = _combine("multistep_combine_pair", tensors, coeffs, None if out is None else tuple(out))
    return result if out is None else (out[0], out[1])


# The combine ops' front: op -> (its name in errors, checks, reference twin, names of out= buffers).
_COMBINES = {
    "multistep_combine": (
        "diffaccel.multistep_combine",
        validation.multistep_combine,
        reference.multistep_combine,
        ("out",),
    ),
    "multistep_combine_pair": (
        "diffaccel.multistep_combine_pair",
        validation.multistep_combine_pair,
        reference.multistep_combine_pair,
        ("out[0] (y0)", "out[1] (y1)"),
    ),
}


def _combine(name: str, tensors, coeffs, buffers: Optional[tuple]):
    """The front of multistep_combine (buffers: (out,)) and multistep_combine_pair
    (buffers: (y0, y1)): the functional op's result, or None after the _out op
    wrote the buffers."""
    op_name, check, twin, buffer_names = _COMBINES[name]
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(tensors[0], torch.Tensor):
        check(tensors, coeffs)  # raises the error that names the problem
    if buffers is not None:
        autograd.check_out_allowed(name, buffers, (*tensors, coeffs))
    impl = resolve(name, _device_type(tensors[0]))
    if impl != "compiled":
        result_dtype = check(tensors, coeffs)
        if buffers is not None:
            if len(buffers) == 1:
                validation.check_out(op_name, "out", buffers[0], tensors[0], dtype=result_dtype)
            else:
                validation.check_out_pair(op_name, ("y0", "y1"), buffers, tensors[0], result_dtype)
            validation.check_no_partial_overlap(
                op_name, dict(zip(buffer_names, buffers)), {f"tensors[{j}]": t for j, t in enumerate(tensors)}
            )
    if impl == "reference":
        if buffers is None:
            return twin(tensors, coeffs)
        twin(tensors, coeffs, out=buffers[0] if len(buffers) == 1 else buffers)
        return None
    explain = lambda: check(tensors, coeffs)  # noqa: E731
    if buffers is None:
        return _call(impl, name, (list(tensors), coeffs), (*tensors, coeffs), explain)
    _call(impl, f"{name}_out", (list(tensors), coeffs, *buffers), (*tensors, coeffs, *buffers), explain, buffers)
    return None


def threshold(
    x: torch.Tensor,
    *,
    kind: str = "dynamic",
    ratio: float = 0.995,
    max_value: float = 1.0,
    style: str = "diffusers",
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Thresholds a batch of data predictions (see :class:`Threshold`).

    The dynamic quantile is found by selection, not by sorting, and works at
    any size (torch.quantile stops at 2**24 elements per sample). Up to that
    size it equals ``torch.quantile(|x_b|, ratio)``; beyond it the rank
    ``ratio * (n - 1)`` is computed in double.

    Args:
        x: ``[B, ...]``; each sample ``x[b]`` gets its own scale.
        out: a buffer to write in place; it may be ``x``.

    Returns:
        ``y`` with ``x``'s dtype.
    """
    validation.check_tensor("diffaccel.threshold", "x", x)
    if type(ratio) is not float:
        ratio = validation.real_scalar("diffaccel.threshold", "ratio", ratio)
    if type(max_value) is not float:
        max_value = validation.real_scalar("diffaccel.threshold", "max_value", max_value)
    if out is not None:
        autograd.check_out_allowed("threshold", out, (x,))
    impl = resolve("threshold", _device_type(x))
    if impl != "compiled":
        validation.threshold(x, kind, ratio, max_value, style)
        if out is not None:
            validation.check_out("diffaccel.threshold", "out", out, x)
            validation.check_no_partial_overlap("diffaccel.threshold", {"out": out}, {"x": x})
    if impl == "reference":
        return reference.threshold(x, kind=kind, ratio=ratio, max_value=max_value, style=style, out=out)
    if out is None:
        return _call(impl, "threshold", (x, kind, ratio, max_value, style), (x,), lambda: None)
    _call(impl, "threshold_out", (x, kind, ratio, max_value, style, out), (x, out), lambda: None, (out,))
    return out


# langevin_correct's alpha=1.0 (the default, and a variance-exploding
# corrector's) for CPU tensors, made once: torch.full costs 1.5 us a call on
# the dev VM, 3% of a (4,4,128,128) step. The op only reads it.
with torch.inference_mode(False):
    _CPU_ALPHA_ONE = torch.ones((), dtype=torch.float64)


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
    """One Langevin corrector step of predictor-corrector sampling::

        g = ||score_b||, n = ||z_b||          (L2 over the non-batch dims)
        step   = 2 * alpha * (snr * n / g)**2
        x_mean = x + step * score
        x_new  = x_mean + sqrt(2 * step) * z

    Args:
        x: the state, ``[B, ...]``.
        score: the model's score estimate at ``x``, shaped like ``x``.
        snr: the target signal-to-noise ratio, >= 0 (score_sde's ``snr``).
        alpha: a number, or a 0-d / ``[B]`` tensor on ``x``'s device
            (score_sde's VP corrector uses ``alpha_t``; VE uses 1).
        noise: standard normal ``z`` shaped like ``x``; when None it is drawn
            inside the op as ``torch.randn(x.shape, generator=generator,
            dtype=x.dtype, device=x.device)`` would draw it.
        reduction: ``"batch"`` averages ``g`` and ``n`` over the batch, as
            score_sde and diffusers do; ``"sample"`` keeps them per sample so a
            sample's result does not depend on the rest of its batch.
        out: ``(x_new_buf, x_mean_buf)`` to write in place; ``x_new_buf`` may be ``x``.

    Returns:
        ``(x_new, x_mean)`` with ``x``'s dtype.
    """
    validation.check_tensor("diffaccel.langevin_correct", "x", x)
    if type(snr) is not float:
        snr = validation.real_scalar("diffaccel.langevin_correct", "snr", snr)
    if not isinstance(alpha, (torch.Tensor, float)):
        alpha = validation.real_scalar("diffaccel.langevin_correct", "alpha", alpha)
    validation.check_pair("diffaccel.langevin_correct", ("x_new", "x_mean"), out)
    if out is not None:
        autograd.check_out_allowed("langevin_correct", out, (x, score, alpha, noise))
    impl = resolve("langevin_correct", _device_type(x))
    if impl != "compiled":
        validation.langevin_correct(x, score, snr, alpha, noise, reduction)
        if out is not None:
            validation.check_out_pair("diffaccel.langevin_correct", ("x_new", "x_mean"), out, x)
            validation.check_no_partial_overlap(
                "diffaccel.langevin_correct",
                {"out[0] (x_new)": out[0], "out[1] (x_mean)": out[1]},
                {"x": x, "score": score, "noise": noise},
            )
    if impl == "reference":
        return reference.langevin_correct(
            x, score, snr, alpha=alpha, noise=noise, generator=generator, reduction=reduction, out=out
        )
    if not isinstance(alpha, torch.Tensor):
        # The C++ op takes alpha as a tensor; a number is checked here.
        if not alpha >= 0.0:
            raise ValueError(
                f"diffaccel.langevin_correct: argument 'alpha' must be a number >= 0 or a tensor, got {alpha!r}"
            )
        if alpha == 1.0 and x.__class__ is torch.Tensor and x.is_cpu:
            alpha = _CPU_ALPHA_ONE
        else:
            alpha = torch.full((), float(alpha), dtype=torch.float64, device=x.device)
    if impl == "triton":  # the Triton op takes the Philox stream, not the generator
        from diffaccel.ops.triton import launch as triton_launch

        stream = [0, 0, 0, 0] if noise is not None else triton_launch.philox_words(generator, x.device)
        args = (x, score, float(snr), alpha, noise, stream, reduction)
    else:
        args = (x, score, float(snr), alpha, noise, generator, reduction)
    if out is None:
        return _call(impl, "langevin_correct", args, (x, score, alpha, noise), lambda: None)  # (alpha: a tensor here)
    _call(impl, "langevin_correct_out", (*args, *out), (x, score, alpha, noise, *out), lambda: None, out)
    return out[0], out[1]


def error_norm(
    x_high: torch.Tensor, x_low: torch.Tensor, x_prev: torch.Tensor, *, atol: float, rtol: float
) -> torch.Tensor:
    """The error estimate of adaptive step-size control (the official
    DPM-Solver's ``dpm_solver_adaptive``), per sample, in one pass::

        delta = max(atol, rtol * max(|x_low|, |x_prev|))
        E_b   = sqrt(mean_i(((x_high - x_low) / delta)_b,i ** 2))

    Args:
        x_high, x_low: the higher- and lower-order solutions of a trial step, ``[B, ...]``.
        x_prev: the previous accepted lower-order solution, shaped like ``x_high``.
        atol, rtol: >= 0 (with atol 0, a delta of 0 gives an inf or NaN error, as
            the formula does in PyTorch).

    Returns:
        ``[B]`` in float32 (float64 for float64 inputs); the squares are summed
        in float64, in a fixed order, so the result is the same bits every run.
    """
    validation.check_tensor("diffaccel.error_norm", "x_high", x_high)
    if type(atol) is not float:
        atol = validation.real_scalar("diffaccel.error_norm", "atol", atol)
    if type(rtol) is not float:
        rtol = validation.real_scalar("diffaccel.error_norm", "rtol", rtol)
    impl = resolve("error_norm", _device_type(x_high))
    if impl != "compiled":
        validation.error_norm(x_high, x_low, x_prev, atol, rtol)
    if impl == "reference":
        return reference.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
    return _call(impl, "error_norm", (x_high, x_low, x_prev, atol, rtol), (x_high, x_low, x_prev), lambda: None)
