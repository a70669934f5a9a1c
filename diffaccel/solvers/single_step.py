"""Single-step solvers: several model calls per grid interval, the later ones
at intermediate states. The plan keeps the interval's starting state and the
earlier outputs in history slots, so each call is still one ei_step.

- heun: k-diffusion's sample_heun (Karras et al.), the trapezoidal rule on the
  probability-flow ODE in the variance-exploding variables x / alpha and
  sigma / alpha, here written for any schedule.
- dpm_solver_1/2/3: DPM-Solver (Lu et al. 2022) single-step, noise prediction,
  intermediate points at lambda_s + r h with r = 1/2 (order 2) and
  r = 1/3, 2/3 (order 3), as the official dpm_solver_pytorch ("dpmsolver").
"""

from __future__ import annotations

import math

import torch

from diffaccel.solvers.plan import (
    PREDICTION_TYPES,
    Plan,
    Row,
    data_prediction_coeffs,
    grid_values,
)


def noise_prediction_coeffs(prediction_type: str, alpha: float, sigma: float):
    """(c_x, c_m) with eps = c_x * x + c_m * model_out, where x = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        return 0.0, 1.0
    c_x, c_m = data_prediction_coeffs(prediction_type, alpha, sigma)  # x0 = c_x x + c_m out
    return (1.0 - alpha * c_x) / sigma, -alpha * c_m / sigma


def heun_plan(schedule, times, *, prediction_type: str = "epsilon") -> Plan:
    """Two model calls per interval. Buffers: 0 state, 1 first data prediction,
    2 the Euler predictor state (its data prediction overwrites it in place)."""
    alpha, sigma, ve = grid_values(schedule, times)
    rows = []
    for i in range(len(times) - 1):
        a_s, a_t, ve_s, ve_t = alpha[i], alpha[i + 1], ve[i], ve[i + 1]
        delta = ve_t - ve_s
        # Predictor: Euler from x_i to the state at t_{i+1} (kept in buffer 2).
        c_x, c_m = data_prediction_coeffs(prediction_type, a_s, sigma[i])
        rows.append(
            Row(
                t=float(times[i]),
                coeffs=(c_x, c_m, sigma[i + 1] / sigma[i], a_t - sigma[i + 1] * a_s / sigma[i], 0.0),
                x_slot=0,
                out_slot=2,
                d_slot=1,
                order=1,
            )
        )
        # Corrector: the average of the two slopes, from x_i (history) and D_1 (history).
        c_x, c_m = data_prediction_coeffs(prediction_type, a_t, sigma[i + 1])
        coeffs = (
            c_x,
            c_m,
            delta / (2 * ve_t),
            -a_t * delta / (2 * ve_t),
            a_t / a_s * (1 + delta / (2 * ve_s)),
            -a_t * delta / (2 * ve_s),
            0.0,
        )
        rows.append(Row(t=float(times[i + 1]), coeffs=coeffs, x_slot=2, out_slot=0, d_slot=2, history=(0, 1), order=2))
    return Plan("heun", rows, 3, times, dict(prediction_type=prediction_type))


def dpm_solver_interval(schedule, t_s: float, t_t: float, order: int, prediction_type: str, out_slot: int = 0):
    """The rows of one DPM-Solver-``order`` step from t_s to t_t, and the
    coefficients of the one-order-lower estimate that the same model calls give
    (for adaptive step control): over [x, eps_s] for order 2, over
    [x, eps_s, eps_1] (buffers 0, 1, 3, read after the second row) for order 3.

    Buffers: 0 the state x (kept), 1 eps_s, 2 the intermediate states, 3 eps_1;
    the result goes to ``out_slot``."""
    lam_s, lam_t = float(schedule.lambda_(t_s)), float(schedule.lambda_(t_t))
    a_s, s_s = float(schedule.alpha(t_s)), float(schedule.sigma(t_s))
    a_t, s_t = float(schedule.alpha(t_t)), float(schedule.sigma(t_t))
    h = lam_t - lam_s
    cx, cm = noise_prediction_coeffs(prediction_type, a_s, s_s)
    phi = math.expm1(h)

    def at(lam):
        t = float(schedule.t_from_lambda(torch.tensor(lam, dtype=torch.float64)))
        return t, float(schedule.alpha(t)), float(schedule.sigma(t))

    if order == 1:  # DDIM in noise prediction
        return [Row(t=t_s, coeffs=(cx, cm, a_t / a_s, -s_t * phi, 0.0), out_slot=out_slot, order=1)], None
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    t1, a1, s1 = at(lam_s + r1 * h)
    # u1 = a1/a_s x - s1 expm1(r1 h) eps_s  (buffer 2); eps_s kept in buffer 1.
    rows = [Row(t=t_s, coeffs=(cx, cm, a1 / a_s, -s1 * math.expm1(r1 * h), 0.0), out_slot=2, d_slot=1, order=1)]
    cx1, cm1 = noise_prediction_coeffs(prediction_type, a1, s1)
    # Second order: x_t = a_t/a_s x - s_t phi eps_s - s_t/(2 r1) phi (eps_1 - eps_s)
    k = s_t / (2 * r1) * phi
    if order == 2:
        rows.append(
            Row(
                t=t1,
                coeffs=(cx1, cm1, 0.0, -k, a_t / a_s, -s_t * phi + k, 0.0),
                x_slot=2,
                out_slot=out_slot,
                d_slot=2,
                history=(0, 1),
                order=2,
            )
        )
        return rows, (a_t / a_s, -s_t * phi)
    r2 = 2.0 / 3.0
    t2, a2, s2 = at(lam_s + r2 * h)
    phi2 = math.expm1(r2 * h)
    k1 = s2 * r2 / r1 * (phi2 / (r2 * h) - 1.0)
    # u2 = a2/a_s x - s2 phi2 eps_s - k1 (eps_1 - eps_s)  (into buffer 2, over u1); eps_1 into buffer 3.
    rows.append(
        Row(
            t=t1,
            coeffs=(cx1, cm1, 0.0, -k1, a2 / a_s, -s2 * phi2 + k1, 0.0),
            x_slot=2,
            out_slot=2,
            d_slot=3,
            history=(0, 1),
            order=2,
        )
    )
    cx2, cm2 = noise_prediction_coeffs(prediction_type, a2, s2)
    k2 = s_t / r2 * (phi / h - 1.0)
    # x_t = a_t/a_s x - s_t phi eps_s - k2 (eps_2 - eps_s); eps_2 overwrites u2 in place.
    rows.append(
        Row(
            t=t2,
            coeffs=(cx2, cm2, 0.0, -k2, a_t / a_s, -s_t * phi + k2, 0.0),
            x_slot=2,
            out_slot=out_slot,
            d_slot=2,
            history=(0, 1),
            order=3,
        )
    )
    return rows, (a_t / a_s, -s_t * phi + k, -k)


def dpm_solver_plan(
    schedule, times, *, order: int = 2, prediction_type: str = "epsilon", name: str = "dpm_solver_2"
) -> Plan:
    """DPM-Solver-``order`` single-step: ``order`` model calls per interval of the grid."""
    if order not in (1, 2, 3):
        raise ValueError(f"{name}: 'order' must be 1, 2 or 3, got {order}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    rows = []
    for i in range(len(times) - 1):
        rows.extend(dpm_solver_interval(schedule, float(times[i]), float(times[i + 1]), order, prediction_type)[0])
    buffers = {1: 2, 2: 3, 3: 4}[order]  # the state, eps_s, then u and eps_1 as the order needs
    return Plan(name, rows, buffers, times, dict(order=order, prediction_type=prediction_type))
