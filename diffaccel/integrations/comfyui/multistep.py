"""ComfyUI's multistep samplers on the fused ops: ipndm and ipndm_v (improved
pseudo-numerical methods with fixed and variable step weights), deis,
res_multistep (RES second order, plain, ancestral and CFG++),
gradient_estimation (plain and CFG++), and sa_solver (stochastic Adams,
predictor-corrector, and its PECE mode). A step in sigma is one fused op that
also writes the derivative the next steps read."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from diffaccel.integrations.comfyui.common import (
    ComfyLoop,
    UnconditionalPrediction,
    add_post_cfg_function,
    patcher_model_sampling,
    solve,
)
from diffaccel.integrations.k_diffusion import common as k_common
from diffaccel.integrations.k_diffusion.common import _sampler, _step, combine_terms, get_ancestral_step

# Adams-Bashforth weights of ipndm, newest derivative first, by order.
_ADAMS_BASHFORTH = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def _variable_step_weights(t: List[float], i: int, order: int) -> List[float]:
    """ipndm_v's weights (Zhang and Chen's iPNDM with variable steps, as ComfyUI
    computes them), newest derivative first, from the sigmas t around step i."""
    if order == 1:
        return [1.0]
    h = t[i + 1] - t[i]
    h1 = t[i] - t[i - 1]
    if order == 2:
        return [(2 + h / h1) / 2, -(h / h1) / 2]
    h2 = t[i - 1] - t[i - 2]
    temp1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [(2 + h / h1) / 2 + temp1, -(h / h1) / 2 - (1 + h1 / h2) * temp1, temp1 * h1 / h2]
    h3 = t[i - 2] - t[i - 3]
    temp2 = (
        ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2)))
        * (h * (h + h1) * (h + h1 + h2))
        / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    g = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        (2 + h / h1) / 2 + temp1 + temp2,
        -(h / h1) / 2 - (1 + h1 / h2) * temp1 - (1 + h1 / h2 + g) * temp2,
        temp1 * h1 / h2 + (h1 / h2 + g * (1 + h2 / h3)) * temp2,
        -temp2 * g * h1 / h2,
    ]


def _ipndm_rows(sigmas: List[float], max_order: int, weights: Callable) -> List[List[float]]:
    """Each step's ei_step coefficients: d = (x - denoised) / sigma, x_next = x +
    (sigma_next - sigma) sum_j w_j d_j over the newest derivatives (an order ComfyUI
    has no formula for leaves x where it is; onto sigma = 0 the loop returns the
    denoised sample)."""
    rows = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        order = min(max_order, i + 1)
        usable = 1 <= order <= 4 and sigma_next != 0
        w = [(sigma_next - sigma) * c for c in weights(sigmas, i, order)] if usable else [0.0]
        rows.append([1.0 / sigma, -1.0 / sigma, 1.0, *w, 0.0])
    return rows


def _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, weights: Callable, tag: str):
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    table = loop.kept_rows((tag, max_order), lambda sigmas: _ipndm_rows(sigmas, max_order, weights))
    x_initial = x
    derivatives = []  # the last three (x - denoised) / sigma, newest last
    for i in loop.steps():
        denoised = loop.denoise_at(x, i)
        # ComfyUI reports the x it was given at every step, not the current one.
        loop.report(x_initial, i, denoised)
        coeffs = table[i]
        k = len(coeffs) - 5  # the derivatives this step's sum reads besides its own
        history = list(reversed(derivatives[len(derivatives) - k :])) if k else []
        x_next, d = _step(x, denoised, history, coeffs, direct=loop.direct)
        if loop.values[i + 1] == 0:
            x_next = denoised
        if max_order == 1:
            raise IndexError("list assignment index out of range")  # ComfyUI's buffer of max_order - 1 = 0 entries
        derivatives = (derivatives + [d])[-3:]
        x = x_next
    return x


@_sampler
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM: Adams-Bashforth steps in sigma on the last max_order derivatives."""
    return _ipndm(
        model, x, sigmas, extra_args, callback, disable, max_order, lambda t, i, order: _ADAMS_BASHFORTH[order], "ipndm"
    )


@_sampler
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with variable step sizes: the multistep weights follow the spacing of the sigmas."""
    return _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, _variable_step_weights, "ipndm_v")


def _nan_to_num(value: float, dtype: torch.dtype) -> float:
    """torch.nan_to_num(value, nan=0.0) of a value of the sigmas' dtype: NaN to 0, +-inf to +-max."""
    if np.isnan(value):
        return 0.0
    if np.isinf(value):
        return float(np.sign(value)) * torch.finfo(dtype).max
    return value


def _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta, cfg_pp):
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    uncond = UnconditionalPrediction()
    if cfg_pp:
        add_post_cfg_function(loop.extra_args, uncond)
    old_sigma_down = old_denoised = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise_at(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        loop.report(x, i, denoised)
        # ComfyUI draws the step's noise whenever sigma_next > 0, also when it adds none (eta = 0).
        noise = noise_sampler(loop.at[i], loop.at[i + 1]) if sigma_next > 0 else None
        s = s_noise * sigma_up if noise is not None else 0.0
        if s == 0:
            noise = None
        if sigma_down == 0 or old_denoised is None:
            r = sigma_down / sigma
            if cfg_pp:  # denoised + sigma_down (x - uncond) / sigma
                x_next, _ = loop.step(x, denoised, [uncond.latest], r, [1.0, -r], noise=noise, s=s, to_d=True)
            else:
                x_next, _ = loop.step(x, denoised, [], r, [1.0 - r], noise=noise, s=s, to_d=True)
        else:
            # RES second-order multistep (Zhang et al. 2023, arXiv:2308.02157) in t = -log sigma.
            h = np.log(sigma) - np.log(sigma_down)
            c2 = (np.log(old_sigma_down) - np.log(loop.values[i - 1])) / h
            phi1 = np.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = _nan_to_num(phi1 - phi2 / c2, loop.sigmas.dtype)
            b2 = _nan_to_num(phi2 / c2, loop.sigmas.dtype)
            e = np.exp(-h)
            if cfg_pp:  # e (x + denoised - uncond) + h (b1 uncond + b2 old)
                history, b = [uncond.latest, old_denoised], [e, h * b1 - e, h * b2]
            else:
                history, b = [old_denoised], [h * b1, h * b2]
            x_next, _ = loop.step(x, denoised, history, e, b, noise=noise, s=s)
        old_denoised = uncond.latest if cfg_pp else denoised
        old_sigma_down = sigma_down
        x = x_next
    return x


@_sampler
def sample_res_multistep(
    model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None
):
    """RES second-order multistep in log sigma."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, 0.0, False)


@_sampler
def sample_res_multistep_cfg_pp(
    model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None
):
    """RES multistep with CFG++ (the unconditional prediction carries the state)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, 0.0, True)


@_sampler
def sample_res_multistep_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    """RES multistep with ancestral noise."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta, False)


@_sampler
def sample_res_multistep_ancestral_cfg_pp(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    """RES multistep with ancestral noise and CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta, True)


@_sampler
def sample_gradient_estimation(
    model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0, cfg_pp=False
):
    """Gradient estimation (Permenter and Yuan): Euler steps plus (ge_gamma - 1) times
    the change of the derivative; with cfg_pp the derivative is the unconditional one."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    uncond = UnconditionalPrediction()
    if cfg_pp:
        add_post_cfg_function(loop.extra_args, uncond)
    old_d: Optional[torch.Tensor] = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        dt = sigma_next - sigma
        extra = (ge_gamma - 1) * dt if i >= 1 else 0.0
        history, b = ([old_d], [-extra]) if i >= 1 else ([], [])
        # One op: d = (x - source) / sigma and the step from it.
        if cfg_pp:  # denoised + sigma_next d (+ extra (d - old_d))
            source, a, b0 = uncond.latest, 0.0, sigma_next + extra
            history, b = history + [denoised], b + [1.0]
        else:  # x + dt d (+ extra (d - old_d))
            source, a, b0 = denoised, 1.0, dt + extra
        coeffs = k_common._COEFFICIENTS.get([1.0 / sigma, -1.0 / sigma, a, b0, *b, 0.0], x.device)
        x_next, d = _step(x, source, history, coeffs, sigma_dtype=loop.sigmas.dtype, direct=loop.direct)
        x = denoised if sigma_next == 0 else x_next
        old_d = d
    return x


@_sampler
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    """Gradient estimation with CFG++."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)


# DEIS's "tab" mode integrates in the time of a VP schedule fitted to sigma in [0.002, 80]
# (diff-sampler's edm2t, with ComfyUI's constants), by a 10,000-point sum.
_DEIS_POINTS = 10000


def _deis_vp_schedule():
    """(beta_min, beta_max) of the VP schedule DEIS's tab mode fits to sigma 0.002 .. 80."""
    epsilon_s, sigma_min, sigma_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (np.log(sigma_min**2 + 1) / epsilon_s - np.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    beta_min = np.log(sigma_max**2 + 1) - 0.5 * beta_d
    return beta_min, beta_d + beta_min


@functools.lru_cache(maxsize=64)
def _deis_tab_coefficients(sigmas: Tuple[float, ...], max_order: int) -> Tuple[Tuple[float, ...], ...]:
    """Per step, the weights of the current and earlier derivatives: the integral over
    the step (in VP time) of the exponential integrator's kernel times each Lagrange
    basis polynomial, as DEIS's tab mode sums it. Kept per schedule: the sums take
    about a millisecond a sampler call, which a run of the same sigmas again skips."""
    beta_0, beta_1 = _deis_vp_schedule()
    sig = np.asarray(sigmas, dtype=np.float64)
    t = (np.sqrt(beta_0**2 + 2 * (beta_1 - beta_0) * np.log(sig**2 + 1)) - beta_0) / (beta_1 - beta_0)
    table = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            table.append(())
            continue
        taus = np.linspace(t[i], t[i + 1], _DEIS_POINTS)
        dtau = (t[i + 1] - t[i]) / _DEIS_POINTS
        alpha = np.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
        integrand = 0.5 * (taus * (beta_1 - beta_0) + beta_0) / np.sqrt(alpha * (1 - alpha))
        nodes = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = np.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float(np.sum(integrand * basis) * dtau))
        table.append(tuple(row))
    return tuple(table)


def _deis_rhoab_coefficients(sigmas: List[float], max_order: int) -> List[List[float]]:
    """DEIS's rhoab mode: the Lagrange polynomials through the earlier sigmas integrated
    exactly over each step in sigma (orders 1 to 3 of history)."""

    def integral_2(a, b, start, end, c):
        value = (end**3 - start**3) / 3 - (end**2 - start**2) * (a + b) / 2 + (end - start) * a * b
        return value / ((c - a) * (c - b))

    def integral_3(a, b, c, start, end, d):
        value = (
            (end**4 - start**4) / 4
            - (end**3 - start**3) * (a + b + c) / 3
            + (end**2 - start**2) * (a * b + a * c + b * c) / 2
            - (end - start) * a * b * c
        )
        return value / ((d - a) * (d - b) * (d - c))

    table = []
    for i in range(len(sigmas) - 1):
        cur, nxt = sigmas[i], sigmas[i + 1]
        order = min(i, max_order)
        p = [sigmas[i - k] for k in range(order + 1)]
        if order == 0:
            table.append([])
        elif order == 1:
            table.append(
                [((nxt - p[1]) ** 2 - (cur - p[1]) ** 2) / (2 * (cur - p[1])), (nxt - cur) ** 2 / (2 * (p[1] - cur))]
            )
        elif order == 2:
            table.append(
                [
                    integral_2(p[1], p[2], cur, nxt, cur),
                    integral_2(cur, p[2], cur, nxt, p[1]),
                    integral_2(cur, p[1], cur, nxt, p[2]),
                ]
            )
        else:
            table.append(
                [
                    integral_3(p[1], p[2], p[3], cur, nxt, cur),
                    integral_3(cur, p[2], p[3], cur, nxt, p[1]),
                    integral_3(cur, p[1], p[3], cur, nxt, p[2]),
                    integral_3(cur, p[1], p[2], cur, nxt, p[3]),
                ]
            )
    return table


@_sampler
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3, deis_mode="tab"):
    """DEIS (Zhang and Chen 2022) as ComfyUI runs it: multistep in sigma with weights
    from the exponential integrator of a VP schedule ("tab") or polynomial
    extrapolation in sigma ("rhoab"); the weights are computed once on the host."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    if deis_mode == "tab":
        table = _deis_tab_coefficients(tuple(loop.values), max_order)
    elif deis_mode == "rhoab":
        table = _deis_rhoab_coefficients(loop.values, max_order)
    else:
        # ComfyUI's coefficient function has no table for another mode: UnboundLocalError.
        raise UnboundLocalError(f"sample_deis: deis_mode must be 'tab' or 'rhoab', got {deis_mode!r}")
    x_initial = x
    derivatives = []  # the last three (x - denoised) / sigma, newest last
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise_at(x, i)
        loop.report(x_initial, i, denoised)  # ComfyUI reports the x it was given
        order = min(max_order, i + 1)
        if sigma_next <= 0:
            order = 1
        if order == 1:
            w = [sigma_next - sigma]
        elif 2 <= order <= 4:
            w = table[i]
            if len(w) != order:  # ComfyUI unpacks the row into `order` names
                raise ValueError(f"too many values to unpack (expected {order})")
        else:
            w = [0.0]  # an order ComfyUI has no formula for leaves x where it is
        history = list(reversed(derivatives[len(derivatives) - (len(w) - 1) :])) if len(w) > 1 else []
        coeffs = k_common._COEFFICIENTS.get([1.0 / sigma, -1.0 / sigma, 1.0, *w, 0.0], x.device)
        x, d = _step(x, denoised, history, coeffs, direct=loop.direct)
        if max_order == 1:
            raise IndexError("list assignment index out of range")  # ComfyUI's buffer of max_order - 1 = 0 entries
        derivatives = (derivatives + [d])[-3:]
    return x


def _exponential_moments(s: float, t: float, order: int, tau: float) -> np.ndarray:
    """(1 + tau^2) times the integral from s to t of exp((1 + tau^2)(x - t)) x^p dx,
    p = 0 .. order - 1, by SA-Solver's integration-by-parts recursion."""
    tau_mul = 1 + tau**2
    p = np.arange(order)
    ends = t**p - s**p * np.exp(-tau_mul * (t - s))
    depth = p[:, None] - p[None, :]
    log_factorial = np.array([math.lgamma(k + 1) for k in range(order)])
    weights = log_factorial[:, None] - log_factorial[None, :]
    if tau > 0:
        weights = weights - depth * np.log(tau_mul)
    matrix = np.tril(np.exp(weights) * np.where(depth % 2 == 0, 1.0, -1.0))
    return matrix @ ends


def _stochastic_adams_weights(
    sigma_next: float,
    lambdas: List[float],
    lam_s: float,
    lam_t: float,
    tau: float,
    simple_order_2: bool,
    corrector: bool,
) -> List[float]:
    """SA-Solver's b coefficients (Xue et al. 2023, eqs. 15 and 18) for the data
    predictions at ``lambdas`` (oldest first): alpha_t times the integrals of their
    Lagrange basis polynomials against the SDE's exponential kernel."""
    tau_mul = 1 + tau**2
    h = lam_t - lam_s
    alpha_t = sigma_next * np.exp(lam_t)
    if simple_order_2 and len(lambdas) == 2:
        if corrector:
            b_1 = alpha_t * (0.5 * tau_mul * h)
            return [alpha_t * -np.expm1(-h * tau_mul) - b_1, b_1]
        b_2 = alpha_t * (0.5 * tau_mul * h**2) / (lambdas[-2] - lam_s)
        return [b_2, alpha_t * -np.expm1(-h * tau_mul) - b_2]
    moments = _exponential_moments(lam_s, lam_t, len(lambdas), tau)
    vandermonde = np.vander(np.asarray(lambdas, dtype=np.float64), len(lambdas), increasing=True).T
    return list(alpha_t * solve(vandermonde, moments))


def _tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> Callable:
    """SA-Solver's default stochasticity: eta on the sigmas between the model's sigma at
    20 % and at 80 % of the schedule, 0 (an ODE step) elsewhere."""
    return lambda sigma: (eta if start_sigma >= float(sigma) >= end_sigma else 0.0) if eta > 0 else 0.0


def _sa_solver(
    model,
    x,
    sigmas,
    extra_args,
    callback,
    disable,
    tau_func,
    s_noise,
    noise_sampler,
    predictor_order,
    corrector_order,
    use_pece,
    simple_order_2,
):
    # Any orders ComfyUI runs (its node takes 1-6 and 0-6): sums of more than the 8
    # tensors of one fused combine are made in several (combine_terms).
    for name, value, least in (("predictor_order", predictor_order, 1), ("corrector_order", corrector_order, 0)):
        if not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"sample_sa_solver: argument '{name}' must be an integer >= {least}, got {value!r}")
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    snr = loop.use_half_log_snr()
    model_sampling = patcher_model_sampling(model)
    lambdas = [snr.of(v) for v in loop.values]
    if tau_func is None:
        default = _tau_interval(model_sampling.percent_to_sigma(0.2), model_sampling.percent_to_sigma(0.8))
        tau_at = lambda i: default(loop.values[i])  # noqa: E731 (host values: no read back)
    else:
        tau_at = lambda i: tau_func(loop.at[i])  # noqa: E731 (the caller's function sees ComfyUI's argument)
    keep = max(predictor_order, corrector_order)
    n = len(loop.values)
    lower_order_to_end = loop.values[-1] == 0
    # The corrected state x_c is kept as terms [(tensor, weight)], made only where it is
    # needed itself (PECE's model input, the result). The corrector and the predictor
    # that made x_pred add the same noise to the same w * x_c_prev, so x_c = x_pred -
    # (the predictor's prediction terms) + (the corrector's): a sum over x_pred and the
    # predictions, which the next predictor folds into its one combine.
    x_pred, h, tau = x, 0.0, 0.0
    corrected = [(x, 1.0)]
    predicted = []  # the prediction terms the last predictor added to w * x_c_prev
    predictions = []
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise_at(x_pred, i)
        loop.report(x_pred, i, denoised)
        predictions = (predictions + [denoised])[-keep:]
        p_order = min(predictor_order, len(predictions))
        c_order = 0 if i == 0 or (sigma_next == 0 and not use_pece) else min(corrector_order, len(predictions))
        if lower_order_to_end:
            p_order = min(p_order, n - 2 - i)
            c_order = min(c_order, n - 1 - i)
        if c_order == 0:
            corrected = [(x_pred, 1.0)]
        else:
            b = _stochastic_adams_weights(
                sigma, lambdas[i - c_order + 1 : i + 1], lambdas[i - 1], lambdas[i], tau, simple_order_2, True
            )
            corrected = [(x_pred, 1.0), *((t, -w) for t, w in predicted), *zip(predictions[-c_order:], b)]
            if use_pece:
                x_corrected = combine_terms(corrected)
                corrected = [(x_corrected, 1.0)]
                denoised = predictions[-1] = loop.denoise_at(x_corrected, i)
        if sigma_next == 0:
            corrected = [(denoised, 1.0)]
            continue
        tau = tau_at(i + 1)
        b = _stochastic_adams_weights(
            sigma_next, lambdas[i - p_order + 1 : i + 1], lambdas[i], lambdas[i + 1], tau, simple_order_2, False
        )
        h = lambdas[i + 1] - lambdas[i]
        predicted = list(zip(predictions[-p_order:], b))
        noise = []
        if tau > 0 and s_noise > 0:
            scale = sigma_next * np.sqrt(-np.expm1(-2 * tau**2 * h)) * s_noise
            noise = [(noise_sampler(loop.at[i], loop.at[i + 1]), scale)]
        if i < n - 2:  # ComfyUI's last prediction is never used (its noise is drawn all the same)
            state = sigma_next / sigma * np.exp(-(tau**2) * h)
            x_pred = combine_terms([(t, state * w) for t, w in corrected] + predicted + noise)
    return combine_terms(corrected)


@_sampler
def sample_sa_solver(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=False,
    tau_func=None,
    s_noise=1.0,
    noise_sampler=None,
    predictor_order=3,
    corrector_order=4,
    use_pece=False,
    simple_order_2=False,
):
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector in the half
    log-SNR, one fused combine per model call (the corrected state folded into the
    next prediction)."""
    if len(sigmas) <= 1:
        return x
    return _sa_solver(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        tau_func,
        s_noise,
        noise_sampler,
        predictor_order,
        corrector_order,
        use_pece,
        simple_order_2,
    )


@_sampler
def sample_sa_solver_pece(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=False,
    tau_func=None,
    s_noise=1.0,
    noise_sampler=None,
    predictor_order=3,
    corrector_order=4,
    simple_order_2=False,
):
    """SA-Solver in PECE mode (the corrected state evaluated again)."""
    return sample_sa_solver(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        tau_func,
        s_noise,
        noise_sampler,
        predictor_order,
        corrector_order,
        True,
        simple_order_2,
    )
