"""The eager sampling loop: call the model, then one fused op, per plan row."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from diffaccel import ops
from diffaccel.ops import autograd, backends
from diffaccel.noise import standard_normal
from diffaccel.schedules import VPDiscrete
from diffaccel.solvers import ADAPTIVE_SAMPLERS
from diffaccel.solvers import plan as make_plan
from diffaccel.solvers.adaptive import sample_adaptive
from diffaccel.solvers.plan import LangevinRow, Plan, PlanTables
from diffaccel.transfer import to_device


def run_plan(
    plan: Plan,
    model: Callable,
    x: torch.Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable] = None,
    threshold: Optional[ops.Threshold] = None,
) -> torch.Tensor:
    """Runs a plan from the initial noise x (at the plan's first time); returns the sample.
    All buffers are allocated once, before the first step. ``callback`` gets,
    after each model call, k-diffusion's dict: ``x`` (the state), ``i``,
    ``sigma`` / ``sigma_hat`` (the call's noise level sigma_t / alpha_t),
    ``denoised`` (its data prediction), plus ``t`` (the schedule's time)."""
    buffers = [x.clone()] + [torch.empty_like(x) for _ in range(plan.num_buffers - 1)]
    tables = plan.device_tables(x.device, x.shape[0], time_dtype(x.dtype))
    run_rows(plan, model, buffers, tables, generator=generator, callback=callback, threshold=threshold)
    return buffers[0]


def time_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the times handed to the model: float64 for a float64 state, else float32."""
    return torch.float64 if state_dtype == torch.float64 else torch.float32


def run_rows(
    plan: Plan,
    model: Callable,
    buffers: List[torch.Tensor],
    tables: PlanTables,
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable] = None,
    threshold: Optional[ops.Threshold] = None,
) -> None:
    """The loop itself, on buffers and device tables allocated by the caller
    (run_plan, or diffaccel.graph, which captures exactly this). buffers[0]
    holds the initial noise and receives the sample. Where autograd records
    a step (grad mode on, and the state or the model output requires grad:
    backpropagation through the sampler), the step's results replace the
    buffers instead of being written into them."""
    x = buffers[0]
    # A Langevin row's noise is drawn inside the op, except with a generator of
    # another device (a CPU generator for CUDA latents) and on the triton
    # backend, whose in-op draw reads the generator on the host, which a CUDA
    # graph would freeze: there torch.randn draws it, eager and graphed alike.
    langevin_noise_in_op = not (generator is not None and generator.device.type != x.device.type) and not (
        x.device.type == "cuda" and backends.resolve("langevin_correct", "cuda") == "triton"
    )
    for i, row in enumerate(plan.rows):
        state, c = buffers[row.x_slot], tables.coeffs[i]
        model_out = model(state, tables.times[i])
        if not isinstance(model_out, torch.Tensor) or model_out.shape != x.shape:
            got = tuple(model_out.shape) if isinstance(model_out, torch.Tensor) else type(model_out).__name__
            raise ValueError(f"the model must return a tensor of shape {tuple(x.shape)} (like x), got {got}")
        if isinstance(row, LangevinRow):
            score = ops.multistep_combine([state, model_out], c)
            noise = (
                None
                if langevin_noise_in_op
                else standard_normal(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            )
            recorded = autograd.records((state, score))
            results = ops.langevin_correct(
                state,
                score,
                row.snr,
                alpha=row.alpha,
                noise=noise,
                generator=generator if langevin_noise_in_op else None,
                out=None if recorded else (state, buffers[row.mean_slot]),
            )
            if recorded:
                buffers[row.x_slot], buffers[row.mean_slot] = results
            denoised = buffers[row.mean_slot]
        else:
            noise = standard_normal(x.shape, generator=generator, dtype=x.dtype, device=x.device) if row.noise else None
            history = [buffers[j] for j in row.history]
            recorded = autograd.records((state, model_out, *history))
            results = ops.ei_step(
                state,
                model_out,
                history,
                c,
                threshold=threshold,
                noise=noise,
                out=None if recorded else (buffers[row.out_slot], buffers[row.d_slot]),
            )
            if recorded:
                buffers[row.out_slot], buffers[row.d_slot] = results
            denoised = buffers[row.d_slot]
        if callback is not None:
            info = {"x": buffers[0], "i": i, "t": row.t, "denoised": denoised}
            if plan.row_sigmas:  # k-diffusion's keys: the noise level of this model call
                info["sigma"] = info["sigma_hat"] = plan.row_sigmas[i]
            callback(info)


def sample(
    model: Callable,
    x: torch.Tensor,
    *,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    schedule=None,
    prediction_type: str = "epsilon",
    t_start=None,
    t_end=None,
    spacing: str = "logsnr",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable] = None,
    threshold: Optional[ops.Threshold] = None,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """Samples from ``model(x, t)`` starting at the noise ``x`` (drawn at t_start).

    ``t`` is a tensor of shape [B] in the schedule's own time. See
    :func:`diffaccel.solvers.plan` for the sampler, schedule and grid options.
    ``progress=True`` shows a tqdm bar (tqdm must be installed). The adaptive
    samplers (dpm_adaptive_12 / _23) take atol, rtol, theta, h_init and t_err
    instead of steps and spacing."""
    if sampler in ADAPTIVE_SAMPLERS:
        if threshold is not None or progress:
            raise ValueError(f"{sampler}: 'threshold' and 'progress' are not supported by the adaptive samplers")
        schedule = schedule if schedule is not None else VPDiscrete.from_diffusers("linear")
        result, _ = sample_adaptive(
            model,
            x,
            schedule,
            order=ADAPTIVE_SAMPLERS[sampler],
            t_start=t_start,
            t_end=t_end,
            prediction_type=prediction_type,
            callback=callback,
            **options,
        )
        return result
    p = make_plan(
        sampler,
        steps=steps,
        schedule=schedule,
        spacing=spacing,
        t_start=t_start,
        t_end=t_end,
        prediction_type=prediction_type,
        **options,
    )
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("diffaccel.sample(progress=True) needs tqdm: pip install tqdm") from None
        bar = tqdm(total=len(p.rows), desc=p.sampler)
        user_callback = callback

        def callback(info):  # noqa: F811  (wraps the user's callback)
            bar.update(1)
            if user_callback is not None:
                user_callback(info)

        try:
            return run_plan(p, model, x, generator=generator, callback=callback, threshold=threshold)
        finally:
            bar.close()
    return run_plan(p, model, x, generator=generator, callback=callback, threshold=threshold)


class ClassifierFreeGuidance:
    """``model(x, t, c)`` as ``model(x, t)`` with classifier-free guidance: one
    batched call on [uncond, cond], then ``u + scale * (c - u)`` as one fused
    multistep_combine. ``cond`` and ``uncond`` are read at every call, so they
    may be refilled in place (diffaccel.graph does, between replays), and
    set_scale() changes the scale in its device tensor."""

    def __init__(self, model: Callable, cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float):
        self.model, self.cond, self.uncond = model, cond, uncond
        self.scale = float(guidance_scale)
        self.weights: Optional[torch.Tensor] = None

    def _weight_values(self) -> List[float]:
        return [1.0 - self.scale, self.scale]

    def set_scale(self, guidance_scale: float) -> None:
        self.scale = float(guidance_scale)
        if self.weights is not None:
            self.weights.copy_(to_device(self._weight_values(), self.weights.device), non_blocking=True)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.uncond, self.cond]))
        u, c = out.chunk(2)
        if self.weights is None or self.weights.device != x.device:
            self.weights = to_device(self._weight_values(), x.device)
        return ops.multistep_combine([u, c], self.weights)


def classifier_free_guidance(model: Callable, cond, uncond, guidance_scale: float) -> ClassifierFreeGuidance:
    """Wraps ``model(x, t, c)`` as ``model(x, t)`` with classifier-free guidance
    (see :class:`ClassifierFreeGuidance`)."""
    return ClassifierFreeGuidance(model, cond, uncond, guidance_scale)
