"""ComfyUI's first- and second-order samplers on the fused ops: euler, heun,
heunpp2, dpm_2, the ancestral samplers (with ComfyUI's rectified-flow variants
on CONST models), lms, dpmpp_2m, ddpm and lcm. Each takes the arguments of
``comfy.k_diffusion.sampling.sample_<name>`` and gives its result; the math is
ComfyUI's, each step one fused op."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from diffaccel.integrations.comfyui.common import (
    _EPS_NOISE_SCALING,
    _FLOW,
    ComfyLoop,
    is_flow,
    outer_model_sampling,
    seeded_noise_sampler,
)
from diffaccel.integrations.k_diffusion import common as k_common
from diffaccel.integrations.k_diffusion import samplers as k_samplers
from diffaccel.integrations.k_diffusion.common import _churn, _sampler, get_ancestral_step


def _comfyui_churn(s_churn, s_tmin, s_tmax, s_noise):
    """ComfyUI's churn in euler, heun and dpm_2: a positive s_churn only, noise drawn
    only on a step that adds it (k-diffusion's draws every step); None without churn."""
    if not s_churn > 0:
        return None
    return lambda loop, x, i: _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise, every_step=False)


@_sampler
def sample_euler(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """Euler steps (Karras et al. 2022, Algorithm 2 with first-order steps)."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    return k_samplers.euler_steps(loop, x, _comfyui_churn(s_churn, s_tmin, s_tmax, s_noise))


@_sampler
def sample_heun(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """Heun steps (Karras et al. 2022, Algorithm 2); an Euler step to sigma = 0."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    return k_samplers.heun_steps(loop, x, _comfyui_churn(s_churn, s_tmin, s_tmax, s_noise))


@_sampler
def sample_heunpp2(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """Heun++ (Carzit's sd-webui-samplers-scheduler, as ComfyUI runs it): an Euler
    step onto the last sigma, a weighted Heun step onto the one before, and
    otherwise a three-evaluation step weighted by sigma / (3 sigma_0)."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    end = loop.values[-1]
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.evaluate_churned(x, i, sigma_hat)
        s1 = loop.values[i + 1]
        dt = s1 - sh
        r = s1 / sh
        x_2, _ = loop.step(x, denoised, [], r, [1.0 - r], to_d=True)
        if s1 == end:
            x = x_2
            continue
        denoised_2 = loop.denoise_at(x_2, i + 1)
        # x + dt * sum_k w_k d_k with d = (x - denoised) / sh, d_2 = (x_2 - denoised_2) / s1, ...
        if loop.values[i + 2] == end:
            w2 = s1 / (2 * loop.values[0])
            c1, c2 = dt * (1 - w2) / sh, dt * w2 / s1
            x, _ = loop.step(x_2, denoised_2, [x, denoised], c2, [-c2, 1.0 + c1, -c1], to_d=True)
            continue
        s2 = loop.values[i + 2]
        r2 = s2 / s1
        x_3, _ = loop.step(x_2, denoised_2, [], r2, [1.0 - r2], to_d=True)
        denoised_3 = loop.denoise_at(x_3, i + 2)
        w2, w3 = s1 / (3 * loop.values[0]), s2 / (3 * loop.values[0])
        c1, c2, c3 = dt * (1 - w2 - w3) / sh, dt * w2 / s1, dt * w3 / s2
        x, _ = loop.step(x_3, denoised_3, [x, denoised, x_2, denoised_2], c3, [-c3, 1.0 + c1, -c1, c2, -c2], to_d=True)
    return x


@_sampler
def sample_dpm_2(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """k-diffusion's DPM-Solver-2-inspired sampler (Karras et al.'s Algorithm 2 with a midpoint)."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    return k_samplers.dpm_2_steps(loop, x, _comfyui_churn(s_churn, s_tmin, s_tmax, s_noise))


class _FlowAncestralStep:
    """ComfyUI's rectified-flow ancestral step (its ``*_RF`` samplers): down to
    sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta), then rescaled by
    alpha_next / alpha_down and renoised to sigma_next."""

    def __init__(self, sigma: float, sigma_next: float, eta: float):
        self.down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
        alpha_next, alpha_down = 1 - sigma_next, 1 - self.down
        self.rescale = alpha_next / alpha_down
        self.renoise = (sigma_next**2 - self.down**2 * alpha_next**2 / alpha_down**2) ** 0.5


@_sampler
def sample_euler_ancestral(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
):
    """Ancestral sampling with Euler steps; on a flow (CONST) model ComfyUI's
    rectified-flow variant."""
    flow = is_flow(outer_model_sampling(model))
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if flow:
            if sigma_next == 0:
                x = denoised
                continue
            step = _FlowAncestralStep(sigma, sigma_next, eta)
            r = step.down / sigma
            if eta > 0:
                noise = noise_sampler(loop.at[i], loop.at[i + 1])
                a, b, s = r * step.rescale, (1 - r) * step.rescale, s_noise * step.renoise
            else:
                noise, a, b, s = None, r, 1 - r, 0.0
            x, _ = loop.step(x, denoised, [], a, [b], noise=noise, s=s)
            continue
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        if sigma_down == 0:
            x = denoised
            continue
        r = sigma_down / sigma
        noise = noise_sampler(loop.at[i], loop.at[i + 1])
        x, _ = loop.step(x, denoised, [], r, [1.0 - r], noise=noise, s=s_noise * sigma_up, to_d=True)
    return x


@_sampler
def sample_dpm_2_ancestral(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
):
    """Ancestral sampling with DPM-Solver-2 steps; on a flow (CONST) model ComfyUI's
    rectified-flow variant."""
    flow = is_flow(outer_model_sampling(model))
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if flow:
            step = _FlowAncestralStep(sigma, sigma_next, eta)
            sigma_down, scale, s = step.down, step.rescale, s_noise * step.renoise
        else:
            sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
            scale, s = 1.0, s_noise * sigma_up
        x = k_samplers._dpm_2_step(
            loop,
            x,
            denoised,
            sigma,
            loop.at[i],
            sigma_down,
            draw_noise=lambda: noise_sampler(loop.at[i], loop.at[i + 1]),
            s=s,
            scale=scale,
        )
    return x


def _flow_half_log_snr(sigma):
    """log((1 - sigma) / sigma), the flow model's half log-SNR, on host floats or tensors."""
    return np.log((1 - sigma) / sigma) if not isinstance(sigma, torch.Tensor) else ((1 - sigma) / sigma).log()


def _flow_sigma(half_log_snr):
    """The inverse of _flow_half_log_snr, 1 / (exp(lambda) + 1), as ComfyUI writes it."""
    if isinstance(half_log_snr, torch.Tensor):
        return (half_log_snr.exp() + 1) ** -1
    return 1 / (np.exp(half_log_snr) + 1)


@_sampler
def sample_dpmpp_2s_ancestral(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
):
    """Ancestral sampling with DPM-Solver++(2S) steps; on a flow (CONST) model
    ComfyUI's rectified-flow variant."""
    if not is_flow(outer_model_sampling(model)):
        if noise_sampler is None:
            noise_sampler = seeded_noise_sampler(x, (extra_args or {}).get("seed", None))
        return k_samplers.sample_dpmpp_2s_ancestral(
            model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler
        )
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        step = _FlowAncestralStep(sigma, sigma_next, eta)
        if sigma_next == 0:
            r = step.down / sigma
            x, _ = loop.step(x, denoised, [], r, [1.0 - r], to_d=True)
            continue
        if sigma == 1.0:
            sigma_s, sigma_s_t = 0.9999, 0.9999
        else:
            # The model's sigma with ComfyUI's tensor ops; the coefficients in float64.
            lam, lam_down = _flow_half_log_snr(sigma), _flow_half_log_snr(step.down)
            sigma_s = _flow_sigma(lam + (lam_down - lam) / 2)
            sigma_t = loop.at[i]
            down_t = loop.at[i + 1] * (1 + (loop.at[i + 1] / sigma_t - 1) * eta)
            lam_t = _flow_half_log_snr(sigma_t)
            sigma_s_t = _flow_sigma(lam_t + 1 / 2 * (_flow_half_log_snr(down_t) - lam_t))
        r_s = sigma_s / sigma
        u, _ = loop.step(x, denoised, [], r_s, [1.0 - r_s])
        denoised_2 = loop.denoise(u, sigma_s_t)
        r = step.down / sigma
        noise, scale, s = None, 1.0, 0.0
        if eta > 0:
            noise = noise_sampler(loop.at[i], loop.at[i + 1])
            scale, s = step.rescale, s_noise * step.renoise
        x, _ = loop.step(x, denoised_2, [], scale * r, [scale * (1.0 - r)], noise=noise, s=s)
    return x


@_sampler
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep in sigma with the last `order` derivatives, any order
    (k_common.lms_loop); the step onto sigma = 0 returns the denoised sample
    (ComfyUI's, where k-diffusion steps)."""
    order = k_common.lms_order(order)
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    return k_common.lms_loop(loop, x, order, denoised_last=True)


sample_dpmpp_2m = k_samplers.sample_dpmpp_2m


@_sampler
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """DDPM ancestral steps in sigma (ComfyUI's generic_step_sampler with
    DDPMSampler_step): x is scaled into the VP state, stepped, and scaled back."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    for i in loop.steps():
        sigma, sigma_prev = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        alpha_cumprod, alpha_cumprod_prev = 1 / (sigma * sigma + 1), 1 / (sigma_prev * sigma_prev + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        # mu = sqrt(1/alpha) (x / sqrt(1 + sigma^2) - c (x - denoised) / sigma),
        # c = (1 - alpha) / sqrt(1 - alpha_cumprod)
        k, c = np.sqrt(1.0 / alpha), (1 - alpha) / np.sqrt(1 - alpha_cumprod)
        out = np.sqrt(1.0 + sigma_prev**2) if sigma_prev != 0 else 1.0
        a, b = out * k * (1 / np.sqrt(1.0 + sigma**2) - c / sigma), out * k * c / sigma
        noise, s = None, 0.0
        if sigma_prev > 0:
            noise = noise_sampler(loop.at[i], loop.at[i + 1])
            s = out * np.sqrt((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod))
        x, _ = loop.step(x, denoised, [], a, [b], noise=noise, s=s)
    return x


@_sampler
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent consistency sampling: the denoised sample, renoised to the next sigma
    with the model sampling's own noise_scaling (sigma noise + x, or on a flow
    model sigma noise + (1 - sigma) x)."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    model_sampling = outer_model_sampling(model)
    scaling = _noise_scaling_kind(model_sampling)
    for i in loop.steps():
        sigma_next = loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        x = denoised
        if sigma_next > 0:
            noise = noise_sampler(loop.at[i], loop.at[i + 1])
            if scaling is None:
                x = model_sampling.noise_scaling(loop.at[i + 1], noise, x)
                continue
            b = 1 - sigma_next if scaling == "flow" else 1.0
            x, _ = loop.step(x, denoised, [], 0.0, [b], noise=noise, s=sigma_next)
    return x


def _noise_scaling_kind(model_sampling) -> Optional[str]:
    """Which noise_scaling a model sampling runs: 'eps' (sigma noise + latent),
    'flow' (sigma noise + (1 - sigma) latent), or None for one of its own."""
    owner = next((cls for cls in type(model_sampling).__mro__ if "noise_scaling" in vars(cls)), None)
    if owner is None:
        return None
    if owner.__name__ in _EPS_NOISE_SCALING:
        return "eps"
    return "flow" if owner.__name__ == _FLOW else None
