"""Consistency / LCM multistep sampling (Song et al. 2023; Luo et al. 2023,
diffusers' LCMScheduler): at each time the model's data prediction, through
the boundary condition D = c_skip x + c_out x0 (LCM: c_skip = sd^2/((t k)^2 + sd^2),
c_out = t k / sqrt((t k)^2 + sd^2), sd = sigma_data = 0.5, k = timestep_scaling = 10),
is re-noised to the next time with fresh noise; the last step returns D."""

from __future__ import annotations

import math

from diffaccel.solvers.plan import Plan, Row, data_prediction_coeffs


def lcm_plan(
    schedule,
    times,
    *,
    prediction_type: str = "epsilon",
    boundary: bool = True,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> Plan:
    alpha = schedule.alpha(times).tolist()
    sigma = schedule.sigma(times).tolist()
    steps = len(times) - 1
    rows = []
    for i in range(steps):
        c_x, c_m = data_prediction_coeffs(prediction_type, alpha[i], sigma[i])
        if boundary:
            scaled = float(times[i]) * timestep_scaling
            c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
            c_out = scaled / math.sqrt(scaled**2 + sigma_data**2)
            c_x, c_m = c_skip + c_out * c_x, c_out * c_m
        last = i == steps - 1
        coeffs = (c_x, c_m, 0.0, 1.0 if last else alpha[i + 1], 0.0 if last else sigma[i + 1])
        rows.append(Row(t=float(times[i]), coeffs=coeffs, noise=not last))
    return Plan("lcm", rows, 2, times, dict(prediction_type=prediction_type, boundary=boundary))
