"""Ancestral sampling: a deterministic step to a lower noise level, then fresh
noise back up to the target one (k-diffusion's sample_euler_ancestral and
sample_dpmpp_2s_ancestral).

With VE noise levels v = sigma/alpha, a step from v_s to v_t splits into
v_up = min(v_t, eta sqrt(v_t^2 (v_s^2 - v_t^2) / v_s^2)) and
v_down = sqrt(v_t^2 - v_up^2); the Euler step goes to v_down and noise of
std v_up is added, all written here in the schedule's own (VP) state.
"""

from __future__ import annotations

import math

import torch

from diffaccel.solvers.plan import Plan, Row, data_prediction_coeffs, grid_values


def ancestral_split(v_s: float, v_t: float, eta: float):
    """(v_down, v_up) for a step between VE noise levels v_s > v_t."""
    v_up = min(v_t, eta * math.sqrt(v_t * v_t * (v_s * v_s - v_t * v_t) / (v_s * v_s)))
    return math.sqrt(v_t * v_t - v_up * v_up), v_up


def _check(name, eta, s_noise):
    if not eta >= 0 or not s_noise >= 0:
        raise ValueError(f"{name}: 'eta' and 's_noise' must be >= 0, got {eta}, {s_noise}")


def euler_ancestral_plan(
    schedule, times, *, eta: float = 1.0, s_noise: float = 1.0, prediction_type: str = "epsilon"
) -> Plan:
    _check("euler_ancestral", eta, s_noise)
    alpha, sigma, v = grid_values(schedule, times)
    rows = []
    for i in range(len(times) - 1):
        a_s, a_t, v_s, v_t = alpha[i], alpha[i + 1], v[i], v[i + 1]
        v_down, v_up = ancestral_split(v_s, v_t, eta)
        ratio = v_down / v_s
        c_x, c_m = data_prediction_coeffs(prediction_type, a_s, sigma[i])
        coeffs = (c_x, c_m, a_t / a_s * ratio, a_t * (1.0 - ratio), a_t * v_up * s_noise)
        rows.append(Row(t=float(times[i]), coeffs=coeffs, noise=True))
    return Plan("euler_ancestral", rows, 2, times, dict(eta=eta, s_noise=s_noise, prediction_type=prediction_type))


def dpmpp_2s_ancestral_plan(
    schedule, times, *, eta: float = 1.0, s_noise: float = 1.0, prediction_type: str = "epsilon"
) -> Plan:
    """DPM-Solver++(2S) to v_down through the midpoint in log v, then noise up
    to the next level; eta = 0 is the deterministic second-order DPM-Solver++(2S).
    Buffers: 0 state, 1 first data prediction, 2 the midpoint state."""
    _check("dpmpp_2s_ancestral", eta, s_noise)
    alpha, sigma, v = grid_values(schedule, times)
    rows = []
    for i in range(len(times) - 1):
        a_i, a_n, v_i, v_n = alpha[i], alpha[i + 1], v[i], v[i + 1]
        v_down, v_up = ancestral_split(v_i, v_n, eta)
        h = math.log(v_i / v_down)
        v_mid = v_i * math.exp(-0.5 * h)
        t_mid = float(schedule.t_from_lambda(torch.tensor(-math.log(v_mid), dtype=torch.float64)))
        a_mid, s_mid = float(schedule.alpha(t_mid)), float(schedule.sigma(t_mid))
        c_x, c_m = data_prediction_coeffs(prediction_type, a_i, sigma[i])
        # Midpoint state (VP at t_mid) from x_i and D_1.
        rows.append(
            Row(
                t=float(times[i]),
                coeffs=(c_x, c_m, a_mid * v_mid / (v_i * a_i), -a_mid * math.expm1(-0.5 * h), 0.0),
                out_slot=2,
                d_slot=1,
                order=1,
            )
        )
        c_x, c_m = data_prediction_coeffs(prediction_type, a_mid, s_mid)
        coeffs = (c_x, c_m, 0.0, -a_n * math.expm1(-h), a_n * v_down / (v_i * a_i), a_n * v_up * s_noise)
        rows.append(Row(t=t_mid, coeffs=coeffs, x_slot=2, out_slot=0, d_slot=2, history=(0,), noise=v_up > 0, order=2))
    return Plan("dpmpp_2s_ancestral", rows, 3, times, dict(eta=eta, s_noise=s_noise, prediction_type=prediction_type))
