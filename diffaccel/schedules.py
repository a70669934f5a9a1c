"""Noise schedules and the choice of sampling times.

A schedule gives the marginals of the forward process,
``x_t = alpha_t * x_0 + sigma_t * noise``, in the schedule's own time ``t``
(the discrete timestep for VP discrete, ``t`` in (0, 1] for continuous VP, the
noise level sigma for EDM / VE, ``t`` in [0, 1] for flow matching), and the half
log-SNR ``lambda_t = log(alpha_t / sigma_t)`` with its inverse, the variable the
exponential-integrator solvers step in. Everything is float64: plans are
computed once per schedule and step count, on the host.

Step selection returns the model times of a sampling run, from the noisiest to
the cleanest, as a float64 tensor.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = [
    "NoiseSchedule",
    "VPDiscrete",
    "VPLinear",
    "VPCosine",
    "EDM",
    "FlowMatching",
    "time_uniform",
    "logsnr_uniform",
    "time_quadratic",
    "karras",
    "exponential",
    "diffusers_timesteps",
]

F64 = torch.float64


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=F64)


def log_alpha_from_lambda(lam: torch.Tensor) -> torch.Tensor:
    """For VP schedules (alpha^2 + sigma^2 = 1): log alpha = -softplus(-2 lambda) / 2."""
    return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


class NoiseSchedule:
    """Base class. Subclasses define ``log_alpha``, ``log_sigma``, ``t_from_lambda``
    and the default time range ``[t_min, t_max]`` (t_max is the noisiest)."""

    t_min: float
    t_max: float

    def log_alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def log_sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def t_from_lambda(self, lam) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t) -> torch.Tensor:
        """Half log-SNR, log(alpha_t / sigma_t); decreasing in t."""
        return self.log_alpha(t) - self.log_sigma(t)

    def check_range(self, t_start: float, t_end: float) -> None:
        if not (self.t_min <= t_end < t_start <= self.t_max):
            raise ValueError(
                f"{type(self).__name__}: the time range must satisfy {self.t_min} <= t_end < t_start <= {self.t_max} "
                f"(sampling runs from t_start, the noisiest, to t_end), got t_start={t_start}, t_end={t_end}"
            )


class _VariancePreserving(NoiseSchedule):
    """alpha_t^2 + sigma_t^2 = 1."""

    def log_sigma(self, t) -> torch.Tensor:
        log_alpha = self.log_alpha(t)
        return 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))


class VPDiscrete(_VariancePreserving):
    """The discrete-time VP schedule of DDPM / diffusers, from ``alphas_cumprod``
    (or betas). Time is the training timestep; between integer timesteps
    log(alpha) is interpolated linearly (as the official DPM-Solver's
    ``NoiseScheduleVP('discrete')`` does), so solvers may evaluate anywhere in
    ``[0, N - 1]``."""

    def __init__(self, *, alphas_cumprod=None, betas=None):
        if (alphas_cumprod is None) == (betas is None):
            raise ValueError("VPDiscrete: give exactly one of 'alphas_cumprod' and 'betas'")
        if betas is not None:
            betas = _f64(betas)
            if betas.dim() != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
                raise ValueError("VPDiscrete: 'betas' must be a 1-D sequence of at least 2 values in (0, 1)")
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod = _f64(alphas_cumprod)
        if alphas_cumprod.dim() != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("VPDiscrete: 'alphas_cumprod' must be a 1-D sequence of at least 2 values")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()) or not bool((alphas_cumprod.diff() < 0).all()):
            raise ValueError("VPDiscrete: 'alphas_cumprod' must decrease strictly inside (0, 1)")
        self.alphas_cumprod = alphas_cumprod
        self._log_alpha = 0.5 * torch.log(alphas_cumprod)
        self.num_train_timesteps = alphas_cumprod.numel()
        self.t_min, self.t_max = 0.0, float(self.num_train_timesteps - 1)

    @classmethod
    def from_diffusers(
        cls,
        beta_schedule: str = "linear",
        *,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ) -> "VPDiscrete":
        """The betas of diffusers' ``beta_schedule`` options."""
        n = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=F64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=F64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            # Nichol & Dhariwal's cosine alpha_bar, as betas capped at 0.999.
            def alpha_bar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = _f64([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
        else:
            raise ValueError(
                f"VPDiscrete.from_diffusers: 'beta_schedule' must be 'linear', 'scaled_linear' or "
                f"'squaredcos_cap_v2', got {beta_schedule!r}"
            )
        return cls(betas=betas)

    def log_alpha(self, t) -> torch.Tensor:
        t = _f64(t).clamp(self.t_min, self.t_max)
        low = t.floor().clamp(max=self.t_max - 1).long()
        frac = t - low
        return self._log_alpha[low] + frac * (self._log_alpha[low + 1] - self._log_alpha[low])

    def t_from_lambda(self, lam) -> torch.Tensor:
        target = log_alpha_from_lambda(_f64(lam))
        # log alpha decreases with t: find the segment, then solve the linear piece.
        decreasing = self._log_alpha
        idx = torch.searchsorted(-decreasing, -target.reshape(-1)).clamp(1, self.num_train_timesteps - 1) - 1
        lo, hi = decreasing[idx], decreasing[idx + 1]
        t = idx.to(F64) + (target.reshape(-1) - lo) / (hi - lo)
        return t.reshape(target.shape).clamp(self.t_min, self.t_max)


class VPLinear(_VariancePreserving):
    """Continuous VP with linear beta(t) = beta_min + t (beta_max - beta_min),
    t in (0, 1] (score_sde's VPSDE; DPM-Solver's ``NoiseScheduleVP('linear')``)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VPLinear: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    def log_alpha(self, t) -> torch.Tensor:
        t = _f64(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_lambda(self, lam) -> torch.Tensor:
        # Solve db t^2 + 2 b0 t + 4 log_alpha = 0 for t >= 0 (db = beta_max - beta_min),
        # as t = c / db / (sqrt(b0^2 + c) + b0) with c = -4 db log_alpha, free of cancellation.
        b0, db = self.beta_min, self.beta_max - self.beta_min
        c = -4.0 * db * log_alpha_from_lambda(_f64(lam))
        return c / (torch.sqrt(b0**2 + c) + b0) / db


class VPCosine(_VariancePreserving):
    """Continuous cosine VP (Nichol & Dhariwal): alpha_bar(t) = cos((t + s)/(1 + s) pi/2)^2
    normalized at t = 0, for t in (0, t_max]; t_max = 0.9946 keeps beta(t) finite,
    as in the official DPM-Solver."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._log_alpha_0 = math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t) -> torch.Tensor:
        t = _f64(t)
        return torch.log(torch.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0

    def t_from_lambda(self, lam) -> torch.Tensor:
        log_alpha = log_alpha_from_lambda(_f64(lam))
        return 2.0 * (1.0 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha + self._log_alpha_0)) - self.s


class EDM(NoiseSchedule):
    """Variance-exploding / EDM (Karras et al.): x_sigma = x_0 + sigma * noise, so
    alpha = 1 and the time is sigma itself, in [sigma_min, sigma_max]; rho sets
    the default (Karras) step selection."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EDM: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not rho > 0:
            raise ValueError(f"EDM: 'rho' must be > 0, got {rho}")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def log_alpha(self, t) -> torch.Tensor:
        return torch.zeros_like(_f64(t))

    def log_sigma(self, t) -> torch.Tensor:
        return torch.log(_f64(t))

    def t_from_lambda(self, lam) -> torch.Tensor:
        return torch.exp(-_f64(lam))


class FlowMatching(NoiseSchedule):
    """Rectified flow: x_t = (1 - t) x_0 + t noise, t in [0, 1] (t = sigma in
    diffusers' FlowMatchEulerDiscreteScheduler). ``shift`` warps the sampling
    times as SD3 / diffusers do, t -> shift t / (1 + (shift - 1) t), giving
    more steps at high noise; it changes step selection, not the marginals."""

    def __init__(self, shift: float = 1.0, t_min: float = 0.0, t_max: float = 1.0):
        if not shift > 0:
            raise ValueError(f"FlowMatching: 'shift' must be > 0, got {shift}")
        self.shift = float(shift)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def log_alpha(self, t) -> torch.Tensor:
        return torch.log1p(-_f64(t))

    def log_sigma(self, t) -> torch.Tensor:
        return torch.log(_f64(t))

    def t_from_lambda(self, lam) -> torch.Tensor:
        return torch.sigmoid(-_f64(lam))

    def shift_times(self, t) -> torch.Tensor:
        t = _f64(t)
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)


# ---- step selection ---------------------------------------------------------


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _range(schedule: NoiseSchedule, t_start: Optional[float], t_end: Optional[float]):
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    schedule.check_range(t_start, t_end)
    return t_start, t_end


def time_uniform(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """steps + 1 times, uniform in t, from t_start down to t_end."""
    _check_steps(steps)
    t_start, t_end = _range(schedule, t_start, t_end)
    return torch.linspace(t_start, t_end, steps + 1, dtype=F64)


def logsnr_uniform(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """steps + 1 times uniform in lambda (DPM-Solver's 'logSNR' skip type)."""
    _check_steps(steps)
    t_start, t_end = _range(schedule, t_start, t_end)
    lam = torch.linspace(float(schedule.lambda_(t_start)), float(schedule.lambda_(t_end)), steps + 1, dtype=F64)
    times = schedule.t_from_lambda(lam)
    times[0], times[-1] = t_start, t_end  # exact ends, whatever the inverse's rounding
    return times


def time_quadratic(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """steps + 1 times uniform in sqrt(t) (DPM-Solver's 'time_quadratic')."""
    _check_steps(steps)
    t_start, t_end = _range(schedule, t_start, t_end)
    times = torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=F64) ** 2
    times[0], times[-1] = t_start, t_end  # exact ends, whatever sqrt's rounding
    return times


def _times_from_ve_sigmas(
    schedule: NoiseSchedule, ve_sigmas: torch.Tensor, t_start: float, t_end: float
) -> torch.Tensor:
    times = schedule.t_from_lambda(-torch.log(ve_sigmas))
    times[0], times[-1] = t_start, t_end
    return times


def karras(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None, rho: Optional[float] = None) -> torch.Tensor:
    """steps + 1 times whose VE noise levels sigma_t / alpha_t are spaced as in
    Karras et al. (EDM): uniform in sigma^(1/rho). rho defaults to the
    schedule's (EDM) or 7."""
    _check_steps(steps)
    t_start, t_end = _range(schedule, t_start, t_end)
    rho = float(rho if rho is not None else getattr(schedule, "rho", 7.0))
    hi = float(torch.exp(-schedule.lambda_(t_start))) ** (1.0 / rho)
    lo = float(torch.exp(-schedule.lambda_(t_end))) ** (1.0 / rho)
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=F64)
    return _times_from_ve_sigmas(schedule, (hi + ramp * (lo - hi)) ** rho, t_start, t_end)


def exponential(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """steps + 1 times whose VE noise levels are uniform in log sigma
    (k-diffusion's get_sigmas_exponential); the same grid as logsnr_uniform."""
    return logsnr_uniform(schedule, steps, t_start, t_end)


def diffusers_timesteps(
    schedule: VPDiscrete, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """The ``steps`` integer timesteps (as float64) that diffusers'
    ``timestep_spacing`` picks for a VPDiscrete schedule, noisiest first."""
    _check_steps(steps)
    if not isinstance(schedule, VPDiscrete):
        raise ValueError(f"diffusers_timesteps: needs a VPDiscrete schedule, got {type(schedule).__name__}")
    n = schedule.num_train_timesteps
    if steps > n:
        raise ValueError(f"diffusers_timesteps: steps must be <= num_train_timesteps ({n}), got {steps}")
    if spacing == "linspace":
        t = torch.linspace(0, n - 1, steps, dtype=F64).round().flip(0)
    elif spacing == "leading":
        t = (torch.arange(steps, dtype=F64) * (n // steps)).round().flip(0) + steps_offset
    elif spacing == "trailing":
        t = (torch.arange(n, 0, -n / steps, dtype=F64)).round() - 1
    else:
        raise ValueError(f"diffusers_timesteps: 'spacing' must be 'linspace', 'leading' or 'trailing', got {spacing!r}")
    return t
