"""Pure-PyTorch twins of ComfyUI 0.3.64's samplers (comfy/k_diffusion/sampling.py),
written from their math as a chain of plain tensor ops, the way ComfyUI runs
them: the oracle diffaccel.comfyui is tested against where ComfyUI itself is
not installed. Same signatures as ComfyUI's functions, same callback dicts,
same noise draws (ComfyUI's seeded default noise sampler and Brownian tree)."""

from __future__ import annotations

import math

import torch

from diffaccel.integrations.comfyui.common import BrownianTreeNoiseSampler, seeded_noise_sampler


def _dims(sigma, x):
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def to_d(x, sigma, denoised):
    return (x - denoised) / _dims(sigma, x)


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _flow(model_sampling):
    return any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)


def _outer(model):
    return model.inner_model.inner_model.model_sampling


def _patcher(model):
    return model.inner_model.model_patcher.get_model_object("model_sampling")


def half_log_snr(sigma, model_sampling):
    return sigma.logit().neg() if _flow(model_sampling) else sigma.log().neg()


def sigma_of(lam, model_sampling):
    return lam.neg().sigmoid() if _flow(model_sampling) else lam.neg().exp()


def offset_first(sigmas, model_sampling):
    if len(sigmas) > 1 and _flow(model_sampling) and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = model_sampling.percent_to_sigma(1e-4)
    return sigmas


def _default_noise(x, extra_args, noise_sampler):
    return seeded_noise_sampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler


class TorchsdeBrownianTreeNoiseSampler(BrownianTreeNoiseSampler):
    """ComfyUI's Brownian-tree noise as ComfyUI computes it: torchsde's trees (the
    drop-ins use diffaccel's exact twin of them, so the twins test that too)."""

    @property
    def tree_class(self):
        import torchsde

        return torchsde.BrownianTree


def _brownian(x, sigmas, extra_args, noise_sampler, cpu):
    if noise_sampler is not None:
        return noise_sampler
    return TorchsdeBrownianTreeNoiseSampler(
        x, sigmas[sigmas > 0].min(), sigmas.max(), seed=extra_args.get("seed"), cpu=cpu
    )


def _report(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _hook(extra_args, store):
    def post_cfg(args):
        store[0] = args["uncond_denoised"]
        return args["denoised"]

    options = extra_args.get("model_options", {}).copy()
    options["sampler_post_cfg_function"] = options.get("sampler_post_cfg_function", []) + [post_cfg]
    options["disable_cfg1_optimization"] = True
    extra_args["model_options"] = options


def _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, always_draw=False):
    gamma = 0.0
    if s_churn > 0 or always_draw:
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = torch.randn_like(x) * s_noise if always_draw else None
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        eps = torch.randn_like(x) * s_noise if eps is None else eps
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


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
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


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
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


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
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, always_draw=True)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        if sigmas[i + 2] == end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
        w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def _dpm_2_to(model, x, sigma_from, sigma_to, d, s_in, extra_args):
    """x after a DPM-2 step (or Euler onto 0) from sigma_from to sigma_to; (x, midpoint evaluated)."""
    if sigma_to == 0:
        return x + d * (sigma_to - sigma_from), False
    sigma_mid = sigma_from.log().lerp(torch.as_tensor(sigma_to).log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma_from)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_to - sigma_from), True


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
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x, _ = _dpm_2_to(model, x, sigma_hat, sigmas[i + 1], to_d(x, sigma_hat, denoised), s_in, extra_args)
    return x


def _flow_down(sigma, sigma_next, eta):
    down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - down
    renoise = (sigma_next**2 - down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return down, alpha_next / alpha_down, renoise


def sample_euler_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    flow = _flow(_outer(model))
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if flow:
            if sigmas[i + 1] == 0:
                x = denoised
                continue
            down, rescale, renoise = _flow_down(sigmas[i], sigmas[i + 1], eta)
            ratio = down / sigmas[i]
            x = ratio * x + (1 - ratio) * denoised
            if eta > 0:
                x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
            continue
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def sample_dpm_2_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    flow = _flow(_outer(model))
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if flow:
            down, rescale, renoise = _flow_down(sigmas[i], sigmas[i + 1], eta)
        else:
            down, renoise = ancestral_step(sigmas[i], sigmas[i + 1], eta)
            rescale = 1.0
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x, stepped = _dpm_2_to(model, x, sigmas[i], down, to_d(x, sigmas[i], denoised), s_in, extra_args)
        if stepped:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def sample_dpmpp_2s_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    flow = _flow(_outer(model))
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if flow:
            down, rescale, renoise = _flow_down(sigmas[i], sigmas[i + 1], eta)
            if sigmas[i + 1] == 0:
                x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
            else:
                if sigmas[i] == 1.0:
                    sigma_s = 0.9999
                else:
                    lam = ((1 - sigmas[i]) / sigmas[i]).log()
                    lam_down = ((1 - down) / down).log()
                    sigma_s = ((lam + (lam_down - lam) / 2).exp() + 1) ** -1
                u = sigma_s / sigmas[i] * x + (1 - sigma_s / sigmas[i]) * denoised
                denoised_2 = model(u, sigma_s * s_in, **extra_args)
                x = down / sigmas[i] * x + (1 - down / sigmas[i]) * denoised_2
            if sigmas[i + 1] > 0 and eta > 0:
                x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
            continue
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), torch.as_tensor(down).log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp() * s_in, **extra_args)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def _lagrange_weight(order, t, i, j):
    """The integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of t_{i-j}
    (of the nodes t_i .. t_{i-order+1}), by Gauss-Legendre quadrature (exact here)."""
    points = [-0.906179845938664, -0.538469310105683, 0.0, 0.538469310105683, 0.906179845938664]
    gauss = [0.236926885056189, 0.478628670499366, 0.568888888888889, 0.478628670499366, 0.236926885056189]
    lo, hi = float(t[i]), float(t[i + 1])
    total = 0.0
    for p, w in zip(points, gauss):
        tau = (hi - lo) / 2 * p + (hi + lo) / 2
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - float(t[i - k])) / (float(t[i - j]) - float(t[i - k]))
        total += w * prod
    return total * (hi - lo) / 2


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:] if order > 0 else []
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur = min(i + 1, order)
        x = x + sum(_lagrange_weight(cur, sigmas, i, j) * d for j, d in enumerate(reversed(ds)) if j < cur)
    return x


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        source = denoised
        if old is not None and sigmas[i + 1] != 0:
            r = (t - sigmas[i - 1].log().neg()) / h
            source = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * source
        old = denoised
    return x


def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = (x - denoised) / sigma
        state = x / torch.sqrt(1.0 + sigma**2.0)
        ac, ac_prev = 1 / (sigma * sigma + 1), 1 / (sigma_prev * sigma_prev + 1)
        alpha = ac / ac_prev
        x = (1.0 / alpha).sqrt() * (state - (1 - alpha) * eps / (1 - ac).sqrt())
        if sigma_prev > 0:
            x = x + ((1 - alpha) * (1.0 - ac_prev) / (1.0 - ac)).sqrt() * noise_sampler(sigma, sigma_prev)
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev**2.0)
    return x


def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = _outer(model).noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x


def sample_dpmpp_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    r=1 / 2,
    cpu=True,
):
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian(x, sigmas, extra_args, noise_sampler, cpu)
    s_in = x.new_ones([x.shape[0]])
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        lam_1 = lam_s + r * (lam_t - lam_s)
        sigma_1 = sigma_of(lam_1, ms)
        alpha_s, alpha_1, alpha_t = sigmas[i] * lam_s.exp(), sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        down, up = ancestral_step(lam_s.neg().exp(), lam_1.neg().exp(), eta)
        h_ = down.log().neg() - lam_s
        x_2 = alpha_1 / alpha_s * (-h_).exp() * x - alpha_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_1 * noise_sampler(sigmas[i], sigma_1) * s_noise * up
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        down, up = ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
        h_ = down.log().neg() - lam_s
        mixed = (1 - 1 / (2 * r)) * denoised + 1 / (2 * r) * denoised_2
        x = alpha_t / alpha_s * (-h_).exp() * x - alpha_t * (-h_).expm1() * mixed
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    solver_type="midpoint",
    cpu=True,
):
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian(x, sigmas, extra_args, noise_sampler, cpu)
    s_in = x.new_ones([x.shape[0]])
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms)
    old, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old)
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old, h_last = denoised, h
    return x


def sample_dpmpp_3m_sde(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, cpu=True
):
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _brownian(x, sigmas, extra_args, noise_sampler, cpu)
    s_in = x.new_ones([x.shape[0]])
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms)
    d_1 = d_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                g0, g1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                first = g0 + (g0 - g1) * r0 / (r0 + r1)
                second = (g0 - g1) / (r0 + r1)
                x = x + alpha_t * phi_2 * first - alpha_t * (phi_2 / h_eta - 0.5) * second
            elif h_1 is not None:
                x = x + alpha_t * phi_2 * (denoised - d_1) / (h_1 / h)
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


_AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _ipndm_v_weights(t, i, order):
    if order == 1:
        return [1.0]
    h, h1 = float(t[i + 1] - t[i]), float(t[i] - t[i - 1])
    if order == 2:
        return [1 + h / (2 * h1), -h / (2 * h1)]
    h2 = float(t[i - 1] - t[i - 2])
    a = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [1 + h / (2 * h1) + a, -h / (2 * h1) - (1 + h1 / h2) * a, a * h1 / h2]
    h3 = float(t[i - 2] - t[i - 3])
    b = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) * (
        h * (h + h1) * (h + h1 + h2) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    g = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        1 + h / (2 * h1) + a + b,
        -h / (2 * h1) - (1 + h1 / h2) * a - (1 + h1 / h2 + g) * b,
        a * h1 / h2 + (h1 / h2 + g * (1 + h2 / h3)) * b,
        -b * g * h1 / h2,
    ]


def _ipndm(model, x, sigmas, extra_args, callback, max_order, weights):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    x_next, buffer = x, []
    for i in range(len(sigmas) - 1):
        x_cur = x_next
        denoised = model(x_cur, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = (x_cur - denoised) / sigmas[i]
        order = min(max_order, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        elif 1 <= order <= 4:
            w = weights(sigmas, i, order)
            x_next = x_cur + (sigmas[i + 1] - sigmas[i]) * sum(c * v for c, v in zip(w, [d] + buffer[::-1]))
        buffer = (buffer + [d])[-(max_order - 1) :] if max_order > 1 else buffer + [d]
    return x_next


def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    return _ipndm(model, x, sigmas, extra_args, callback, max_order, lambda t, i, order: _AB[order])


def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    return _ipndm(model, x, sigmas, extra_args, callback, max_order, _ipndm_v_weights)


def _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, cfg_pp):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    uncond = [None]
    if cfg_pp:
        _hook(extra_args, uncond)
    old_down = old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if down == 0 or old is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond[0]) * down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_old = sigmas[i].log().neg(), torch.as_tensor(old_down).log().neg()
            t_next, t_prev = torch.as_tensor(down).log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = (-h).exp() * (x + (denoised - uncond[0])) + h * (b1 * uncond[0] + b2 * old)
            else:
                x = (-h).exp() * x + h * (b1 * denoised + b2 * old)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
        old = uncond[0] if cfg_pp else denoised
        old_down = down
    return x


def sample_res_multistep(
    model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None
):
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, 0.0, False)


def sample_res_multistep_cfg_pp(
    model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None
):
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, 0.0, True)


def sample_res_multistep_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, False)


def sample_res_multistep_ancestral_cfg_pp(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, True)


def sample_gradient_estimation(
    model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0, cfg_pp=False
):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    uncond = [None]
    if cfg_pp:
        _hook(extra_args, uncond)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], uncond[0] if cfg_pp else denoised)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)


def sample_euler_ancestral_cfg_pp(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    ms = _patcher(model)
    uncond = [None]
    _hook(extra_args, uncond)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i], ms).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1], ms).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond[0])
        down, up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + alpha_t * down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


def sample_dpmpp_2s_ancestral_cfg_pp(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    uncond = [None]
    _hook(extra_args, uncond)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if down == 0:
            x = denoised + to_d(x, sigmas[i], uncond[0]) * down
        else:
            t, t_next = sigmas[i].log().neg(), torch.as_tensor(down).log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = (s.neg().exp() / t.neg().exp()) * (x + (denoised - uncond[0])) - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp() * s_in, **extra_args)
            x = (t_next.neg().exp() / t.neg().exp()) * (x + (denoised - uncond[0])) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = {} if extra_args is None else extra_args
    uncond = [None]
    _hook(extra_args, uncond)
    s_in = x.new_ones([x.shape[0]])
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        mix = -torch.exp(-h) * uncond[0]
        if old is not None and sigmas[i + 1] != 0:
            r = (t - sigmas[i - 1].log().neg()) / h
            mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old)
        x = denoised + mix + torch.exp(-h) * x
        old = uncond[0]
    return x


def sample_dpm_fast(
    model,
    x,
    sigma_min,
    sigma_max,
    n,
    extra_args=None,
    callback=None,
    disable=None,
    eta=0.0,
    s_noise=1.0,
    noise_sampler=None,
):
    raise NotImplementedError("tested against k-diffusion's DPM-Solver (the same solver) in test_comfyui.py")


def sample_dpm_adaptive(
    model,
    x,
    sigma_min,
    sigma_max,
    extra_args=None,
    callback=None,
    disable=None,
    order=3,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    pcoeff=0.0,
    icoeff=1.0,
    dcoeff=0.0,
    accept_safety=0.81,
    eta=0.0,
    s_noise=1.0,
    noise_sampler=None,
    return_info=False,
):
    raise NotImplementedError("tested against k-diffusion's DPM-Solver (the same solver) in test_comfyui.py")


def _deis_table_tab(t_steps_sigma, max_order, n_points=10000):
    beta_d = 2 * (math.log(0.002**2 + 1) / 1e-3 - math.log(80.0**2 + 1)) / (1e-3 - 1)
    beta_0 = math.log(80.0**2 + 1) - 0.5 * beta_d
    beta_1 = beta_d + beta_0
    sig = t_steps_sigma.double().cpu()
    t = ((beta_0**2 + 2 * beta_d * (sig**2 + 1).log()).sqrt() - beta_0) / beta_d
    table = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            table.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), n_points, dtype=torch.float64)
        taus.requires_grad_(True)
        with torch.enable_grad():
            log_alpha = -0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0
            (slope,) = torch.autograd.grad(log_alpha.sum(), taus)
        taus = taus.detach()
        alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
        integrand = -0.5 * slope / torch.sqrt(alpha * (1 - alpha))
        nodes = [float(t[i - k]) for k in range(order)]
        row = []
        for j in range(order):
            poly = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    poly = poly * (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float((integrand * poly).sum() * (t[i + 1] - t[i]) / n_points))
        table.append(row)
    return table


def _deis_table_rhoab(sigmas, max_order):
    """The integral over [sigma_i, sigma_{i+1}] of each Lagrange basis polynomial through
    sigma_i .. sigma_{i-order}: by Gauss-Legendre quadrature (exact for these degrees)."""
    table = []
    for i in range(len(sigmas) - 1):
        order = min(i, max_order)
        if order == 0:
            table.append([])
            continue
        nodes = [float(sigmas[i - k]) for k in range(order + 1)]
        table.append([_lagrange_integral(nodes, j, float(sigmas[i]), float(sigmas[i + 1])) for j in range(order + 1)])
    return table


def _lagrange_integral(nodes, j, lo, hi):
    points = [-0.906179845938664, -0.538469310105683, 0.0, 0.538469310105683, 0.906179845938664]
    gauss = [0.236926885056189, 0.478628670499366, 0.568888888888889, 0.478628670499366, 0.236926885056189]
    total = 0.0
    for p, w in zip(points, gauss):
        tau = (hi - lo) / 2 * p + (hi + lo) / 2
        prod = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                prod *= (tau - node) / (nodes[j] - node)
        total += w * prod
    return total * (hi - lo) / 2


def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3, deis_mode="tab"):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    table = _deis_table_tab(sigmas, max_order) if deis_mode == "tab" else _deis_table_rhoab(sigmas, max_order)
    x_next, buffer = x, []
    for i in range(len(sigmas) - 1):
        x_cur = x_next
        denoised = model(x_cur, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = (x_cur - denoised) / sigmas[i]
        order = 1 if sigmas[i + 1] <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x_cur + (sigmas[i + 1] - sigmas[i]) * d
        else:
            row = table[i]
            if len(row) != order:
                raise ValueError(f"too many values to unpack (expected {order})")
            x_next = x_cur + sum(c * v for c, v in zip(row, [d] + buffer[::-1]))
        buffer = (buffer + [d])[-(max_order - 1) :]
    return x_next


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
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    scaler = noise_scaler or (lambda v: v * ((v**0.3).exp() + 10.0))
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms)
    er = half_log_snr(sigmas, ms).neg().exp()
    grid = torch.arange(0, 200.0, dtype=sigmas.dtype)
    old = old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            alpha_s, alpha_t = sigmas[i] / er[i], sigmas[i + 1] / er[i + 1]
            r = scaler(er[i + 1]) / scaler(er[i])
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = er[i + 1] - er[i]
                step = -dt / 200
                positions = er[i + 1] + grid * step
                scaled = scaler(positions)
                d = (denoised - old) / (er[i] - er[i - 1])
                x = x + alpha_t * (dt + (1 / scaled).sum() * step * scaler(er[i + 1])) * d
                if stage >= 3:
                    u = (d - old_d) / ((er[i] - er[i - 2]) / 2)
                    x = x + alpha_t * (dt**2 / 2 + ((positions - er[i]) / scaled).sum() * step * scaler(er[i + 1])) * u
                old_d = d
            if s_noise > 0:
                spread = (er[i + 1] ** 2 - er[i] ** 2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * spread
        old = denoised
    return x


def _h_phi_1(h):
    return torch.expm1(h)


def _h_phi_2(h):
    return (torch.expm1(h) - h) / h


def sample_seeds_2(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, r=0.5
):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lam_t - lam_s
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = sigma_of(lam_1, ms)
        alpha_1, alpha_t = sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * _h_phi_1(-r * h * (eta + 1)) * denoised
        if inject:
            sde = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        mixed = torch.lerp(denoised, denoised_2, 1 / (2 * r))
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * _h_phi_1(-h * (eta + 1)) * mixed
        if inject:
            segment = (r - 1) * h * eta
            sde = sde * segment.exp() + (2 * segment).expm1().neg().sqrt() * noise_sampler(sigma_1, sigmas[i + 1])
            x = x + sde * sigmas[i + 1] * s_noise
    return x


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
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = sigma_of(lam_1, ms), sigma_of(lam_2, ms)
        alpha_1, alpha_2, alpha_t = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * _h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        a_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a_1 = _h_phi_1(-r_2 * h_eta) - a_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a_1 * denoised + a_2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            sde = sde * segment.exp() + (2 * segment).expm1().neg().sqrt() * noise_sampler(sigma_1, sigma_2)
            x_3 = x_3 + sde * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)
        b_3 = _h_phi_2(-h_eta) / r_2
        b_1 = _h_phi_1(-h_eta) - b_3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b_1 * denoised + b_3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            sde = sde * segment.exp() + (2 * segment).expm1().neg().sqrt() * noise_sampler(sigma_2, sigmas[i + 1])
            x = x + sde * sigmas[i + 1] * s_noise
    return x


def _sa_b(sigma_next, lambdas, lam_s, lam_t, tau, simple, corrector):
    tau_mul = 1 + tau**2
    h = lam_t - lam_s
    alpha_t = sigma_next * lam_t.exp()
    n = lambdas.shape[0]
    if simple and n == 2:
        if corrector:
            b_1 = alpha_t * (0.5 * tau_mul * h)
            return torch.stack([alpha_t * (-h * tau_mul).expm1().neg() - b_1, b_1])
        b_2 = alpha_t * (0.5 * tau_mul * h**2) / (lambdas[-2] - lam_s)
        return torch.stack([b_2, alpha_t * (-h * tau_mul).expm1().neg() - b_2])
    # The integrals of x^p exp(tau_mul (x - t)) over [s, t] times tau_mul, p < n: by
    # Gauss-Legendre quadrature on 12 points (exact to rounding for these smooth integrands).
    nodes, weights = _gauss_legendre_12()
    xs = (lam_t - lam_s) / 2 * nodes + (lam_t + lam_s) / 2
    kernel = tau_mul * torch.exp(tau_mul * (xs - lam_t)) * weights * (lam_t - lam_s) / 2
    moments = torch.stack([(kernel * xs**p).sum() for p in range(n)])
    vander = torch.stack([lambdas**p for p in range(n)])
    return alpha_t * torch.linalg.solve(vander, moments)


def _gauss_legendre_12():
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(12)
    return torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


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
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = _default_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    ms = _patcher(model)
    sigmas = offset_first(sigmas, ms).double()
    lambdas = half_log_snr(sigmas, ms)
    if tau_func is None:
        start, end = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)
        tau_func = lambda sigma: 1.0 if start >= float(sigma) >= end else 0.0  # noqa: E731
    keep = max(predictor_order, corrector_order)
    x_pred, h, tau, noise, preds = x, 0.0, 0.0, 0.0, []
    to_end = float(sigmas[-1]) == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i].to(x.dtype) * s_in, **extra_args)
        _report(callback, x_pred, i, sigmas[i], sigmas[i], denoised)
        preds = (preds + [denoised])[-keep:]
        p = min(predictor_order, len(preds))
        c = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_end:
            p, c = min(p, len(sigmas) - 2 - i), min(c, len(sigmas) - 1 - i)
        if c == 0:
            x = x_pred
        else:
            b = _sa_b(sigmas[i], lambdas[i - c + 1 : i + 1], lambdas[i - 1], lambdas[i], tau, simple_order_2, True)
            x = sigmas[i] / sigmas[i - 1] * torch.exp(-(tau**2) * h) * x + sum(bk * pk for bk, pk in zip(b, preds[-c:]))
            if tau > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i].to(x.dtype) * s_in, **extra_args)
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            tau = tau_func(sigmas[i + 1])
            b = _sa_b(sigmas[i + 1], lambdas[i - p + 1 : i + 1], lambdas[i], lambdas[i + 1], tau, simple_order_2, False)
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigmas[i + 1] / sigmas[i] * torch.exp(-(tau**2) * h) * x + sum(
                bk * pk for bk, pk in zip(b, preds[-p:])
            )
            if tau > 0 and s_noise > 0:
                noise = (
                    noise_sampler(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * (-2 * tau**2 * h).expm1().neg().sqrt()
                    * s_noise
                )
                x_pred = x_pred + noise
    return x


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


def _vp(sigma):
    """(alpha, sigma_vp, lambda) of ComfyUI's variance-preserving view of a sigma."""
    alpha = 1 / torch.sqrt(1 + sigma**2)
    return alpha, sigma * alpha, -torch.log(sigma)


def sample_unipc(model, noise, sigmas, extra_args=None, callback=None, disable=False, variant="bh1"):
    extra_args = {} if extra_args is None else extra_args
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    t = sigmas
    x = noise / torch.sqrt(1.0 + t[0] ** 2.0)
    steps = len(t) - 1
    order = min(3, len(t) - 2)
    b_in = noise.new_ones([noise.shape[0]])

    def data(x_vp, k):
        alpha, _, _ = _vp(t[k])
        return model(x_vp / alpha, t[k] * b_in, **extra_args)

    def update(x, ms, ks, k, n, corrector):
        alpha_t, sigma_t, lam_t = _vp(t[k])
        _, sigma_0, lam_0 = _vp(t[ks[-1]])
        h = lam_t - lam_0
        rks = [(_vp(t[ks[-(j + 1)]])[2] - lam_0) / h for j in range(1, n)]
        d1 = [(ms[-(j + 1)] - ms[-1]) / rks[j - 1] for j in range(1, n)]
        hh = -h
        phi_1 = torch.expm1(hh)
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        r_rows = torch.stack(
            [torch.stack([torch.as_tensor(r, dtype=h.dtype) for r in rks + [1.0]]) ** i for i in range(n)]
        )
        b = []
        phi_k, fact = phi_1 / hh - 1, 1
        for i in range(1, n + 1):
            b.append(phi_k * fact / b_h)
            fact *= i + 1
            phi_k = phi_k / hh - 1 / fact
        b = torch.stack(b)
        base = sigma_t / sigma_0 * x - alpha_t * phi_1 * ms[-1]
        if d1:
            rho_p = torch.tensor([0.5], dtype=h.dtype) if n == 2 else torch.linalg.solve(r_rows[:-1, :-1], b[:-1])
            x_t = base - alpha_t * b_h * sum(r * d for r, d in zip(rho_p, d1))
        else:
            x_t = base
        if not corrector:
            return x_t, None
        model_t = data(x_t, k)
        rho_c = torch.tensor([0.5], dtype=h.dtype) if n == 1 else torch.linalg.solve(r_rows, b)
        correction = sum(r * d for r, d in zip(rho_c[:-1], d1)) + rho_c[-1] * (model_t - ms[-1])
        return base - alpha_t * b_h * correction, model_t

    ms, ks = [data(x, 0)], [0]
    if callback is not None:
        callback({"x": x, "i": 0, "denoised": ms[-1]})
    for step_index in range(1, steps):
        if step_index < order:
            x, m = update(x, ms, ks, step_index, step_index, True)
            ms, ks = ms + [m], ks + [step_index]
        else:
            x, m = update(x, ms, ks, step_index, min(order, steps + 1 - step_index), True)
            ms, ks = (ms + [m])[-order:], (ks + [step_index])[-order:]
            if step_index == steps - 1:
                x, _ = update(x, ms, ks, steps, min(order, 1), False)
        if callback is not None:
            callback({"x": x, "i": step_index, "denoised": ms[-1]})
    return x / _vp(t[-1])[0]


def sample_unipc_bh2(model, noise, sigmas, extra_args=None, callback=None, disable=False):
    return sample_unipc(model, noise, sigmas, extra_args, callback, disable, variant="bh2")


def _gpu(function):
    """A ``*_gpu`` twin: the same sampler with the Brownian tree on x's device."""

    def run(model, x, sigmas, *args, **kwargs):
        return function(model, x, sigmas, *args, cpu=False, **kwargs)

    return run


TWINS = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": _gpu(sample_dpmpp_sde),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": _gpu(sample_dpmpp_2m_sde),
    "dpmpp_2m_sde_heun": lambda *a, **k: sample_dpmpp_2m_sde(*a, **{"solver_type": "heun", **k}),
    "dpmpp_2m_sde_heun_gpu": _gpu(lambda *a, **k: sample_dpmpp_2m_sde(*a, **{"solver_type": "heun", **k})),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": _gpu(sample_dpmpp_3m_sde),
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "deis": sample_deis,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
    "uni_pc": sample_unipc,
    "uni_pc_bh2": sample_unipc_bh2,
}
