"""The predictor-corrector schedulers: UniPC (bh1 / bh2) and SA-Solver
(stochastic Adams), sharing host sigmas and half log-SNRs
(_PredictorCorrectorSteps)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffaccel.integrations.diffusers.common import (
    _alpha_sigma,
    _cast,
    _combine,
    _conversion,
    _ei_step,
    _lambda,
    _position_in,
    _promoted,
    _ratio,
    _sqrt,
    _StepIndexWithoutSync,
)


class _PredictorCorrectorSteps(_StepIndexWithoutSync):
    """What UniPC and SA-Solver share: host sigmas read in set_timesteps, and
    a step's (alpha_t, sigma_t) and half log-SNR from them (VP or flow sigmas)."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._read_host_sigmas()

    def _alpha_sigma_at(self, index: int) -> Tuple[float, float]:
        return _alpha_sigma(self._host_sigmas[index], self.config.use_flow_sigmas)

    def _lambda_at(self, index: int) -> float:
        return _lambda(*self._alpha_sigma_at(index))


class _UniPCSteps(_PredictorCorrectorSteps):
    """UniPC's fused step (_unipc_step): the model output's conversion and the
    UniC corrector in one ei_step (writing the corrected sample diffusers keeps
    as last_sample), then the UniP predictor in another; one ei_step in all
    where the corrector is off. The rho weights are solved on the host in
    float64, where diffusers solves them on the device. Shared by
    UniPCMultistepScheduler and Helios' copy of it (helios.py)."""

    def _bh(self, h: float, order: int, rks: List[float], corrector: bool):
        """(h_phi_1, B_h, rhos) of diffusers' multistep_uni_{p,c}_bh_update."""
        hh = -h if self.predict_x0 else h
        h_phi_1 = math.expm1(hh)
        h_phi_k = _ratio(h_phi_1, hh) - 1.0
        factorial = 1
        b_h = hh if self.config.solver_type == "bh1" else math.expm1(hh)
        if self.config.solver_type not in ("bh1", "bh2"):
            raise NotImplementedError(self.config.solver_type)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append([rk ** (i - 1) for rk in rks])
            b.append(_ratio(h_phi_k * factorial, b_h))
            factorial *= i + 1
            h_phi_k = _ratio(h_phi_k, hh) - 1.0 / factorial
        if corrector:
            rhos = [0.5] if order == 1 else _solve(rows, b)
        else:
            rhos = [] if order == 1 else ([0.5] if order == 2 else _solve([r[:-1] for r in rows[:-1]], b[:-1]))
        return h_phi_1, b_h, rhos

    def _base_and_scale(self, t_index: int, s0_index: int) -> Tuple[float, float]:
        alpha_t, sigma_t = self._alpha_sigma_at(t_index)
        alpha_s0, sigma_s0 = self._alpha_sigma_at(s0_index)
        if self.predict_x0:
            return _ratio(sigma_t, sigma_s0), alpha_t
        return _ratio(alpha_t, alpha_s0), sigma_t  # (alpha_s0 is 0 at a flow sigma of 1: inf, as torch divides)

    def _combination(self, t_index: int, s0_index: int, order: int, older: List[int], corrector: bool):
        """(base, weight of m0, weights of the older outputs, weight of model_t) of
        x_t = base x - scale h_phi_1 m0 - scale B_h (sum_k rho_k (m_k - m0) / r_k [+ rho_last (model_t - m0)])."""
        return self._step_value(
            (t_index, s0_index, order, tuple(older), corrector),
            lambda: self._solve_combination(t_index, s0_index, order, older, corrector),
        )

    def _solve_combination(self, t_index: int, s0_index: int, order: int, older: List[int], corrector: bool):
        """_combination's values, computed (the rhos solved in float64)."""
        lam_t, lam_s0 = self._lambda_at(t_index), self._lambda_at(s0_index)
        h = lam_t - lam_s0
        rks = [_ratio(self._lambda_at(si) - lam_s0, h) for si in older] + [1.0]
        h_phi_1, b_h, rhos = self._bh(h, order, rks, corrector)
        base, scale = self._base_and_scale(t_index, s0_index)
        # The corrector's last rho weighs (model_t - m0); the others weigh the older outputs.
        older_rhos = rhos[:-1] if corrector else rhos
        older_w = [-scale * b_h * _ratio(rho, rk) for rho, rk in zip(older_rhos, rks)]
        m0 = -scale * h_phi_1 - sum(older_w)
        model_t = 0.0
        if corrector:
            model_t = -scale * b_h * rhos[-1]
            m0 += scale * b_h * rhos[-1]
        return base, m0, older_w[: len(older)], model_t

    def _unipc_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """diffusers' UniPC step from step_index on (corrector, history shift,
        predictor, counters), returning the sample it steps to."""
        c = self.config
        i = self.step_index
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        alpha, sigma = self._alpha_sigma_at(i)
        c_x, c_m = _conversion(c.prediction_type, alpha, sigma, self.predict_x0, self._host_sigmas[i])
        threshold = self._config_threshold(clip=False)
        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        this_order = min(order, self.lower_order_nums + 1)
        device = sample.device

        def coeffs(values):
            return self._coefficients(values, device)

        if use_corrector:
            # Pass 1: converted output d and the corrected sample, from last_sample, the
            # previous outputs m0 = model_outputs[-1], m_k = model_outputs[-(k+1)].
            k_order = self.this_order
            older = [i - (k + 1) for k in range(1, k_order)]
            base, w0, w_older, w_t = self._combination(i, i - 1, k_order, older, corrector=True)
            history = [self.last_sample, self.model_outputs[-1]] + [
                self.model_outputs[-(k + 1)] for k in range(1, k_order)
            ]
            sample, converted = _ei_step(
                sample,
                model_output,
                history,
                coeffs([c_x, c_m, 0.0, w_t, base, w0, *w_older, 0.0]),
                threshold=threshold,
            )
            sample = _cast(sample, self.last_sample.dtype)  # diffusers' x_t.to(x.dtype), x = last_sample
        for k in range(c.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
            self.timestep_list[k] = self.timestep_list[k + 1]
        self.timestep_list[-1] = timestep
        self.this_order = this_order
        self.last_sample = sample
        # The predictor, from the (corrected) sample, this step's converted output and the older ones.
        older = [i - k for k in range(1, this_order)]
        base, w0, w_older, _ = self._combination(i + 1, i, this_order, older, corrector=False)
        older_outputs = [self.model_outputs[-(k + 1)] for k in range(1, this_order)]
        if use_corrector:
            # d is already converted: pass it as the model output with c_x = 0, c_m = 1.
            prev_sample, _ = _ei_step(
                sample,
                converted,
                older_outputs,
                coeffs([0.0, 1.0, base, w0, *w_older, 0.0]),
                out=(torch.empty_like(sample, memory_format=torch.contiguous_format), converted),
            )
        else:
            prev_sample, converted = _ei_step(
                sample, model_output, older_outputs, coeffs([c_x, c_m, base, w0, *w_older, 0.0]), threshold=threshold
            )
        self.model_outputs[-1] = converted
        prev_sample = _cast(prev_sample, sample.dtype)  # diffusers' x_t.to(x.dtype), x = the (corrected) sample
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return prev_sample


class UniPCMultistepScheduler(_UniPCSteps, _diffusers.UniPCMultistepScheduler):
    """diffusers' UniPCMultistepScheduler with fused steps (_UniPCSteps): two
    ei_steps a step, one where the corrector is off."""

    def unsupported_options(self) -> List[str]:
        bad = []
        if self.solver_p is not None:
            bad.append("solver_p")
        if self.config.thresholding and not self.predict_x0:
            bad.append("thresholding (with predict_x0=False)")
        if self.config.solver_order > 3:
            bad.append(f"solver_order={self.config.solver_order} (more earlier outputs than ei_step combines)")
        return bad

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        return_dict: bool = True,
        generator: Optional[torch.Generator] = None,
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        prev_sample = self._unipc_step(model_output, timestep, sample)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


def _solve(rows: List[List[float]], b: List[float]) -> List[float]:
    """x with rows x = b (at most 3 x 3 here), by Gaussian elimination with
    partial pivoting in float64, as LAPACK's solve does; plain Python floats
    (no numpy), so torch.compile can trace a step. A pivot of exactly 0 (a
    singular matrix: UniPC's weights at a step whose log-SNR is infinite with
    order 3) raises torch.linalg.LinAlgError, as diffusers' torch.linalg.solve
    does; inf or NaN entries give NaN, as there."""
    a = [list(row) + [v] for row, v in zip(rows, b)]
    n = len(a)
    for k in range(n):
        pivot = max(range(k, n), key=lambda i: abs(a[i][k]))
        if a[pivot][k] == 0.0:
            raise torch.linalg.LinAlgError(
                "UniPC's weights: the solve failed because the matrix of the log-SNR ratios is singular "
                "(diffusers' torch.linalg.solve raises this too)"
            )
        a[k], a[pivot] = a[pivot], a[k]
        for i in range(k + 1, n):
            factor = _ratio(a[i][k], a[k][k])
            a[i] = [v - factor * w for v, w in zip(a[i], a[k])]
    x = [0.0] * n
    for k in reversed(range(n)):
        x[k] = _ratio(a[k][n] - sum(a[k][j] * x[j] for j in range(k + 1, n)), a[k][k])
    return x


def _exp_poly_integral(k: int, start: float, end: float, rate: float) -> float:
    """The integral of exp(rate x) x^k over [start, end], from its antiderivative
    exp(rate x) sum_j (-1)^j k!/(k-j)! x^(k-j) / rate^(j+1)."""

    def antiderivative(x: float) -> float:
        total, falling = 0.0, 1.0  # falling: k!/(k-j)!
        for j in range(k + 1):
            total += (-1) ** j * falling * x ** (k - j) / rate ** (j + 1)
            falling *= k - j
        return math.exp(rate * x) * total

    return antiderivative(end) - antiderivative(start)


def _sa_gradient_coefficients(nodes: List[float], start: float, end: float, rate: float) -> List[float]:
    """SA-Solver's weights of its model outputs: the integral over [start, end]
    of exp(rate lambda) times each Lagrange basis polynomial of the nodes (the
    outputs' lambdas, newest first), in float64 (IEEE inf / nan for coinciding
    nodes). Plain Python floats (no numpy), so torch.compile can trace a step."""
    integrals = [_exp_poly_integral(k, start, end, rate) for k in range(len(nodes))]
    weights = []
    for i, node in enumerate(nodes):
        others = nodes[:i] + nodes[i + 1 :]
        powers, denominator = [1.0], 1.0  # powers: prod (x - other)'s coefficients, highest first
        for other in others:
            powers = [a - other * b for a, b in zip(powers + [0.0], [0.0] + powers)]
            denominator *= node - other
        integral = sum(p * q for p, q in zip(powers, integrals[::-1]))
        weights.append(_ratio(integral, denominator))
    return weights


class SASolverScheduler(_PredictorCorrectorSteps, _diffusers.SASolverScheduler):
    """diffusers' SASolverScheduler (SA-Solver, stochastic Adams) with fused
    steps: the model output's conversion and the SA-Corrector (from the kept
    last sample and noise) in one ei_step, then the SA-Predictor in one
    multistep_combine; one ei_step in all where the corrector does not run.
    The Lagrange-exponential weights are computed on the host in float64
    (diffusers computes them in float32 tensors on the CPU), and ``tau_func``
    is handed the timestep on the host (diffusers' default one branches on a
    device timestep: a synchronization)."""

    def unsupported_options(self) -> List[str]:
        if self.config.thresholding and not self.predict_x0:
            return ["thresholding (with algorithm_type='noise_prediction')"]
        return []

    def _tau(self, timestep, index: int) -> float:
        """tau_func at a timestep given to step(): a number or CPU tensor as it is,
        a device tensor as the CPU value of its place in the schedule (or of the
        index-th step's) instead of a read. A step's corrector asks again for the
        previous step's timestep (diffusers calls tau_func twice a step): that
        value is kept (the default tau_func costs ~5 us, a tenth of the step)."""
        kept = vars(self).get("_kept_tau")
        if kept is not None and kept[0] is timestep:
            return kept[1]
        given = timestep
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            position = _position_in(self.timesteps, timestep)
            timestep = self._host_schedule[index if position is None else position]
        tau = float(self.tau_func(timestep))
        self._kept_tau = (given, tau)
        return tau

    def _update_coefficients(self, t_index: int, s0_index: int, order: int, tau: float, corrector: bool):
        """(base, output weights newest first, noise weight) of diffusers'
        stochastic Adams-Bashforth (predictor: from s0 = this step to t = the
        next) or Adams-Moulton (corrector: from the last step to this one) update."""
        alpha_t, sigma_t = self._alpha_sigma_at(t_index)
        alpha_s0, sigma_s0 = self._alpha_sigma_at(s0_index)
        lam_t, lam_s0 = _lambda(alpha_t, sigma_t), _lambda(alpha_s0, sigma_s0)
        h = lam_t - lam_s0
        newest = t_index if corrector else s0_index  # the newest model output's point
        nodes = [self._lambda_at(newest - k) for k in range(order)]
        rate = 1.0 + tau**2
        if not self.predict_x0:
            g = _sa_gradient_coefficients(nodes, lam_s0, lam_t, -1.0)
            return (
                _ratio(alpha_t, alpha_s0),
                [-rate * alpha_t * gk for gk in g],
                tau * sigma_t * _sqrt(math.expm1(2.0 * h)),
            )
        g = _sa_gradient_coefficients(nodes, lam_s0, lam_t, rate)
        if order == 2:  # SA-Solver's O(h^3) modification of the second-order weights (as UniPC's)
            remainder = h * rate - 1.0 + math.exp(-rate * h)
            if corrector:
                extra = math.exp(rate * lam_t) * (h / 2 - _ratio(remainder, rate**2 * h))
            else:
                extra = math.exp(rate * lam_t) * _ratio(
                    h**2 / 2 - remainder / rate**2, lam_s0 - self._lambda_at(s0_index - 1)
                )
            g = [g[0] + extra, g[1] - extra]
        scale = rate * sigma_t * math.exp(-(tau**2) * lam_t)
        return (
            math.exp(-(tau**2) * h) * _ratio(sigma_t, sigma_s0),
            [scale * gk for gk in g],
            sigma_t * _sqrt(-math.expm1(-2.0 * tau**2 * h)),
        )

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        c, i = self.config, self.step_index
        if c.variance_type in ("learned", "learned_range") and c.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        alpha, sigma = self._alpha_sigma_at(i)
        c_x, c_m = _conversion(c.prediction_type, alpha, sigma, self.predict_x0, self._host_sigmas[i])
        threshold = self._config_threshold(clip=False) if self.predict_x0 else None
        state = _promoted(sample, model_output)
        previous = list(self.model_outputs)  # the converted outputs before this step's
        corrected = None
        if i > 0 and self.last_sample is not None:  # the SA-Corrector, with this step's converted output
            order, tau = self.this_corrector_order, self._tau(self.timestep_list[-1], i - 1)
            base, w, s = self._step_value(
                ("corrector", i, order, tau), lambda: self._update_coefficients(i, i - 1, order, tau, corrector=True)
            )
            coeffs = [c_x, c_m, 0.0, w[0], base] + w[1:] + [s]
            corrected, converted = _ei_step(
                state,
                model_output,
                [self.last_sample] + [previous[-k] for k in range(1, order)],
                self._coefficients(coeffs, state.device),
                threshold=threshold,
                noise=_cast(self.last_noise, state.dtype) if s != 0.0 else None,
            )
            sample = corrected = _cast(corrected, self.last_sample.dtype)
        keep = max(c.predictor_order, c.corrector_order - 1)
        for k in range(keep - 1):
            self.model_outputs[k], self.timestep_list[k] = self.model_outputs[k + 1], self.timestep_list[k + 1]
        self.timestep_list[-1] = timestep
        noise = randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        steps_left = len(self.timesteps) - i
        predictor_order = min(c.predictor_order, steps_left) if c.lower_order_final else c.predictor_order
        corrector_order = min(c.corrector_order, steps_left + 1) if c.lower_order_final else c.corrector_order
        self.this_predictor_order = min(predictor_order, self.lower_order_nums + 1)
        self.this_corrector_order = min(corrector_order, self.lower_order_nums + 2)
        self.last_sample, self.last_noise = sample, noise
        order, tau = self.this_predictor_order, self._tau(timestep, i)
        base, w, s = self._step_value(
            ("predictor", i, order, tau), lambda: self._update_coefficients(i + 1, i, order, tau, corrector=False)
        )
        step_noise = _cast(noise, state.dtype) if s != 0.0 else None
        if corrected is None:  # the conversion and the SA-Predictor in one pass
            coeffs = [c_x, c_m, base] + w + [s]
            prev_sample, converted = _ei_step(
                state,
                model_output,
                [previous[-k] for k in range(1, order)],
                self._coefficients(coeffs, state.device),
                threshold=threshold,
                noise=step_noise,
            )
        else:
            tensors = [corrected, converted] + [previous[-k] for k in range(1, order)]
            weights = [base] + w
            if step_noise is not None:
                tensors, weights = tensors + [step_noise], weights + [s]
            prev_sample = _combine(tensors, self._coefficients(weights, state.device))
        self.model_outputs[-1] = converted
        prev_sample = _cast(prev_sample, sample.dtype)
        if self.lower_order_nums < keep:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
