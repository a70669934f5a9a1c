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
sample_dpm_2_ancestral, sample_lms, sample_dpmpp_2s_ancestral,
sample_dpmpp_sde, sample_dpmpp_2m, sample_dpmpp_2m_sde,
sample_dpmpp_3m_sde (the SDE samplers with k-diffusion's Brownian-tree noise
by default, which needs torchsde), sample_dpm_fast and sample_dpm_adaptive.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional

import numpy as np
import torch

from diffaccel import ops
from diffaccel.integrations import float64_if_any
from diffaccel.solvers.lms import lagrange_weights
from diffaccel.transfer import ConstantCache, to_device

# The samplers' coefficient tensors, handed out again when a sampler runs the same
# sigmas again (read-only; see ConstantCache). A sigma given to the model is not
# one of them: the model gets a tensor of its own (_Loop.sigma_tensor).
_COEFFICIENTS = ConstantCache()


def _step(x, denoised, history, coeffs, noise=None, sigma_dtype: Optional[torch.dtype] = None):
    """ops.ei_step with the result dtype k-diffusion's tensor arithmetic gives the
    same update: the promotion of every tensor in it (x, the denoiser outputs,
    earlier terms, noise), and of the sigmas where k-diffusion divides by
    ``append_dims(sigma)`` (to_d: pass their dtype), which has x's rank and so
    promotes, where its 0-d sigma and t tensors do not. So bf16 latents become
    float32 after an Euler step with float32 sigmas, as in k-diffusion, and the
    model sees what it would see there."""
    tensors = [x, denoised, *history] + ([noise] if noise is not None else [])
    dtypes = [t.dtype for t in tensors] + ([sigma_dtype] if sigma_dtype is not None else [])
    dtype = functools.reduce(torch.promote_types, dtypes)
    if dtype == torch.float64:
        x, denoised, noise, *history = float64_if_any([x.to(dtype), denoised, noise, *history])
    elif x.dtype != dtype:
        x = x.to(dtype)
    return ops.ei_step(x, denoised, history, coeffs, noise=noise)


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


class BrownianTreeNoiseSampler:
    """k-diffusion's Brownian-tree noise (torchsde.BrownianTree): increments
    over [sigma_next, sigma], normalised to unit variance, consistent across
    step counts for one seed. ``seed`` may be a list (one tree per sample);
    None draws one from the global generator, as k-diffusion does."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda v: v):
        try:
            import torchsde
        except ImportError as error:
            raise ImportError(
                "BrownianTreeNoiseSampler needs torchsde (pip install torchsde), or pass noise_sampler="
            ) from error
        self.transform = transform
        t0, t1 = transform(torch.as_tensor(sigma_min)), transform(torch.as_tensor(sigma_max))
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = isinstance(seed, (list, tuple))
        if self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError(f"BrownianTreeNoiseSampler: {len(seed)} seeds for a batch of {x.shape[0]}")
            w0 = w0[0]
        seeds = list(seed) if self.batched else [seed]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, sigma, sigma_next):
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.sign * sign)
        w = w if self.batched else w[0]
        return w / (t1 - t0).abs().sqrt()


def _sampler(fn):
    """A fixed-step sampler: no autograd, and its host scalar math (on the numpy
    float64 sigmas of _Loop) under IEEE rules without warnings: x / 0 = inf,
    log(0) = -inf, sqrt(-1) = nan, as k-diffusion's tensor arithmetic computes
    them. A schedule that repeats a sigma (a step of h = 0) then gives what
    k-diffusion gives, not a ZeroDivisionError."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.no_grad(), np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return fn(*args, **kwargs)

    return run


def _check_sigma_range(sigma_min, sigma_max) -> None:
    """k-diffusion's refusal of a zero sigma_min / sigma_max, and of a non-finite
    one (NaN would run its step control on NaN times)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not math.isfinite(float(value)):
            raise ValueError(f"argument '{name}' must be finite, got {float(value)}")


def _as_k_diffusion_computes(denoised: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A denoiser output the fused ops do not take, as k-diffusion's arithmetic
    with x uses it: an integer one promoted (with x, or to the default dtype),
    one that broadcasts to x's shape expanded to it (a view). An output x
    would have to broadcast up to is left for the op to refuse."""
    if not denoised.is_floating_point():
        dtype = torch.promote_types(denoised.dtype, x.dtype)
        denoised = denoised.to(dtype if dtype.is_floating_point else torch.get_default_dtype())
    if denoised.shape != x.shape and torch.broadcast_shapes(denoised.shape, x.shape) == x.shape:
        denoised = denoised.expand(x.shape)
    return denoised


class _Loop:
    """What every sampler shares: the sigmas read once, the model call with
    k-diffusion's arguments, the callback dict, the progress bar, and one fused
    step from a coefficient row."""

    def __init__(self, model, x, sigmas, extra_args, callback, disable):
        self.model, self.callback = model, callback
        self.extra_args = {} if extra_args is None else extra_args
        self.sigmas = sigmas
        # The one host read of the sigmas, as numpy float64 scalars: the samplers'
        # scalar math then follows IEEE rules (see _sampler).
        self.values: List[float] = [np.float64(v) for v in sigmas.tolist()]
        # k-diffusion hangs on a NaN sigma in its SDE samplers (inside the Brownian
        # tree) and turns any non-finite one into NaN samples: refused up front.
        bad = next((j for j, v in enumerate(self.values) if not np.isfinite(v)), None)
        if bad is not None:
            raise ValueError(f"argument 'sigmas' must be finite, got sigmas[{bad}] = {self.values[bad]}")
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
        denoised = self.model_output = self.model(x, sigma * self.s_in, **self.extra_args)
        if isinstance(denoised, torch.Tensor) and (denoised.shape != x.shape or not denoised.is_floating_point()):
            denoised = _as_k_diffusion_computes(denoised, x)
        return denoised

    def sigma_tensor(self, value: float) -> torch.Tensor:
        """A host sigma as a 0-d tensor like the sigmas (copied without a synchronization)."""
        return to_device([value], self.sigmas.device, self.sigmas.dtype)[0]

    def evaluate(self, x, i):
        """The model at sigma_i, reported to the callback as k-diffusion reports it."""
        denoised = self.denoise(x, self.sigmas[i])
        self.report(x, i, self.sigmas[i], denoised)
        return denoised

    def report(self, x, i, sigma_hat, denoised):
        if self.callback is not None:
            self.callback({"x": x, "i": i, "sigma": self.sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})

    def positive_range(self):
        """The smallest positive and the largest sigma, as elements of the sigmas tensor."""
        positive = [j for j, v in enumerate(self.values) if v > 0]
        low = min(positive, key=lambda j: self.values[j])
        high = max(range(len(self.values)), key=lambda j: self.values[j])
        return self.sigmas[low], self.sigmas[high]

    def step(self, x, denoised, history, a, b, noise=None, s=0.0, to_d=False):
        """x_next = a x + b[0] denoised + sum_j b[j+1] history[j] (+ s noise): one ei_step
        whose data term is the denoiser output itself (c_x = 0, c_m = 1). to_d: the
        step k-diffusion computes with to_d (its result dtype promotes with the sigmas')."""
        coeffs = _COEFFICIENTS.get([0.0, 1.0, a, *b, s], self.device)
        return _step(x, denoised, history, coeffs, noise, self.sigmas.dtype if to_d else None)


def _churn(loop: _Loop, x, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic churn: (x, sigma_hat tensor, sigma_hat value). The
    noise is drawn every step, as k-diffusion draws it, even when unused."""
    sigma = loop.values[i]
    gamma = min(s_churn / (len(loop.values) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = torch.randn_like(x)
    sigma_hat = loop.sigmas[i] * (gamma + 1)
    if gamma > 0:
        scale = s_noise * ((sigma * (gamma + 1)) ** 2 - sigma**2) ** 0.5
        x = ops.multistep_combine([x, eps], _COEFFICIENTS.get([1.0, scale], x.device))
    return x, sigma_hat, sigma * (gamma + 1)


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
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat)
        loop.report(x, i, sigma_hat, denoised)
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
        noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]) if sigma_next > 0 else None
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
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat)
        loop.report(x, i, sigma_hat, denoised)
        sn = loop.values[i + 1]
        r = sn / sh
        x_2, _ = loop.step(x, denoised, [], r, [1.0 - r], to_d=True)
        if sn == 0:
            x = x_2
            continue
        # x + dt/2 (d + d_2) with d = (x - denoised)/sh, d_2 = (x_2 - denoised_2)/sn, dt = sn - sh.
        denoised_2 = loop.denoise(x_2, loop.sigmas[i + 1])
        half = (sn - sh) / 2
        x, _ = loop.step(
            x_2, denoised_2, [x, denoised], half / sn, [-half / sn, 1.0 + half / sh, -half / sh], to_d=True
        )
    return x


def _dpm_2_step(loop: _Loop, x, denoised, sigma_from, sigma_from_t, sigma_to, draw_noise=None, s=0.0):
    """DPM-Solver-2 in sigma (k-diffusion's sample_dpm_2): a midpoint evaluation at
    the geometric mean of the sigmas; an Euler step (and no noise) when sigma_to = 0.
    draw_noise() is called after the midpoint's model call, where k-diffusion draws."""
    r = sigma_to / sigma_from
    if sigma_to == 0:
        return loop.step(x, denoised, [], r, [1.0 - r], to_d=True)[0]
    sigma_mid = np.exp(0.5 * (np.log(sigma_from) + np.log(sigma_to)))
    r_mid = sigma_mid / sigma_from
    x_2, _ = loop.step(x, denoised, [], r_mid, [1.0 - r_mid], to_d=True)
    mid_t = sigma_from_t.log().lerp(loop.sigma_tensor(sigma_to).log(), 0.5).exp()
    denoised_2 = loop.denoise(x_2, mid_t)
    noise = draw_noise() if draw_noise is not None else None
    # x + (sigma_to - sigma_from) (x_2 - denoised_2) / sigma_mid (+ s noise)
    k = (sigma_to - sigma_from) / sigma_mid
    return loop.step(x_2, denoised_2, [x], k, [-k, 1.0], noise=noise, s=s, to_d=True)[0]


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
    for i in loop.steps():
        x, sigma_hat, sh = _churn(loop, x, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(x, sigma_hat)
        loop.report(x, i, sigma_hat, denoised)
        x = _dpm_2_step(loop, x, denoised, sh, sigma_hat, loop.values[i + 1])
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
            loop.sigmas[i],
            sigma_down,
            draw_noise=lambda: noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]),
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
    sample_lms). The weights integrate the Lagrange polynomials exactly, where
    k-diffusion calls scipy's quad on the host every step."""
    if order not in (1, 2, 3, 4, 5):
        raise ValueError(
            f"sample_lms: 'order' must be 1 to 5 (the fused step holds 4 earlier derivatives), got {order}"
        )
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    ds = []  # earlier derivatives (x - denoised) / sigma, newest last
    for i in loop.steps():
        sigma = loop.values[i]
        denoised = loop.evaluate(x, i)
        cur = min(i + 1, order)
        w = lagrange_weights([loop.values[i - j] for j in range(cur)], sigma, loop.values[i + 1])
        # ei_step's data term is the derivative itself: c_x = 1/sigma, c_m = -1/sigma.
        coeffs = _COEFFICIENTS.get([1.0 / sigma, -1.0 / sigma, 1.0, *w, 0.0], x.device)
        x, d = _step(
            x,
            denoised,
            list(reversed(ds[len(ds) - (cur - 1) :])) if cur > 1 else [],
            coeffs,
            sigma_dtype=loop.sigmas.dtype,
        )
        ds = (ds + [d])[-(order - 1) :] if order > 1 else []
    return x


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
            t, t_next = loop.sigmas[i].log().neg(), loop.sigma_tensor(sigma_down).log().neg()
            source = loop.denoise(x_2, (t + (t_next - t) / 2).neg().exp())
            a, b = sigma_down / sigma, -np.expm1(-h)
        noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1]) if sigma_next > 0 else None
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
        t, t_next = loop.sigmas[i].log().neg(), loop.sigmas[i + 1].log().neg()
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
                noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1])
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
                noise = noise_sampler(loop.sigmas[i], loop.sigmas[i + 1])
                s = sigma_next * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
            x, kept = loop.step(x, denoised, history, np.exp(-h_eta), b, noise=noise, s=s)
        denoised_1, denoised_2 = kept, denoised_1
        h_1, h_2 = h, h_1
    return x


class _EpsSolver:
    """k-diffusion's DPMSolver (noise prediction in t = -log sigma) on the fused
    ops: each ei_step turns one model evaluation into its eps = (x - denoised) /
    sigma (the step's data term, kept for later stages) and the next state in
    the same pass. Times stay 0-d float32 tensors computed as k-diffusion
    computes them, so the model sees the same sigmas and the adaptive
    accept/reject decisions are taken on the same numbers."""

    def __init__(self, model, x, extra_args, on_eval):
        self.model, self.extra_args, self.on_eval = model, ({} if extra_args is None else extra_args), on_eval
        self.ones = x.new_ones([x.shape[0]])
        self.device = x.device

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def ancestral_split(self, t, t_next, t_end, eta):
        """(t_down, su) of an ancestral step from t toward t_next, as k-diffusion's
        DPMSolver splits it: the deterministic step goes to t_down, then noise of
        scale su is added (eta = 0: (t_next, 0.0))."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(sigma_down))
        return t_down, float((self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5)

    def denoise(self, x, t):
        denoised = self.model(x, self.sigma(t) * self.ones, **self.extra_args)
        self.on_eval()
        return denoised

    def stage(self, x, denoised, t, a, b, history=(), b_hist=()):
        """One ei_step with data term eps = (x - denoised) / sigma(t):
        (a x + b eps + sum_j b_hist[j] history[j], eps)."""
        inv = 1.0 / float(self.sigma(t))
        coeffs = _COEFFICIENTS.get([inv, -inv, a, b, *b_hist, 0.0], self.device)
        return _step(x, denoised, list(history), coeffs)

    def start(self, x, t, t_next, r1):
        """The model at x, then (u1, eps, denoised, s1) with u1 = x - sigma(s1) expm1(r1 h) eps,
        the first intermediate state of dpm_solver_{2,3}_step (r1 = 1: dpm_solver_1_step's result)."""
        denoised = self.denoise(x, t)
        s1 = t + r1 * (t_next - t)
        u1, eps = self.stage(x, denoised, t, 1.0, -float(self.sigma(s1)) * math.expm1(r1 * float(t_next - t)))
        return u1, eps, denoised, s1

    def second(self, x, eps, u1, s1, t, t_next, r1):
        """dpm_solver_2_step's result, and eps_r1."""
        sn, e = float(self.sigma(t_next)), math.expm1(float(t_next - t))
        w_r1 = -sn / (2 * r1) * e
        return self.stage(u1, self.denoise(u1, s1), s1, 0.0, w_r1, [x, eps], [1.0, -sn * e - w_r1])

    def third(self, x, eps, u1, s1, t, t_next, r1=1 / 3, r2=2 / 3):
        """dpm_solver_3_step's result, and (eps_r1, eps_r2)."""
        h = float(t_next - t)
        s2 = t + r2 * (t_next - t)
        sigma_s2 = float(self.sigma(s2))
        c2 = sigma_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)
        u2, eps_r1 = self.stage(
            u1, self.denoise(u1, s1), s1, 0.0, -c2, [x, eps], [1.0, -sigma_s2 * math.expm1(r2 * h) + c2]
        )
        sn = float(self.sigma(t_next))
        c3 = sn / r2 * (math.expm1(h) / h - 1)
        x_3, eps_r2 = self.stage(u2, self.denoise(u2, s2), s2, 0.0, -c3, [x, eps], [1.0, -sn * math.expm1(h) + c3])
        return x_3, eps_r1, eps_r2


class _PIDStepSizeController:
    """k-diffusion's PID step-size control (same coefficients, limiter and acceptance)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error] * 3
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def _progress(total, disable):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, disable=disable)


@torch.no_grad()
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
    noise_sampler: Optional[Callable] = None,
):
    """DPM-Solver-Fast (fixed steps in log sigma, orders 3, ..., 3, then 2 and 1 to spend n evaluations)."""
    _check_sigma_range(sigma_min, sigma_max)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    bar = _progress(n, disable)
    solver = _EpsSolver(model, x, extra_args, (lambda: bar.update()) if bar is not None else (lambda: None))
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)  # on the host: the coefficients read them
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral_split(t, t_next, t_end, eta)
        u1, eps, denoised, s1 = solver.start(x, t, t_next_, {1: 1.0, 2: 1 / 2, 3: 1 / 3}[order])
        if callback is not None:
            callback(
                {
                    "sigma": solver.sigma(ts[i]),
                    "sigma_hat": solver.sigma(t),
                    "x": x,
                    "i": i,
                    "t": ts[i],
                    "t_up": t,
                    "denoised": denoised,
                }
            )
        if order == 1:
            x = u1
        elif order == 2:
            x, _ = solver.second(x, eps, u1, s1, t, t_next_, 1 / 2)
        else:
            x, _, _ = solver.third(x, eps, u1, s1, t, t_next_)
        if su:
            noise = noise_sampler(solver.sigma(t), solver.sigma(t_next))
            x = ops.multistep_combine([x, noise], _COEFFICIENTS.get([1.0, su * s_noise], x.device))
    if bar is not None:
        bar.close()
    return x


@torch.no_grad()
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
    noise_sampler: Optional[Callable] = None,
    return_info=False,
):
    """DPM-Solver-12 / -23 with k-diffusion's PID step-size control. The error of
    each trial step is the fused error_norm (one pass); reading it is the one
    host synchronization per trial, as in k-diffusion."""
    _check_sigma_range(sigma_min, sigma_max)
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    bar = _progress(None, disable)
    solver = _EpsSolver(model, x, extra_args, (lambda: bar.update()) if bar is not None else (lambda: None))
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    forward = bool(t_end > t_start)
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    s, x_prev = t_start, x
    pid = _PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_, su = solver.ancestral_split(s, t, t_end, eta)
        u1, eps, denoised, s1 = solver.start(x, s, t_, 1 / 2 if order == 2 else 1 / 3)
        if order == 2:
            x_low = ops.multistep_combine(  # dpm_solver_1_step: x - sigma(t_) expm1(h) eps
                [x, eps], _COEFFICIENTS.get([1.0, -float(solver.sigma(t_)) * math.expm1(float(t_ - s))], x.device)
            )
            x_high, _ = solver.second(x, eps, u1, s1, s, t_, 1 / 2)
        else:
            x_high, eps_r1, _ = solver.third(x, eps, u1, s1, s, t_)
            sn, e = float(solver.sigma(t_)), math.expm1(float(t_ - s))
            w_r1 = -sn / (2 * (1 / 3)) * e  # dpm_solver_2_step with r1 = 1/3, from the same evaluations
            x_low = ops.multistep_combine([x, eps, eps_r1], _COEFFICIENTS.get([1.0, -sn * e - w_r1, w_r1], x.device))
        # k-diffusion's error is the RMS over the whole batch: the mean of the per-sample squares.
        per_sample = ops.error_norm(x_high, x_low, x_prev, atol=atol, rtol=rtol)
        error = float(per_sample.double().pow(2).mean().sqrt())
        accept = pid.propose_step(error)
        if accept:
            x_prev = x_low
            x = x_high
            if su:
                noise = noise_sampler(solver.sigma(s), solver.sigma(t))
                x = ops.multistep_combine([x, noise], _COEFFICIENTS.get([1.0, su * s_noise], x.device))
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        if callback is not None:
            callback(
                {
                    "sigma": solver.sigma(s),
                    "sigma_hat": solver.sigma(s),
                    "x": x,
                    "i": info["steps"] - 1,
                    "t": s,
                    "t_up": s,
                    "denoised": denoised,
                    "error": error,
                    "h": pid.h,
                    **info,
                }
            )
    if bar is not None:
        bar.close()
    return (x, info) if return_info else x


__all__ = [
    "BrownianTreeNoiseSampler",
    "default_noise_sampler",
    "get_ancestral_step",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_dpm_fast",
    "sample_dpm_adaptive",
]
