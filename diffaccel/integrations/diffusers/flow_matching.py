"""Flow-matching schedulers (SD3, Flux, Wan, LTX-Video): FlowMatch Euler,
LCM and Heun, LTX's rectified-flow Euler ancestral step, the flow-map
Euler step (any-step sampling), MiniMax-H3's data-ward Euler step and
pi-Flow's policy rollout."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import diffusers as _diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_flow_map_euler_discrete import FlowMapEulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_flow_match_heun_discrete import FlowMatchHeunDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_flow_match_lcm import FlowMatchLCMSchedulerOutput
from diffusers.schedulers.scheduling_ltx_euler_ancestral_rf import LTXEulerAncestralRFSchedulerOutput
from diffusers.schedulers.scheduling_minimax_h3 import MiniMaxH3SchedulerOutput
from diffusers.schedulers.scheduling_piflow import PiflowSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffaccel.integrations.diffusers.common import _an_index, _cast, _combine, _ei_step, _FusedStep, _position_in
from diffaccel.integrations.diffusers.euler import _EulerBase


class FlowMatchEulerDiscreteScheduler(_EulerBase, _diffusers.FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux) with a fused
    ``step()``: one multistep_combine, x + dt v, or with stochastic_sampling
    (1 - sigma_next) (x - sigma v) + sigma_next z. Per-token timesteps run
    diffusers' step."""

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
        per_token_timesteps: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        if per_token_timesteps is not None:
            return super().step(
                model_output,
                timestep,
                sample,
                s_churn=s_churn,
                s_tmin=s_tmin,
                s_tmax=s_tmax,
                s_noise=s_noise,
                generator=generator,
                per_token_timesteps=per_token_timesteps,
                return_dict=return_dict,
            )
        self._start(timestep, "FlowMatchEulerDiscreteScheduler")
        sample = _cast(sample, torch.float32)
        if self.config.stochastic_sampling:
            prev_sample = _cast(
                self._renoised_flow_step(sample, model_output, generator, sample.dtype), model_output.dtype
            )
        else:
            sigma, sigma_next = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
            prev_sample = self._velocity_step(sample, model_output, sigma_next - sigma)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


class FlowMatchLCMScheduler(_EulerBase, _diffusers.FlowMatchLCMScheduler):
    """diffusers' FlowMatchLCMScheduler (latent consistency sampling on a
    flow-matching schedule) with a fused ``step()``: the data prediction
    x - sigma v and the renoise to the next sigma in one multistep_combine, in
    float32 as diffusers computes it. Scale factors (its scale-wise regime,
    which resizes the data prediction between steps) run diffusers' step."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if _an_index(timestep) or (self._scale_factors and self._upscale_mode):
            # diffusers' refusal of an index for a timestep; the scale-wise regime's interpolation
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self._init_size is None or self.step_index is None:
            self._init_size = model_output.size()[2:]
        if self.step_index is None:
            self._init_step_index(timestep)
        # diffusers draws the noise in the data prediction's dtype: the float32 sample's promoted with the model's
        prev_sample = self._renoised_flow_step(
            _cast(sample, torch.float32),
            model_output,
            generator,
            torch.promote_types(torch.float32, model_output.dtype),
        )
        self._step_index += 1
        prev_sample = _cast(prev_sample, model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchLCMSchedulerOutput(prev_sample=prev_sample)


class FlowMatchHeunDiscreteScheduler(_EulerBase, _diffusers.FlowMatchHeunDiscreteScheduler):
    """diffusers' FlowMatchHeunDiscreteScheduler with fused steps: the first
    call of a step is one ei_step (the Euler step and the derivative, kept as
    diffusers keeps it in ``prev_derivative``, with ``dt`` and ``sample``); the
    second one multistep_combine, saved + dt/2 (derivative_1 + v). diffusers'
    second derivative (x - (x - sigma_next v)) / sigma_next is the velocity v
    itself up to rounding, and its churned second-call sample cancels out of it,
    so with s_churn that call draws its noise, as diffusers does, and uses none."""

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
        self._start(timestep, "FlowMatchHeunDiscreteScheduler")
        i = self.step_index
        first = self.state_in_first_order
        sigma, sigma_next = (
            (self._host_sigmas[i], self._host_sigmas[i + 1])
            if first
            else (self._host_sigmas[i - 1], self._host_sigmas[i])
        )
        sample, sigma_hat = self._churn(model_output, sample, sigma, s_churn, s_tmin, s_tmax, s_noise, generator)
        if first:
            # derivative = (x - (x - sigma v)) / sigma_hat; x_next = x + dt derivative
            dt = sigma_next - sigma_hat
            coeffs = self._coefficients([0.0, sigma / sigma_hat, 1.0, dt, 0.0], sample.device)
            prev_sample, derivative = _ei_step(sample, model_output, [], coeffs)
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            half = self.dt / 2
            prev_sample = _combine(
                [self.sample, model_output, self.prev_derivative], self._coefficients([1.0, half, half], sample.device)
            )
            self.prev_derivative = self.dt = self.sample = None
        prev_sample = _cast(prev_sample, model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMatchHeunDiscreteSchedulerOutput(prev_sample=prev_sample)


class LTXEulerAncestralRFScheduler(_EulerBase, _diffusers.LTXEulerAncestralRFScheduler):
    """diffusers' LTXEulerAncestralRFScheduler (the LTX-Video long and LTX-2
    refine pipelines' rectified-flow Euler ancestral step, ComfyUI's RF
    sampler) with a fused ``step()``: one ei_step, the data prediction
    x - sigma v, the step down to sigma_down, the rescale by
    alpha_next / alpha_down and the renoise, in float32 as diffusers computes it."""

    def _step_coefficients(self, i: int) -> Tuple[List[float], bool]:
        """([c_x, c_m, a, b, s] of x_next = a x + b (x - sigma v) + s z, whether
        the step draws noise), from diffusers' arithmetic on host floats."""
        sigma, sigma_next = self._host_sigmas[i], self._host_sigmas[i + 1]
        if abs(sigma_next) < 1e-8:
            return [1.0, -sigma, 0.0, 1.0, 0.0], False
        eta, s_noise = float(self.config.eta), float(self.config.s_noise)
        sigma_down = sigma_next * (1.0 + (sigma_next / sigma - 1.0) * eta)
        ratio = sigma_down / sigma
        if not (eta > 0.0 and s_noise > 0.0):
            return [1.0, -sigma, ratio, 1.0 - ratio, 0.0], False
        alpha_next, alpha_down = 1.0 - sigma_next, 1.0 - sigma_down
        renoise = math.sqrt(max(sigma_next**2 - sigma_down**2 * alpha_next**2 / (alpha_down**2 + 1e-12), 0.0))
        scale = alpha_next / (alpha_down + 1e-12)
        return [1.0, -sigma, scale * ratio, scale * (1.0 - ratio), renoise * s_noise], True

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if _an_index(timestep) or self.sigmas is None:
            # diffusers' refusals (an index for a timestep; no set_timesteps yet)
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        if i >= len(self._host_sigmas) - 1:  # past the schedule's end: diffusers returns the sample itself
            prev_sample = sample
        else:
            coefficients, noisy = self._step_value(i, lambda: self._step_coefficients(i))
            state = _cast(sample, torch.float32)
            noise = (
                randn_tensor(state.shape, generator=generator, device=state.device, dtype=state.dtype)
                if noisy
                else None
            )
            prev_sample, _ = _ei_step(
                state, model_output, [], self._coefficients(coefficients, state.device), noise=noise
            )
            prev_sample = _cast(prev_sample, sample.dtype)
        self._step_index = min(i + 1, len(self._host_sigmas) - 1)
        if not return_dict:
            return (prev_sample,)
        return LTXEulerAncestralRFSchedulerOutput(prev_sample=prev_sample)


def _host_value(scheduler, timestep) -> Optional[float]:
    """A timestep's value without a device read: a number, a one-element CPU
    tensor, or an element of ``scheduler.timesteps`` (read by its position from
    ``scheduler._host_timesteps``); None where only the device knows it."""
    if not isinstance(timestep, torch.Tensor):
        return float(timestep)
    if timestep.numel() != 1:
        return None
    if timestep.device.type == "cpu":
        return float(timestep.reshape(()))
    position = _position_in(scheduler.timesteps, timestep)
    return None if position is None else scheduler._host_timesteps[position]


def _float32_matches(host_timesteps: List[float], value: float) -> List[int]:
    """The positions where the schedule equals ``value``, both in float32, as
    diffusers compares its float32 schedule with a timestep (nonzero on the device)."""
    exact = np.float32(value)
    return [i for i, t in enumerate(host_timesteps) if np.float32(t) == exact]


class FlowMapEulerDiscreteScheduler(_FusedStep, _diffusers.FlowMapEulerDiscreteScheduler):
    """diffusers' FlowMapEulerDiscreteScheduler (flow-map models: one call may
    step from t to any r) with a fused ``step()``: one multistep_combine,
    x - (sigma_t - sigma_r) v. diffusers finds sigma_t and sigma_r by comparing
    the timesteps with its schedule on the device (.item(), up to three a step);
    here the comparison runs on a host copy, in float32 as diffusers runs it,
    for timesteps that are numbers, CPU tensors or elements of
    ``self.timesteps``. Any other timestep (a device tensor off the schedule,
    several timesteps) takes diffusers' step."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_sigmas = self.sigmas.tolist()
        self._host_timesteps = self.timesteps.tolist()
        self._host_timesteps32 = np.asarray(self._host_timesteps, dtype=np.float32)

    def _host_index(self, value: float) -> Optional[int]:
        """diffusers' index_for_timestep on the host copy: the nearest timestep
        in float32, None beyond 1e-3."""
        diffs = np.abs(self._host_timesteps32 - np.float32(value))
        index = int(diffs.argmin())
        return None if diffs[index] > 1e-3 else index

    def _sigma_of(self, value: float) -> Tuple[Optional[int], float]:
        index = self._host_index(value)
        sigma = self._host_sigmas[index] if index is not None else value / self.config.num_train_timesteps
        return index, sigma

    def _init_step_index(self, timestep) -> None:
        value = _host_value(self, timestep)
        if value is None or self._begin_index is not None:
            return super()._init_step_index(timestep)
        index = self._host_index(value)
        self._step_index = index if index is not None else 0

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        r_timestep=None,
        return_dict: bool = True,
    ):
        t_value = _host_value(self, timestep)
        r_value = None if r_timestep is None else _host_value(self, r_timestep)
        if t_value is None or (r_timestep is not None and r_value is None):
            return super().step(model_output, timestep, sample, r_timestep=r_timestep, return_dict=return_dict)
        t_index, sigma_t = self._sigma_of(t_value)
        if r_timestep is None:
            if t_index is None:  # diffusers' error: no r to infer
                return super().step(model_output, timestep, sample, r_timestep=r_timestep, return_dict=return_dict)
            sigma_r = self._host_sigmas[t_index + 1]
        else:
            sigma_r = self._sigma_of(r_value)[1]
        if self._step_index is None:
            self._init_step_index(timestep)
        prev_sample = self._velocity_step(sample, model_output, sigma_r - sigma_t)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMapEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


class MiniMaxH3Scheduler(_FusedStep, _diffusers.MiniMaxH3Scheduler):
    """diffusers' MiniMaxH3Scheduler (MiniMax-H3's rectified-flow Euler, a
    data-ward velocity) with a fused ``step()``: one multistep_combine,
    x + (1 - r) s v with r = sigma_next / sigma and s = 1 - t taken from the
    timestep in the sample's dtype, as diffusers takes it; the timestep's index
    found on a host copy (diffusers: nonzero and .item() on the device).
    diffusers' x + s v is rounded to a half-precision sample's dtype before
    its float32 blend; the fused pass keeps it in float32. A timestep the host
    does not know (a device tensor off the schedule), and every step under
    torch.compile, take diffusers' step."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_sigmas = self.sigmas.tolist()
        self._host_timesteps = self.timesteps.tolist()
        self._keep_step_values_while(self._host_sigmas)

    def _coefficient_values(self, i: int, t: float, dtype: torch.dtype) -> List[float]:
        """[1, (1 - r) s] in the precisions diffusers computes them: s = 1 - t in
        the sample's dtype, r in float32 for half-precision samples."""
        s = float(1 - torch.tensor(t, dtype=dtype))
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        sigma, sigma_next = (torch.tensor(v, dtype=compute) for v in self._host_sigmas[i : i + 2])
        return [1.0, float(1.0 - sigma_next / sigma) * s]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        # diffusers' refusal of an index; a timestep only the device knows; under
        # torch.compile, a timestep that is a graph input (stock's step compiles)
        compiling = torch.compiler.is_compiling()
        value = None if _an_index(timestep) or compiling else _host_value(self, timestep)
        if value is None:
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                matches = _float32_matches(self._host_timesteps, value)
                if not matches:
                    return super().step(model_output, timestep, sample, return_dict=return_dict)
                self._step_index = matches[0]
        i = self._step_index
        coefficients = self._step_value(
            (i, value, sample.dtype), lambda: self._coefficient_values(i, value, sample.dtype)
        )
        prev_sample = _combine([sample, model_output], self._coefficients(coefficients, sample.device))
        prev_sample = _cast(prev_sample, sample.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return MiniMaxH3SchedulerOutput(prev_sample=prev_sample)


class PiflowScheduler(_FusedStep, _diffusers.PiflowScheduler):
    """diffusers' PiflowScheduler (pi-Flow: a few-step student whose widened
    output holds ``n_grid`` velocity predictions, integrated by a network-free
    policy) with a fused ``step()``. diffusers rolls the policy out in up to
    ``num_policy_substeps`` Euler substeps per unit of time, each about ten
    tensor ops, after reading the substep count on the host. Every substep is
    linear in the sample and the ``n_grid`` parts of the output, with
    coefficients that depend only on the schedule, so the rollout is traced on
    the host in float64 on those coefficients instead (once per schedule), and
    the step is one multistep_combine of the sample and the parts (two beyond 7
    parts). diffusers rounds to float32 at every substep; the fused step once."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_raw = self._piflow_raw_timesteps.tolist()
        self._host_sigmas = self.sigmas.tolist()
        self._host_timesteps = self.timesteps.tolist()
        self._keep_step_values_while(self._host_sigmas)

    def _rollout_weights(self, i: int) -> List[float]:
        """[a, b_0 .. b_{n-1}] with diffusers' rollout of step i equal to
        a x + sum_g b_g output_g: its substeps applied to coefficient vectors."""
        shift, eps, grid = float(self.config.shift), self.eps, self.n_grid

        def warp(raw):  # shift_timesteps
            return shift * raw / (1 + (shift - 1) * raw)

        def unwarp(sigma):  # DXPolicy._unwarp_t
            return sigma / (shift + (1 - shift) * sigma)

        raw_src = self._host_raw[i]
        raw_dst = self._host_raw[i + 1] if i + 1 < len(self._host_raw) else eps
        sigma_src = self._host_sigmas[i]
        # The policy (DXPolicy, grid mode): x0 interpolated between the grid's
        # data predictions x0_g = x - sigma_src output_g over its segment.
        policy_src = unwarp(sigma_src)
        policy_dst = max(policy_src - (raw_src - raw_dst), 0.0)
        segment = max(policy_src - policy_dst, eps)
        data = [[1.0] + [-sigma_src if h == g else 0.0 for h in range(grid)] for g in range(grid)]
        # The rollout (policy_rollout_fm): Euler substeps in raw time.
        substeps = max(round((raw_src - raw_dst) * self.num_policy_substeps), 1)
        size = (raw_src - raw_dst) / substeps
        state = [1.0] + [0.0] * grid
        raw, sigma = raw_src, sigma_src
        for _ in range(substeps):
            t = min(max((unwarp(sigma) - policy_dst) / segment, 0.0), 1.0) * (grid - 1)
            t0 = min(max(math.floor(t), 0), grid - 2)
            x0 = [(t0 + 1 - t) * a + (t - t0) * b for a, b in zip(data[t0], data[t0 + 1])]
            raw_next = max(raw - size, 0.0)
            sigma_next = warp(raw_next)
            scale = (sigma_next - sigma) / max(sigma, eps)
            state = [s + (s - x) * scale for s, x in zip(state, x0)]
            raw, sigma = raw_next, sigma_next
        return state

    def _host_index(self, timestep) -> Optional[int]:
        """diffusers' index of the first step's timestep (the second match of
        several), found on the host; None where only the device knows it."""
        value = _host_value(self, timestep)
        matches = [] if value is None else _float32_matches(self._host_timesteps, value)
        if not matches:
            return None
        return matches[1] if len(matches) > 1 else matches[0]

    _OWN_SHAPE_CHECK = True  # the output is n_grid times wider than the sample in its last dimension

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        widened = (
            model_output.dim() == sample.dim()
            and model_output.shape[:-1] == sample.shape[:-1]
            and model_output.shape[-1] == sample.shape[-1] * self.n_grid
        )
        i = None
        if widened and not _an_index(timestep) and not torch.compiler.is_compiling():
            i = self._step_index
            if i is None:
                i = self._begin_index if self._begin_index is not None else self._host_index(timestep)
        if i is None or i >= self.num_inference_steps:
            # diffusers' refusals and errors, a timestep only the device knows, a graph input under torch.compile
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        weights = self._step_value(i, lambda: self._rollout_weights(i))
        parts = list(model_output.unflatten(-1, (self.n_grid, -1)).unbind(-2))
        tensors = [_cast(sample, torch.float32), *parts]
        # multistep_combine takes up to 8 tensors: beyond, the first combination is the next one's first term.
        updated = _combine(tensors[:8], self._coefficients(weights[:8], sample.device))
        for start in range(8, len(tensors), 7):
            rest = tensors[start : start + 7]
            updated = _combine([updated, *rest], self._coefficients([1.0, *weights[start : start + 7]], sample.device))
        updated = _cast(updated, sample.dtype)
        self._step_index = i + 1
        if return_dict:
            return PiflowSchedulerOutput(prev_sample=updated)
        return (updated,)
