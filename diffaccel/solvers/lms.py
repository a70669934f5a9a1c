"""Linear multistep (k-diffusion's sample_lms, LMSDiscreteScheduler): the
probability-flow ODE in variance-exploding variables, dx/dv = (x - D)/v with
v = sigma/alpha, stepped with the Adams-Bashforth weights of the last
``order`` derivatives, integrated exactly from their Lagrange polynomials in v
(where k-diffusion and diffusers call scipy's quad on the host every step)."""

from __future__ import annotations

from typing import List

from diffaccel.solvers.plan import Plan, Row, data_prediction_coeffs, grid_values


def _poly_mul(p: List[float], q: List[float]) -> List[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _poly_integral(p: List[float], lo: float, hi: float) -> float:
    return sum(c * (hi ** (k + 1) - lo ** (k + 1)) / (k + 1) for k, c in enumerate(p))


def lagrange_weights(nodes: List[float], lo: float, hi: float) -> List[float]:
    """w_j = integral over [lo, hi] of the Lagrange basis polynomial of nodes[j]."""
    weights = []
    for j, vj in enumerate(nodes):
        basis = [1.0]
        for k, vk in enumerate(nodes):
            if k != j:
                basis = _poly_mul(basis, [-vk / (vj - vk), 1.0 / (vj - vk)])
        weights.append(_poly_integral(basis, lo, hi))
    return weights


def lms_plan(schedule, times, *, order: int = 4, prediction_type: str = "epsilon") -> Plan:
    if order not in (1, 2, 3, 4):
        raise ValueError(f"lms: 'order' must be 1 to 4, got {order}")
    alpha, sigma, ve = grid_values(schedule, times)
    rows = []
    for i in range(len(times) - 1):
        step_order = min(order, i + 1)
        c_x0, c_m0 = data_prediction_coeffs(prediction_type, alpha[i], sigma[i])
        # d = (x / alpha - x0) / v: the VE derivative, kept as history for later steps.
        c_x, c_m = (1.0 / alpha[i] - c_x0) / ve[i], -c_m0 / ve[i]
        w = lagrange_weights([ve[i - j] for j in range(step_order)], ve[i], ve[i + 1])
        newest = 1 + i % order
        history = tuple(1 + (i - j) % order for j in range(1, step_order))
        coeffs = (c_x, c_m, alpha[i + 1] / alpha[i], *(alpha[i + 1] * wj for wj in w), 0.0)
        rows.append(Row(t=float(times[i]), coeffs=coeffs, d_slot=newest, history=history, order=step_order))
    return Plan("lms", rows, 1 + order, times, dict(order=order, prediction_type=prediction_type))
