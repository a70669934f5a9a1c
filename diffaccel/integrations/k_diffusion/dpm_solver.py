"""k-diffusion's DPM-Solver samplers: sample_dpm_fast (fixed steps in log
sigma, orders 3 .. 1) and sample_dpm_adaptive (its PID step-size control, the
error from the fused error_norm), in the noise-prediction form."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from diffaccel import ops
from diffaccel.ops import validation
from diffaccel.integrations.k_diffusion import common
from diffaccel.integrations.k_diffusion.common import (
    _check_sigma_range,
    _sampler,
    _step,
    default_noise_sampler,
    get_ancestral_step,
)


def _as_tensor(sigma) -> torch.Tensor:
    """k-diffusion's torch.tensor(sigma): a copy of a tensor (without torch.tensor's
    warning about copying one), or a number as a tensor of the default dtype."""
    return sigma.detach().clone() if isinstance(sigma, torch.Tensor) else torch.tensor(sigma)


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
        self.direct = ops.loop_entry("ei_step", x)

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

    def denoise(self, x, model_sigma):
        denoised = self.model(x, model_sigma, **self.extra_args)
        self.on_eval()
        return denoised

    def stage(self, x, denoised, sigma: float, a, b, history=(), b_hist=()):
        """One ei_step with data term eps = (x - denoised) / sigma:
        (a x + b eps + sum_j b_hist[j] history[j], eps)."""
        inv = 1.0 / sigma
        coeffs = common._COEFFICIENTS.get([inv, -inv, a, b, *b_hist, 0.0], self.device)
        return _step(x, denoised, list(history), coeffs, direct=self.direct)

    def start(self, x, times):
        """The model at x, then (u1, eps, denoised) with u1 = x - sigma(s1) expm1(r1 h) eps,
        the first intermediate state of dpm_solver_{2,3}_step (r1 = 1: dpm_solver_1_step's result)."""
        denoised = self.denoise(x, times.model_sigma("t"))
        u1, eps = self.stage(x, denoised, times.sigma("t"), 1.0, -times.sigma("s1") * math.expm1(times.r1 * times.h))
        return u1, eps, denoised

    @staticmethod
    def two_step_weights(times):
        """dpm_solver_2_step's x_next = x + w_eps eps + w_r1 eps_r1: (w_r1, w_eps)."""
        sn, e = times.sigma("next"), math.expm1(times.h)
        w_r1 = -sn / (2 * times.r1) * e
        return w_r1, -sn * e - w_r1

    @staticmethod
    def u2_weights(times):
        """dpm_solver_3_step's second intermediate state u2 = x + w_eps eps + w_r1 eps_r1: (w_r1, w_eps)."""
        h, r1, r2 = times.h, times.r1, times.r2
        sigma_s2 = times.sigma("s2")
        c2 = sigma_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)
        return -c2, -sigma_s2 * math.expm1(r2 * h) + c2

    def second(self, x, eps, u1, times):
        """dpm_solver_2_step's result, and eps_r1."""
        w_r1, w_eps = self.two_step_weights(times)
        denoised = self.denoise(u1, times.model_sigma("s1"))
        return self.stage(u1, denoised, times.sigma("s1"), 0.0, w_r1, [x, eps], [1.0, w_eps])

    def third(self, x, eps, u1, times):
        """dpm_solver_3_step's result, and (eps_r1, eps_r2)."""
        w_r1, w_eps = self.u2_weights(times)
        denoised = self.denoise(u1, times.model_sigma("s1"))
        u2, eps_r1 = self.stage(u1, denoised, times.sigma("s1"), 0.0, w_r1, [x, eps], [1.0, w_eps])
        x_3, eps_r2 = self.third_stage(x, eps, u2, times)
        return x_3, eps_r1, eps_r2

    def third_stage(self, x, eps, u2, times):
        """The model at u2, then dpm_solver_3_step's result and eps_r2."""
        h, sn = times.h, times.sigma("next")
        c3 = sn / times.r2 * (math.expm1(h) / h - 1)
        denoised = self.denoise(u2, times.model_sigma("s2"))
        return self.stage(u2, denoised, times.sigma("s2"), 0.0, -c3, [x, eps], [1.0, -sn * math.expm1(h) + c3])


# A DPM-Solver step from t to t_next has the intermediate times s1 = t + r1 h and
# s2 = t + r2 h (h = t_next - t); its stages read their sigmas exp(-time) as host
# floats (the coefficients) and hand the model sigma * ones. Two sources of them:
# _TensorTimes (one step, from 0-d tensors: the adaptive and the noisy steps) and
# _ScheduleTimes (every step of a fixed schedule at once).
_R2 = 2 / 3


class _TensorTimes:
    """One step's times as k-diffusion computes them: 0-d tensors in the times' dtype,
    each intermediate time and each sigma computed (and read) once."""

    def __init__(self, solver: _EpsSolver, t, t_next, r1: float):
        self.solver, self.r1, self.r2 = solver, r1, _R2
        self.times = {"t": t, "next": t_next}
        self.sigmas = {}
        self.values = {}
        self.step = t_next - t
        self.h = float(self.step)

    def sigma_tensor(self, name: str):
        sigma = self.sigmas.get(name)
        if sigma is None:
            time = self.times.get(name)
            if time is None:  # s1 or s2
                time = self.times["t"] + (self.r1 if name == "s1" else self.r2) * self.step
            sigma = self.sigmas[name] = self.solver.sigma(time)
        return sigma

    def sigma(self, name: str) -> float:
        value = self.values.get(name)
        if value is None:
            value = self.values[name] = float(self.sigma_tensor(name))
        return value

    def model_sigma(self, name: str):
        return self.sigma_tensor(name) * self.solver.ones


# numpy's scalar type for the times' dtype, where the host can do their arithmetic.
_HOST_SCALARS = {torch.float32: np.float32, torch.float64: np.float64}


class _HostTimes:
    """One step's times with k-diffusion's 0-d arithmetic done on the host: t_next - t,
    t + r h and the like in numpy scalars of the times' dtype (single IEEE operations,
    so the bits the 0-d tensor ops give on any device), and the sigmas exp(-time) of
    the step by one elementwise op on the times' device (the exp of k-diffusion's 0-d
    ones, value for value), read once. The model's sigma tensors (sigma * ones, in
    model_dtype: the dtype of that 0-d product) are rows of that op's result."""

    def __init__(self, solver: _EpsSolver, t, t_next, r1: float, device: torch.device, model_dtype: torch.dtype):
        scalar = type(t)
        self.r1, self.r2 = r1, _R2
        step = t_next - t
        self.h = float(step)
        minus_times = np.array([-t, -(t + scalar(r1) * step), -(t + scalar(_R2) * step), -t_next])
        sigmas = torch.from_numpy(minus_times).to(device).exp()  # t, s1, s2, next
        self.sigmas = dict(zip(("t", "s1", "s2", "next"), sigmas.tolist()))
        model = sigmas[:3, None].to(device=solver.ones.device, dtype=model_dtype)
        if solver.ones.shape[0] != 1:  # (times one is the same value: a batch of one keeps the rows)
            model = model * solver.ones
        self.model_sigmas = dict(zip(("t", "s1", "s2"), model.unbind(0)))

    def sigma(self, name: str) -> float:
        return self.sigmas[name]

    def model_sigma(self, name: str):
        return self.model_sigmas[name]


class _ScheduleTimes:
    """The times of every step of a fixed schedule (dpm_fast without noise) at once:
    the ops of _TensorTimes on vectors of the steps' times (elementwise, so the same
    values; tests/test_k_diffusion.py checks it), read to the host once, and the
    model's sigma tensors made by one op. step(i) is step i's times."""

    def __init__(self, solver: _EpsSolver, ts, r1s):
        t, t_next = ts[:-1], ts[1:]
        h = t_next - t
        r1 = torch.tensor(r1s, dtype=ts.dtype)
        sigmas = [solver.sigma(v) for v in (t, t_next, t + r1 * h, t + _R2 * h)]
        self.k = len(r1s)
        self.r1s = r1s
        self.h = h.tolist()
        self.sigmas = dict(zip(("t", "next", "s1", "s2"), torch.cat(sigmas).view(4, -1).tolist()))
        # sigma * ones of each model time (t, s1, s2), in the dtype the 0-d product has.
        dtype = torch.result_type(t[0], solver.ones)
        model = torch.cat([sigmas[0], sigmas[2], sigmas[3]]).to(device=solver.ones.device, dtype=dtype)
        self.model_sigmas = (model[:, None] * solver.ones).unbind(0)

    def step(self, i: int) -> "_ScheduleStep":
        return _ScheduleStep(self, i)


class _ScheduleStep:
    """Step i's times of a _ScheduleTimes, read like a _TensorTimes."""

    _MODEL_ROW = {"t": 0, "s1": 1, "s2": 2}

    def __init__(self, schedule: _ScheduleTimes, i: int):
        self.schedule, self.i = schedule, i
        self.r1, self.r2, self.h = schedule.r1s[i], _R2, schedule.h[i]

    def sigma(self, name: str) -> float:
        return self.schedule.sigmas[name][self.i]

    def model_sigma(self, name: str):
        return self.schedule.model_sigmas[self._MODEL_ROW[name] * self.schedule.k + self.i]


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
    """k-diffusion's progress bar; None where it would be disabled (tqdm's set-up alone
    costs tens of us a sampler call)."""
    if disable:
        return None
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
    if n < 1:  # (k-diffusion runs one step, then fails indexing its times)
        raise ValueError(f"sample_dpm_fast: argument 'n' must be at least 1, got {n}")
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    bar = _progress(n, disable)
    solver = _EpsSolver(model, x, extra_args, (lambda: bar.update()) if bar is not None else (lambda: None))
    t_start, t_end = solver.t(_as_tensor(sigma_max)), solver.t(_as_tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)  # on the host: the coefficients read them
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    r1s = [{1: 1.0, 2: 1 / 2, 3: 1 / 3}[order] for order in orders]
    # Without noise every step's times are known before the first: made at once, and
    # kept for a run of the same times again (the model's sigma tensors among them).
    schedule = None
    if not eta:
        key = ("dpm_fast", n, ts.dtype, solver.ones.dtype, x.shape[0])
        make = lambda: _ScheduleTimes(solver, ts, r1s)  # noqa: E731
        schedule = common.kept_unwritten(ts.tolist(), x.device, key, make, lambda made: made.model_sigmas)
    at = ts.unbind(0) if eta or callback is not None else None
    for i, order in enumerate(orders):
        if schedule is not None:
            times, su = schedule.step(i), 0.0
        else:
            t_next_, su = solver.ancestral_split(at[i], at[i + 1], t_end, eta)
            times = _TensorTimes(solver, at[i], t_next_, r1s[i])
        u1, eps, denoised = solver.start(x, times)
        if callback is not None:
            callback(
                {
                    "sigma": solver.sigma(at[i]),
                    "sigma_hat": solver.sigma(at[i]),
                    "x": x,
                    "i": i,
                    "t": at[i],
                    "t_up": at[i],
                    "denoised": denoised,
                }
            )
        if order == 1:
            x = u1
        elif order == 2:
            x, _ = solver.second(x, eps, u1, times)
        else:
            x, _, _ = solver.third(x, eps, u1, times)
        if su:
            noise = noise_sampler(solver.sigma(at[i]), solver.sigma(at[i + 1]))
            x = ops.multistep_combine([x, noise], common._COEFFICIENTS.get([1.0, su * s_noise], x.device))
    if bar is not None:
        bar.close()
    return x


@_sampler  # (no autograd; its host time arithmetic on numpy scalars under IEEE rules, no warnings)
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
    t_start, t_end = solver.t(_as_tensor(sigma_max)), solver.t(_as_tensor(sigma_min))
    forward = bool(t_end > t_start)
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    x_prev = x
    pid = _PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    r1 = 1 / 2 if order == 2 else 1 / 3
    # The second stage's pair and the error norm straight to their kernels where the loop
    # allows (ops.loop_entry; the norm's tensors are fused ops' outputs).
    pair = ops.loop_entry("multistep_combine_pair", x)
    norm = ops.loop_entry("error_norm", x)
    if norm is None:
        norm = lambda high, low, prev, atol, rtol: ops.error_norm(high, low, prev, atol=atol, rtol=rtol)  # noqa: E731
    atol = validation.real_scalar("diffaccel.error_norm", "atol", atol)
    rtol = validation.real_scalar("diffaccel.error_norm", "rtol", rtol)
    scalar = None if eta else _HOST_SCALARS.get(t_end.dtype)
    if scalar is None:  # noise (k-diffusion's ancestral split), or times numpy has no type for
        s, end, clamp, cast = t_start, t_end, (torch.minimum if forward else torch.maximum), float
        time_tensor = lambda time: time  # noqa: E731
    else:  # the times as host scalars of their dtype: no 0-d op and no read per trial
        s, end, clamp, cast = (
            scalar(float(t_start)),
            scalar(float(t_end)),
            (np.minimum if forward else np.maximum),
            scalar,
        )
        time_tensor = lambda time: torch.tensor(time, dtype=t_end.dtype, device=t_end.device)  # noqa: E731
        model_dtype = torch.result_type(t_end, solver.ones)
    # (a 0-d tensor plus a Python float rounds the float to the tensor's dtype first: cast does)
    stop = end - cast(1e-5) if forward else end + cast(1e-5)
    while (s < stop) if forward else (s > stop):
        t = clamp(end, s + cast(pid.h))
        if scalar is None:
            t_, su = solver.ancestral_split(s, t, t_end, eta)
            times = _TensorTimes(solver, s, t_, r1)
        else:
            t_, su = t, 0.0
            times = _HostTimes(solver, s, t, r1, t_end.device, model_dtype)
        u1, eps, denoised = solver.start(x, times)
        # The model at u1, then one pass over [u1, its denoised, x, eps] that writes two
        # states (eps_r1 = (u1 - denoised_1) / sigma(s1) folded into their weights):
        # order 2: x_high (dpm_solver_2_step) and x_low (dpm_solver_1_step); order 3: u2
        # (the third stage's input) and x_low (dpm_solver_2_step with r1 = 1/3).
        sigma_s1 = times.sigma("s1")
        w_r1, w_eps = solver.two_step_weights(times)  # dpm_solver_2_step with this r1
        two_step = [w_r1 / sigma_s1, -w_r1 / sigma_s1, 1.0, w_eps]
        if order == 2:  # x_high = dpm_solver_2_step, x_low = dpm_solver_1_step
            rows = [two_step, [0.0, 0.0, 1.0, -times.sigma("next") * math.expm1(times.h)]]
        else:  # u2 (the third stage's input), x_low = dpm_solver_2_step with r1 = 1/3
            w_r1, w_eps = solver.u2_weights(times)
            rows = [[w_r1 / sigma_s1, -w_r1 / sigma_s1, 1.0, w_eps], two_step]
        denoised_1 = solver.denoise(u1, times.model_sigma("s1"))
        second, x_low = common.combine_pair([u1, denoised_1, x, eps], rows, pair)
        x_high = second if order == 2 else solver.third_stage(x, eps, second, times)[0]
        # k-diffusion's error is the RMS over the whole batch: the mean of the per-sample
        # squares, on the host in float64 (one read; fsum: correctly rounded in any order).
        squares = [v * v for v in norm(x_high, x_low, x_prev, atol, rtol).tolist()]
        error = math.sqrt(math.fsum(squares) / len(squares))
        accept = pid.propose_step(error)
        if accept:
            x_prev = x_low
            x = x_high
            if su:
                noise = noise_sampler(solver.sigma(s), solver.sigma(t))
                x = ops.multistep_combine([x, noise], common._COEFFICIENTS.get([1.0, su * s_noise], x.device))
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        if callback is not None:
            s_tensor = time_tensor(s)
            callback(
                {
                    "sigma": solver.sigma(s_tensor),
                    "sigma_hat": solver.sigma(s_tensor),
                    "x": x,
                    "i": info["steps"] - 1,
                    "t": s_tensor,
                    "t_up": s_tensor,
                    "denoised": denoised,
                    "error": error,
                    "h": pid.h,
                    **info,
                }
            )
    if bar is not None:
        bar.close()
    return (x, info) if return_info else x
