"""ComfyUI's multistep samplers in sigma on the fused ops: ipndm and ipndm_v
(improved pseudo-numerical methods with fixed and variable step weights),
res_multistep (RES second order, plain, ancestral and CFG++), and
gradient_estimation (plain and CFG++). Each step is one fused op that also
writes the derivative the next steps read."""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch

from diffaccel.integrations.comfyui.common import ComfyLoop, UnconditionalPrediction, add_post_cfg_function
from diffaccel.integrations.k_diffusion import common as k_common
from diffaccel.integrations.k_diffusion.common import _sampler, _step, get_ancestral_step

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


def _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, weights: Callable):
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    x_initial = x
    derivatives = []  # the last three (x - denoised) / sigma, newest last
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise(x, loop.sigmas[i])
        # ComfyUI reports the x it was given at every step, not the current one.
        loop.report(x_initial, i, loop.sigmas[i], denoised)
        order = min(max_order, i + 1)
        # One op: d = (x - denoised) / sigma, x_next = x + (sigma_next - sigma) sum_j w_j d_j
        # (an order ComfyUI has no formula for leaves x where it is; onto sigma = 0 the
        # result is the denoised sample).
        usable = 1 <= order <= 4 and sigma_next != 0
        w = [(sigma_next - sigma) * c for c in weights(loop.values, i, order)] if usable else [0.0]
        history = list(reversed(derivatives[len(derivatives) - (len(w) - 1) :])) if len(w) > 1 else []
        coeffs = k_common._COEFFICIENTS.get([1.0 / sigma, -1.0 / sigma, 1.0, *w, 0.0], x.device)
        x_next, d = _step(x, denoised, history, coeffs)
        if sigma_next == 0:
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
        model, x, sigmas, extra_args, callback, disable, max_order, lambda t, i, order: _ADAMS_BASHFORTH[order]
    )


@_sampler
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with variable step sizes: the multistep weights follow the spacing of the sigmas."""
    return _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, _variable_step_weights)


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
        denoised = loop.denoise(x, loop.sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        loop.report(x, i, loop.sigmas[i], denoised)
        # ComfyUI draws the step's noise whenever sigma_next > 0, also when it adds none (eta = 0).
        noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]) if sigma_next > 0 else None
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
        x_next, d = _step(x, source, history, coeffs, sigma_dtype=loop.sigmas.dtype)
        x = denoised if sigma_next == 0 else x_next
        old_d = d
    return x


@_sampler
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    """Gradient estimation with CFG++."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)
