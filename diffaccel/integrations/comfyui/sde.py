"""ComfyUI's DPM-Solver++ SDE samplers on the fused ops: dpmpp_sde,
dpmpp_2m_sde (midpoint and heun) and dpmpp_3m_sde, each with its ``_gpu``
twin (the Brownian tree on x's device instead of the CPU). They step in the
model sampling's half log-SNR, so on a flow (CONST) model they follow the flow
ODE/SDE as ComfyUI's do; one fused op per model call."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

import torch

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
        lam_s_t, lam_t_t = snr.of_tensor(loop.at[i]), snr.of_tensor(loop.at[i + 1])
        sigma_s_1_t = snr.sigma_tensor(lam_s_t + r * (lam_t_t - lam_s_t))
        # Step 1: to the intermediate point, ancestrally.
        sd, su = get_ancestral_step(np.exp(-lam_s), np.exp(-lam_s_1), eta)
        h_ = -np.log(sd) - lam_s
        noise = noise_sampler(loop.at[i], sigma_s_1_t) if add_noise else None
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
        noise = noise_sampler(loop.at[i], loop.at[i + 1]) if add_noise else None
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


def _named(function, name: str, doc: str):
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    return function


def _dpmpp_sde_sampler(cpu_tree: bool, name: str, doc: str):
    """sample_dpmpp_sde / _gpu: the same sampler, the Brownian tree on the CPU or on x's device."""

    @_sampler
    def sample(
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
        if len(sigmas) <= 1:
            return x
        return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, cpu_tree)

    return _named(sample, name, doc)


sample_dpmpp_sde = _dpmpp_sde_sampler(
    True, "sample_dpmpp_sde", "DPM-Solver++ (stochastic): two model calls a step, Brownian-tree noise on the CPU."
)
sample_dpmpp_sde_gpu = _dpmpp_sde_sampler(
    False, "sample_dpmpp_sde_gpu", "sample_dpmpp_sde, the Brownian tree on x's device."
)


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
                noise = noise_sampler(loop.at[i], loop.at[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x, _ = loop.step(x, denoised, history, sigma_next / sigma * np.exp(-h * eta), b, noise=noise, s=s)
        old_denoised = denoised
        h_last = h
    return x


def _dpmpp_2m_sde_sampler(cpu_tree: bool, default_solver: str, name: str, doc: str):
    """The four 2M SDE names: midpoint or heun by default, the tree on the CPU or the device."""

    @_sampler
    def sample(
        model,
        x,
        sigmas,
        extra_args=None,
        callback=None,
        disable=None,
        eta=1.0,
        s_noise=1.0,
        noise_sampler: Optional[Callable] = None,
        solver_type=default_solver,
    ):
        if len(sigmas) <= 1:
            return x
        return _dpmpp_2m_sde(
            model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, cpu_tree
        )

    return _named(sample, name, doc)


sample_dpmpp_2m_sde = _dpmpp_2m_sde_sampler(
    True, "midpoint", "sample_dpmpp_2m_sde", "DPM-Solver++(2M) SDE, Brownian-tree noise on the CPU."
)
sample_dpmpp_2m_sde_gpu = _dpmpp_2m_sde_sampler(
    False, "midpoint", "sample_dpmpp_2m_sde_gpu", "sample_dpmpp_2m_sde, the Brownian tree on x's device."
)
sample_dpmpp_2m_sde_heun = _dpmpp_2m_sde_sampler(
    True, "heun", "sample_dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde with the heun correction by default."
)
sample_dpmpp_2m_sde_heun_gpu = _dpmpp_2m_sde_sampler(
    False, "heun", "sample_dpmpp_2m_sde_heun_gpu", "sample_dpmpp_2m_sde_heun, the Brownian tree on x's device."
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
                noise = noise_sampler(loop.at[i], loop.at[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x, _ = loop.step(x, denoised, history, sigma_next / sigma * np.exp(-h * eta), b, noise=noise, s=s)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _dpmpp_3m_sde_sampler(cpu_tree: bool, name: str, doc: str):
    @_sampler
    def sample(
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
        if len(sigmas) <= 1:
            return x
        return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cpu_tree)

    return _named(sample, name, doc)


sample_dpmpp_3m_sde = _dpmpp_3m_sde_sampler(
    True, "sample_dpmpp_3m_sde", "DPM-Solver++(3M) SDE, Brownian-tree noise on the CPU."
)
sample_dpmpp_3m_sde_gpu = _dpmpp_3m_sde_sampler(
    False, "sample_dpmpp_3m_sde_gpu", "sample_dpmpp_3m_sde, the Brownian tree on x's device."
)


def _default_er_sde_noise_scaler(x):
    return x * ((x**0.3).exp() + 10.0)


_ER_SDE_POINTS = 200


@_sampler
def sample_er_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_noise=1.0,
    noise_sampler=None,
    noise_scaler=None,
    max_stage=3,
):
    """Extended reverse-time SDE solver (Cui et al. 2023, VP ER-SDE-Solver-3) as ComfyUI
    runs it: up to three stages from the earlier denoised samples, the stage integrals
    of the noise scaler computed on the host (200 points, as ComfyUI sums them)."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    scaler = _default_er_sde_noise_scaler if noise_scaler is None else noise_scaler
    snr = loop.use_half_log_snr()
    # er_lambda = sigma / alpha; the noise scaler is a function of tensors: given float64 ones on the CPU.
    er = [np.exp(-snr.of(v)) for v in loop.values]

    def scale(values):
        return np.asarray(scaler(torch.as_tensor(values, dtype=torch.float64, device="cpu")), dtype=np.float64)

    points = np.arange(_ER_SDE_POINTS, dtype=np.float64)
    old = older = None  # the two latest denoised samples before this step
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        stage = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            er_s, er_t = er[i], er[i + 1]
            alpha_s, alpha_t = sigma / er_s, sigma_next / er_t
            scaled_s, scaled_t = float(scale(er_s)), float(scale(er_t))
            r = scaled_t / scaled_s
            a, b = alpha_t / alpha_s * r, [alpha_t * (1 - r)]
            history = []
            if stage >= 2:
                dt = er_t - er_s
                step = -dt / _ER_SDE_POINTS
                positions = er_t + points * step
                scaled = scale(positions)
                # Stage 2: c2 (denoised - old) / (er_s - er_{i-1})
                c2 = alpha_t * (dt + np.sum(1 / scaled) * step * scaled_t) / (er_s - er[i - 1])
                b, history = [b[0] + c2, -c2], [old]
                if stage >= 3:
                    # Stage 3: c3 (d_i - d_{i-1}) / ((er_s - er_{i-2}) / 2), d_k the stage-2 differences.
                    c3 = alpha_t * (dt**2 / 2 + np.sum((positions - er_s) / scaled) * step * scaled_t)
                    c3 = c3 / ((er_s - er[i - 2]) / 2)
                    g1, g0 = 1 / (er_s - er[i - 1]), 1 / (er[i - 1] - er[i - 2])
                    b = [b[0] + c3 * g1, b[1] - c3 * (g1 + g0), c3 * g0]
                    history = [old, older]
            noise, s = None, 0.0
            if s_noise > 0:
                noise = noise_sampler(loop.at[i], loop.at[i + 1])
                spread = er_t**2 - er_s**2 * r**2
                s = alpha_t * s_noise * (np.sqrt(spread) if spread >= 0 else 0.0)
            x, _ = loop.step(x, denoised, history, a, b, noise=noise, s=s)
        old, older = denoised, old
    return x


def _seeds(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, fractions):
    """SEEDS-2 (fractions (r,)) and SEEDS-3 ((r_1, r_2)): stochastic explicit exponential
    derivative-free steps in the half log-SNR. The noise of a step is a sum of the
    increments drawn on its sub-intervals: each stage adds the newest increment (the
    op's noise) and carries the earlier ones as history tensors."""
    loop = ComfyLoop(model, x, sigmas, extra_args, callback, disable)
    noise_sampler = loop.default_noise(x, noise_sampler)
    inject = eta > 0 and s_noise > 0
    snr = loop.use_half_log_snr()
    for i in loop.steps():
        sigma, sigma_next = loop.values[i], loop.values[i + 1]
        denoised = loop.evaluate(x, i)
        if sigma_next == 0:
            x = denoised
            continue
        lam_s, lam_t = snr.of(sigma), snr.of(sigma_next)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_s_t, lam_t_t = snr.of_tensor(loop.at[i]), snr.of_tensor(loop.at[i + 1])
        stage_sigmas = [snr.sigma(lam_s + f * h) for f in fractions]
        stage_sigmas_t = [snr.sigma_tensor(torch.lerp(lam_s_t, lam_t_t, f)) for f in fractions]
        # Stage k: x_k = (sigma_k / sigma) e^(-f_k h eta) x - alpha_k sum_j a_kj D_j, D_0 = denoised and
        # D_j the model at stage j; a row maps j to a_kj.
        if len(fractions) == 1:
            r = fractions[0]
            rows = [{0: np.expm1(-r * h_eta)}, {0: np.expm1(-h_eta) * (1 - 1 / (2 * r)), 1: np.expm1(-h_eta) / (2 * r)}]
        else:
            r_1, r_2 = fractions
            a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
            b3 = _h_phi_2(-h_eta) / r_2
            rows = [
                {0: np.expm1(-r_1 * h_eta)},
                {0: np.expm1(-r_2 * h_eta) - a3_2, 1: a3_2},
                {0: np.expm1(-h_eta) - b3, 2: b3},
            ]
        ends = [*zip(fractions, stage_sigmas, stage_sigmas_t), (1.0, sigma_next, loop.at[i + 1])]
        evaluations = [denoised]
        increments, weights = [], []  # the noise increments so far and their weights in this stage's state
        start_t, previous = loop.at[i], 0.0
        for k, (f, sigma_k, sigma_k_t) in enumerate(ends):
            alpha_k = sigma_k * np.exp(snr.of(sigma_k))
            (first, a_first), *others = rows[k].items()
            noise, s = None, 0.0
            if inject:
                # sde_k = sde_{k-1} e^seg + sqrt(-expm1(2 seg)) n_k, seg = (f_{k-1} - f_k) h eta
                segment = (previous - f) * h * eta
                weights = [w * np.exp(segment) for w in weights]
                noise = noise_sampler(start_t, sigma_k_t)
                fresh = np.sqrt(-np.expm1(2 * segment))
                s = fresh * sigma_k * s_noise
            history = [evaluations[j] for j, _ in others] + increments
            b = [-alpha_k * a_first, *(-alpha_k * a for _, a in others), *(w * sigma_k * s_noise for w in weights)]
            x_k, _ = loop.step(
                x, evaluations[first], history, sigma_k / sigma * np.exp(-f * h * eta), b, noise=noise, s=s
            )
            if inject:
                increments, weights = increments + [noise], weights + [fresh]
            previous, start_t = f, sigma_k_t
            if k == len(fractions):
                x = x_k
            else:
                evaluations.append(loop.denoise(x_k, sigma_k_t))
    return x


def _h_phi_2(h):
    """h phi_2(h) = (e^h - 1 - h) / h of the exponential integrators."""
    return (np.expm1(h) - h) / h


@_sampler
def sample_seeds_2(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, r=0.5
):
    """SEEDS-2 (Gonzalez et al. 2023), VP data prediction, two stages."""
    return _seeds(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, (r,))


@_sampler
def sample_seeds_3(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    r_1=1.0 / 3,
    r_2=2.0 / 3,
):
    """SEEDS-3 (Gonzalez et al. 2023), VP data prediction, three stages."""
    return _seeds(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, (r_1, r_2))
