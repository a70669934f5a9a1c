"""Consistency-model schedulers: LCM and TCD (latent consistency on discrete
timesteps), CMStochasticIterativeScheduler (consistency models' multistep
sampling) and SCMScheduler (Sana Sprint's TrigFlow consistency step)."""

from __future__ import annotations

import math
from typing import List, Optional

import diffusers as _diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_consistency_models import CMStochasticIterativeSchedulerOutput
from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
from diffusers.schedulers.scheduling_scm import SCMSchedulerOutput
from diffusers.schedulers.scheduling_tcd import TCDSchedulerOutput
from diffusers.utils import logging as _diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

from diffaccel import ops
from diffaccel.integrations.diffusers.common import (
    _an_index,
    _cast,
    _combine,
    _data_and_noise_terms,
    _ei_step,
    _HostTimesteps,
    _promoted,
    _StepIndexWithoutSync,
)
from diffaccel.integrations.diffusers.euler import _EulerBase


class LCMScheduler(_StepIndexWithoutSync, _HostTimesteps, _diffusers.LCMScheduler):
    """diffusers' LCMScheduler (latent consistency models) with a fused
    ``step()``: the boundary-condition combination and the renoising to the
    next timestep in one ei_step (plus one pass for ``denoised`` when the data
    prediction is clipped or thresholded)."""

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
        i = self.step_index
        t = self._host_timesteps[i]
        prev_t = self._host_timesteps[i + 1] if i + 1 < len(self._host_timesteps) else t
        alpha_t = self._host_alphas_cumprod[t]
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else self._host_final_alpha_cumprod
        c_skip, c_out = (float(v) for v in self.get_scalings_for_boundary_condition_discrete(t))
        c_x, c_m = _data_and_noise_terms(c.prediction_type, alpha_t)[0]
        threshold = self._config_threshold()
        last = i == self.num_inference_steps - 1
        noise = (
            None
            if last
            else randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=sample.dtype)
        )
        scale = 1.0 if last else math.sqrt(alpha_prev)
        s = 0.0 if last else math.sqrt(1.0 - alpha_prev)
        if threshold is None:
            # denoised = c_out x0 + c_skip x is itself the data term: d = denoised.
            coeffs = [c_out * c_x + c_skip, c_out * c_m, 0.0, scale, s]
        else:
            coeffs = [c_x, c_m, scale * c_skip, scale * c_out, s]
        prev_sample, d = _ei_step(
            sample, model_output, [], self._coefficients(coeffs, sample.device), threshold=threshold, noise=noise
        )
        denoised = d if threshold is None else _combine([d, sample], self._coefficients([c_out, c_skip], sample.device))
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)


class TCDScheduler(_StepIndexWithoutSync, _HostTimesteps, _diffusers.TCDScheduler):
    """diffusers' TCDScheduler (trajectory consistency distillation) with a
    fused ``step()``: the predicted noised sample at timestep s (the data and
    noise predictions recombined) and the stochastic step to the next timestep
    with eta ("gamma") in one ei_step."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.3,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        sample = _promoted(sample, model_output)
        if self.step_index is None:
            self._init_step_index(timestep)
        assert 0 <= eta <= 1.0, "gamma must be less than or equal to 1.0"
        i = self.step_index
        t = self._host_timesteps[i]
        prev_t = self._host_timesteps[i + 1] if i + 1 < len(self._host_timesteps) else 0
        # diffusers floors (1 - eta) * prev_t in float32 (a float times a long tensor).
        s_t = int(np.floor(np.float32(1.0 - eta) * np.float32(prev_t)))
        alphas = self._host_alphas_cumprod
        alpha_prev = alphas[prev_t] if prev_t >= 0 else self._host_final_alpha_cumprod
        (c_x, c_m), (e_x, e_m) = _data_and_noise_terms(self.config.prediction_type, alphas[t])
        sqrt_as, sqrt_bs = math.sqrt(alphas[s_t]), math.sqrt(1.0 - alphas[s_t])
        # pred_noised_sample = sqrt(alpha_s) x0 + sqrt(1 - alpha_s) eps: the data term d
        noised = [sqrt_as * c_x + sqrt_bs * e_x, sqrt_as * c_m + sqrt_bs * e_m]
        noise, scale, s = None, 1.0, 0.0
        if eta > 0 and i != self.num_inference_steps - 1:
            noise = randn_tensor(
                model_output.shape,
                generator=generator,
                device=model_output.device,
                dtype=torch.promote_types(sample.dtype, model_output.dtype),
            )
            scale, s = math.sqrt(alpha_prev / alphas[s_t]), math.sqrt(1.0 - alpha_prev / alphas[s_t])
        prev_sample, pred_noised_sample = _ei_step(
            sample, model_output, [], self._coefficients([*noised, 0.0, scale, s], sample.device), noise=noise
        )
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_noised_sample
        return TCDSchedulerOutput(prev_sample=prev_sample, pred_noised_sample=pred_noised_sample)


class CMStochasticIterativeScheduler(_EulerBase, _diffusers.CMStochasticIterativeScheduler):
    """diffusers' CMStochasticIterativeScheduler (consistency models' multistep
    sampling, Song et al. 2023) with a fused ``step()``: the boundary-condition
    data prediction c_skip x + c_out F, its clip to [-1, 1] (clip_denoised) and
    the renoise to the next sigma in one ei_step."""

    _CLIP = ops.Threshold("clip", max_value=1.0)

    def _step_coefficients(self, i: int) -> List[float]:
        """[c_skip, c_out, 0, 1, s] of x_next = x0 + s z, x0 = c_skip x + c_out F."""
        c = self.config
        sigma = self._host_sigmas[i]
        sigma_next = self._host_sigmas[i + 1] if i + 1 < c.num_train_timesteps else self._host_sigmas[-1]
        c_skip = c.sigma_data**2 / ((sigma - c.sigma_min) ** 2 + c.sigma_data**2)
        c_out = (sigma - c.sigma_min) * c.sigma_data / math.sqrt(sigma**2 + c.sigma_data**2)
        sigma_hat = min(max(sigma_next, c.sigma_min), c.sigma_max)
        # sigma_hat is a float32 sigma, sigma_min the config's float: their squares can
        # differ in sign by a rounding when the schedule has reached sigma_min (then no noise).
        return [c_skip, c_out, 0.0, 1.0, c.s_noise * math.sqrt(max(sigma_hat**2 - c.sigma_min**2, 0.0))]

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if _an_index(timestep) or vars(self).get("_host_sigmas") is None:
            # diffusers' refusal of an index for a timestep; before set_timesteps, its own step
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if not self.is_scale_input_called:
            _diffusers_logging.get_logger("diffusers.schedulers.scheduling_consistency_models").warning(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example."
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        coefficients = self._step_value(i, lambda: self._step_coefficients(i))
        noise = None
        if len(self.timesteps) > 1:  # diffusers' noise is zeros for a one-step schedule
            noise = randn_tensor(
                model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator
            )
        prev_sample, _ = _ei_step(
            _promoted(sample, model_output),
            model_output,
            [],
            self._coefficients(coefficients, sample.device),
            threshold=self._CLIP if self.config.clip_denoised else None,
            noise=noise,
        )
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return CMStochasticIterativeSchedulerOutput(prev_sample=prev_sample)


class SCMScheduler(_StepIndexWithoutSync, _diffusers.SCMScheduler):
    """diffusers' SCMScheduler (simplified continuous-time consistency models
    on TrigFlow, the Sana Sprint pipelines' scheduler) with a fused ``step()``:
    the data prediction cos(s) x - sin(s) F at the step's angle s and the
    renoise to the next angle t, cos(t) x0 + sin(t) sigma_data z, in one
    ei_step. As in diffusers, its pipelines step over ``timesteps[:-1]``, and
    a schedule of other than 2 steps needs ``intermediate_timesteps=None``."""

    NOT_CAPTURABLE = (
        "its pipelines (Sana Sprint) run a transformer on TrigFlow timesteps over timesteps[:-1], "
        "which graph_pipeline's UNet loop does not"
    )

    _END_OFFSET = 1  # its step reads timesteps[i + 1]: past the end one step earlier than most

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_angles = [float(v) for v in self._host_schedule.tolist()]
        self._keep_step_values_while(self._host_angles)

    def _step_coefficients(self, i: int) -> List[float]:
        """[c_x, c_m, 0, cos t, sin(t) sigma_data] of x_next = cos(t) x0 + sin(t) sigma_data z."""
        s, t = self._host_angles[i], self._host_angles[i + 1]
        return [math.cos(s), -math.sin(s), 0.0, math.cos(t), math.sin(t) * self.config.sigma_data]

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        coefficients = self._step_value(i, lambda: self._step_coefficients(i))
        if self.config.prediction_type != "trigflow":
            raise ValueError(f"Unsupported parameterization: {self.config.prediction_type}")
        # diffusers draws the noise in the default dtype (float32) at every step, the last
        # (t = 0) included, so the step's result is at least float32 and the generator
        # advances as in diffusers; the data prediction keeps the inputs' promotion.
        noise = randn_tensor(model_output.shape, device=model_output.device, generator=generator)
        pred_dtype = torch.promote_types(sample.dtype, model_output.dtype)
        state = _cast(sample, torch.promote_types(pred_dtype, noise.dtype))
        prev_sample, pred_x0 = _ei_step(
            state,
            model_output,
            [],
            self._coefficients(coefficients, state.device),
            noise=_cast(noise, state.dtype) if coefficients[4] != 0.0 else None,
        )
        pred_x0 = _cast(pred_x0, pred_dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_x0
        return SCMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
