"""ComfyUI's DPM-Solver++ SDE samplers on the fused ops: dpmpp_sde,
dpmpp_2m_sde (midpoint and heun) and dpmpp_3m_sde, each with its ``_gpu``
twin (the Brownian tree on x's device instead of the CPU). They step in the
model sampling's half log-SNR, so on a flow (CONST) model they follow the flow
ODE/SDE as ComfyUI's do; one fused op per model call."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from diffaccel.integrations.comfyui.common import ComfyLoop
from diffaccel.integrations.k_diffusion.common import _sampler, get_ancestral_step


def _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, cpu_tree):
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.brownian_noise(x, noise_sampler, cpu=cpu_tree)
    snr = loop.use_half_log_snr()
    fac = 1 / (2 * r)
    add_noise = eta > 0 and s_noise > 0
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = denoised
            continue
        lam_s, lam_t = snr.of(sigma), snr.of(sigma_next)
        lam_s_1 = lam_s + r * (lam_t - lam_s)
        sigma_s_1 = snr.sigma(lam_s_1)
        alpha_s, alpha_s_1, alpha_t = sigma * np.exp(lam_s), sigma_s_1 * np.exp(lam_s_1), sigma_next * np.exp(lam_t)
        # The intermediate sigma the model and the noise sampler get, with ComfyUI's tensor ops.
        lam_s_t, lam_t_t = snr.of_tensor(loop.sigmas[i]), snr.of_tensor(loop.sigmas[i + 1])
        sigma_s_1_t = snr.sigma_tensor(lam_s_t + r * (lam_t_t - lam_s_t))
        # Step 1: to the intermediate point, ancestrally.
        sd, su = get_ancestral_step(np.exp(-lam_s), np.exp(-lam_s_1), eta)
        h_ = -np.log(sd) - lam_s
        noise = noise_sampler(loop.sigmas[i], sigma_s_1_t) if add_noise else None
        x_2, _ = loop.step(
            x,
            denoised,
            [],
            alpha_s_1 / alpha_s * np.exp(-h_),
            [-alpha_s_1 * np.expm1(-h_)],
            noise=noise,
            s=alpha_s_1 * s_noise * su if add_noise else 0.0,
        )
        denoised_2 = loop.denoise(x_2, sigma_s_1_t)
        # Step 2: the whole step with the combined data prediction.
        sd, su = get_ancestral_step(np.exp(-lam_s), np.exp(-lam_t), eta)
        h_ = -np.log(sd) - lam_s
        b = -alpha_t * np.expm1(-h_)
        noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]) if add_noise else None
        x, _ = loop.step(
            x,
            denoised,
            [denoised_2],
            alpha_t / alpha_s * np.exp(-h_),
            [b * (1 - fac), b * fac],
            noise=noise,
            s=alpha_t * s_noise * su if add_noise else 0.0,
        )
    return x


@_sampler
def sample_dpmpp_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
    r=1 / 2,
):
    """DPM-Solver++ (stochastic): two model calls a step, Brownian-tree noise on the CPU by default."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, True)


@_sampler
def sample_dpmpp_sde_gpu(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
    r=1 / 2,
):
    """sample_dpmpp_sde with the Brownian tree on x's device."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, False)


def _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, cpu_tree):
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.brownian_noise(x, noise_sampler, cpu=cpu_tree)
    snr = loop.use_half_log_snr()
    add_noise = eta > 0 and s_noise > 0
    old_denoised, h, h_last = None, None, None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = denoised
        else:
            lam_t = snr.of(sigma_next)
            h = lam_t - snr.of(sigma)
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * np.exp(lam_t)
            phi = -np.expm1(-h_eta)
            b, history = [alpha_t * phi], []
            if old_denoised is not None:
                c = alpha_t * (phi / -h_eta + 1 if solver_type == "heun" else 0.5 * phi) / (h_last / h)
                b, history = [b[0] + c, -c], [old_denoised]
            noise, s = None, 0.0
            if add_noise:
                noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x, _ = loop.step(x, denoised, history, sigma_next / sigma * np.exp(-h * eta), b, noise=noise, s=s)
        old_denoised = denoised
        h_last = h
    return x


@_sampler
def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
    solver_type="midpoint",
):
    """DPM-Solver++(2M) SDE, Brownian-tree noise on the CPU by default."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, True
    )


@_sampler
def sample_dpmpp_2m_sde_gpu(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
    solver_type="midpoint",
):
    """sample_dpmpp_2m_sde with the Brownian tree on x's device."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, False
    )


@_sampler
def sample_dpmpp_2m_sde_heun(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
    solver_type="heun",
):
    """sample_dpmpp_2m_sde with the heun correction by default."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, True
    )


@_sampler
def sample_dpmpp_2m_sde_heun_gpu(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler: Optional[Callable] = None,
    solver_type="heun",
):
    """sample_dpmpp_2m_sde_heun with the Brownian tree on x's device."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, False
    )


def _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cpu_tree):
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.brownian_noise(x, noise_sampler, cpu=cpu_tree)
    snr = loop.use_half_log_snr()
    add_noise = eta > 0 and s_noise > 0
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = denoised
        else:
            lam_t = snr.of(sigma_next)
            h = lam_t - snr.of(sigma)
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * np.exp(lam_t)
            phi_2 = np.expm1(-h_eta) / h_eta + 1
            b, history = [-alpha_t * np.expm1(-h_eta)], []
            if h_2 is not None:
                # alpha_t (phi_2 d1 - phi_3 d2) of ComfyUI as weights of denoised, denoised_1, denoised_2.
                r0, r1 = h_1 / h, h_2 / h
                big, small = alpha_t * phi_2, alpha_t * (phi_2 / h_eta - 0.5)
                p = big * (1 + r0 / (r0 + r1)) - small / (r0 + r1)
                q = (small - big * r0) / (r0 + r1)
                b, history = [b[0] + p / r0, -p / r0 + q / r1, -q / r1], [denoised_1, denoised_2]
            elif h_1 is not None:
                c = alpha_t * phi_2 / (h_1 / h)
                b, history = [b[0] + c, -c], [denoised_1]
            noise, s = None, 0.0
            if add_noise:
                noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x, _ = loop.step(x, denoised, history, sigma_next / sigma * np.exp(-h * eta), b, noise=noise, s=s)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@_sampler
def sample_dpmpp_3m_sde(
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
    """DPM-Solver++(3M) SDE, Brownian-tree noise on the CPU by default."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, True)


@_sampler
def sample_dpmpp_3m_sde_gpu(
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
    """sample_dpmpp_3m_sde with the Brownian tree on x's device."""
    if len(sigmas) <= 1:
        return x
    return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, False)
