"""UniPC (Zhao et al. 2023; diffusers' UniPCMultistepScheduler, data
prediction, B(h) = h for bh1 and expm1(h) for bh2).

Each model call at the predicted state x_i first corrects it (UniC, using the
new model output) and then predicts x_{i+1} from the corrected state (UniP).
Both are linear in the row's input x_i, its data prediction d_i and earlier
data predictions, and the corrected state never needs storing: the previous
row's predictor gives x_i = (sigma_i/sigma_{i-1}) x^c_{i-1} + (terms in earlier
predictions), which the corrector's own (sigma_i/sigma_{i-1}) x^c_{i-1} term
cancels against. So a whole UniPC step is one ei_step over the history of
data predictions. The small linear systems of the method (torch.linalg.solve
on the device in diffusers, with a host sync) are solved here, in the plan.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch

from diffaccel.solvers.plan import Plan, Row, data_prediction_coeffs, grid_values

X = "x"  # the row's input state, in the linear combinations below; ints are model-call indices


def _uni_weights(lam: List[float], s0: int, t: int, order: int, variant: str, corrector: bool):
    """Returns (h_phi_1, B_h, rhos, rks) for a step from grid index s0 to t
    using `order` terms (the earlier predictions at s0-1, s0-2, ...)."""
    h = lam[t] - lam[s0]
    rks = [(lam[s0 - k] - lam[s0]) / h for k in range(1, order)] + [1.0]
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial = 1
    R, b = [], []
    for i in range(1, order + 1):
        R.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if corrector:
        rhos = (
            [0.5]
            if order == 1
            else torch.linalg.solve(torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).tolist()
        )
    elif order == 1:
        rhos = []
    elif order == 2:
        rhos = [0.5]
    else:
        sub = torch.tensor([row[:-1] for row in R[:-1]], dtype=torch.float64)
        rhos = torch.linalg.solve(sub, torch.tensor(b[:-1], dtype=torch.float64)).tolist()
    return h_phi_1, b_h, rhos, rks


def _add(into: Dict, key, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def unipc_plan(
    schedule,
    times,
    *,
    order: int = 2,
    variant: str = "bh2",
    prediction_type: str = "epsilon",
    lower_order_final: bool = True,
    corrector: bool = True,
    name: str = "unipc",
) -> Plan:
    if order not in (1, 2, 3):
        raise ValueError(f"{name}: 'order' must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"{name}: 'variant' must be 'bh1' or 'bh2', got {variant!r}")
    alpha, sigma, _ = grid_values(schedule, times)
    lam = schedule.lambda_(times).tolist()
    steps = len(times) - 1
    ring = order + 1  # data predictions kept: the predictor reads `order`, the corrector one more
    rows = []
    previous_rest: Dict = {}  # x_i minus (sigma_i/sigma_{i-1}) x^c_{i-1}, over model indices
    previous_order = 1
    for i in range(steps):
        # Corrected state x^c_i as a combination of X (x_i), i (d_i) and earlier model indices.
        state: Dict = {X: 1.0}
        if corrector and i > 0:
            c_order = previous_order
            h_phi_1, b_h, rhos, rks = _uni_weights(lam, i - 1, i, c_order, variant, corrector=True)
            state = {X: 1.0}
            for key, value in previous_rest.items():
                _add(state, key, -value)
            _add(state, i - 1, -alpha[i] * h_phi_1)
            for k in range(1, c_order):  # D1_k = (m_{i-1-k} - m_{i-1}) / r_k
                w = -alpha[i] * b_h * rhos[k - 1] / rks[k - 1]
                _add(state, i - 1 - k, w)
                _add(state, i - 1, -w)
            w = -alpha[i] * b_h * rhos[-1]  # rho * (d_i - m_{i-1})
            _add(state, i, w)
            _add(state, i - 1, -w)
        # Predictor from x^c_i to x_{i+1}.
        p_order = min(order, i + 1)
        if lower_order_final:
            p_order = min(p_order, steps - i)
        h_phi_1, b_h, rhos, rks = _uni_weights(lam, i, i + 1, p_order, variant, corrector=False)
        ratio = sigma[i + 1] / sigma[i]
        rest: Dict = {}
        _add(rest, i, -alpha[i + 1] * h_phi_1)
        for k in range(1, p_order):  # D1_k = (m_{i-k} - m_i) / r_k
            w = -alpha[i + 1] * b_h * rhos[k - 1] / rks[k - 1]
            _add(rest, i - k, w)
            _add(rest, i, -w)
        total = {key: ratio * value for key, value in state.items()}
        for key, value in rest.items():
            _add(total, key, value)
        earlier = sorted((k for k in total if k not in (X, i)), reverse=True)
        c_x, c_m = data_prediction_coeffs(prediction_type, alpha[i], sigma[i])
        coeffs = (c_x, c_m, total.get(X, 0.0), total.get(i, 0.0), *(total[k] for k in earlier), 0.0)
        rows.append(
            Row(
                t=float(times[i]),
                coeffs=coeffs,
                d_slot=1 + i % ring,
                history=tuple(1 + k % ring for k in earlier),
                order=p_order,
            )
        )
        # What x_{i+1} holds beyond ratio * x^c_i, for the next corrector.
        previous_rest, previous_order = rest, p_order
    return Plan(
        name,
        rows,
        1 + ring,
        times,
        dict(
            order=order,
            variant=variant,
            prediction_type=prediction_type,
            lower_order_final=lower_order_final,
            corrector=corrector,
        ),
    )
