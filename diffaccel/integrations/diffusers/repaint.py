"""RePaint (Lugmayr et al.'s inpainting by resampling): diffusers' RePaintScheduler."""

from __future__ import annotations

import math
from typing import Optional

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_repaint import RePaintSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffaccel import ops
from diffaccel.integrations.diffusers.common import _combine, _ei_step, _host_timestep, _HostTimesteps, _promoted
from diffaccel.integrations.diffusers.ddim_ddpm import _ddim_row


class RePaintScheduler(_HostTimesteps, _diffusers.RePaintScheduler):
    """diffusers' RePaintScheduler with a fused ``step()``: the unknown region's
    DDIM step (the clipped data prediction, eta noise) is one ei_step, the
    known region's noised original one multistep_combine (with the same noise,
    as diffusers), and the mask blends them (one lerp where the mask has the
    sample's dtype; diffusers' own four ops otherwise): about 15 ops in
    diffusers. The timestep is read on the host (RePaint's schedule jumps back
    and forth; a timestep that is an element of ``self.timesteps`` is read by
    its position). ``undo_step`` (the jumps back) is diffusers' own."""

    _CLIP = ops.Threshold("clip", max_value=1.0)  # diffusers clamps to [-1, 1], whatever else

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        original_image: torch.Tensor,
        mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        sample = _promoted(sample, model_output)
        t = _host_timestep(self, timestep, self._step_counter)
        self._step_counter += 1
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_t = self._host_alphas_cumprod[t]
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else self._host_final_alpha_cumprod
        row, std = _ddim_row("epsilon", alpha_t, alpha_prev, float(self.eta), False)
        noise = randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        coeffs = self._coefficients([*row, std if t > 0 and self.eta > 0 else 0.0], sample.device)
        threshold = self._CLIP if self.config.clip_sample else None
        unknown, pred_original_sample = _ei_step(
            sample, model_output, [model_output], coeffs, threshold=threshold, noise=noise
        )
        known_weights = self._coefficients([math.sqrt(alpha_prev), math.sqrt(1.0 - alpha_prev)], sample.device)
        known = _combine([original_image, noise], known_weights)
        if mask.dtype == unknown.dtype == known.dtype:
            prev_sample = torch.lerp(unknown, known, mask)
        else:
            prev_sample = mask * known + (1.0 - mask) * unknown
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return RePaintSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
