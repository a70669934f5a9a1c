"""The eager sampling loop: call the model, then one fused op, per plan row."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from diffaccel import ops
from diffaccel.noise import standard_normal
from diffaccel.schedules import VPDiscrete
from diffaccel.solvers import ADAPTIVE_SAMPLERS
from diffaccel.solvers import plan as make_plan
from diffaccel.solvers.adaptive import sample_adaptive
from diffaccel.solvers.plan import LangevinRow, Plan


def run_plan(plan: Plan, model: Callable, x: torch.Tensor, *, generator: Optional[torch.Generator] = None,
             callback: Optional[Callable] = None, threshold: Optional[ops.Threshold] = None) -> torch.Tensor:
    """Runs a plan from the initial noise x (at the plan's first time); returns the sample.
    All buffers are allocated once, before the first step. ``callback`` gets,
    after each model call, k-diffusion's dict: ``x`` (the state), ``i``,
    ``sigma`` / ``sigma_hat`` (the call's noise level sigma_t / alpha_t),
    ``denoised`` (its data prediction), plus ``t`` (the schedule's time)."""
    buffers = [x.clone()] + [torch.empty_like(x) for _ in range(plan.num_buffers - 1)]
    coeffs = plan.coeff_tensors(x.device)
    time_dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    batch = x.shape[0]
    for i, (row, c) in enumerate(zip(plan.rows, coeffs)):
        state = buffers[row.x_slot]
        model_out = model(state, torch.full((batch,), row.t, dtype=time_dtype, device=x.device))
        if not isinstance(model_out, torch.Tensor) or model_out.shape != x.shape:
            got = tuple(model_out.shape) if isinstance(model_out, torch.Tensor) else type(model_out).__name__
            raise ValueError(f"the model must return a tensor of shape {tuple(x.shape)} (like x), got {got}")
        if isinstance(row, LangevinRow):
            score = ops.multistep_combine([state, model_out], c)
            # The op draws its noise with a generator of the state's device; one
            # of another device (a CPU generator for CUDA latents) draws it here.
            foreign = generator is not None and generator.device.type != x.device.type
            noise = standard_normal(x.shape, generator=generator, dtype=x.dtype, device=x.device) if foreign else None
            ops.langevin_correct(state, score, row.snr, alpha=row.alpha, noise=noise, generator=None if foreign else generator,
                                 out=(state, buffers[row.mean_slot]))
            denoised = buffers[row.mean_slot]
        else:
            noise = standard_normal(x.shape, generator=generator, dtype=x.dtype, device=x.device) if row.noise else None
            ops.ei_step(state, model_out, [buffers[j] for j in row.history], c, threshold=threshold, noise=noise,
                        out=(buffers[row.out_slot], buffers[row.d_slot]))
            denoised = buffers[row.d_slot]
        if callback is not None:
            info = {"x": buffers[0], "i": i, "t": row.t, "denoised": denoised}
            if plan.row_sigmas:  # k-diffusion's keys: the noise level of this model call
                info["sigma"] = info["sigma_hat"] = plan.row_sigmas[i]
            callback(info)
    return buffers[0]


def sample(model: Callable, x: torch.Tensor, *, sampler: str = "dpmpp_2m", steps: int = 20, schedule=None,
           prediction_type: str = "epsilon", t_start=None, t_end=None, spacing: str = "logsnr",
           generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None,
           threshold: Optional[ops.Threshold] = None, progress: bool = False, **options) -> torch.Tensor:
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
        result, _ = sample_adaptive(model, x, schedule, order=ADAPTIVE_SAMPLERS[sampler], t_start=t_start, t_end=t_end,
                                    prediction_type=prediction_type, callback=callback, **options)
        return result
    p = make_plan(sampler, steps=steps, schedule=schedule, spacing=spacing, t_start=t_start, t_end=t_end,
                  prediction_type=prediction_type, **options)
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


def classifier_free_guidance(model: Callable, cond, uncond, guidance_scale: float) -> Callable:
    """Wraps ``model(x, t, c)`` as ``model(x, t)`` with classifier-free guidance:
    one batched call on [uncond, cond], then ``u + scale * (c - u)`` as one
    fused multistep_combine."""
    weights = None

    def guided(x, t):
        nonlocal weights
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))
        u, c = out.chunk(2)
        if weights is None or weights.device != x.device:
            weights = torch.tensor([1.0 - guidance_scale, guidance_scale], dtype=torch.float64, device=x.device)
        return ops.multistep_combine([u, c], weights)

    return guided
