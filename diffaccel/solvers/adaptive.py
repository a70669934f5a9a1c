"""Adaptive step size (DPM-Solver-12 and -23, Lu et al. 2022, as the official
dpm_solver_pytorch's dpm_solver_adaptive): each trial step runs DPM-Solver-p
and, from the same model calls, the order p-1 estimate; the scaled error
E = max_b RMS((x_high - x_low) / max(atol, rtol max(|x_low|, |x_prev|)))
accepts the step when E <= 1, and the next step in lambda is
min(theta h E^(-1/p), lambda_end - lambda_s).

The step count depends on the data, so this runs eagerly, reading E on the
host once per trial step. Everything else is the fused ops: ei_step for the
stages, multistep_combine for the lower-order estimate, and error_norm for E
(one pass over x_high, x_low and x_prev instead of eight PyTorch ops and four
temporaries)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from diffaccel import ops
from diffaccel.solvers.plan import PREDICTION_TYPES
from diffaccel.solvers.single_step import dpm_solver_interval


def sample_adaptive(
    model: Callable,
    x: torch.Tensor,
    schedule,
    *,
    order: int = 2,
    t_start=None,
    t_end=None,
    prediction_type: str = "epsilon",
    atol: float = 0.0078,
    rtol: float = 0.05,
    theta: float = 0.9,
    h_init: float = 0.05,
    t_err: float = 1e-5,
    callback: Optional[Callable] = None,
    max_trials: int = 10_000,
):
    """Returns (sample, stats) with stats = {"model_calls", "accepted", "rejected"}."""
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive: 'order' must be 2 or 3, got {order}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    if not (atol > 0 and rtol >= 0 and 0 < theta <= 1 and h_init > 0):
        raise ValueError("dpm_adaptive: need atol > 0, rtol >= 0, 0 < theta <= 1 and h_init > 0")
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    schedule.check_range(t_start, t_end)
    lambda_end = float(schedule.lambda_(t_end))
    time_dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    batch = x.shape[0]
    # Buffers: 0 state, 1 eps_s, 2 intermediate states, 3 eps_1, 4 x_high (trial result).
    buffers = [x.clone()] + [torch.empty_like(x) for _ in range(4)]
    x_prev = x.clone()
    s, lambda_s = t_start, float(schedule.lambda_(t_start))
    h = h_init
    stats = {"model_calls": 0, "accepted": 0, "rejected": 0}
    while abs(s - t_end) > t_err:
        if stats["accepted"] + stats["rejected"] >= max_trials:
            raise RuntimeError(
                f"dpm_adaptive: no convergence after {max_trials} trial steps (atol={atol}, rtol={rtol})"
            )
        t = float(schedule.t_from_lambda(torch.tensor(min(lambda_s + h, lambda_end), dtype=torch.float64)))
        rows, low = dpm_solver_interval(schedule, s, t, order, prediction_type, out_slot=4)
        x_low = None
        for k, row in enumerate(rows):
            state = buffers[row.x_slot]
            out = model(state, torch.full((batch,), row.t, dtype=time_dtype, device=x.device))
            c = torch.tensor(row.coeffs, dtype=torch.float64, device=x.device)
            ops.ei_step(
                state, out, [buffers[j] for j in row.history], c, out=(buffers[row.out_slot], buffers[row.d_slot])
            )
            if k == order - 2:  # the lower-order estimate is ready after this call
                parts = [buffers[0], buffers[1]] + ([buffers[3]] if order == 3 else [])
                x_low = ops.multistep_combine(parts, torch.tensor(low, dtype=torch.float64, device=x.device))
        stats["model_calls"] += order
        x_high = buffers[4]
        error = float(ops.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol).max())
        if error <= 1.0:
            buffers[0], buffers[4] = buffers[4], buffers[0]
            x_prev = x_low
            s, lambda_s = t, float(schedule.lambda_(t))
            stats["accepted"] += 1
            if callback is not None:
                callback({"x": buffers[0], "i": stats["accepted"] - 1, "t": s, "error": error})
        else:
            stats["rejected"] += 1
        h = min(theta * h * max(error, 1e-12) ** (-1.0 / order), lambda_end - lambda_s)
    return buffers[0], stats
