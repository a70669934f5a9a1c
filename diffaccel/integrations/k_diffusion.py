"""k-diffusion's samplers on the fused ops: the same functions, signatures,
callback dicts and noise-sampler semantics as ``k_diffusion.sampling``, so a
k-diffusion user changes one import::

    from diffaccel.integrations import k_diffusion as K    # was: import k_diffusion.sampling as K
    x = K.sample_dpmpp_2m(denoiser, x, K.get_sigmas_karras(25, 0.03, 14.6))

``model(x, sigma * s_in, **extra_args)`` returns the denoised sample, as in
k-diffusion. Each step is one fused ``ei_step`` (plus a ``multistep_combine``
where s_churn adds noise), with the step's coefficients computed on the host in
float64 from the sigmas, which are read once. Random numbers are drawn exactly
where k-diffusion draws them (``torch.randn_like`` for s_churn, the noise
sampler for ancestral steps), so a seeded run gives the same images up to
rounding (about 1e-6 relative per step in float32: the update is one fused
expression instead of k-diffusion's chain of tensor ops).

Covered so far: get_sigmas_karras / exponential / polyexponential / vp,
sample_euler, sample_euler_ancestral, sample_heun, sample_dpm_2,
sample_dpm_2_ancestral and sample_dpmpp_2m.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

from diffaccel import ops


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """Karras et al. (2022): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho).to(device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu"):
    """Evenly spaced in log sigma, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp())


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.0, device="cpu"):
    """log sigma a polynomial of degree rho in the step, then 0."""
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    log_min = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device="cpu"):
    """The continuous VP schedule's sigma at evenly spaced t from 1 to eps_s, then 0."""
    t = torch.linspace(1, eps_s, n, device=device)
    return _append_zero(torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1))


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up) of an ancestral step, as k-diffusion computes them."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def default_noise_sampler(x):
    return lambda sigma, sigma_next: torch.randn_like(x)


class _Loop:
    """What every sampler shares: the sigmas read once, the model call with
    k-diffusion's arguments, the callback dict, the progress bar, and one fused
    step from a coefficient row."""

    def __init__(self, model, x, sigmas, extra_args, callback, disable):
        self.model, self.callback = model, callback
        self.extra_args = {} if extra_args is None else extra_args
        self.sigmas = sigmas
        self.values: List[float] = [float(v) for v in sigmas.tolist()]  # the one host read of the sigmas
        self.s_in = x.new_ones([x.shape[0]])
        self.device = x.device
        self.disable = disable

    def steps(self):
        n = len(self.values) - 1
        try:
            from tqdm.auto import trange
        except ImportError:
            return range(n)
        return trange(n, disable=self.disable)

    def denoise(self, x, sigma):
        return self.model(x, sigma * self.s_in, **self.extra_args)

    def report(self, x, i, sigma_hat, denoised):
        if self.callback is not None:
            self.callback({"x": x, "i": i, "sigma": self.sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})

    def step(self, x, denoised, history, a, b, noise=None, s=0.0):
        """x_next = a x + b[0] denoised + sum_j b[j+1] history[j] (+ s noise): one ei_step
        whose data term is the denoiser output itself (c_x = 0, c_m = 1)."""
        coeffs = torch.tensor([0.0, 1.0, a, *b, s], dtype=torch.float64, device=self.device)
        return ops.ei_step(x, denoised, history, coeffs, noise=noise)


def _churn(loop: _Loop, x, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic churn: (x, sigma_hat tensor, sigma_hat value). The
    noise is drawn every step, as k-diffusion draws it, even when unused."""
    sigma = loop.values[i]
    gamma = min(s_churn / (len(loop.values) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = torch.randn_like(x)
    sigma_hat = loop.sigmas[i] * (gamma + 1)
    if gamma > 0:
        scale = s_noise * ((sigma * (gamma + 1)) ** 2 - sigma**2) ** 0.5
        x = ops.multistep_combine([x, eps], torch.tensor([1.0, scale], dtype=torch.float64, device=x.device))
    return x, sigma_hat, sigma * (gamma + 1)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler steps (Karras et al. 2022, Algorithm 2 with first-order steps)."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat)
        loop.report(x, i, sigma_hat, denoised)
        r = loop.values[i + 1] / sh
        x, _ = loop.step(x, denoised, [], r, [1.0 - r])
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler: Optional[Callable] = None):
    """Ancestral sampling with Euler steps."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise(x, loop.sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        loop.report(x, i, loop.sigmas[i], denoised)
        r = sigma_down / sigma
        noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]) if sigma_next > 0 else None
        x, _ = loop.step(x, denoised, [], r, [1.0 - r], noise=noise, s=s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun steps (Karras et al. 2022, Algorithm 2); an Euler step to sigma = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat)
        loop.report(x, i, sigma_hat, denoised)
        sn = loop.values[i + 1]
        r = sn / sh
        x_2, _ = loop.step(x, denoised, [], r, [1.0 - r])
        if sn == 0:
            x = x_2
            continue
        # x + dt/2 (d + d_2) with d = (x - denoised)/sh, d_2 = (x_2 - denoised_2)/sn, dt = sn - sh.
        denoised_2 = loop.denoise(x_2, loop.sigmas[i + 1])
        half = (sn - sh) / 2
        x, _ = loop.step(x_2, denoised_2, [x, denoised], half / sn, [-half / sn, 1.0 + half / sh, -half / sh])
    return x


def _dpm_2_step(loop: _Loop, x, denoised, sigma_from, sigma_from_t, sigma_to, draw_noise=None, s=0.0):
    """DPM-Solver-2 in sigma (k-diffusion's sample_dpm_2): a midpoint evaluation at
    the geometric mean of the sigmas; an Euler step (and no noise) when sigma_to = 0.
    draw_noise() is called after the midpoint's model call, where k-diffusion draws."""
    r = sigma_to / sigma_from
    if sigma_to == 0:
        return loop.step(x, denoised, [], r, [1.0 - r])[0]
    sigma_mid = math.exp(0.5 * (math.log(sigma_from) + math.log(sigma_to)))
    r_mid = sigma_mid / sigma_from
    x_2, _ = loop.step(x, denoised, [], r_mid, [1.0 - r_mid])
    mid_t = sigma_from_t.log().lerp(loop.sigmas.new_tensor(sigma_to).log(), 0.5).exp()
    denoised_2 = loop.denoise(x_2, mid_t)
    noise = draw_noise() if draw_noise is not None else None
    # x + (sigma_to - sigma_from) (x_2 - denoised_2) / sigma_mid (+ s noise)
    k = (sigma_to - sigma_from) / sigma_mid
    return loop.step(x_2, denoised_2, [x], k, [-k, 1.0], noise=noise, s=s)[0]


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """k-diffusion's DPM-Solver-2-inspired sampler (Karras et al.'s Algorithm 2 with a midpoint)."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat)
        loop.report(x, i, sigma_hat, denoised)
        x = _dpm_2_step(loop, x, denoised, sh, sigma_hat, loop.values[i + 1])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler: Optional[Callable] = None):
    """Ancestral sampling with DPM-Solver-2 steps."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        sigma = loop.values[i]
        denoised = loop.denoise(x, loop.sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigma, loop.values[i + 1], eta=eta)
        loop.report(x, i, loop.sigmas[i], denoised)
        x = _dpm_2_step(loop, x, denoised, sigma, loop.sigmas[i], sigma_down,
                        draw_noise=lambda: noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]), s=s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M); first order at the first step and at sigma = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    old_denoised = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.denoise(x, loop.sigmas[i])
        loop.report(x, i, loop.sigmas[i], denoised)
        a = sigma_next / sigma
        if sigma_next == 0:
            x, denoised_copy = loop.step(x, denoised, [], 0.0, [1.0])
        else:
            h = math.log(sigma) - math.log(sigma_next)
            phi = -math.expm1(-h)
            if old_denoised is None:
                x, denoised_copy = loop.step(x, denoised, [], a, [phi])
            else:
                half_inv_r = h / (2 * (math.log(loop.values[i - 1]) - math.log(sigma)))
                x, denoised_copy = loop.step(x, denoised, [old_denoised], a, [phi * (1 + half_inv_r), -phi * half_inv_r])
        old_denoised = denoised_copy
    return x


__all__ = [
    "default_noise_sampler", "get_ancestral_step", "get_sigmas_exponential", "get_sigmas_karras",
    "get_sigmas_polyexponential", "get_sigmas_vp", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_dpmpp_2m",
    "sample_euler", "sample_euler_ancestral", "sample_heun",
]
