"""IPNDM: the improved pseudo-numerical method (Zhang and Chen's fourth-order
Adams-Bashforth on the trigonometric schedule), diffusers' IPNDMScheduler."""

from __future__ import annotations

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from diffaccel.integrations.diffusers.common import _ei_step, _promoted, _StepIndexWithoutSync
from diffaccel.integrations.diffusers.ddim_ddpm import PNDMScheduler


class IPNDMScheduler(_StepIndexWithoutSync, _diffusers.IPNDMScheduler):
    """diffusers' IPNDMScheduler with a fused ``step()``: one ei_step makes the
    step's ets (betas[i] x + alphas[i] model_output, its ``d`` output, appended
    to ``self.ets`` as diffusers keeps it) and, in the same pass, the update
    next_alpha (x - sigma E) / alpha + next_sigma E with E the Adams-Bashforth
    combination of the last four ets (diffusers: about ten ops). The schedule
    is read on the host. Where alphas[i] is 0 (the first step: diffusers divides
    by max(alpha, 1e-8), and its x - sigma E cancels exactly) the fused form
    would cancel 1e8-sized terms in float32: that step is diffusers' own (CPU
    scalars, no synchronization)."""

    def set_timesteps(self, num_inference_steps: int, device=None):
        super().set_timesteps(num_inference_steps, device)
        self._host_betas, self._host_alphas = self.betas.tolist(), self.alphas.tolist()
        self._keep_step_values_while(self._host_betas)

    def _coefficient_values(self, i: int, orders: int):
        """[c_x, c_m, a, b_0 .. b_{orders-1}, s] of step i with ``orders`` ets combined."""
        sigma, alpha = self._host_betas[i], self._host_alphas[i]
        next_sigma, next_alpha = self._host_betas[i + 1], self._host_alphas[i + 1]
        # prev = next_alpha (x - sigma E) / max(alpha, 1e-8) + next_sigma E
        inverse = 1.0 / max(alpha, 1e-8)
        weight = next_sigma - next_alpha * sigma * inverse
        weights = PNDMScheduler.PLMS_WEIGHTS[orders]
        return [sigma, alpha, next_alpha * inverse, *(weight * w for w in weights), 0.0]

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        return_dict: bool = True,
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        if self._host_alphas[i] == 0.0:
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        orders = min(len(self.ets) + 1, 4)
        history = [self.ets[-k] for k in range(1, orders)]  # ets[-1], ets[-2], ... as diffusers weighs them
        sample = _promoted(sample, model_output)
        coeffs = self._coefficients(
            self._step_value((i, orders), lambda: self._coefficient_values(i, orders)), sample.device
        )
        prev_sample, ets = _ei_step(sample, model_output, history, coeffs)
        self.ets.append(ets)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
