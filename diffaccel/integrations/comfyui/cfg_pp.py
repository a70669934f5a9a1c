"""ComfyUI's CFG++ samplers on the fused ops: euler_cfg_pp,
euler_ancestral_cfg_pp, dpmpp_2s_ancestral_cfg_pp and dpmpp_2m_cfg_pp. CFG++
(Chung et al. 2024) steps the state along the unconditional prediction and
lands on the guided one; the unconditional prediction comes from ComfyUI's
``sampler_post_cfg_function`` hook, installed in ``extra_args["model_options"]``
as ComfyUI's samplers install it."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from diffaccel.integrations.comfyui.common import (
    ComfyLoop,
    HalfLogSNR,
    UnconditionalPrediction,
    add_post_cfg_function,
    patcher_model_sampling,
)
from diffaccel.integrations.k_diffusion.common import _sampler, get_ancestral_step


@_sampler
def sample_euler_ancestral_cfg_pp(
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
    """Ancestral Euler steps (DDIM with eta, in the model sampling's alpha and sigma) with CFG++."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    snr = HalfLogSNR(patcher_model_sampling(model))
    uncond = UnconditionalPrediction()
    add_post_cfg_function(loop.extra_args, uncond)
    add_noise = eta > 0 and s_noise > 0
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = denoised
            continue
        alpha_s, alpha_t = sigma * np.exp(snr.of(sigma)), sigma_next * np.exp(snr.of(sigma_next))
        sigma_down, sigma_up = get_ancestral_step(sigma / alpha_s, sigma_next / alpha_t, eta=eta)
        sigma_down = alpha_t * sigma_down
        # alpha_t denoised + sigma_down (x - alpha_s uncond) / sigma (+ alpha_t s_noise sigma_up noise)
        r = sigma_down / sigma
        noise = noise_sampler(loop.at[i], loop.at[i + 1]) if add_noise else None
        s = alpha_t * s_noise * sigma_up if add_noise else 0.0
        x, _ = loop.step(x, denoised, [uncond.latest], r, [alpha_t, -r * alpha_s], noise=noise, s=s, to_d=True)
    return x


@_sampler
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler steps with CFG++."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@_sampler
def sample_dpmpp_2s_ancestral_cfg_pp(
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
    """Ancestral DPM-Solver++(2S) steps with CFG++. The step's last update takes the
    unconditional prediction of the midpoint's model call, as ComfyUI's does."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    uncond = UnconditionalPrediction()
    add_post_cfg_function(loop.extra_args, uncond)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise_at(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        loop.report(x, i, denoised)
        uncond_1 = uncond.latest
        if sigma_down == 0:
            # denoised + sigma_down (x - uncond) / sigma, noise drawn after.
            r = sigma_down / sigma
            noise = noise_sampler(loop.at[i], loop.at[i + 1]) if sigma_next > 0 else None
            x, _ = loop.step(x, denoised, [uncond_1], r, [1.0, -r], noise=noise, s=s_noise * sigma_up, to_d=True)
            continue
        h = np.log(sigma) - np.log(sigma_down)
        r = np.exp(-(-np.log(sigma) + h / 2)) / sigma
        # x_2 = r (x + denoised - uncond) - expm1(-h/2) denoised
        x_2, _ = loop.step(x, denoised, [uncond_1], r, [r - np.expm1(-h / 2), -r])
        t, t_next = loop.at[i].log().neg(), loop.sigma_tensor(sigma_down).log().neg()
        denoised_2 = loop.denoise(x_2, (t + (t_next - t) / 2).neg().exp())
        q = sigma_down / sigma
        noise = noise_sampler(loop.at[i], loop.at[i + 1]) if sigma_next > 0 else None
        # q (x + denoised - uncond_2) - expm1(-h) denoised_2
        x, _ = loop.step(
            x, denoised_2, [denoised, uncond.latest], q, [-np.expm1(-h), q, -q], noise=noise, s=s_noise * sigma_up
        )
    return x


@_sampler
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) with CFG++."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    uncond = UnconditionalPrediction()
    add_post_cfg_function(loop.extra_args, uncond)
    old_uncond = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        h = np.log(sigma) - np.log(sigma_next)
        e = np.exp(-h)
        # denoised + e (x - uncond) (- expm1(-h) / (2 r) (denoised - old_uncond))
        if old_uncond is None or sigma_next == 0:
            x_next, _ = loop.step(x, denoised, [uncond.latest], e, [1.0, -e])
        else:
            k = -np.expm1(-h) / (2 * ((np.log(loop.values[i - 1]) - np.log(sigma)) / h))
            x_next, _ = loop.step(x, denoised, [uncond.latest, old_uncond], e, [1.0 + k, -e, -k])
        old_uncond = uncond.latest
        x = x_next
    return x
