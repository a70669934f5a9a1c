"""Solver plans: each sampler turns a schedule and a time grid into a
:class:`~diffaccel.solvers.plan.Plan` that the loop runs on the fused ops.

Sampler names follow k-diffusion and ComfyUI: the ODE samplers (ddim,
euler, heun, DPM-Solver 1-3 single-step, DPM-Solver++ 1-3M, lms, UniPC)
and the stochastic ddpm, ddim with eta, euler_ancestral, dpmpp_2m_sde,
dpmpp_2s_ancestral, pc (predictor-corrector with Langevin steps) and lcm.
"""

from __future__ import annotations

from functools import partial

import torch

from diffaccel import schedules as _schedules
from diffaccel.solvers import (
    ancestral,
    consistency,
    dpm_solver_pp,
    lms,
    predictor_corrector,
    single_step,
    unipc,
)
from diffaccel.solvers.plan import PREDICTION_TYPES, Plan, Row, data_prediction_coeffs

SAMPLERS = {
    "ddim": dpm_solver_pp.ddim_plan,
    "dpmpp_1m": partial(dpm_solver_pp.multistep_plan, order=1, name="dpmpp_1m"),
    "dpmpp_2m": partial(dpm_solver_pp.multistep_plan, order=2, name="dpmpp_2m"),
    "dpmpp_3m": partial(dpm_solver_pp.multistep_plan, order=3, name="dpmpp_3m"),
    # Euler on the probability-flow ODE in k-diffusion's variables is, step for
    # step, deterministic DDIM (and DPM-Solver++ order 1): one plan serves all three.
    "euler": partial(dpm_solver_pp.ddim_plan, eta=0.0),
    # DDPM's ancestral sampling is DDIM with eta = 1 (the posterior q(x_s | x_t, x0)).
    "ddpm": partial(dpm_solver_pp.ddim_plan, eta=1.0),
    "euler_ancestral": ancestral.euler_ancestral_plan,
    "dpmpp_2s_ancestral": ancestral.dpmpp_2s_ancestral_plan,
    "dpmpp_2m_sde": partial(dpm_solver_pp.multistep_plan, order=2, sde=True, name="dpmpp_2m_sde"),
    "pc": predictor_corrector.pc_plan,
    "lms": lms.lms_plan,
    "lcm": consistency.lcm_plan,
    "unipc_bh1": partial(unipc.unipc_plan, variant="bh1", name="unipc_bh1"),
    "unipc_bh2": partial(unipc.unipc_plan, variant="bh2", name="unipc_bh2"),
    "heun": single_step.heun_plan,
    "dpm_solver_1": partial(single_step.dpm_solver_plan, order=1, name="dpm_solver_1"),
    "dpm_solver_2": partial(single_step.dpm_solver_plan, order=2, name="dpm_solver_2"),
    "dpm_solver_3": partial(single_step.dpm_solver_plan, order=3, name="dpm_solver_3"),
}

STEP_SELECTIONS = {
    "logsnr": _schedules.logsnr_uniform,
    "time_uniform": _schedules.time_uniform,
    "time_quadratic": _schedules.time_quadratic,
    "karras": _schedules.karras,
    "exponential": _schedules.exponential,
}


# Adaptive step size: the step count depends on the data, so these have no
# plan; diffaccel.sample runs them eagerly (diffaccel.solvers.adaptive).
ADAPTIVE_SAMPLERS = {"dpm_adaptive_12": 2, "dpm_adaptive_23": 3}


def samplers():
    """The sampler names :func:`diffaccel.sample` accepts (all but the adaptive
    ones also have a :func:`plan`)."""
    return sorted(list(SAMPLERS) + list(ADAPTIVE_SAMPLERS))


def plan(
    sampler: str = "dpmpp_2m",
    *,
    steps: int = 20,
    schedule=None,
    spacing: str = "logsnr",
    t_start=None,
    t_end=None,
    prediction_type: str = "epsilon",
    denoise_to_zero: bool = False,
    reverse: bool = False,
    **options,
) -> Plan:
    """The plan of a sampler for a schedule (default: diffusers' linear VP) and
    a step count, its grid chosen by ``spacing`` between t_start and t_end.
    ``denoise_to_zero`` adds a final model call whose data prediction is returned.
    ``reverse=True`` runs the same grid the other way, from t_end up to t_start:
    the probability-flow ODE integrated from data to noise (DDIM inversion with
    "ddim"); only the deterministic samplers run in reverse."""
    if sampler in ADAPTIVE_SAMPLERS:
        raise ValueError(
            f"{sampler} chooses its steps from the data and has no fixed plan; run it with diffaccel.sample"
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(samplers())}")
    if spacing not in STEP_SELECTIONS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(STEP_SELECTIONS)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    schedule = schedule if schedule is not None else _schedules.VPDiscrete.from_diffusers("linear")
    times = STEP_SELECTIONS[spacing](schedule, steps, t_start, t_end)
    if reverse:
        if denoise_to_zero:
            raise ValueError("reverse=True ends at t_start, where there is nothing to denoise: drop denoise_to_zero")
        times = times.flip(0)
    try:
        p = SAMPLERS[sampler](schedule, times, prediction_type=prediction_type, **options)
    except TypeError as error:
        raise ValueError(f"{sampler}: unsupported option ({error})") from None
    if reverse and any(not isinstance(r, Row) or r.noise for r in p.rows):
        raise ValueError(f"reverse=True: {sampler} is stochastic; only the ODE samplers run from data to noise")
    if reverse:
        p.options["reverse"] = True
    if denoise_to_zero:
        # One more model call at the last time, whose data prediction is the result.
        t = float(times[-1])
        c_x, c_m = data_prediction_coeffs(prediction_type, float(schedule.alpha(t)), float(schedule.sigma(t)))
        p.rows.append(Row(t=t, coeffs=(c_x, c_m, 0.0, 1.0, 0.0), d_slot=1))
        p.options["denoise_to_zero"] = True
    row_times = torch.tensor([r.t for r in p.rows], dtype=torch.float64)
    p.row_sigmas = (schedule.sigma(row_times) / schedule.alpha(row_times)).tolist()
    return p


__all__ = ["Plan", "Row", "plan", "samplers", "SAMPLERS", "ADAPTIVE_SAMPLERS"]
