"""Helios (autoregressive video, pyramid stages): HeliosScheduler (UniPC or
Euler on a staged flow schedule) and HeliosDMDScheduler (the distilled
students' data prediction renoised to the next sigma)."""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Tuple

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_helios import HeliosSchedulerOutput
from diffusers.schedulers.scheduling_helios_dmd import HeliosDMDSchedulerOutput

from diffaccel.integrations.diffusers.common import (
    _alpha_sigma,
    _an_index,
    _cast,
    _ei_step,
    _FusedStep,
    _position_in,
)
from diffaccel.integrations.diffusers.predictor_corrector import _UniPCSteps


class HeliosScheduler(_UniPCSteps, _diffusers.HeliosScheduler):
    """diffusers' HeliosScheduler with a fused ``step()``: with
    ``scheduler_type="unipc"`` UniPC's two ei_steps (_UniPCSteps: Helios' UniPC
    is diffusers' UniPC on flow sigmas, sigma clamped at 1e-8 so that its last
    step to sigma 0 is a UniPC step too), with ``"euler"`` one multistep_combine,
    x + (sigma_next - sigma) v in float32. The staged sigmas are read on the
    host in set_timesteps. Helios' other entry points (step_unipc / step_euler
    with custom sigmas or history, which the pipelines do not use) are
    diffusers' own, on the same state."""

    def unsupported_options(self) -> List[str]:
        c, bad = self.config, []
        if c.scheduler_type not in ("unipc", "euler"):
            bad.append(f"scheduler_type={c.scheduler_type!r} (its step() is diffusers' NotImplementedError)")
        if self.solver_p is not None:
            bad.append("solver_p")
        if c.thresholding:
            bad.append("thresholding (diffusers' HeliosScheduler has no _threshold_sample)")
        if c.solver_order > 3:
            bad.append(f"solver_order={c.solver_order} (more earlier outputs than ei_step combines)")
        return bad

    def _alpha_sigma_at(self, index: int) -> Tuple[float, float]:
        alpha, sigma = _alpha_sigma(self._host_sigmas[index], self.config.use_flow_sigmas)
        return alpha, (max(sigma, 1e-8) if self.config.use_flow_sigmas else sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep=None,
        sample: torch.Tensor = None,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        euler = self.config.scheduler_type == "euler"
        if euler and _an_index(timestep):  # diffusers' refusal of an index for a timestep
            return super().step(model_output, timestep, sample, generator, return_dict)
        if self.step_index is None:  # (Helios starts at 0 whatever the timestep, begin index or not)
            self._step_index = 0
        if euler:
            sigma, sigma_next = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
            prev_sample = self._velocity_step(_cast(sample, torch.float32), model_output, sigma_next - sigma)
            self._step_index += 1
            if not return_dict:
                return (prev_sample,)
            return HeliosSchedulerOutput(prev_sample=prev_sample)
        prev_sample = self._unipc_step(model_output, timestep, sample)
        if not return_dict:
            return (prev_sample, None, self.last_sample, self.this_order)
        return HeliosSchedulerOutput(prev_sample=prev_sample, last_sample=self.last_sample, this_order=self.this_order)


class HeliosDMDScheduler(_FusedStep, _diffusers.HeliosDMDScheduler):
    """diffusers' HeliosDMDScheduler with a fused ``step()``: the data
    prediction x - sigma_t v and its renoising (1 - sigma_next) x0 +
    sigma_next z toward the stage's start point z in one ei_step (diffusers:
    two argmin lookups of device tables, each after a host read of the
    timestep, and about twenty ops). The lookups run on host copies of the
    tables when they are the scheduler's own (``dmd_sigmas=scheduler.sigmas``,
    ``dmd_timesteps`` and ``all_timesteps`` its timesteps, as the Helios
    pyramid pipeline passes them) and the timestep is known on the host (an
    element of ``scheduler.timesteps``, a number or a CPU tensor), with torch's
    own argmin and arithmetic in the tables' dtype: the same index as
    diffusers. Other tables, and samples that are not 5-d video latents (which
    diffusers' (batch, 1, 1, 1, 1) sigmas broadcast to another shape), take
    diffusers' step. diffusers computes in float64 and rounds the data
    prediction to the model output's dtype before renoising; the fused step
    rounds once (closer to the float64 result)."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_sigmas = self.sigmas.cpu()
        self._host_schedule = self.timesteps.cpu()
        self._host_timesteps = self._host_schedule.tolist()  # (floats: a step reads them without tensor indexing)
        self._keep_step_values_while(self._host_sigmas.tolist() + self._host_timesteps)

    def _host_value(self, timestep) -> Optional[float]:
        """The timestep's value, known without reading the device, or None."""
        if isinstance(timestep, numbers.Real):
            return float(timestep)
        if not isinstance(timestep, torch.Tensor):
            return None
        if timestep.device.type == "cpu":
            return float(timestep) if timestep.numel() == 1 else None
        position = _position_in(self.timesteps, timestep)
        return None if position is None else self._host_timesteps[position]

    def _sigma_of(self, timestep: float) -> float:
        """diffusers' sigmas[argmin |timesteps - long(timestep)|], on the host copies."""
        wanted = torch.full((1,), timestep, dtype=torch.long)
        index = torch.argmin((self._host_schedule.unsqueeze(0) - wanted.unsqueeze(1)).abs(), dim=1)
        return float(self._host_sigmas[index])

    def step(
        self,
        model_output: torch.Tensor,
        timestep=None,
        sample: torch.Tensor = None,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
        cur_sampling_step: int = 0,
        dmd_noisy_tensor: Optional[torch.Tensor] = None,
        dmd_sigmas: Optional[torch.Tensor] = None,
        dmd_timesteps: Optional[torch.Tensor] = None,
        all_timesteps: Optional[torch.Tensor] = None,
    ):
        now = self._host_value(timestep)
        last = isinstance(all_timesteps, torch.Tensor) and cur_sampling_step >= len(all_timesteps) - 1
        own_tables = dmd_sigmas is self.sigmas and dmd_timesteps is self.timesteps and all_timesteps is self.timesteps
        if (
            now is None
            or not math.isfinite(now)
            or not own_tables
            or sample.dim() != 5
            or not (last or isinstance(dmd_noisy_tensor, torch.Tensor))
        ):
            return super().step(
                model_output,
                timestep,
                sample,
                generator,
                return_dict,
                cur_sampling_step,
                dmd_noisy_tensor,
                dmd_sigmas,
                dmd_timesteps,
                all_timesteps,
            )
        following = None if last else self._host_timesteps[cur_sampling_step + 1]
        sigma, sigma_next = self._step_value(
            (now, following),
            lambda: (self._sigma_of(now), 0.0 if following is None else self._sigma_of(following)),
        )
        # d = x0 = x - sigma v; prev = (1 - sigma_next) x0 + sigma_next z (x0 itself at the last step)
        coefficients = self._coefficients([1.0, -sigma, 0.0, 1.0 - sigma_next, sigma_next], sample.device)
        noise = None if last else dmd_noisy_tensor
        prev_sample, _ = _ei_step(sample, model_output, [], coefficients, noise=noise)
        prev_sample = _cast(prev_sample, model_output.dtype if last else dmd_noisy_tensor.dtype)
        if not return_dict:
            return (prev_sample,)
        return HeliosDMDSchedulerOutput(prev_sample=prev_sample)
