"""RFD4-Proteína (protein design: backbone coordinates and per-token local
latents, one scheduler each): diffusers' RFD4ProteinaScheduler, a flow
sampler with temporal score rescaling and a stochastic window."""

from __future__ import annotations

from typing import List

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_rfd4_proteina import RFD4ProteinaSchedulerOutput, _tsr_ratio
from diffusers.utils.torch_utils import randn_tensor

from diffaccel.integrations.diffusers.common import _cast, _combine, _FusedStep, _position_in, _ratio, _sqrt


class RFD4ProteinaScheduler(_FusedStep, _diffusers.RFD4ProteinaScheduler):
    """diffusers' RFD4ProteinaScheduler with a fused ``step()``. Its update
    (x + dt (x + (1 - t) r s) / t, with the score s = (t v - x) / (1 - t)
    rescaled by r, plus g r s dt and sqrt(2 g dt) z in the stochastic window)
    is linear in the state x, the velocity v and the noise z: one
    multistep_combine with coefficients made on the host in float64, then the
    emit mask (diffusers: about fifteen ops, and host reads of the timestep:
    torch.equal against the schedule and three comparisons of t). The
    interval's t, dt, noise scale g and rescaling r are diffusers' own values
    (its float32 CPU tables, r computed as diffusers does), read once in
    set_timesteps. The timestep check is kept without reading the device: the
    timestep must be the scheduler's own next element (``scheduler.timesteps
    [i]``, as the pipeline hands it); any other tensor takes diffusers' step,
    which checks its value. At t = 0 the state is held, as in diffusers."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        times, c = self._times, self.config
        intervals = range(len(times) - 1)
        # diffusers' per-interval values: dt and g are float32 CPU scalars, r comes from the float32 t
        self._host_intervals = [
            (
                float(times[i]),
                float(times[i + 1] - times[i]),
                float(self._noise[i]),
                float(_tsr_ratio(times[i], c.tsr_k, c.tsr_sigma)),
            )
            for i in intervals
        ]
        # diffusers compares the float32 t with the limits, which torch rounds to float32 first
        self._window = [float(torch.tensor(limit, dtype=times.dtype)) for limit in (c.t_lim_ode_below, c.t_lim_ode)]
        self._keep_step_values_while([v for interval in self._host_intervals for v in interval] + self._window)

    def _weights(self, index: int) -> List[float]:
        """[x, v] weights of interval ``index``, and z's in the stochastic window."""
        t, dt, g, r = self._host_intervals[index]
        # rescaled velocity (x + r (t v - x)) / t = x (1 - r) / t + r v
        x_weight, v_weight = 1.0 + dt * _ratio(1.0 - r, t), dt * r
        below, above = self._window
        if t > above or t < below:
            return [x_weight, v_weight]
        # + g r s dt = g r dt (t v - x) / (1 - t), + sqrt(2 g dt) z
        drift = _ratio(g * r * dt, 1.0 - t)
        return [x_weight - drift, v_weight + drift * t, _sqrt(2.0 * g * dt)]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        emit_mask: torch.Tensor,
        generator=None,
        return_dict: bool = True,
    ):
        index = self._step_index
        own = isinstance(timestep, torch.Tensor) and _position_in(self.timesteps, timestep) == index
        if not own or sample.dim() != 3 or not isinstance(emit_mask, torch.Tensor):
            return super().step(model_output, timestep, sample, emit_mask, generator, return_dict)
        generators = self._generators(generator, sample.shape[0])  # (diffusers' checks, on the host)
        if self._host_intervals[index][0] == 0:  # (the score is undefined: diffusers holds the state)
            prev_sample = sample * emit_mask[..., None]
        else:
            weights = self._step_value(index, lambda: self._weights(index))
            tensors = [sample, model_output]
            if len(weights) == 3:  # the stochastic window
                generators = list(generators) if generators is not None else None
                noise = randn_tensor(sample.shape, generator=generators, device=sample.device, dtype=sample.dtype)
                tensors.append(noise)
            # diffusers' arithmetic promotes with its (batch, 1, 1) float32 times too
            dtype = torch.promote_types(torch.promote_types(sample.dtype, model_output.dtype), self.timesteps.dtype)
            prev_sample = _cast(_combine(tensors, self._coefficients(weights, sample.device)), dtype)
            prev_sample = prev_sample * emit_mask[..., None]
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return RFD4ProteinaSchedulerOutput(prev_sample=prev_sample)
