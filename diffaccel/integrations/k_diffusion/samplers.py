"""k-diffusion's fixed-step samplers on the fused ops: Euler, Euler
ancestral, Heun, DPM-2 (and ancestral), LMS, DPM++ 2S ancestral, SDE, 2M,
2M SDE and 3M SDE."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from diffaccel.integrations.k_diffusion import common
from diffaccel.integrations.k_diffusion.common import (
    BrownianTreeNoiseSampler,
    _churn,
    _Loop,
    _sampler,
    default_noise_sampler,
    get_ancestral_step,
)


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
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    return euler_steps(loop, x, lambda loop, x, i: _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise))


def _euler_rows(sigmas):
    """(a, b) of each Euler step without churn: x_next = r x + (1 - r) denoised, r = sigma_{i+1} / sigma_i."""
    ratios = [sigmas[i + 1] / sigmas[i] for i in range(len(sigmas) - 1)]
    return [(r, 1.0 - r) for r in ratios]


def euler_steps(loop: _Loop, x, churn: Optional[Callable]):
    """The Euler loop of sample_euler (k-diffusion's, and ComfyUI's with its churn):
    churn(loop, x, i) -> (x, sigma_hat tensor, sigma_hat value); None where no step
    churns or draws noise (ComfyUI's default): the loop of rows known up front."""
    if churn is None:
        return loop.steps_from_rows(x, _euler_rows, "euler", to_d=True)
    for i in loop.steps():
        x, sigma_hat, sh = churn(loop, x, i)
        denoised = loop.evaluate_churned(x, i, sigma_hat)
        r = loop.values[i + 1] / sh
        x, _ = loop.step(x, denoised, [], r, [1.0 - r], to_d=True)
    return x


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
    """Ancestral sampling with Euler steps."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        r = sigma_down / sigma
        noise = noise_sampler(loop.at[i], loop.at[i + 1]) if sigma_next > 0 else None
        x, _ = loop.step(x, denoised, [], r, [1.0 - r], noise=noise, s=s_noise * sigma_up, to_d=True)
    return x


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
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    return heun_steps(loop, x, lambda loop, x, i: _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise))


def _no_churn(loop: _Loop, x, i):
    """The churn function of a sampler that does not churn: x and sigma_i as they are."""
    return x, None, loop.values[i]


def heun_steps(loop: _Loop, x, churn: Optional[Callable]):
    """The Heun loop of sample_heun; churn as in euler_steps."""
    churn = churn or _no_churn
    for i in loop.steps():
        x, sigma_hat, sh = churn(loop, x, i)
        denoised = loop.evaluate_churned(x, i, sigma_hat)
        sn = loop.values[i + 1]
        r = sn / sh
        x_2, _ = loop.step(x, denoised, [], r, [1.0 - r], to_d=True)
        if sn == 0:
            x = x_2
            continue
        # x + dt/2 (d + d_2) with d = (x - denoised)/sh, d_2 = (x_2 - denoised_2)/sn, dt = sn - sh.
        denoised_2 = loop.denoise_at(x_2, i + 1)
        half = (sn - sh) / 2
        x, _ = loop.step(
            x_2, denoised_2, [x, denoised], half / sn, [-half / sn, 1.0 + half / sh, -half / sh], to_d=True
        )
    return x


def _dpm_2_ratios(sigma_from, sigma_to):
    """(r_mid, k) of a DPM-2 step onto sigma_to > 0: x_2 = r_mid x + (1 - r_mid) denoised
    at the midpoint sigma_mid (the geometric mean of the sigmas), then
    x + k (x_2 - denoised_2) with k = (sigma_to - sigma_from) / sigma_mid."""
    sigma_mid = np.exp(0.5 * (np.log(sigma_from) + np.log(sigma_to)))
    return sigma_mid / sigma_from, (sigma_to - sigma_from) / sigma_mid


def _dpm_2_step(
    loop: _Loop, x, denoised, sigma_from, sigma_from_t, sigma_to, draw_noise=None, s=0.0, scale=1.0, sigma_to_t=None
):
    """DPM-Solver-2 in sigma (k-diffusion's sample_dpm_2): a midpoint evaluation at
    the geometric mean of the sigmas; an Euler step (and no noise) when sigma_to = 0.
    draw_noise() is called after the midpoint's model call, where k-diffusion draws.
    The result is scale * (the step) + s * noise (ComfyUI's flow variant rescales).
    sigma_to_t: sigma_to as a tensor where the caller has one (else made from the value)."""
    r = sigma_to / sigma_from
    if sigma_to == 0:
        return loop.step(x, denoised, [], r, [1.0 - r], to_d=True)[0]
    r_mid, k = _dpm_2_ratios(sigma_from, sigma_to)
    x_2, _ = loop.step(x, denoised, [], r_mid, [1.0 - r_mid], to_d=True)
    sigma_to_t = loop.sigma_tensor(sigma_to) if sigma_to_t is None else sigma_to_t
    denoised_2 = loop.denoise(x_2, _geometric_mean(sigma_from_t, sigma_to_t))
    noise = draw_noise() if draw_noise is not None else None
    # x + (sigma_to - sigma_from) (x_2 - denoised_2) / sigma_mid (+ s noise)
    return loop.step(x_2, denoised_2, [x], scale * k, [-scale * k, scale], noise=noise, s=s, to_d=True)[0]


def _geometric_mean(sigma, sigma_next):
    """The midpoint sigma of a DPM-2 step as k-diffusion computes it (tensor ops: the
    model sees its bits). Elementwise: on the sigmas of a whole loop at once it
    gives each step's."""
    return sigma.log().lerp(sigma_next.log(), 0.5).exp()


def _dpm_2_steps_without_churn(loop: _Loop, x):
    """sample_dpm_2's loop where no step churns (ComfyUI's default): every step's
    coefficient rows and midpoint sigmas are made before the first step (the
    midpoints in one chain of ops, as the steps' sigmas are), then each step is
    two model calls and two fused steps straight to the kernel."""
    values = loop.values
    firsts, seconds = [], []
    for i in range(len(values) - 1):
        if values[i + 1] == 0:  # an Euler step, as _dpm_2_step takes it
            r = values[i + 1] / values[i]
            firsts.append([0.0, 1.0, r, 1.0 - r, 0.0])
            seconds.append(None)
        else:
            r_mid, k = _dpm_2_ratios(values[i], values[i + 1])
            firsts.append([0.0, 1.0, r_mid, 1.0 - r_mid, 0.0])
            seconds.append([0.0, 1.0, k, -k, 1.0, 0.0])
    first = common._COEFFICIENTS.rows(firsts, loop.device)
    second = common._COEFFICIENTS.rows([row or [0.0] * 6 for row in seconds], loop.device)
    mids = loop.kept_model_sigmas("dpm_2 midpoints", lambda sigmas: _geometric_mean(sigmas[:-1], sigmas[1:]))
    for i in loop.steps():
        denoised = loop.denoise_at(x, i)
        loop.report(x, i, denoised)
        x_2 = loop.step_from_row(x, denoised, (), first[i], to_d=True)
        if seconds[i] is None:
            x = x_2
            continue
        x = loop.step_from_row(x_2, loop.call_model(x_2, mids[i]), (x,), second[i], to_d=True)
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
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    return dpm_2_steps(loop, x, lambda loop, x, i: _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise))


def dpm_2_steps(loop: _Loop, x, churn: Optional[Callable]):
    """The loop of sample_dpm_2; churn as in euler_steps."""
    if churn is None:
        return _dpm_2_steps_without_churn(loop, x)
    for i in loop.steps():
        x, sigma_hat, sh = churn(loop, x, i)
        denoised = loop.evaluate_churned(x, i, sigma_hat)
        sigma_hat = loop.at[i] if sigma_hat is None else sigma_hat
        x = _dpm_2_step(loop, x, denoised, sh, sigma_hat, loop.values[i + 1], sigma_to_t=loop.at[i + 1])
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
    """Ancestral sampling with DPM-Solver-2 steps."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        sigma = loop.values[i]
        denoised = loop.evaluate(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigma, loop.values[i + 1], eta=eta)
        x = _dpm_2_step(
            loop,
            x,
            denoised,
            sigma,
            loop.at[i],
            sigma_down,
            draw_noise=lambda: noise_sampler(loop.at[i], loop.at[i + 1]),
            s=s_noise * sigma_up,
        )
    return x


@_sampler
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M); first order at the first step and at sigma = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    old_denoised = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        a = sigma_next / sigma
        if sigma_next == 0:
            x, denoised_copy = loop.step(x, denoised, [], 0.0, [1.0])
        else:
            h = np.log(sigma) - np.log(sigma_next)
            phi = -np.expm1(-h)
            if old_denoised is None:
                x, denoised_copy = loop.step(x, denoised, [], a, [phi])
            else:
                half_inv_r = h / (2 * (np.log(loop.values[i - 1]) - np.log(sigma)))
                x, denoised_copy = loop.step(
                    x, denoised, [old_denoised], a, [phi * (1 + half_inv_r), -phi * half_inv_r]
                )
        old_denoised = denoised_copy
    return x


@_sampler
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep in sigma with the last `order` derivatives (k-diffusion's
    sample_lms), any order (common.lms_loop: one fused step for up to five). The
    weights integrate the Lagrange polynomials exactly, where k-diffusion calls
    scipy's quad on the host every step."""
    order = common.lms_order(order)
    return common.lms_loop(_Loop(model, x, sigmas, extra_args, callback, disable), x, order)


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
    """Ancestral sampling with DPM-Solver++(2S) steps."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        if sigma_down == 0:
            source, a, b = denoised, 0.0, 1.0
        else:
            h = np.log(sigma) - np.log(sigma_down)
            sigma_s = np.exp(-(-np.log(sigma) + h / 2))
            x_2, _ = loop.step(x, denoised, [], sigma_s / sigma, [-np.expm1(-h / 2)])
            t, t_next = loop.at[i].log().neg(), loop.sigma_tensor(sigma_down).log().neg()
            source = loop.denoise(x_2, (t + (t_next - t) / 2).neg().exp())
            a, b = sigma_down / sigma, -np.expm1(-h)
        noise = noise_sampler(loop.at[i], loop.at[i + 1]) if sigma_next > 0 else None
        x, _ = loop.step(x, source, [], a, [b], noise=noise, s=s_noise * sigma_up, to_d=sigma_down == 0)
    return x


def _one_minus_ratio(sigma_to, sigma_from):
    """1 - sigma_to / sigma_from as k-diffusion computes it, -expm1(log(sigma_to / sigma_from))
    (accurate for small steps); 1 when sigma_to = 0."""
    return -np.expm1(np.log(sigma_to / sigma_from)) if sigma_to > 0 else 1.0


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
    """DPM-Solver++ (stochastic, k-diffusion's sample_dpmpp_sde): two model calls a
    step, with Brownian-tree noise by default."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = BrownianTreeNoiseSampler(x, *loop.positive_range()) if noise_sampler is None else noise_sampler
    fac = 1 / (2 * r)
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x, _ = loop.step(x, denoised, [], 0.0, [1.0], to_d=True)
            continue
        h = np.log(sigma) - np.log(sigma_next)
        sigma_s = sigma * np.exp(-h * r)
        # The times the noise sampler and the model see, computed with k-diffusion's
        # tensor ops: a Brownian increment is rough in its end points, so even a
        # rounding difference there would show in the noise.
        t, t_next = loop.at[i].log().neg(), loop.at[i + 1].log().neg()
        sigma_t, sigma_s_t = t.neg().exp(), (t + (t_next - t) * r).neg().exp()
        sigma_next_t = t_next.neg().exp()
        # Step 1: to the intermediate time, ancestrally.
        sd, su = get_ancestral_step(sigma, sigma_s, eta)
        x_2, _ = loop.step(
            x,
            denoised,
            [],
            sd / sigma,
            [_one_minus_ratio(sd, sigma)],
            noise=noise_sampler(sigma_t, sigma_s_t),
            s=s_noise * su,
        )
        denoised_2 = loop.denoise(x_2, sigma_s_t)
        # Step 2: the whole step with the combined data prediction.
        sd, su = get_ancestral_step(sigma, sigma_next, eta)
        phi = _one_minus_ratio(sd, sigma)
        noise = noise_sampler(sigma_t, sigma_next_t)
        x, _ = loop.step(
            x, denoised, [denoised_2], sd / sigma, [phi * (1 - fac), phi * fac], noise=noise, s=s_noise * su
        )
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
    """DPM-Solver++(2M) SDE (midpoint or heun), Brownian-tree noise by default."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = BrownianTreeNoiseSampler(x, *loop.positive_range()) if noise_sampler is None else noise_sampler
    old_denoised, h_last = None, None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = kept = loop.model_output  # k-diffusion's denoising step returns the denoiser's output itself
        else:
            h = np.log(sigma) - np.log(sigma_next)
            eta_h = eta * h
            a = sigma_next / sigma * np.exp(-eta_h)
            phi = -np.expm1(-h - eta_h)
            b, history = [phi], []
            if old_denoised is not None:
                r = h_last / h
                c = (0.5 * phi if solver_type == "midpoint" else phi / (-h - eta_h) + 1) / r
                b, history = [phi + c, -c], [old_denoised]
            noise, s = None, 0.0
            if eta:
                noise = noise_sampler(loop.at[i], loop.at[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * eta_h)) * s_noise
            x, kept = loop.step(x, denoised, history, a, b, noise=noise, s=s)
            h_last = h
        old_denoised = kept
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
    """DPM-Solver++(3M) SDE, Brownian-tree noise by default."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = BrownianTreeNoiseSampler(x, *loop.positive_range()) if noise_sampler is None else noise_sampler
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = kept = loop.model_output  # k-diffusion's denoising step returns the denoiser's output itself
            h = h_1
        else:
            h = np.log(sigma) - np.log(sigma_next)
            h_eta = h * (eta + 1)
            phi = -np.expm1(-h_eta)
            phi_2 = np.expm1(-h_eta) / h_eta + 1
            b, history = [phi], []
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                # phi_2 d1 - phi_3 d2 of k-diffusion, as weights of denoised, denoised_1, denoised_2.
                u = phi_2 * r0 / (r0 + r1) - (phi_2 / h_eta - 0.5) / (r0 + r1)
                b = [phi + phi_2 / r0 + u / r0, -phi_2 / r0 - u * (1 / r0 + 1 / r1), u / r1]
                history = [denoised_1, denoised_2]
            elif h_1 is not None:
                r = h_1 / h
                b, history = [phi + phi_2 / r, -phi_2 / r], [denoised_1]
            noise, s = None, 0.0
            if eta:
                noise = noise_sampler(loop.at[i], loop.at[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x, kept = loop.step(x, denoised, history, np.exp(-h_eta), b, noise=noise, s=s)
        denoised_1, denoised_2 = kept, denoised_1
        h_1, h_2 = h, h_1
    return x
