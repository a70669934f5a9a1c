"""The DPM-Solver family: DPMSolverMultistepScheduler and its inverse, the EDM
and cosine (Stable Audio) variants, DEIS (all one multistep exponential-
integrator step, _MultistepSteps) and DPMSolverSinglestepScheduler."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffaccel import ops
from diffaccel.integrations.diffusers.common import (
    _TORCHSDE_NOISE,
    brownian_tree_noise_sampler,
    _alpha_sigma,
    _cast,
    _conversion,
    _ei_step,
    _lambda,
    _promoted,
    _ratio,
    _sqrt,
    _StepIndexWithoutSync,
)


class _MultistepSteps(_StepIndexWithoutSync):
    """The fused step of diffusers' multistep exponential-integrator schedulers
    (DPM-Solver's VP / flow and EDM ones, DEIS): the order diffusers would pick,
    the update's coefficients from host sigmas, one ei_step. A class says how a
    sigma maps to (alpha, sigma) (_alpha_sigma), what the model output converts
    to (_data_term), whether diffusers upcasts the sample to float32 (UPCAST),
    and, unless it is DPM-Solver's, the update (_update_coefficients); one whose
    config has no algorithm_type or thresholding, or whose SDE noise is not
    randn, says so (_algorithm_type, _threshold, _noise)."""

    UPCAST = True

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._read_host_sigmas()

    def _step_coefficients(self, order: int) -> List[float]:
        """[c_x, c_m, a, weights of m0 (m1, m2), s] of this step at this order."""

        def compute():
            c_x, c_m = self._data_term(self._host_sigmas[self.step_index])
            a, weights, s = self._update_coefficients(order)
            return [c_x, c_m, a, *weights, s]

        return self._step_value((self.step_index, order), compute)

    def _algorithm_type(self) -> str:
        return self.config.algorithm_type

    def _threshold(self) -> Optional[ops.Threshold]:
        return self._config_threshold(clip=False)

    def _noise(self, model_output: torch.Tensor, sample: torch.Tensor, generator, variance_noise) -> torch.Tensor:
        """The SDE step's noise, as diffusers draws it: in float32 where it upcasts
        the sample, else in the model's dtype."""
        dtype = torch.float32 if self.UPCAST else model_output.dtype
        if variance_noise is not None:
            return variance_noise.to(device=model_output.device, dtype=dtype)
        return randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=dtype)

    def _update_coefficients(self, order: int) -> Tuple[float, List[float], float]:
        """(a, weights of m0, m1, m2, s) of x_t = a x + sum_j w_j m_j + s noise, the
        update diffusers' {first,second,third}-order functions compute. Divisions
        follow IEEE rules (_ratio), as diffusers' tensor arithmetic does: a step
        between equal sigmas (h = 0: karras, exponential or beta sigmas end on
        sigma_min twice with final_sigmas_type="sigma_min") gives diffusers' finite
        result, not a ZeroDivisionError. The SDE noise of a step that does not lower
        the noise level (h <= 0) is zero: the EDM schedule ends a float32 rounding
        below the sigma_min it appends, an h of -5e-7 that diffusers' float32
        arithmetic rounds to 0 and float64 keeps, whose sqrt(1 - e^{-2h}) would be NaN."""
        i = self.step_index
        sig = [self._host_sigmas[i + 1 - k] for k in range(order + 1)]  # sigma_t, sigma_s0, s1, s2
        alphas_sigmas = [self._alpha_sigma(v) for v in sig]
        (alpha_t, sigma_t), (alpha_s0, sigma_s0) = alphas_sigmas[0], alphas_sigmas[1]
        lam = [_lambda(a, s) for a, s in alphas_sigmas]
        h = lam[0] - lam[1]
        algorithm, midpoint = self._algorithm_type(), self.config.solver_type == "midpoint"
        e_minus, e_minus2 = math.exp(-h), math.exp(-2.0 * h)
        s = 0.0
        # A weighs m0; B the first difference D1 (order >= 2); C the second, D2 (order 3).
        if algorithm == "dpmsolver++":
            a = sigma_t / sigma_s0
            A = alpha_t * (1.0 - e_minus)
            B = lambda: 0.5 * A if (midpoint and order == 2) else alpha_t * (_ratio(e_minus - 1.0, h) + 1.0)
            C = lambda: -alpha_t * (_ratio(e_minus - 1.0 + h, h * h) - 0.5)
        elif algorithm == "sde-dpmsolver++":
            a = sigma_t / sigma_s0 * e_minus
            A = alpha_t * (1.0 - e_minus2)
            B = lambda: 0.5 * A if (midpoint and order == 2) else alpha_t * (_ratio(1.0 - e_minus2, -2.0 * h) + 1.0)
            C = lambda: alpha_t * (_ratio(1.0 - e_minus2 - 2.0 * h, (2.0 * h) ** 2) - 0.5)
            s = sigma_t * math.sqrt(max(1.0 - e_minus2, 0.0))
        else:  # dpmsolver, sde-dpmsolver: noise prediction, sigma_t > 0 (final_sigmas_type sigma_min)
            e_plus = math.exp(h)
            factor = 2.0 if algorithm == "sde-dpmsolver" else 1.0
            a = alpha_t / alpha_s0
            A = -factor * sigma_t * (e_plus - 1.0)
            B = lambda: 0.5 * A if (midpoint and order == 2) else -factor * sigma_t * (_ratio(e_plus - 1.0, h) - 1.0)
            C = lambda: -sigma_t * (_ratio(e_plus - 1.0 - h, h * h) - 0.5)
            if algorithm == "sde-dpmsolver":
                s = sigma_t * math.sqrt(max(math.exp(2.0 * h) - 1.0, 0.0))
        if order == 1:
            return a, [A], s
        B = B()
        r0 = _ratio(lam[1] - lam[2], h)
        if order == 2:  # D1 = (m0 - m1) / r0
            return a, [A + _ratio(B, r0), -_ratio(B, r0)], s
        C = C()
        r1 = _ratio(lam[2] - lam[3], h)
        # D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
        # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1.
        u = _ratio(B * r0, r0 + r1) + _ratio(C, r0 + r1)
        return (
            a,
            [
                A + _ratio(B, r0) + _ratio(u, r0),
                -_ratio(B, r0) - u * (_ratio(1.0, r0) + _ratio(1.0, r1)),
                _ratio(u, r1),
            ],
            s,
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        c = self.config
        steps = len(self.timesteps)  # as diffusers counts them (the inverse scheduler's sigmas can be longer)
        last = self.step_index == steps - 1
        lower_order_final = last and (
            c.get("euler_at_final") or (c.lower_order_final and steps < 15) or c.get("final_sigmas_type") == "zero"
        )
        lower_order_second = (self.step_index == steps - 2) and c.lower_order_final and steps < 15
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            order = 1
        elif c.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            order = 2
        else:
            order = 3

        if c.get("variance_type") in ("learned", "learned_range") and c.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        coeffs = self._coefficients(self._step_coefficients(order), sample.device)
        noise = None
        if self._algorithm_type() in ("sde-dpmsolver", "sde-dpmsolver++"):
            noise = self._noise(model_output, sample, generator, variance_noise)
        history = [self.model_outputs[-1 - k] for k in range(order - 1)]  # m1, m2: earlier converted outputs
        # diffusers' DPMSolverMultistepScheduler upcasts the sample to float32 for the
        # update and casts the result back (the EDM one does not).
        # The converted output goes into the history slot about to be dropped (ei_step
        # allows it to be one of the history tensors it reads).
        state = _cast(sample, torch.float32) if self.UPCAST else _promoted(sample, model_output)
        oldest = self.model_outputs[0]
        reusable = (
            oldest is not None
            and c.solver_order > 1
            and oldest.shape == state.shape
            and oldest.dtype == state.dtype
            and oldest.device == state.device
        )
        out = (
            torch.empty_like(state, memory_format=torch.contiguous_format),
            oldest if reusable else torch.empty_like(state, memory_format=torch.contiguous_format),
        )
        prev_sample, converted = _ei_step(
            state, model_output, history, coeffs, threshold=self._threshold(), noise=noise, out=out
        )
        for k in range(c.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = converted
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        if self.UPCAST:  # back to the dtype of diffusers' converted output, promoted from sample and model output
            prev_sample = _cast(prev_sample, torch.promote_types(sample.dtype, model_output.dtype))
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


class DPMSolverMultistepScheduler(_MultistepSteps, _diffusers.DPMSolverMultistepScheduler):
    """diffusers' DPMSolverMultistepScheduler with a fused ``step()``."""

    def unsupported_options(self) -> List[str]:
        """Config options whose step this class does not fuse (accelerate() keeps the stock class)."""
        c = self.config
        bad = []
        if c.thresholding and c.algorithm_type in ("dpmsolver", "sde-dpmsolver"):
            bad.append("thresholding (with a noise-prediction algorithm_type)")
        if c.solver_order == 3 and c.algorithm_type == "sde-dpmsolver":
            bad.append("solver_order=3 (with algorithm_type='sde-dpmsolver')")
        return bad

    def _alpha_sigma(self, sigma: float) -> Tuple[float, float]:
        return _alpha_sigma(sigma, self.config.use_flow_sigmas)

    def _data_term(self, schedule_sigma: float) -> Tuple[float, float]:
        """(c_x, c_m): what the algorithm integrates (convert_model_output): the data
        prediction for dpmsolver++ / sde-dpmsolver++, the noise prediction for the others."""
        return _conversion(
            self.config.prediction_type,
            *self._alpha_sigma(schedule_sigma),
            to_data=self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"),
            schedule_sigma=schedule_sigma,
        )


class DPMSolverMultistepInverseScheduler(_MultistepSteps, _diffusers.DPMSolverMultistepInverseScheduler):
    """diffusers' DPMSolverMultistepInverseScheduler (DPM-Solver inversion, data
    to noise) with the fused step of DPMSolverMultistepScheduler; like diffusers'
    inverse step it does not upcast the sample."""

    UPCAST = False
    _alpha_sigma = DPMSolverMultistepScheduler._alpha_sigma
    _data_term = DPMSolverMultistepScheduler._data_term

    def _index_on_host(self, timestep, host: torch.Tensor) -> int:
        # diffusers' inverse _init_step_index (it has no index_for_timestep): the
        # second match, else the only one, else the last step.
        matches = (host == timestep).nonzero()
        if len(matches) == 0:
            return len(host) - 1
        return int(matches[1 if len(matches) > 1 else 0])

    def unsupported_options(self) -> List[str]:
        bad = DPMSolverMultistepScheduler.unsupported_options(self)
        if self.config.solver_order == 3 and self.config.algorithm_type == "sde-dpmsolver++":
            bad.append(
                "solver_order=3 (with algorithm_type='sde-dpmsolver++', which diffusers' inverse step does not define)"
            )
        return bad


def _edm_data_term(config, sigma: float) -> Tuple[float, float]:
    """(c_skip, c_out) of the EDM schedulers' precondition_outputs: x0 = c_skip x + c_out model_output."""
    sigma_data = config.sigma_data
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    if config.prediction_type == "epsilon":
        return c_skip, sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    if config.prediction_type == "v_prediction":
        return c_skip, -sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    raise ValueError(f"Prediction type {config.prediction_type} is not supported.")


class EDMDPMSolverMultistepScheduler(_MultistepSteps, _diffusers.EDMDPMSolverMultistepScheduler):
    """diffusers' EDMDPMSolverMultistepScheduler (Playground v2.5 and other EDM
    models) with a fused ``step()``: DPM-Solver++ 1-3M or SDE-DPM-Solver++ 2M on
    the EDM sigmas (alpha = 1), the model output preconditioned to the data
    prediction (c_skip, c_out) and optionally thresholded inside the same pass."""

    UPCAST = False

    def unsupported_options(self) -> List[str]:
        if self.config.solver_order == 3 and self.config.algorithm_type == "sde-dpmsolver++":
            return ["solver_order=3 (with algorithm_type='sde-dpmsolver++', which diffusers' EDM step does not define)"]
        return []

    def _alpha_sigma(self, sigma: float) -> Tuple[float, float]:
        return 1.0, sigma  # the model's inputs are preconditioned: alpha_t = 1

    def _data_term(self, schedule_sigma: float) -> Tuple[float, float]:
        return _edm_data_term(self.config, schedule_sigma)


class CosineDPMSolverMultistepScheduler(_MultistepSteps, _diffusers.CosineDPMSolverMultistepScheduler):
    """diffusers' CosineDPMSolverMultistepScheduler (Stable Audio Open's) with a
    fused ``step()``: SDE-DPM-Solver++ 1S/2M on EDM-preconditioned sigmas, its
    Brownian-tree noise from diffusers' own sampler (torchsde), built as
    diffusers builds it (from the first model output, the config's sigma range
    and the generator's seed) and queried at the same sigmas."""

    UPCAST = False
    NOT_CAPTURABLE = _TORCHSDE_NOISE

    def unsupported_options(self) -> List[str]:
        if self.config.solver_order > 2:
            return [f"solver_order={self.config.solver_order} (diffusers' cosine step has orders 1 and 2 only)"]
        return []

    def _algorithm_type(self) -> str:
        return "sde-dpmsolver++"

    def _threshold(self) -> Optional[ops.Threshold]:
        return None

    def _alpha_sigma(self, sigma: float) -> Tuple[float, float]:
        return 1.0, sigma  # the model's inputs are preconditioned: alpha_t = 1

    def _data_term(self, schedule_sigma: float) -> Tuple[float, float]:
        return _edm_data_term(self.config, schedule_sigma)

    def _noise(self, model_output: torch.Tensor, sample: torch.Tensor, generator, variance_noise) -> torch.Tensor:
        if self.noise_sampler is None:  # set_timesteps drops it
            seed = None
            if generator is not None:
                seed = (
                    [g.initial_seed() for g in generator] if isinstance(generator, list) else generator.initial_seed()
                )
            # diffusers builds the tree from the converted output, whose dtype is the
            # promotion of the sample's and the model output's (the tree's noise is in it).
            self.noise_sampler = brownian_tree_noise_sampler(
                _promoted(model_output, sample),
                sigma_min=self.config.sigma_min,
                sigma_max=self.config.sigma_max,
                seed=seed,
            )
        i = self.step_index
        return self.noise_sampler(self.sigmas[i], self.sigmas[i + 1]).to(model_output.device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)


class DEISMultistepScheduler(_MultistepSteps, _diffusers.DEISMultistepScheduler):
    """diffusers' DEISMultistepScheduler (log-rho DEIS, orders 1-3) with a fused
    ``step()``: the noise prediction and the multistep combination in one
    ei_step. The combination's weights (integrals of Lagrange polynomials in
    log rho, rho = sigma / alpha) are evaluated on the host in float64, where
    diffusers evaluates them in float32."""

    UPCAST = False

    def unsupported_options(self) -> List[str]:
        if self.config.thresholding:
            return ["thresholding (DEIS integrates the noise prediction)"]
        return []

    def _alpha_sigma(self, sigma: float) -> Tuple[float, float]:
        return _alpha_sigma(sigma, self.config.use_flow_sigmas)

    def _data_term(self, schedule_sigma: float) -> Tuple[float, float]:
        """(c_x, c_m) of convert_model_output: the noise prediction (x - alpha x0) / sigma."""
        alpha, sigma = self._alpha_sigma(schedule_sigma)
        x0_x, x0_m = _conversion(self.config.prediction_type, alpha, sigma, True, schedule_sigma)
        # diffusers' flow branch sets its sigma_t to the schedule's sigma, which the
        # division then uses (the same where the sigmas are flow sigmas).
        sigma = schedule_sigma if self.config.prediction_type == "flow_prediction" else sigma
        return (1.0 - alpha * x0_x) / sigma, -alpha * x0_m / sigma

    def _update_coefficients(self, order: int) -> Tuple[float, List[float], float]:
        """(a, weights of m0, m1, m2, s) of diffusers' deis_first_order_update and
        multistep_deis_{second,third}_order_update: x_t = alpha_t (x / alpha_s0 + sum_j coef_j m_j)."""
        i = self.step_index
        (alpha_t, sigma_t), *earlier = [self._alpha_sigma(self._host_sigmas[i + 1 - k]) for k in range(order + 1)]
        alpha_s0 = earlier[0][0]
        if order == 1:
            h = _lambda(alpha_t, sigma_t) - _lambda(*earlier[0])
            return alpha_t / alpha_s0, [-sigma_t * math.expm1(h)], 0.0
        rho_t, rhos = sigma_t / alpha_t, [s / a for a, s in earlier]  # rho_s0, rho_s1 (, rho_s2)
        log = math.log
        if order == 2:

            def integral(t, b, c):  # of (log t - log c) / (log b - log c) dt
                return _ratio(t * (-log(c) + log(t) - 1), log(b) - log(c))

            cycles = [(0, 1), (1, 0)]
        else:

            def integral(t, b, c, d):  # of (log t - log c)(log t - log d) / ((log b - log c)(log b - log d)) dt
                lt, lb, lc, ld = log(t), log(b), log(c), log(d)
                return _ratio(t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2), (lb - lc) * (lb - ld))

            cycles = [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
        weights = [
            alpha_t * (integral(rho_t, *(rhos[k] for k in cycle)) - integral(rhos[0], *(rhos[k] for k in cycle)))
            for cycle in cycles
        ]
        return alpha_t / alpha_s0, weights, 0.0


class DPMSolverSinglestepScheduler(_StepIndexWithoutSync, _diffusers.DPMSolverSinglestepScheduler):
    """diffusers' DPMSolverSinglestepScheduler with a fused ``step()``: each
    model evaluation's conversion and the update from the group's starting
    sample (orders 1-3, midpoint or heun, dpmsolver++ / sde-dpmsolver++ /
    dpmsolver) in one ei_step."""

    def unsupported_options(self) -> List[str]:
        if self.config.thresholding and self.config.algorithm_type == "dpmsolver":
            return ["thresholding (with algorithm_type='dpmsolver')"]
        return []

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._read_host_sigmas()

    def _update(self, order: int) -> Tuple[float, List[float], float]:
        """(a, weights of m0 (this output), m1, m2, s): x_t = a start + sum w m + s noise.
        Divisions follow IEEE rules, as in DPMSolverMultistepScheduler._update_coefficients."""
        i, c = self.step_index, self.config
        alphas_sigmas = [_alpha_sigma(self._host_sigmas[i + 1 - k], c.use_flow_sigmas) for k in range(order + 1)]
        lam = [_lambda(a, sg) for a, sg in alphas_sigmas]  # t, s0, s1, s2
        (alpha_t, sigma_t), (alpha_start, sigma_start) = alphas_sigmas[0], alphas_sigmas[order]
        h = lam[0] - lam[order]
        em, em2 = math.exp(-h), math.exp(-2.0 * h)
        heun, s = c.solver_type == "heun", 0.0
        if c.algorithm_type == "dpmsolver++":
            a, A = sigma_t / sigma_start, alpha_t * (1.0 - em)
            B = alpha_t * (_ratio(em - 1.0, h) + 1.0)
            C = -alpha_t * (_ratio(em - 1.0 + h, h * h) - 0.5)
        elif c.algorithm_type == "sde-dpmsolver++":
            a, A = sigma_t / sigma_start * em, alpha_t * (1.0 - em2)
            B = alpha_t * (_ratio(1.0 - em2, -2.0 * h) + 1.0)
            C = alpha_t * (_ratio(1.0 - em2 + (-2.0 * h), (-2.0 * h) ** 2) - 0.5)
            s = sigma_t * _sqrt(1.0 - em2)
        else:  # dpmsolver
            ep = math.exp(h)
            a, A = alpha_t / alpha_start, -sigma_t * (ep - 1.0)
            B = -sigma_t * (_ratio(ep - 1.0, h) - 1.0)
            C = -sigma_t * (_ratio(ep - 1.0 - h, h * h) - 0.5)
        if order == 1:
            return a, [A], s
        if order == 2:  # D0 = m1, D1 = (m0 - m1) / r0
            B = B if heun else 0.5 * A
            r0 = _ratio(lam[1] - lam[2], h)
            return a, [_ratio(B, r0), A - _ratio(B, r0)], s
        r0, r1 = _ratio(lam[1] - lam[3], h), _ratio(lam[2] - lam[3], h)
        if not heun:  # A m2 + B D1_1, D1_1 = (m0 - m2) / r0
            return a, [_ratio(B, r0), 0.0, A - _ratio(B, r0)], s
        q = _ratio(1.0, r0 - r1)  # A m2 + B D1 + C D2
        return (
            a,
            [
                -B * _ratio(r1, r0) * q + 2 * C * _ratio(q, r0),
                B * _ratio(r0, r1) * q - 2 * C * _ratio(q, r1),
                A + B * q * (_ratio(r1, r0) - _ratio(r0, r1)) + 2 * C * q * (_ratio(1.0, r1) - _ratio(1.0, r0)),
            ],
            s,
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        sample = _promoted(sample, model_output)
        if self.step_index is None:
            self._init_step_index(timestep)
        c = self.config
        if c.get("variance_type") in ("learned", "learned_range") and c.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        earlier = list(self.model_outputs[1:])  # m1 = earlier[-1], m2 = earlier[-2], after the shift
        for k in range(c.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = model_output  # (replaced by the converted output below)
        noise = None
        if c.algorithm_type == "sde-dpmsolver++":
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample
        a, weights, s = self._update(order)
        schedule_sigma = self._host_sigmas[self.step_index]
        alpha, sigma = _alpha_sigma(schedule_sigma, c.use_flow_sigmas)
        c_x, c_m = _conversion(c.prediction_type, alpha, sigma, c.algorithm_type != "dpmsolver", schedule_sigma)
        threshold = self._config_threshold(clip=False)
        if order == 1:  # from this sample itself
            values, history = [c_x, c_m, a, weights[0]], []
        else:  # from the group's starting sample and the group's earlier outputs
            values, history = [c_x, c_m, 0.0, weights[0], a, *weights[1:]], [self.sample] + earlier[::-1][: order - 1]
        coeffs = self._coefficients([*values, s], sample.device)
        prev_sample, converted = _ei_step(sample, model_output, history, coeffs, threshold=threshold, noise=noise)
        self.model_outputs[-1] = converted
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
