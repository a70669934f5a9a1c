"""Ancestral sampling: a deterministic step to a lower noise level, then fresh
noise back up to the target one (k-diffusion's sample_euler_ancestral).

With VE noise levels v = sigma/alpha, a step from v_s to v_t splits into
v_up = min(v_t, eta sqrt(v_t^2 (v_s^2 - v_t^2) / v_s^2)) and
v_down = sqrt(v_t^2 - v_up^2); the Euler step goes to v_down and noise of
std v_up is added, all written here in the schedule's own (VP) state.
"""

from __future__ import annotations

import math

from diffaccel.solvers.plan import Plan, Row, data_prediction_coeffs


def euler_ancestral_plan(schedule, times, *, eta: float = 1.0, s_noise: float = 1.0,
                         prediction_type: str = "epsilon") -> Plan:
    if not eta >= 0 or not s_noise >= 0:
        raise ValueError(f"euler_ancestral: 'eta' and 's_noise' must be >= 0, got {eta}, {s_noise}")
    alpha = schedule.alpha(times).tolist()
    sigma = schedule.sigma(times).tolist()
    rows = []
    for i in range(len(times) - 1):
        a_s, a_t = alpha[i], alpha[i + 1]
        v_s, v_t = sigma[i] / a_s, sigma[i + 1] / a_t
        v_up = min(v_t, eta * math.sqrt(v_t * v_t * (v_s * v_s - v_t * v_t) / (v_s * v_s)))
        v_down = math.sqrt(v_t * v_t - v_up * v_up)
        ratio = v_down / v_s
        c_x, c_m = data_prediction_coeffs(prediction_type, a_s, sigma[i])
        coeffs = (c_x, c_m, a_t / a_s * ratio, a_t * (1.0 - ratio), a_t * v_up * s_noise)
        rows.append(Row(t=float(times[i]), coeffs=coeffs, noise=True))
    return Plan("euler_ancestral", rows, 2, times, dict(eta=eta, s_noise=s_noise, prediction_type=prediction_type))
