"""The Euler family on k-diffusion's sigmas: Euler and Euler ancestral, EDM
Euler, Heun, LMS, DPM++ SDE (torchsde's Brownian tree) and the KDPM2 pair,
sharing _EulerBase (host sigmas, the sigma_hat of s_churn, the Euler data
term)."""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDESchedulerOutput
from diffusers.schedulers.scheduling_edm_euler import EDMEulerSchedulerOutput
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteSchedulerOutput
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteSchedulerOutput
from diffusers.utils import logging as _diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

from diffaccel.integrations.diffusers.common import (
    _TORCHSDE_NOISE,
    brownian_tree_noise_sampler,
    _an_index,
    _cast,
    _combine,
    _ei_step,
    _promoted,
    _ratio,
    _StepIndexWithoutSync,
)
from diffaccel.integrations.diffusers.dpm_solver import _edm_data_term
from diffaccel.solvers.ancestral import ancestral_split
from diffaccel.solvers.lms import lagrange_weights


def _euler_data_term(prediction_type: str, sigma: float, sigma_hat: float) -> Tuple[float, float]:
    """(c_x, c_m) of the Euler schedulers' pred_original_sample (v uses sigma, not sigma_hat, as diffusers)."""
    if prediction_type in ("original_sample", "sample"):
        return 0.0, 1.0
    if prediction_type == "epsilon":
        return 1.0, -sigma_hat
    if prediction_type == "v_prediction":
        return 1.0 / (sigma * sigma + 1.0), -sigma / math.sqrt(sigma * sigma + 1.0)
    raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon`, or `v_prediction`")


def _sample_free_data_term(prediction_type: str, sigma_input: float) -> Tuple[float, float]:
    """(c_x, c_m) of pred_original_sample for the schedulers without a sample
    prediction (KDPM2, DPM++ SDE), from the model output at sigma_input."""
    if prediction_type == "sample":
        raise NotImplementedError("prediction_type not implemented yet: sample")
    return _euler_data_term(prediction_type, sigma_input, sigma_input)


class _EulerBase(_StepIndexWithoutSync):
    """What the Euler-family schedulers share: host sigmas, diffusers' guard against
    timesteps given as indices, its churn and its ending of a step."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._read_host_sigmas()

    def _finish(self, prev_sample, pred_original_sample, model_output, output_cls, return_dict: bool):
        """diffusers' ending of an Euler-family step: cast back, count the step, return."""
        prev_sample = _cast(prev_sample, model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return output_cls(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _start(self, timestep, scheduler_name: str):
        if _an_index(timestep):
            raise ValueError(
                f"Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `{scheduler_name}.step()`"
                " is not supported. Make sure to pass one of the `scheduler.timesteps` as a timestep."
            )
        if self.step_index is None:
            self._init_step_index(timestep)

    def _renoised_flow_step(
        self, sample: torch.Tensor, model_output: torch.Tensor, generator, noise_dtype: torch.dtype
    ) -> torch.Tensor:
        """The renoising flow-matching step, (1 - sigma_next) (x - sigma v) + sigma_next z
        (FlowMatch Euler's stochastic_sampling, FlowMatchLCM's step), in one
        multistep_combine on the float32 sample; the noise drawn as diffusers
        draws it (in noise_dtype), also where sigma_next = 0 leaves it out of the sum."""
        sigma, sigma_next = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype)
        tensors, weights = [sample, model_output], [1.0 - sigma_next, -(1.0 - sigma_next) * sigma]
        if sigma_next != 0.0:
            tensors, weights = tensors + [noise], weights + [sigma_next]
        return _combine(tensors, self._coefficients(weights, sample.device))

    def _churn(
        self,
        model_output,
        sample,
        sigma: float,
        s_churn: float,
        s_tmin: float,
        s_tmax: float,
        s_noise: float,
        generator,
    ) -> Tuple[torch.Tensor, float]:
        """Karras et al.'s churn as diffusers' Euler-family steps take it:
        (the float32 sample raised to sigma_hat, sigma_hat), the noise drawn
        after the model call and only when gamma > 0."""
        sample = _cast(sample, torch.float32)
        gamma = min(s_churn / (len(self._host_sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(
                model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator
            )
            scale = s_noise * math.sqrt(sigma_hat**2 - sigma**2)
            sample = _combine([sample, noise], self._coefficients([1.0, scale], sample.device))
        return sample, sigma_hat

    def _churned_euler_step(
        self,
        model_output,
        sample,
        data_term,
        s_churn: float,
        s_tmin: float,
        s_tmax: float,
        s_noise: float,
        generator,
        data_input: Optional[torch.Tensor] = None,
    ):
        """Karras et al.'s Euler step with churn, as diffusers' Euler and EDM Euler
        schedulers take it: _churn, then one ei_step to the next sigma, with
        x0 = c_x x + c_m m from data_term(sigma, sigma_hat), m the model output
        (or data_input when given). Returns (prev_sample, pred_original_sample)."""
        sigma, sigma_next = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
        sample, sigma_hat = self._churn(model_output, sample, sigma, s_churn, s_tmin, s_tmax, s_noise, generator)
        c_x, c_m = data_term(sigma, sigma_hat)
        r = sigma_next / sigma_hat  # sample + (sample - x0) / sigma_hat * (sigma_next - sigma_hat)
        coeffs = self._coefficients([c_x, c_m, r, 1.0 - r, 0.0], sample.device)
        return _ei_step(sample, model_output if data_input is None else data_input, [], coeffs)


class EulerDiscreteScheduler(_EulerBase, _diffusers.EulerDiscreteScheduler):
    """diffusers' EulerDiscreteScheduler with a fused ``step()`` (s_churn and
    its noise as diffusers: drawn after the model call, only when gamma > 0)."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        self._start(timestep, "EulerDiscreteScheduler")
        prediction_type = self.config.prediction_type
        prev_sample, pred_original_sample = self._churned_euler_step(
            model_output,
            sample,
            lambda sigma, sigma_hat: _euler_data_term(prediction_type, sigma, sigma_hat),
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
            generator,
        )
        return self._finish(prev_sample, pred_original_sample, model_output, EulerDiscreteSchedulerOutput, return_dict)


class EDMEulerScheduler(_EulerBase, _diffusers.EDMEulerScheduler):
    """diffusers' EDMEulerScheduler with a fused ``step()``: the EDM
    preconditioning of the model output (c_skip, c_out at sigma_hat) and the
    Euler step in one pass (s_churn as in EulerDiscreteScheduler). A
    ``pred_original_sample`` given to step() is used as the data prediction, as
    diffusers uses it."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
        pred_original_sample: Optional[torch.Tensor] = None,
    ):
        self._start(timestep, "EDMEulerScheduler")
        if not self.is_scale_input_called:
            _diffusers_logging.get_logger("diffusers.schedulers.scheduling_edm_euler").warning(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example."
            )
        given = pred_original_sample is not None  # then x0 = 1 * pred_original_sample
        prev_sample, pred_original_sample = self._churned_euler_step(
            model_output,
            sample,
            lambda sigma, sigma_hat: (0.0, 1.0) if given else _edm_data_term(self.config, sigma_hat),
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
            generator,
            data_input=pred_original_sample,
        )
        return self._finish(prev_sample, pred_original_sample, model_output, EDMEulerSchedulerOutput, return_dict)


class EulerAncestralDiscreteScheduler(_EulerBase, _diffusers.EulerAncestralDiscreteScheduler):
    """diffusers' EulerAncestralDiscreteScheduler with a fused ``step()`` (the
    Euler step to sigma_down and the noise to sigma_next in one pass)."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        self._start(timestep, "EulerAncestralDiscreteScheduler")
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        sigma, sigma_to = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
        sample = _cast(sample, torch.float32)
        c_x, c_m = _euler_data_term(self.config.prediction_type, sigma, sigma)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_to, eta=1.0)
        noise = randn_tensor(
            model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator
        )
        r = sigma_down / sigma
        coeffs = self._coefficients([c_x, c_m, r, 1.0 - r, sigma_up], sample.device)
        prev_sample, pred_original_sample = _ei_step(sample, model_output, [], coeffs, noise=noise)
        return self._finish(
            prev_sample, pred_original_sample, model_output, EulerAncestralDiscreteSchedulerOutput, return_dict
        )


class HeunDiscreteScheduler(_EulerBase, _diffusers.HeunDiscreteScheduler):
    """diffusers' HeunDiscreteScheduler with fused steps: the first call of a
    step is an Euler ei_step; the second combines both derivatives in one
    ei_step from the saved sample and data prediction. (``prev_derivative`` is
    not materialised: the first call keeps ``sample`` and its data prediction.)"""

    def _data_term(self, sigma: float) -> Tuple[float, float]:
        p = self.config.prediction_type
        if p == "sample":
            return 0.0, 1.0
        return _euler_data_term(p, sigma, sigma)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        self._start(timestep, "HeunDiscreteScheduler")
        first = self.state_in_first_order
        i = self.step_index
        sigma, sigma_next = (
            (self._host_sigmas[i], self._host_sigmas[i + 1])
            if first
            else (self._host_sigmas[i - 1], self._host_sigmas[i])
        )
        c_x, c_m = self._data_term(sigma if first else sigma_next)
        clip = self._config_threshold(dynamic=False)
        if first:
            r = sigma_next / sigma  # sample + (sample - x0) / sigma * (sigma_next - sigma)
            coeffs = [c_x, c_m, r, 1.0 - r, 0.0]
            history = []
        elif getattr(self, "_first_data_prediction", None) is not None:
            # saved + dt/2 ((saved - x0_1) / sigma + (sample - x0_2) / sigma_next)
            half = self.dt / 2
            coeffs = [c_x, c_m, half / sigma_next, -half / sigma_next, 1.0 + half / sigma, -half / sigma, 0.0]
            history = [self.sample, self._first_data_prediction]
        else:  # the first call was stock's (an odd input): its prev_derivative, as stock keeps it
            half = self.dt / 2
            coeffs = [c_x, c_m, half / sigma_next, -half / sigma_next, 1.0, half, 0.0]
            history = [self.sample, self.prev_derivative]
        prev_sample, pred_original_sample = _ei_step(
            sample, model_output, history, self._coefficients(coeffs, sample.device), threshold=clip
        )
        if first:
            self.dt, self.sample, self._first_data_prediction = sigma_next - sigma, sample, pred_original_sample
        else:
            self.dt = self.sample = self._first_data_prediction = None
        self.prev_derivative = None
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return HeunDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _before_stock_step(self) -> None:
        # Between a step's two calls stock keeps prev_derivative = (sample - x0_1) / sigma.
        if self.dt is not None and getattr(self, "_first_data_prediction", None) is not None:
            sigma = self.sigmas[self.step_index - 1].to(self.sample.device)
            self.prev_derivative = (self.sample - self._first_data_prediction) / sigma
        self._first_data_prediction = None


class DPMSolverSDEScheduler(_StepIndexWithoutSync, _diffusers.DPMSolverSDEScheduler):
    """diffusers' DPMSolverSDEScheduler ("DPM++ SDE", k-diffusion's
    sample_dpmpp_sde with r = 1/2) with fused steps: each of a step's two calls
    is one ei_step with its Brownian-tree noise inside it. The noise comes from
    diffusers' own BrownianTreeNoiseSampler (torchsde), made from the host
    sigmas (diffusers reads them with .item()), and the step's scalars are
    computed as diffusers computes them, in float32 on the host (its sigmas are
    CPU tensors), so the tree is queried at the same times."""

    NOT_CAPTURABLE = _TORCHSDE_NOISE

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, s_noise: float = 1.0
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:  # from the sample as given (its dtype is the tree's), as diffusers builds it
            host = [float(v) for v in self.sigmas.tolist()]  # CPU sigmas: no device read
            self.noise_sampler = brownian_tree_noise_sampler(
                sample, min(v for v in host if v > 0), max(host), self.noise_sampler_seed
            )
        sample = _promoted(sample, model_output)
        first, i = self.state_in_first_order, self.step_index
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        t, t_next = sigma.log().neg(), sigma_next.log().neg()  # diffusers' t_fn, on float32 CPU scalars
        t_proposed = t + (t_next - t) * 0.5
        sigma_input = float(sigma if first else t_proposed.neg().exp())
        c_x, c_m = _sample_free_data_term(self.config.prediction_type, sigma_input)
        noise, history = None, []
        if sigma_next == 0:  # an Euler step to the data: x + (x - x0) / sigma (sigma_next - sigma)
            q = float((sigma_next - sigma) / sigma)
            coeffs = [c_x, c_m, 1.0 + q, -q, 0.0]
        else:
            if first:
                t_next = t_proposed
            sigma_from, sigma_to = t.neg().exp(), t_next.neg().exp()
            sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
            sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
            ancestral_t = sigma_down.log().neg()
            base, b0 = float(ancestral_t.neg().exp() / sigma_from), -float((t - ancestral_t).expm1())
            noise = self.noise_sampler(sigma_from, sigma_to)
            scale = s_noise * float(sigma_up)
            # From this sample (first call) or from the step's first sample (second call).
            coeffs = [c_x, c_m, base, b0, scale] if first else [c_x, c_m, 0.0, b0, base, scale]
            history = [] if first else [self.sample]
        prev_sample, pred_original_sample = _ei_step(
            sample, model_output, history, self._coefficients(coeffs, sample.device), noise=noise
        )
        if sigma_next != 0:
            self.sample, self.mid_point_sigma = (sample, t_next.neg().exp()) if first else (None, None)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return DPMSolverSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class _KDPM2Steps(_StepIndexWithoutSync):
    """What the two KDPM2 (DPM-Solver-2, k-diffusion's sample_dpm_2) schedulers
    share: each step takes two calls, both one ei_step. The first is an Euler
    step to the interpolated sigma (its sample is kept, as diffusers keeps it);
    the second applies the derivative found there to the kept sample. The sigma
    tables are read to the host once, in set_timesteps (diffusers keeps some of
    them on the device and indexes them at every step)."""

    SIGMA_TABLES: Tuple[str, ...] = ("sigmas", "sigmas_interpol")

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_tables = {name: [float(v) for v in getattr(self, name).tolist()] for name in self.SIGMA_TABLES}

    def _fused_step(
        self,
        model_output,
        sample,
        sigma: float,
        sigma_interpol: float,
        sigma_to: float,
        noise=None,
        sigma_up: float = 0.0,
    ):
        """First call: x + (x - x0)/sigma (sigma_interpol - sigma). Second call:
        kept + (x - x0)/sigma_interpol (sigma_to - sigma) (+ sigma_up noise).
        Returns (prev_sample, pred_original_sample) and moves the kept sample."""
        if self.state_in_first_order:
            c_x, c_m = _sample_free_data_term(self.config.prediction_type, sigma)
            r = _ratio(sigma_interpol, sigma)
            coeffs, history = [c_x, c_m, r, 1.0 - r, 0.0], []
            self.sample = sample
        else:
            c_x, c_m = _sample_free_data_term(self.config.prediction_type, sigma_interpol)
            q = _ratio(sigma_to - sigma, sigma_interpol)
            coeffs, history = [c_x, c_m, q, -q, 1.0, sigma_up], [self.sample]
            self.sample = None
        prev_sample, pred_original_sample = _ei_step(
            sample, model_output, history, self._coefficients(coeffs, sample.device), noise=noise
        )
        self._step_index += 1
        return prev_sample, pred_original_sample


class KDPM2DiscreteScheduler(_KDPM2Steps, _diffusers.KDPM2DiscreteScheduler):
    """diffusers' KDPM2DiscreteScheduler ("DPM2") with fused steps."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        if self.step_index is None:
            self._init_step_index(timestep)
        i, sigmas, interpol = self.step_index, self._host_tables["sigmas"], self._host_tables["sigmas_interpol"]
        if self.state_in_first_order:
            sigma, sigma_interpol, sigma_to = sigmas[i], interpol[i + 1], sigmas[i + 1]
        else:
            sigma, sigma_interpol, sigma_to = sigmas[i - 1], interpol[i], sigmas[i]
        prev_sample, pred_original_sample = self._fused_step(model_output, sample, sigma, sigma_interpol, sigma_to)
        if not return_dict:
            return prev_sample, pred_original_sample
        return KDPM2DiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class KDPM2AncestralDiscreteScheduler(_KDPM2Steps, _diffusers.KDPM2AncestralDiscreteScheduler):
    """diffusers' KDPM2AncestralDiscreteScheduler ("DPM2 a") with fused steps: the
    second call steps to sigma_down and adds sigma_up noise (drawn after the
    model call with diffusers' randn_tensor, as diffusers draws it) in the same pass."""

    SIGMA_TABLES = ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down")

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
        i, tables = self.step_index, self._host_tables
        noise, sigma_up = None, 0.0
        if self.state_in_first_order:
            sigma, sigma_interpol = tables["sigmas"][i], tables["sigmas_interpol"][i]
            self.dt = sigma_interpol - sigma
            sigma_to = sigma_interpol
        else:
            sigma, sigma_interpol = tables["sigmas"][i - 1], tables["sigmas_interpol"][i - 1]
            sigma_to, sigma_up = tables["sigmas_down"][i - 1], tables["sigmas_up"][i - 1]
            noise = randn_tensor(
                model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator
            )
        prev_sample, pred_original_sample = self._fused_step(
            model_output, sample, sigma, sigma_interpol, sigma_to, noise=noise, sigma_up=sigma_up
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class LMSDiscreteScheduler(_EulerBase, _diffusers.LMSDiscreteScheduler):
    """diffusers' LMSDiscreteScheduler with a fused ``step()``: the derivative
    and the multistep sum in one ei_step (weights integrated exactly, where
    diffusers calls scipy's quad each step), then pred_original_sample."""

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, order: int = 4, return_dict: bool = True
    ):
        sample = _promoted(sample, model_output)
        if not self.is_scale_input_called:
            warnings.warn(
                "The `scale_model_input` function should be called before `step` to ensure correct "
                "denoising. See `StableDiffusionPipeline` for a usage example.",
                stacklevel=1,
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        if not 1 <= order <= 5:
            raise ValueError(f"LMSDiscreteScheduler.step: 'order' must be 1 to 5 (4 earlier derivatives), got {order}")
        i = self.step_index
        sigma = self._host_sigmas[i]
        p = self.config.prediction_type
        # The derivative (sample - x0) / sigma as c_x sample + c_m model_output.
        if p == "epsilon":
            c_x, c_m = 0.0, 1.0
        elif p == "v_prediction":
            c_x, c_m = sigma / (sigma * sigma + 1.0), 1.0 / math.sqrt(sigma * sigma + 1.0)
        elif p == "sample":
            c_x, c_m = 1.0 / sigma, -1.0 / sigma
        else:
            raise ValueError(f"prediction_type given as {p} must be one of `epsilon`, or `v_prediction`")
        cur = min(i + 1, order)
        weights = self._step_value(
            (i, cur),
            lambda: lagrange_weights([self._host_sigmas[i - j] for j in range(cur)], sigma, self._host_sigmas[i + 1]),
        )
        # diffusers zips these weights with the derivatives it has, newest first: a loop
        # that starts part-way (img2img's begin index) has fewer than cur at first.
        used = min(cur, len(self.derivatives) + 1)
        weights, history = weights[:used], self.derivatives[::-1][: used - 1]
        coeffs = self._coefficients([c_x, c_m, 1.0, *weights, 0.0], sample.device)
        prev_sample, derivative = _ei_step(sample, model_output, history, coeffs)
        self.derivatives.append(derivative)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        # pred_original_sample = sample - sigma * derivative
        pred_original_sample = _combine([sample, derivative], self._coefficients([1.0, -sigma], sample.device))
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return LMSDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
