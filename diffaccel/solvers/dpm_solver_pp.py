"""DPM-Solver++ multistep (Lu et al. 2022), orders 1 to 3, in data prediction,
and DDIM (Song et al. 2021), which is its first order with optional eta noise.

Between grid times s0 = t_i and t = t_{i+1}, with h = lambda_t - lambda_s0 and
the data predictions m0 (now), m1, m2 (earlier):

    order 1: x_t = sigma_t/sigma_s0 x - alpha_t expm1(-h) m0
    order 2: adds a first difference D1 = (m0 - m1) / r0, r0 = (lambda_s0 - lambda_s1) / h,
             "midpoint": - alpha_t expm1(-h) D1 / 2;  "heun": + alpha_t (expm1(-h)/h + 1) D1
    order 3: D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
             x_t = sigma_t/sigma_s0 x - alpha_t phi1 m0 + alpha_t phi2 D1 - alpha_t phi3 D2,
             phi1 = expm1(-h), phi2 = phi1/h + 1, phi3 = phi2/h - 1/2

(diffusers' scheduling_dpmsolver_multistep and the official dpm_solver_pytorch).
The differences are expanded into one coefficient per history tensor, so each
step is one ei_step reading the state and the earlier data predictions.
"""

from __future__ import annotations

import math
from typing import List, Sequence

from diffaccel.solvers.plan import Plan, Row, data_prediction_coeffs


def _orders(steps: int, solver_order: int, lower_order_final: bool) -> List[int]:
    """Warm-up from order 1, and (as diffusers does below 15 steps) lower orders
    at the last steps, where a large step would make high orders unstable."""
    orders = []
    for i in range(steps):
        order = min(solver_order, i + 1)
        if lower_order_final and steps < 15:
            order = min(order, steps - i)
        orders.append(order)
    return orders


def _combination(order: int, h: float, r: Sequence[float], solver_type: str) -> List[float]:
    """Weights w with  x_t = (sigma_t/sigma_s0) x + alpha_t * sum_j w_j m_j  (m0 newest)."""

    def axpy(a, u, v):  # a * u + v, for weight vectors over (m0, m1, m2)
        return [a * ui + vi for ui, vi in zip(u, v)]

    phi1 = math.expm1(-h)
    w = [-phi1, 0.0, 0.0]
    if order == 1:
        return w[:1]
    d1_0 = [1.0 / r[0], -1.0 / r[0], 0.0]  # (m0 - m1) / r0
    if order == 2:
        scale = -0.5 * phi1 if solver_type == "midpoint" else phi1 / h + 1.0
        return axpy(scale, d1_0, w)[:2]
    d1_1 = [0.0, 1.0 / r[1], -1.0 / r[1]]  # (m1 - m2) / r1
    diff = axpy(-1.0, d1_1, d1_0)  # D1_0 - D1_1
    d1 = axpy(r[0] / (r[0] + r[1]), diff, d1_0)
    d2 = [v / (r[0] + r[1]) for v in diff]
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return axpy(-phi3, d2, axpy(phi2, d1, w))


def multistep_plan(
    schedule,
    times,
    *,
    order: int = 2,
    solver_type: str = "midpoint",
    prediction_type: str = "epsilon",
    lower_order_final: bool = True,
    sde: bool = False,
    s_noise: float = 1.0,
    name: str = "dpmpp_2m",
) -> Plan:
    """A DPM-Solver++(order)M plan over the grid ``times`` (noisiest first).

    ``sde=True`` is SDE-DPM-Solver++ (diffusers' "sde-dpmsolver++", orders 1
    and 2): x_t = sigma_t/sigma_s0 e^-h x + alpha_t (1 - e^-2h) (D0 + c D1)
    + sigma_t sqrt(1 - e^-2h) z, with c = 1/2 (midpoint) or
    (1 - e^-2h)^-1 ((1 - e^-2h)/(-2h) + 1) (heun)."""
    if order not in (1, 2, 3) or (sde and order == 3):
        raise ValueError(f"{name}: 'order' must be 1, 2{'' if sde else ' or 3'}, got {order}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"{name}: 'solver_type' must be 'midpoint' or 'heun', got {solver_type!r}")
    if not s_noise >= 0:
        raise ValueError(f"{name}: 's_noise' must be >= 0, got {s_noise}")
    steps = len(times) - 1
    alpha = schedule.alpha(times).tolist()
    sigma = schedule.sigma(times).tolist()
    lam = schedule.lambda_(times).tolist()
    # Buffers: 0 the state; 1..order the data predictions, newest written each
    # step into the slot of the oldest (a ring, so nothing moves).
    ring = max(order, 1)
    rows = []
    for i, step_order in enumerate(_orders(steps, order, lower_order_final)):
        h = lam[i + 1] - lam[i]
        r = [(lam[i - j] - lam[i - j - 1]) / h for j in range(step_order - 1)]
        if sde:
            decay = -math.expm1(-2.0 * h)  # 1 - e^-2h
            d1 = 0.5 * decay if solver_type == "midpoint" else decay / (-2.0 * h) + 1.0
            w = [decay] if step_order == 1 else [decay + d1 / r[0], -d1 / r[0]]
            a = sigma[i + 1] / sigma[i] * math.exp(-h)
            noise_std = s_noise * sigma[i + 1] * math.sqrt(decay)
        else:
            w = _combination(step_order, h, r, solver_type)
            a = sigma[i + 1] / sigma[i]
            noise_std = 0.0
        c_x, c_m = data_prediction_coeffs(prediction_type, alpha[i], sigma[i])
        newest = 1 + i % ring
        history = tuple(1 + (i - j) % ring for j in range(1, step_order))
        coeffs = (c_x, c_m, a, *(alpha[i + 1] * wj for wj in w), noise_std)
        rows.append(
            Row(
                t=float(times[i]),
                coeffs=tuple(float(c) for c in coeffs),
                d_slot=newest,
                history=history,
                noise=sde,
                order=step_order,
            )
        )
    options = dict(
        order=order, solver_type=solver_type, prediction_type=prediction_type, lower_order_final=lower_order_final
    )
    if sde:
        options.update(sde=True, s_noise=s_noise)
    return Plan(name, rows, 1 + ring, times, options)


def ddim_plan(schedule, times, *, eta: float = 0.0, prediction_type: str = "epsilon") -> Plan:
    """DDIM: x_t = alpha_t x0 + sqrt(sigma_t^2 - s^2) eps + s z, eps = (x - alpha_s x0)/sigma_s,
    s = eta sigma_t/sigma_s sqrt(1 - alpha_s^2 / alpha_t^2) (Song et al. eq. 16, alpha_bar = alpha^2).
    eta = 0 is deterministic (DPM-Solver++ order 1); eta = 1 is DDPM ancestral."""
    if not eta >= 0:
        raise ValueError(f"ddim: 'eta' must be >= 0, got {eta}")
    alpha = schedule.alpha(times).tolist()
    sigma = schedule.sigma(times).tolist()
    rows = []
    for i in range(len(times) - 1):
        a_s, s_s, a_t, s_t = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        noise_std = eta * s_t / s_s * math.sqrt(max(0.0, 1.0 - (a_s / a_t) ** 2))
        direction = math.sqrt(max(0.0, s_t * s_t - noise_std * noise_std))
        c_x, c_m = data_prediction_coeffs(prediction_type, a_s, s_s)
        coeffs = (c_x, c_m, direction / s_s, a_t - direction * a_s / s_s, noise_std)
        rows.append(Row(t=float(times[i]), coeffs=coeffs, noise=eta > 0))
    return Plan("ddim", rows, 2, times, dict(eta=eta, prediction_type=prediction_type))
