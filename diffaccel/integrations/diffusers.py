"""diffusers' schedulers on the fused ops: subclasses with the same names,
configs and behaviour, whose ``step()`` runs one fused op per model evaluation.

    from diffaccel.integrations import diffusers as accelerated
    pipe.scheduler = accelerated.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    # or: accelerated.accelerate(pipe)

``set_timesteps``, the sigmas, ``scale_model_input``, ``add_noise`` and the
public state (step_index, begin_index, model_outputs, lower_order_nums) are
diffusers' own; ``step()`` computes the update's coefficients on the host in
float64 from the scheduler's CPU sigmas and runs one ``ei_step`` (the data
prediction, its thresholding, the multistep combination and the SDE noise in
one pass), with no host synchronization: not even the first step, whose
index diffusers finds by a device lookup (_StepIndexWithoutSync finds the
same index on the host).

Covered so far: DPMSolverMultistepScheduler (every algorithm type, order,
solver type, sigma schedule, prediction type, lower_order_final, euler_at_final
and final_sigmas_type; thresholding with the data-prediction algorithms) and
DDIMScheduler (eta, clip_sample, thresholding, prediction types,
use_clipped_model_output), DDPMScheduler (fixed variances), EulerDiscreteScheduler (s_churn),
EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
HeunDiscreteScheduler, LMSDiscreteScheduler, LCMScheduler and
ScoreSdeVeScheduler (step_correct on the fused Langevin op),
UniPCMultistepScheduler, DPMSolverSinglestepScheduler, KDPM2DiscreteScheduler,
KDPM2AncestralDiscreteScheduler, EDMEulerScheduler, EDMDPMSolverMultistepScheduler,
DEISMultistepScheduler, DPMSolverSDEScheduler, PNDMScheduler, TCDScheduler,
DDIMInverseScheduler, DPMSolverMultistepInverseScheduler, FlowMatchHeunDiscreteScheduler,
CogVideoXDDIMScheduler, CogVideoXDPMScheduler (its own step signature, as diffusers'),
CosineDPMSolverMultistepScheduler (Stable Audio's; Brownian-tree noise, as diffusers'),
LTXEulerAncestralRFScheduler (LTX-Video's rectified-flow Euler ancestral), UnCLIPScheduler
(the Kandinsky 2.x priors'), CMStochasticIterativeScheduler (consistency models) and
DDPMWuerstchenScheduler (Wuerstchen, Stable Cascade; a (batch,) timestep, as diffusers').
"""

from __future__ import annotations

import inspect
import math
import warnings
from array import array
from typing import List, Optional, Tuple

import numpy as np
import torch

from diffaccel import ops
from diffaccel.integrations import float64_if_any
from diffaccel.solvers.ancestral import ancestral_split
from diffaccel.solvers.lms import lagrange_weights
from diffaccel.graph import CapturedLoop, Progress, Replayable, check_static, fresh_generator
from diffaccel.transfer import ConstantCache, DeviceConstants, to_device

try:
    import diffusers as _diffusers
    from diffusers.schedulers.scheduling_consistency_models import CMStochasticIterativeSchedulerOutput
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm_wuerstchen import DDPMWuerstchenSchedulerOutput
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
        EulerAncestralDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_euler_discrete import (
        EulerDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
        FlowMatchEulerDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_flow_match_heun_discrete import FlowMatchHeunDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_flow_match_lcm import FlowMatchLCMSchedulerOutput
    from diffusers.schedulers.scheduling_heun_discrete import (
        HeunDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_ltx_euler_ancestral_rf import LTXEulerAncestralRFSchedulerOutput
    from diffusers.schedulers.scheduling_scm import SCMSchedulerOutput
    from diffusers.schedulers.scheduling_sde_ve import SdeVeOutput
    from diffusers.schedulers.scheduling_tcd import TCDSchedulerOutput
    from diffusers.schedulers.scheduling_unclip import UnCLIPSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerOutput
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler as _BrownianTreeNoiseSampler
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDESchedulerOutput
    from diffusers.schedulers.scheduling_edm_euler import EDMEulerSchedulerOutput
    from diffusers.utils import logging as _diffusers_logging
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as error:  # diffusers is an optional dependency
    raise ImportError("diffaccel.integrations.diffusers needs diffusers (pip install diffusers)") from error


def _alpha_sigma(sigma: float, flow: bool) -> Tuple[float, float]:
    """(alpha_t, sigma_t) of diffusers' _sigma_to_alpha_sigma_t for a VP sigma (or a flow sigma)."""
    if flow:
        return 1.0 - sigma, sigma
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def _conversion(prediction_type: str, alpha: float, sigma: float, to_data: bool) -> Tuple[float, float]:
    """(c_x, c_m) of convert_model_output: the data prediction (to_data) or the
    noise prediction, as c_x * sample + c_m * model_output."""
    if to_data:
        table = {"epsilon": (1.0 / alpha, -sigma / alpha), "sample": (0.0, 1.0),
                 "v_prediction": (alpha, -sigma), "flow_prediction": (1.0, -sigma)}
    else:
        table = {"epsilon": (0.0, 1.0), "sample": (_ratio(1.0, sigma), _ratio(-alpha, sigma)),
                 "v_prediction": (sigma, alpha)}
    if prediction_type not in table:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported here")
    return table[prediction_type]


def _ei_step(x: torch.Tensor, model_output: torch.Tensor, history: List[torch.Tensor], coeffs: torch.Tensor, *,
             threshold: Optional[ops.Threshold] = None, noise: Optional[torch.Tensor] = None, out=None):
    """ops.ei_step in the dtype diffusers' arithmetic takes. The op refuses
    float64 mixed with 16/32-bit tensors (a float64 model output with a float32
    sample, or the float32 upcast of a float64 one), where diffusers computes in
    float64: then every input goes in as float64, and ``out`` is left unused.
    (The op checks before any kernel runs; asking first would cost every step a
    microsecond, about 7% of its host time.)"""
    try:
        return ops.ei_step(x, model_output, history, coeffs, threshold=threshold, noise=noise, out=out)
    except TypeError:
        given = [x, model_output, noise, *history]
        promoted = float64_if_any(given)
        if all(p is g for p, g in zip(promoted, given)):
            raise
        x, model_output, noise, *history = promoted
        return ops.ei_step(x, model_output, history, coeffs, threshold=threshold, noise=noise)


def _combine(tensors: List[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
    """ops.multistep_combine, all tensors float64 where the op refuses a float64 mix (see _ei_step)."""
    try:
        return ops.multistep_combine(tensors, coeffs)
    except TypeError:
        promoted = float64_if_any(tensors)
        if all(p is t for p, t in zip(promoted, tensors)):
            raise
        return ops.multistep_combine(promoted, coeffs)


def _lambda(alpha: float, sigma: float) -> float:
    """Half log-SNR; +inf at sigma = 0 (the final step to the data)."""
    return math.log(alpha) - math.log(sigma) if sigma > 0 else math.inf


def _position_in(schedule: torch.Tensor, timestep: torch.Tensor) -> Optional[int]:
    """Where a 0-d view of the 1-d ``schedule`` sits in it (from the views'
    storage and offsets: nothing is read from the device), or None."""
    if timestep.dim() != 0 or schedule.dim() != 1 or timestep.device != schedule.device:
        return None
    if timestep.untyped_storage().data_ptr() != schedule.untyped_storage().data_ptr() or schedule.stride(0) <= 0:
        return None
    position, rest = divmod(timestep.storage_offset() - schedule.storage_offset(), schedule.stride(0))
    return position if rest == 0 and 0 <= position < len(schedule) else None


class _FusedStep:
    """What every accelerated scheduler has: the config options it cannot fuse
    (none by default), and its steps' coefficient tensors, kept on the device
    and reused while the schedule repeats (a pipeline called again with the
    same number of steps copies nothing to the device)."""

    # Why a CUDA graph cannot hold this scheduler's loop (None: it can).
    NOT_CAPTURABLE: Optional[str] = None

    def unsupported_options(self) -> List[str]:
        return []

    def _config_threshold(self, dynamic: bool = True, clip: bool = True) -> Optional[ops.Threshold]:
        """What diffusers' step does to its data prediction, as a Threshold:
        dynamic thresholding (``thresholding``, where the scheduler has it),
        else clipping (``clip_sample``, likewise), else nothing. A config keeps
        keys its class does not take (a DDPM config loaded into DPM-Solver), so
        the caller says which its step reads. Made once per config (building one
        validates it: a microsecond a step otherwise)."""
        config = self.config
        cached = vars(self).get("_threshold_of_config")
        if cached is None or cached[:3] != (config, dynamic, clip):  # register_to_config makes a new config
            threshold = None
            if dynamic and config.thresholding:
                threshold = ops.Threshold("dynamic", config.dynamic_thresholding_ratio, config.sample_max_value,
                                          "diffusers")
            elif clip and config.clip_sample:
                threshold = ops.Threshold("clip", max_value=config.clip_sample_range)
            cached = self._threshold_of_config = (config, dynamic, clip, threshold)
        return cached[3]

    def _read_host_sigmas(self) -> None:
        """set_timesteps' part: host copies of the sigmas every step reads (no
        tensor indexing on the hot path), from which the step values derive."""
        self._host_sigmas = [float(v) for v in self.sigmas.tolist()]
        self._keep_step_values_while(self._host_sigmas)

    def _keep_step_values_while(self, schedule: List[float]) -> None:
        """The values _step_value computes derive from ``schedule`` (and the
        frozen config): they are kept while it repeats bit for bit (a pipeline
        called again), else dropped."""
        bits = array("d", schedule).tobytes()
        if vars(self).get("_step_values_schedule") != bits:
            self._step_values, self._step_values_schedule = {}, bits

    def _step_value(self, key, compute):
        """compute() (a step's coefficient values, from host floats only) the
        first time key is asked for under this schedule, then the kept result:
        the step's Python is then a lookup."""
        value = self._step_values.get(key)
        if value is None:
            value = self._step_values[key] = compute()
        return value

    def _coefficients(self, values, device) -> torch.Tensor:
        cache = vars(self).get("_coefficient_cache")
        if cache is None:
            cache = self._coefficient_cache = ConstantCache()
        return cache.get(values, device)


class _StepIndexWithoutSync(_FusedStep):
    """The first step's index without a host synchronization. diffusers finds
    it by comparing the timestep with the schedule on the device (nonzero,
    .item()). Here the timestep's value is known on the host when it is a
    number or a CPU tensor, or when it is an element of ``self.timesteps`` (a
    pipeline's ``for t in scheduler.timesteps`` hands out views, whose position
    the storage offset gives); diffusers' own index_for_timestep then runs on a
    host copy of the schedule, so the index is exactly diffusers'. Any other
    timestep takes diffusers' path."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_schedule = self.timesteps.cpu()

    def _init_step_index(self, timestep) -> None:
        host = getattr(self, "_host_schedule", None)
        if getattr(self, "begin_index", None) is None and host is not None and len(host) == len(self.timesteps):
            if not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu":
                self._step_index = self._index_on_host(timestep, host)
                return
            position = _position_in(self.timesteps, timestep)
            if position is not None:
                self._step_index = self._index_on_host(host[position], host)
                return
        super()._init_step_index(timestep)

    def _index_on_host(self, timestep, host: torch.Tensor) -> int:
        """diffusers' index of the first step's timestep, found in the host copy of the schedule."""
        return self.index_for_timestep(timestep, host)


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
        self._unfused = self.unsupported_options()

    def _step_coefficients(self, order: int) -> List[float]:
        """[c_x, c_m, a, weights of m0 (m1, m2), s] of this step at this order."""
        def compute():
            c_x, c_m = self._data_term(*self._alpha_sigma(self._host_sigmas[self.step_index]))
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
        return a, [A + _ratio(B, r0) + _ratio(u, r0), -_ratio(B, r0) - u * (_ratio(1.0, r0) + _ratio(1.0, r1)),
                   _ratio(u, r1)], s

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, variance_noise: Optional[torch.Tensor] = None,
             return_dict: bool = True):
        _check_set_timesteps(self)
        if self._unfused:  # built directly rather than through accelerate(): run diffusers' step
            options = {} if variance_noise is None else {"variance_noise": variance_noise}
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict,
                                **options)
        if self.step_index is None:
            self._init_step_index(timestep)
        c = self.config
        steps = len(self.timesteps)  # as diffusers counts them (the inverse scheduler's sigmas can be longer)
        last = self.step_index == steps - 1
        lower_order_final = last and (c.get("euler_at_final") or (c.lower_order_final and steps < 15)
                                      or c.get("final_sigmas_type") == "zero")
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
        reusable = (oldest is not None and c.solver_order > 1 and oldest.shape == state.shape
                    and oldest.dtype == state.dtype and oldest.device == state.device)
        out = (torch.empty_like(state, memory_format=torch.contiguous_format),
               oldest if reusable else torch.empty_like(state, memory_format=torch.contiguous_format))
        prev_sample, converted = _ei_step(state, model_output, history, coeffs,
                                          threshold=self._threshold(), noise=noise, out=out)
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

    def _data_term(self, alpha: float, sigma: float) -> Tuple[float, float]:
        """(c_x, c_m): what the algorithm integrates (convert_model_output): the data
        prediction for dpmsolver++ / sde-dpmsolver++, the noise prediction for the others."""
        return _conversion(self.config.prediction_type, alpha, sigma,
                           to_data=self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"))


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
            bad.append("solver_order=3 (with algorithm_type='sde-dpmsolver++', which diffusers' inverse step does "
                       "not define)")
        return bad


# Why the schedulers with diffusers' Brownian-tree noise sampler cannot be captured.
_TORCHSDE_NOISE = ("its Brownian-tree noise comes from torchsde, which builds it on the host at each step "
                   "with generators of its own: a graph would replay the same noise")


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

    def _data_term(self, alpha: float, sigma: float) -> Tuple[float, float]:
        return _edm_data_term(self.config, sigma)


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

    def _data_term(self, alpha: float, sigma: float) -> Tuple[float, float]:
        return _edm_data_term(self.config, sigma)

    def _noise(self, model_output: torch.Tensor, sample: torch.Tensor, generator, variance_noise) -> torch.Tensor:
        if self.noise_sampler is None:  # set_timesteps drops it
            seed = None
            if generator is not None:
                seed = ([g.initial_seed() for g in generator] if isinstance(generator, list)
                        else generator.initial_seed())
            # diffusers builds the tree from the converted output, whose dtype is the
            # promotion of the sample's and the model output's (the tree's noise is in it).
            self.noise_sampler = _BrownianTreeNoiseSampler(_promoted(model_output, sample),
                                                           sigma_min=self.config.sigma_min,
                                                           sigma_max=self.config.sigma_max, seed=seed)
        i = self.step_index
        return self.noise_sampler(self.sigmas[i], self.sigmas[i + 1]).to(model_output.device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
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

    def _data_term(self, alpha: float, sigma: float) -> Tuple[float, float]:
        """(c_x, c_m) of convert_model_output: the noise prediction (x - alpha x0) / sigma."""
        x0_x, x0_m = _conversion(self.config.prediction_type, alpha, sigma, to_data=True)
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
        weights = [alpha_t * (integral(rho_t, *(rhos[k] for k in cycle)) - integral(rhos[0], *(rhos[k] for k in cycle)))
                   for cycle in cycles]
        return alpha_t / alpha_s0, weights, 0.0


def _check_set_timesteps(scheduler) -> None:
    """diffusers' error for a step taken before set_timesteps."""
    if scheduler.num_inference_steps is None:
        raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")


def _promoted(sample: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """The sample in the dtype diffusers' step arithmetic leaves its result in:
    torch's promotion of the sample's and the model output's dtypes (a bf16
    sample with a float32 model output steps, and returns, in float32)."""
    return _cast(sample, torch.promote_types(sample.dtype, model_output.dtype))


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tensor.to(dtype), skipped when it has nothing to do (it costs about a
    microsecond anyway: a tenth of a fused step's Python)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _ratio(a: float, b: float) -> float:
    """a / b with IEEE semantics (inf or nan for b = 0), as the tensor arithmetic it replaces."""
    return a / b if b != 0 else (math.copysign(math.inf, a) if a != 0 else math.nan)


def _sqrt(x: float) -> float:
    """sqrt with IEEE semantics (nan below 0), as torch.sqrt."""
    return math.sqrt(x) if x >= 0 else math.nan


def _log(x: float) -> float:
    """log with IEEE semantics (-inf at 0, nan below), as torch.log."""
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def _an_index(timestep) -> bool:
    """Whether a timestep is an integer (an index from ``enumerate(timesteps)``),
    which diffusers' sigma-indexed schedulers refuse."""
    return isinstance(timestep, (int, torch.IntTensor, torch.LongTensor))


def _host_timestep(scheduler, timestep, counter: int, cast=int):
    """The timestep's value without a device synchronization: read from a
    number or a CPU tensor; a device tensor is not read: when it is an element
    of scheduler.timesteps (a pipeline's loop hands out views of it, also when
    it starts part-way, as img2img does), its position gives the value, else
    the step is taken to be the counter-th of scheduler.timesteps (diffusers'
    own multistep schedulers keep such a counter too)."""
    if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
        position = _position_in(scheduler.timesteps, timestep)
        return scheduler._host_timesteps[counter if position is None else position]
    return cast(timestep)


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
        return a, [-B * _ratio(r1, r0) * q + 2 * C * _ratio(q, r0), B * _ratio(r0, r1) * q - 2 * C * _ratio(q, r1),
                   A + B * q * (_ratio(r1, r0) - _ratio(r0, r1)) + 2 * C * q * (_ratio(1.0, r1) - _ratio(1.0, r0))], s

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        _check_set_timesteps(self)
        if self.unsupported_options():
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
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
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample
        a, weights, s = self._update(order)
        alpha, sigma = _alpha_sigma(self._host_sigmas[self.step_index], c.use_flow_sigmas)
        c_x, c_m = _conversion(c.prediction_type, alpha, sigma, to_data=c.algorithm_type != "dpmsolver")
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


class _HostTimesteps(_FusedStep):
    """What the discrete-timestep schedulers share: host copies of the
    timesteps and of alphas_cumprod, and the step counter of _host_timestep."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps = [int(t) for t in self.timesteps.tolist()]
        self._host_alphas_cumprod = self.alphas_cumprod.tolist()
        self._step_counter = 0

    def _ddim_alphas(self, timestep) -> Tuple[float, float]:
        """(alpha_t, alpha_prev) of a DDIM-style step from ``timestep`` down one
        stride (final_alpha_cumprod below 0), the step counted."""
        t = _host_timestep(self, timestep, self._step_counter)
        self._step_counter += 1
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else float(self.final_alpha_cumprod)
        return self._host_alphas_cumprod[t], alpha_prev

    def _posterior_step(self, model_output, sample, generator, t: int, prev_t: int, beta: float,
                        threshold: Optional[ops.Threshold], large_variance: bool = False):
        """DDPM's ancestral step from t to prev_t, as DDPM's and UnCLIP's steps
        take it: the data prediction (thresholded), the posterior mean
        b0 x0 + a x with alpha = 1 - beta, and where t > 0 the noise, its
        variance beta (fixed_large) or (1 - a_prev) / (1 - a_t) beta; one ei_step.
        Returns (prev_sample, pred_original_sample)."""
        alpha_t = self._host_alphas_cumprod[t]
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
        c_x, c_m = _data_and_noise_terms(self.config.prediction_type, alpha_t)[0]
        b0 = math.sqrt(alpha_prev) * beta / beta_t
        a = math.sqrt(1.0 - beta) * beta_prev / beta_t
        noise, std = None, 0.0
        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            std = math.sqrt(beta if large_variance else max(beta_prev / beta_t * beta, 1e-20))
        coeffs = self._coefficients([c_x, c_m, a, b0, std], sample.device)
        return _ei_step(sample, model_output, [], coeffs, threshold=threshold, noise=noise)


# In place of 1 / sqrt(alpha) at alpha = 0; see _data_and_noise_terms.
_HUGE_SCALE = 1e30


def _data_and_noise_terms(prediction_type: str, alpha_cumprod: float) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """((c_x, c_m), (e_x, e_m)) with the data prediction x0 = c_x x + c_m m and
    the noise prediction eps = e_x x + e_m m of a model output m at a timestep
    with this alphas_cumprod (the DDIM-family steps). With a zero terminal SNR,
    alpha = 0 at the first step: only v_prediction is finite there. An epsilon
    model's x0 = (x - m) / 0 is then infinite with the sign of x - m, which
    diffusers' clip_sample or dynamic thresholding turns into +-limit; 1 / 0 in
    both coefficients would make inf - inf = NaN instead, so a huge finite scale
    stands in for it (where nothing clips, diffusers' result is inf or NaN anyway)."""
    sqrt_a, sqrt_b = math.sqrt(alpha_cumprod), math.sqrt(1.0 - alpha_cumprod)
    if prediction_type == "epsilon":
        inverse = 1.0 / sqrt_a if sqrt_a > 0 else _HUGE_SCALE
        return (inverse, -sqrt_b * inverse), (0.0, 1.0)
    if prediction_type == "sample":
        return (0.0, 1.0), (_ratio(1.0, sqrt_b), _ratio(-sqrt_a, sqrt_b))
    if prediction_type == "v_prediction":
        return (sqrt_a, -sqrt_b), (sqrt_b, sqrt_a)
    raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon`, `sample` or `v_prediction`")


class DDIMScheduler(_HostTimesteps, _diffusers.DDIMScheduler):
    """diffusers' DDIMScheduler with a fused ``step()`` (eta, clip_sample,
    thresholding, every prediction type, use_clipped_model_output)."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        _check_set_timesteps(self)
        c = self.config
        alpha_t, alpha_prev = self._ddim_alphas(timestep)
        beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
        sqrt_a, sqrt_b = math.sqrt(alpha_t), math.sqrt(beta_t)
        (c_x, c_m), (e_x, e_m) = _data_and_noise_terms(c.prediction_type, alpha_t)
        variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev)
        std = eta * math.sqrt(variance)
        k = math.sqrt(max(1.0 - alpha_prev - std * std, 0.0))
        # prev = sqrt(alpha_prev) x0 + k eps (+ std noise); eps from the clipped x0 when asked.
        b0 = math.sqrt(alpha_prev)
        if use_clipped_model_output:
            a, b0, history, weights = _ratio(k, sqrt_b), b0 - k * _ratio(sqrt_a, sqrt_b), [], []
        else:
            a, history, weights = k * e_x, [model_output], [k * e_m]
        threshold = self._config_threshold()
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                                 "`generator` or `variance_noise` stays `None`.")
            noise = variance_noise if variance_noise is not None else randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        coeffs = self._coefficients([c_x, c_m, a, b0, *weights, std if noise is not None else 0.0], sample.device)
        prev_sample, pred_original_sample = _ei_step(sample, model_output, history, coeffs, threshold=threshold,
                                                     noise=noise)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class CogVideoXDDIMScheduler(_HostTimesteps, _diffusers.CogVideoXDDIMScheduler):
    """diffusers' CogVideoXDDIMScheduler (CogVideoX's DDIM, with its SNR-shifted
    schedule) with a fused ``step()``: the data prediction and
    x_prev = a_t x + b_t x0, a_t = sqrt((1 - alpha_prev) / (1 - alpha_t)),
    b_t = sqrt(alpha_prev) - sqrt(alpha_t) a_t, in one ei_step. Like diffusers'
    step it takes eta, use_clipped_model_output, generator and variance_noise
    and uses none of them, nor clip_sample."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        _check_set_timesteps(self)
        alpha_t, alpha_prev = self._ddim_alphas(timestep)
        (c_x, c_m), _ = _data_and_noise_terms(self.config.prediction_type, alpha_t)
        a = _sqrt(_ratio(1.0 - alpha_prev, 1.0 - alpha_t))
        b = math.sqrt(alpha_prev) - math.sqrt(alpha_t) * a
        coeffs = self._coefficients([c_x, c_m, a, b, 0.0], sample.device)
        prev_sample, pred_original_sample = _ei_step(sample, model_output, [], coeffs)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class CogVideoXDPMScheduler(_HostTimesteps, _diffusers.CogVideoXDPMScheduler):
    """diffusers' CogVideoXDPMScheduler (CogVideoX's SDE-DPM-Solver++(2M), the
    default of CogVideoX-5B's pipelines) with a fused ``step()``: the data
    prediction, its combination with the previous one (``old_pred_original_sample``,
    which the pipeline hands back) and the noise in one ei_step. Its signature and
    quirks are diffusers': ``step(model_output, old_pred_original_sample, timestep,
    timestep_back, sample, ...)``, a tuple by default, and a tuple whatever
    ``return_dict`` says on a first-order step (the first, and the last). Noise is
    drawn as diffusers draws it, in the sample's dtype: once on a first-order
    step, twice on the others (diffusers computes a first-order result with the
    first draw and discards it), so the generator ends where diffusers leaves
    it. eta, use_clipped_model_output, variance_noise and clip_sample are taken
    and unused, as in diffusers."""

    NOT_CAPTURABLE = ("its step takes the previous step's timestep and data prediction from the pipeline "
                      "(CogVideoX's loop), which graph_pipeline's loop does not hand it")

    def step(self, model_output: torch.Tensor, old_pred_original_sample: Optional[torch.Tensor], timestep,
             timestep_back, sample: torch.Tensor, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator: Optional[torch.Generator] = None, variance_noise: Optional[torch.Tensor] = None,
             return_dict: bool = False):
        _check_set_timesteps(self)
        noise_dtype = sample.dtype
        sample = _promoted(sample, model_output)
        counter = self._step_counter
        t = _host_timestep(self, timestep, counter)
        # (Its value is needed only on a second-order step; a pipeline passes timesteps[i - 1].)
        t_back = None if timestep_back is None else _host_timestep(self, timestep_back, max(counter - 1, 0))
        self._step_counter += 1
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alphas = self._host_alphas_cumprod
        alpha_t = alphas[t]
        alpha_prev = alphas[prev_t] if prev_t >= 0 else float(self.final_alpha_cumprod)
        (c_x, c_m), _ = _data_and_noise_terms(self.config.prediction_type, alpha_t)

        def half_log_snr(alpha: float) -> float:  # -inf at a zero terminal SNR (alpha = 0)
            return _log(_sqrt(_ratio(alpha, 1.0 - alpha)))

        lambda_t = half_log_snr(alpha_t)
        h = half_log_snr(alpha_prev) - lambda_t
        # x_prev = mult1 x - mult2 x0' + noise_scale z, x0' = x0 on a first-order step,
        # else (1 + 1/(2r)) x0 - 1/(2r) x0_old with r = h_last / h.
        mult1 = _sqrt(_ratio(1.0 - alpha_prev, 1.0 - alpha_t)) * math.exp(-h)
        mult2 = math.expm1(-2.0 * h) * math.sqrt(alpha_prev)
        noise_scale = math.sqrt(1.0 - alpha_prev) * _sqrt(1.0 - math.exp(-2.0 * h))
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype)
        first_order = old_pred_original_sample is None or prev_t < 0
        if first_order:
            coeffs = [c_x, c_m, mult1, -mult2, noise_scale]
            history = []
        else:
            if t_back is None:  # (diffusers fails here with an IndexError)
                raise ValueError("CogVideoXDPMScheduler.step: 'timestep_back' (the previous step's timestep) must be "
                                 "given with 'old_pred_original_sample'")
            half_inverse_r = _ratio(1.0, 2.0 * _ratio(lambda_t - half_log_snr(alphas[t_back]), h))
            coeffs = [c_x, c_m, mult1, -mult2 * (1.0 + half_inverse_r), mult2 * half_inverse_r, noise_scale]
            history = [old_pred_original_sample]
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype)
        prev_sample, pred_original_sample = _ei_step(sample, model_output, history,
                                                     self._coefficients(coeffs, sample.device), noise=noise)
        if first_order or not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class DDIMInverseScheduler(_HostTimesteps, _diffusers.DDIMInverseScheduler):
    """diffusers' DDIMInverseScheduler (DDIM inversion: DiffEdit, pix2pix-zero)
    with a fused ``step()``: the data and noise predictions, clip_sample and the
    step up to the next timestep in one ei_step."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        c = self.config
        prev_t = _host_timestep(self, timestep, self._step_counter)  # the timestep stepped to (t + 1 in diffusers)
        self._step_counter += 1
        t = min(prev_t - c.num_train_timesteps // self.num_inference_steps, c.num_train_timesteps - 1)
        alpha_t = self._host_alphas_cumprod[t] if t >= 0 else float(self.initial_alpha_cumprod)
        alpha_prev = self._host_alphas_cumprod[prev_t]
        (c_x, c_m), (e_x, e_m) = _data_and_noise_terms(c.prediction_type, alpha_t)
        # prev = sqrt(alpha_prev) clip(x0) + sqrt(1 - alpha_prev) eps, eps from the unclipped prediction
        k = math.sqrt(1.0 - alpha_prev)
        coeffs = self._coefficients([c_x, c_m, k * e_x, math.sqrt(alpha_prev), k * e_m, 0.0], sample.device)
        threshold = self._config_threshold(dynamic=False)
        prev_sample, pred_original_sample = _ei_step(sample, model_output, [model_output], coeffs, threshold=threshold)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class DDPMScheduler(_HostTimesteps, _diffusers.DDPMScheduler):
    """diffusers' DDPMScheduler with a fused ``step()`` (clip_sample,
    thresholding, prediction types, fixed_small / fixed_small_log / fixed_large
    variances, custom timesteps)."""

    def unsupported_options(self) -> List[str]:
        if self.config.variance_type in ("learned", "learned_range", "fixed_large_log"):
            return [f"variance_type={self.config.variance_type!r}"]
        return []

    def _previous_host_timestep(self, t: int) -> int:
        if self.custom_timesteps or self.num_inference_steps:
            index = self._host_timesteps.index(t)
            return self._host_timesteps[index + 1] if index + 1 < len(self._host_timesteps) else -1
        return t - 1

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        if self.unsupported_options() or self.num_inference_steps is None:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        t = _host_timestep(self, timestep, self._step_counter)
        self._step_counter += 1
        prev_t = self._previous_host_timestep(t)
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        beta = 1.0 - self._host_alphas_cumprod[t] / alpha_prev
        prev_sample, pred_original_sample = self._posterior_step(
            model_output, sample, generator, t, prev_t, beta, self._config_threshold(),
            large_variance=self.variance_type == "fixed_large")
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class DDPMWuerstchenScheduler(_FusedStep, _diffusers.DDPMWuerstchenScheduler):
    """diffusers' DDPMWuerstchenScheduler (the Wuerstchen and Stable Cascade
    pipelines') with a fused ``step()``: the posterior mean and noise,
    sqrt(1 / alpha) (x - (1 - alpha) F / sqrt(1 - alpha_cumprod)) + std z, one
    multistep_combine with a coefficient row per sample. Its step takes the
    timestep as a (batch,) tensor, as those pipelines hand it (``t.expand(batch)``,
    in the model's dtype). Its value comes from the host: from the tensor's
    position in ``scheduler.timesteps`` when it is a view of it (a float32
    pipeline's ``t.expand``), else read once a step (a bf16 copy), where
    diffusers reads the device once a step (``.item()``) in every case. The
    alphas_cumprod are diffusers' own function on host tensors of the
    timestep's dtype, so bf16 timesteps round as in diffusers."""

    NOT_CAPTURABLE = ("its step takes the timestep as a (batch,) tensor, as only the Wuerstchen and Stable Cascade "
                      "pipelines hand it")

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps = self.timesteps.tolist()
        self._keep_step_values_while(self._host_timesteps)

    def _timestep_values(self, timestep: torch.Tensor) -> List[float]:
        """The (batch,) timestep's values: from its position in self.timesteps
        when every element is one element of it, else read."""
        if timestep.device.type != "cpu" and timestep.dtype == self.timesteps.dtype and (
                timestep.stride(0) == 0 or len(timestep) == 1):
            position = _position_in(self.timesteps, timestep[0])
            if position is not None:
                return [self._host_timesteps[position]] * len(timestep)
        return timestep.tolist()

    def _step_coefficients(self, values: Tuple[float, ...], dtype: torch.dtype) -> Tuple[List[float], bool]:
        """(rows [a, b, s] of x_next = a x + b F + s z, one per sample or one for
        all, flattened; whether the rows differ per sample)."""
        t0 = np.float32(values[0])  # diffusers' previous_timestep: the nearest schedule entry to t[0], in float32
        index = int(np.abs(np.asarray(self._host_timesteps, dtype=np.float32) - t0).argmin())
        prev_t = self._host_timesteps[index + 1]
        distinct = sorted(set(values))
        alpha_cumprods = self._alpha_cumprod(torch.tensor(distinct, dtype=dtype), "cpu").tolist()
        alpha_cumprod_prev = float(self._alpha_cumprod(torch.tensor([prev_t]), "cpu"))
        rows = {}
        for value, alpha_cumprod in zip(distinct, alpha_cumprods):
            alpha = alpha_cumprod / alpha_cumprod_prev
            a = math.sqrt(1.0 / alpha)
            std = _sqrt((1.0 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)) if prev_t != 0 else 0.0
            rows[value] = [a, -a * (1.0 - alpha) / math.sqrt(1.0 - alpha_cumprod), std]
        if len(distinct) == 1:
            return rows[distinct[0]], False
        return [c for value in values for c in rows[value]], True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if (vars(self).get("_host_timesteps") is None or not isinstance(timestep, torch.Tensor)
                or timestep.dim() != 1 or len(timestep) not in (1, len(sample))):
            # before set_timesteps, or a timestep diffusers' step takes otherwise (or refuses): its own step
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        values = tuple(self._timestep_values(timestep))
        coefficients, per_sample = self._step_value((values, timestep.dtype),
                                                    lambda: self._step_coefficients(values, timestep.dtype))
        coeffs = self._coefficients(coefficients, sample.device)
        if per_sample:
            coeffs = coeffs.view(len(sample), 3)
        # Drawn every step, the last too (its std is 0), as diffusers draws it.
        noise = randn_tensor(sample.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        prev_sample = _cast(_combine([sample, model_output, noise], coeffs), model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return DDPMWuerstchenSchedulerOutput(prev_sample=prev_sample)


class UnCLIPScheduler(_HostTimesteps, _diffusers.UnCLIPScheduler):
    """diffusers' UnCLIPScheduler (the Kandinsky 2.x priors', unCLIP's) with a
    fused ``step()``: the data prediction, its clip, the posterior mean and the
    fixed_small_log noise in one ei_step, from host values of ``timestep`` and
    ``prev_timestep`` (diffusers compares both on the device: three
    synchronizations a step). learned_range variances keep the stock step."""

    def unsupported_options(self) -> List[str]:
        if self.config.variance_type != "fixed_small_log":
            return [f"variance_type={self.config.variance_type!r}"]
        return []

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_betas = self.betas.tolist()

    def _host_prev_timestep(self, prev_timestep, t: int) -> int:
        if prev_timestep is None:
            return t - 1
        if isinstance(prev_timestep, torch.Tensor) and prev_timestep.device.type != "cpu":
            position = _position_in(self.timesteps, prev_timestep)
            if position is not None:
                return self._host_timesteps[position]
        return int(prev_timestep)  # a number, a CPU tensor, or a device tensor from elsewhere (read, as diffusers does)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, prev_timestep=None,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        c = self.config
        if (self.unsupported_options() or c.prediction_type not in ("epsilon", "sample")
                or self.num_inference_steps is None):
            # diffusers' step: learned variances, its error for another prediction type, no set_timesteps yet
            return super().step(model_output, timestep, sample, prev_timestep=prev_timestep, generator=generator,
                                return_dict=return_dict)
        sample = _promoted(sample, model_output)
        t = _host_timestep(self, timestep, self._step_counter)
        self._step_counter += 1
        prev_t = self._host_prev_timestep(prev_timestep, t)
        if prev_t == t - 1:  # diffusers takes the training beta for a one-step stride
            beta = self._host_betas[t]
        else:
            alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
            beta = 1.0 - self._host_alphas_cumprod[t] / alpha_prev
        prev_sample, pred_original_sample = self._posterior_step(
            model_output, sample, generator, t, prev_t, beta, self._config_threshold(dynamic=False))
        if not return_dict:
            return prev_sample, pred_original_sample
        return UnCLIPSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class PNDMScheduler(_HostTimesteps, _diffusers.PNDMScheduler):
    """diffusers' PNDMScheduler (Stable Diffusion 1.x's default) with fused
    steps: every Runge-Kutta stage (skip_prk_steps=False) and every linear
    multistep (PLMS) step is one multistep_combine of the sample and the model
    outputs it weighs (diffusers combines the outputs, then updates, in about
    ten ops). The alphas are read on the host, where diffusers indexes them
    with the timestep (a device tensor in a pipeline). The Runge-Kutta stages'
    outputs are kept as a list (``_prk_outputs``) and weighed at the fourth
    stage, where diffusers keeps a running sum in ``cur_model_output``."""

    # PLMS (Adams-Bashforth) weights of ets[-1], ets[-2], ... by how many there are.
    PLMS_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
    PRK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # the four Runge-Kutta stages' outputs

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._prk_outputs: List[torch.Tensor] = []

    def _prev_sample(self, sample, outputs, weights, timestep: int, prev_timestep: int) -> torch.Tensor:
        """diffusers' _get_prev_sample(sample, timestep, prev_timestep, sum_j weights[j] outputs[j])
        (formula 9 of the PNDM paper) as one weighted sum of sample and outputs."""
        alpha_t = self._host_alphas_cumprod[timestep]
        alpha_prev = self._host_alphas_cumprod[prev_timestep] if prev_timestep >= 0 else float(self.final_alpha_cumprod)
        beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
        sample_coeff = math.sqrt(alpha_prev / alpha_t)
        output_coeff = -(alpha_prev - alpha_t) / (alpha_t * math.sqrt(beta_prev) + math.sqrt(alpha_t * beta_t * alpha_prev))
        if self.config.prediction_type == "v_prediction":  # eps = sqrt(alpha_t) v + sqrt(beta_t) sample
            sample_coeff += output_coeff * math.sqrt(beta_t)
            output_coeff *= math.sqrt(alpha_t)
        elif self.config.prediction_type != "epsilon":
            raise ValueError(f"prediction_type given as {self.config.prediction_type} must be one of `epsilon` or "
                             "`v_prediction`")
        coeffs = self._coefficients([sample_coeff, *(output_coeff * w for w in weights)], sample.device)
        return _combine([sample, *outputs], coeffs)

    def _host_step_timestep(self, timestep) -> int:
        _check_set_timesteps(self)
        return _host_timestep(self, timestep, self.counter)  # the counter indexes scheduler.timesteps

    def step_prk(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        t = self._host_step_timestep(timestep)
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        prev_t = t - (0 if self.counter % 2 else ratio // 2)
        group_t = int(self.prk_timesteps[self.counter // 4 * 4])
        stage = self.counter % 4
        if stage == 0:
            self.ets.append(model_output)
            self.cur_sample = sample
            self._prk_outputs = []
        self._prk_outputs.append(model_output)
        outputs, weights = (self._prk_outputs, self.PRK_WEIGHTS) if stage == 3 else ([model_output], (1.0,))
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._prev_sample(cur_sample, outputs, weights, group_t, prev_t)
        if stage == 3:
            self._prk_outputs = []
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def step_plms(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        t = self._host_step_timestep(timestep)
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(f"{self.__class__} can only be run AFTER scheduler has been run in 'prk' mode for at least "
                             "12 iterations See: https://github.com/huggingface/diffusers/blob/main/src/diffusers/"
                             "pipelines/pipeline_pndm.py for more information.")
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        prev_t = t - ratio
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # the second step repeats the first's timestep: a second-order (Heun-like) correction
            prev_t, t = t, t + ratio
        if len(self.ets) == 1 and self.counter == 0:
            outputs, weights = [model_output], (1.0,)
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            outputs, weights = [model_output, self.ets[-1]], (0.5, 0.5)
            sample, self.cur_sample = self.cur_sample, None
        else:
            outputs, weights = self.ets[::-1], self.PLMS_WEIGHTS[len(self.ets)]
        prev_sample = self._prev_sample(sample, outputs, weights, t, prev_t)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


class LCMScheduler(_StepIndexWithoutSync, _HostTimesteps, _diffusers.LCMScheduler):
    """diffusers' LCMScheduler (latent consistency models) with a fused
    ``step()``: the boundary-condition combination and the renoising to the
    next timestep in one ei_step (plus one pass for ``denoised`` when the data
    prediction is clipped or thresholded)."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        _check_set_timesteps(self)
        if self.step_index is None:
            self._init_step_index(timestep)
        c = self.config
        i = self.step_index
        t = self._host_timesteps[i]
        prev_t = self._host_timesteps[i + 1] if i + 1 < len(self._host_timesteps) else t
        alpha_t = self._host_alphas_cumprod[t]
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else float(self.final_alpha_cumprod)
        c_skip, c_out = (float(v) for v in self.get_scalings_for_boundary_condition_discrete(t))
        c_x, c_m = _data_and_noise_terms(c.prediction_type, alpha_t)[0]
        threshold = self._config_threshold()
        last = i == self.num_inference_steps - 1
        noise = None if last else randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                               dtype=sample.dtype)
        scale = 1.0 if last else math.sqrt(alpha_prev)
        s = 0.0 if last else math.sqrt(1.0 - alpha_prev)
        if threshold is None:
            # denoised = c_out x0 + c_skip x is itself the data term: d = denoised.
            coeffs = [c_out * c_x + c_skip, c_out * c_m, 0.0, scale, s]
        else:
            coeffs = [c_x, c_m, scale * c_skip, scale * c_out, s]
        prev_sample, d = _ei_step(sample, model_output, [], self._coefficients(coeffs, sample.device),
                                  threshold=threshold, noise=noise)
        denoised = d if threshold is None else _combine(
            [d, sample], self._coefficients([c_out, c_skip], sample.device))
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)


class TCDScheduler(_StepIndexWithoutSync, _HostTimesteps, _diffusers.TCDScheduler):
    """diffusers' TCDScheduler (trajectory consistency distillation) with a
    fused ``step()``: the predicted noised sample at timestep s (the data and
    noise predictions recombined) and the stochastic step to the next timestep
    with eta ("gamma") in one ei_step."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.3,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        sample = _promoted(sample, model_output)
        _check_set_timesteps(self)
        if self.step_index is None:
            self._init_step_index(timestep)
        assert 0 <= eta <= 1.0, "gamma must be less than or equal to 1.0"
        i = self.step_index
        t = self._host_timesteps[i]
        prev_t = self._host_timesteps[i + 1] if i + 1 < len(self._host_timesteps) else 0
        # diffusers floors (1 - eta) * prev_t in float32 (a float times a long tensor).
        s_t = int(np.floor(np.float32(1.0 - eta) * np.float32(prev_t)))
        alphas = self._host_alphas_cumprod
        alpha_prev = alphas[prev_t] if prev_t >= 0 else float(self.final_alpha_cumprod)
        (c_x, c_m), (e_x, e_m) = _data_and_noise_terms(self.config.prediction_type, alphas[t])
        sqrt_as, sqrt_bs = math.sqrt(alphas[s_t]), math.sqrt(1.0 - alphas[s_t])
        # pred_noised_sample = sqrt(alpha_s) x0 + sqrt(1 - alpha_s) eps: the data term d
        noised = [sqrt_as * c_x + sqrt_bs * e_x, sqrt_as * c_m + sqrt_bs * e_m]
        noise, scale, s = None, 1.0, 0.0
        if eta > 0 and i != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=torch.promote_types(sample.dtype, model_output.dtype))
            scale, s = math.sqrt(alpha_prev / alphas[s_t]), math.sqrt(1.0 - alpha_prev / alphas[s_t])
        prev_sample, pred_noised_sample = _ei_step(
            sample, model_output, [], self._coefficients([*noised, 0.0, scale, s], sample.device), noise=noise)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_noised_sample
        return TCDSchedulerOutput(prev_sample=prev_sample, pred_noised_sample=pred_noised_sample)


class ScoreSdeVeScheduler(_FusedStep, _diffusers.ScoreSdeVeScheduler):
    """diffusers' ScoreSdeVeScheduler (Song et al.'s VE SDE, predictor-corrector)
    with fused steps: step_pred as one ei_step (the mean and the noisy sample),
    step_correct on the fused Langevin op (the noise drawn as diffusers draws it)."""

    NOT_CAPTURABLE = ("its loop calls step_pred and step_correct, not step(), and the corrector's noise is drawn on "
                      "the CPU and copied over, as diffusers draws it")

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps = self.timesteps.tolist()
        self._pred_counter = 0

    def set_sigmas(self, *args, **kwargs):
        super().set_sigmas(*args, **kwargs)
        self._host_discrete_sigmas = self.discrete_sigmas.tolist()

    def step_pred(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                  generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        t = _host_timestep(self, timestep, self._pred_counter, cast=float)
        self._pred_counter += 1
        # diffusers' index: float32 t times (N - 1), truncated.
        index = int(torch.tensor(t, dtype=torch.float32) * (len(self._host_timesteps) - 1))
        sigma = self._host_discrete_sigmas[index]
        adjacent = self._host_discrete_sigmas[index - 1] if index > 0 else 0.0
        g2 = sigma * sigma - adjacent * adjacent
        noise = randn_tensor(sample.shape, layout=sample.layout, generator=generator, device=sample.device,
                             dtype=sample.dtype)
        # mean = sample + g^2 model_output (the data term); prev = mean + g noise
        coeffs = self._coefficients([1.0, g2, 0.0, 1.0, math.sqrt(g2)], sample.device)
        prev_sample, prev_sample_mean = _ei_step(sample, model_output, [], coeffs, noise=noise)
        if not return_dict:
            return prev_sample, prev_sample_mean
        return SdeVeOutput(prev_sample=prev_sample, prev_sample_mean=prev_sample_mean)

    def step_correct(self, model_output: torch.Tensor, sample: torch.Tensor,
                     generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        noise = randn_tensor(sample.shape, layout=sample.layout, generator=generator).to(sample.device)
        prev_sample, _ = ops.langevin_correct(sample, model_output, float(self.config.snr), noise=noise,
                                              reduction="batch")
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


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


class UniPCMultistepScheduler(_PredictorCorrectorSteps, _diffusers.UniPCMultistepScheduler):
    """diffusers' UniPCMultistepScheduler with fused steps: the model output's
    conversion and the UniC corrector in one ei_step (writing the corrected
    sample diffusers keeps as last_sample), then the UniP predictor in another;
    one ei_step in all where the corrector is off. The rho weights are solved on
    the host in float64 (numpy), where diffusers solves them on the device."""

    def unsupported_options(self) -> List[str]:
        bad = []
        if self.solver_p is not None:
            bad.append("solver_p")
        if self.config.thresholding and not self.predict_x0:
            bad.append("thresholding (with predict_x0=False)")
        return bad

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
            rhos = [0.5] if order == 1 else list(np.linalg.solve(np.array(rows), np.array(b)))
        else:
            rhos = [] if order == 1 else ([0.5] if order == 2 else
                                          list(np.linalg.solve(np.array(rows)[:-1, :-1], np.array(b)[:-1])))
        return h_phi_1, b_h, rhos

    def _base_and_scale(self, t_index: int, s0_index: int) -> Tuple[float, float]:
        alpha_t, sigma_t = self._alpha_sigma_at(t_index)
        alpha_s0, sigma_s0 = self._alpha_sigma_at(s0_index)
        if self.predict_x0:
            return sigma_t / sigma_s0, alpha_t
        return alpha_t / alpha_s0, sigma_t

    def _combination(self, t_index: int, s0_index: int, order: int, older: List[int], corrector: bool):
        """(base, weight of m0, weights of the older outputs, weight of model_t) of
        x_t = base x - scale h_phi_1 m0 - scale B_h (sum_k rho_k (m_k - m0) / r_k [+ rho_last (model_t - m0)])."""
        return self._step_value((t_index, s0_index, order, tuple(older), corrector),
                                lambda: self._solve_combination(t_index, s0_index, order, older, corrector))

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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
             generator: Optional[torch.Generator] = None):
        _check_set_timesteps(self)
        if self.unsupported_options():
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        c = self.config
        i = self.step_index
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        alpha, sigma = self._alpha_sigma_at(i)
        c_x, c_m = _conversion(c.prediction_type, alpha, sigma, to_data=self.predict_x0)
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
            history = [self.last_sample, self.model_outputs[-1]] + [self.model_outputs[-(k + 1)] for k in range(1, k_order)]
            sample, converted = _ei_step(sample, model_output, history,
                                         coeffs([c_x, c_m, 0.0, w_t, base, w0, *w_older, 0.0]), threshold=threshold)
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
            prev_sample, _ = _ei_step(sample, converted, older_outputs, coeffs([0.0, 1.0, base, w0, *w_older, 0.0]),
                                      out=(torch.empty_like(sample, memory_format=torch.contiguous_format), converted))
        else:
            prev_sample, converted = _ei_step(sample, model_output, older_outputs,
                                              coeffs([c_x, c_m, base, w0, *w_older, 0.0]), threshold=threshold)
        self.model_outputs[-1] = converted
        prev_sample = _cast(prev_sample, sample.dtype)  # diffusers' x_t.to(x.dtype), x = the (corrected) sample
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


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
    outputs' lambdas, newest first), in float64 (IEEE inf / nan for coinciding nodes)."""
    integrals = [_exp_poly_integral(k, start, end, rate) for k in range(len(nodes))]
    weights = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, node in enumerate(nodes):
            others = nodes[:i] + nodes[i + 1:]
            numerator = np.poly(others) if others else np.ones(1)  # the basis polynomial's powers, highest first
            denominator = np.prod([node - other for other in others])
            weights.append(float(np.float64(np.dot(numerator, integrals[::-1])) / denominator))
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
            return (_ratio(alpha_t, alpha_s0), [-rate * alpha_t * gk for gk in g],
                    tau * sigma_t * _sqrt(math.expm1(2.0 * h)))
        g = _sa_gradient_coefficients(nodes, lam_s0, lam_t, rate)
        if order == 2:  # SA-Solver's O(h^3) modification of the second-order weights (as UniPC's)
            remainder = h * rate - 1.0 + math.exp(-rate * h)
            if corrector:
                extra = math.exp(rate * lam_t) * (h / 2 - _ratio(remainder, rate**2 * h))
            else:
                extra = math.exp(rate * lam_t) * _ratio(h**2 / 2 - remainder / rate**2,
                                                        lam_s0 - self._lambda_at(s0_index - 1))
            g = [g[0] + extra, g[1] - extra]
        scale = rate * sigma_t * math.exp(-(tau**2) * lam_t)
        return (math.exp(-(tau**2) * h) * _ratio(sigma_t, sigma_s0), [scale * gk for gk in g],
                sigma_t * _sqrt(-math.expm1(-2.0 * tau**2 * h)))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        _check_set_timesteps(self)
        if self.step_index is None:
            self._init_step_index(timestep)
        c, i = self.config, self.step_index
        if c.variance_type in ("learned", "learned_range") and c.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        alpha, sigma = self._alpha_sigma_at(i)
        raw_sigma = self._host_sigmas[i] if c.prediction_type == "flow_prediction" else sigma
        c_x, c_m = _conversion(c.prediction_type, alpha, raw_sigma, to_data=self.predict_x0)
        threshold = self._config_threshold(clip=False) if self.predict_x0 else None
        state = _promoted(sample, model_output)
        previous = list(self.model_outputs)  # the converted outputs before this step's
        corrected = None
        if i > 0 and self.last_sample is not None:  # the SA-Corrector, with this step's converted output
            order, tau = self.this_corrector_order, self._tau(self.timestep_list[-1], i - 1)
            base, w, s = self._step_value(("corrector", i, order, tau),
                                          lambda: self._update_coefficients(i, i - 1, order, tau, corrector=True))
            coeffs = [c_x, c_m, 0.0, w[0], base] + w[1:] + [s]
            corrected, converted = _ei_step(
                state, model_output, [self.last_sample] + [previous[-k] for k in range(1, order)],
                self._coefficients(coeffs, state.device), threshold=threshold,
                noise=_cast(self.last_noise, state.dtype) if s != 0.0 else None)
            sample = corrected = _cast(corrected, self.last_sample.dtype)
        keep = max(c.predictor_order, c.corrector_order - 1)
        for k in range(keep - 1):
            self.model_outputs[k], self.timestep_list[k] = self.model_outputs[k + 1], self.timestep_list[k + 1]
        self.timestep_list[-1] = timestep
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        steps_left = len(self.timesteps) - i
        predictor_order = min(c.predictor_order, steps_left) if c.lower_order_final else c.predictor_order
        corrector_order = min(c.corrector_order, steps_left + 1) if c.lower_order_final else c.corrector_order
        self.this_predictor_order = min(predictor_order, self.lower_order_nums + 1)
        self.this_corrector_order = min(corrector_order, self.lower_order_nums + 2)
        self.last_sample, self.last_noise = sample, noise
        order, tau = self.this_predictor_order, self._tau(timestep, i)
        base, w, s = self._step_value(("predictor", i, order, tau),
                                      lambda: self._update_coefficients(i + 1, i, order, tau, corrector=False))
        step_noise = _cast(noise, state.dtype) if s != 0.0 else None
        if corrected is None:  # the conversion and the SA-Predictor in one pass
            coeffs = [c_x, c_m, base] + w + [s]
            prev_sample, converted = _ei_step(state, model_output, [previous[-k] for k in range(1, order)],
                                              self._coefficients(coeffs, state.device), threshold=threshold,
                                              noise=step_noise)
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
                " is not supported. Make sure to pass one of the `scheduler.timesteps` as a timestep.")
        if self.step_index is None:
            self._init_step_index(timestep)

    def _renoised_flow_step(self, sample: torch.Tensor, model_output: torch.Tensor, generator,
                            noise_dtype: torch.dtype) -> torch.Tensor:
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

    def _churn(self, model_output, sample, sigma: float, s_churn: float, s_tmin: float, s_tmax: float,
               s_noise: float, generator) -> Tuple[torch.Tensor, float]:
        """Karras et al.'s churn as diffusers' Euler-family steps take it:
        (the float32 sample raised to sigma_hat, sigma_hat), the noise drawn
        after the model call and only when gamma > 0."""
        sample = _cast(sample, torch.float32)
        gamma = min(s_churn / (len(self._host_sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            scale = s_noise * math.sqrt(sigma_hat**2 - sigma**2)
            sample = _combine([sample, noise], self._coefficients([1.0, scale], sample.device))
        return sample, sigma_hat

    def _churned_euler_step(self, model_output, sample, data_term, s_churn: float, s_tmin: float, s_tmax: float,
                            s_noise: float, generator, data_input: Optional[torch.Tensor] = None):
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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._start(timestep, "EulerDiscreteScheduler")
        prediction_type = self.config.prediction_type
        prev_sample, pred_original_sample = self._churned_euler_step(
            model_output, sample, lambda sigma, sigma_hat: _euler_data_term(prediction_type, sigma, sigma_hat),
            s_churn, s_tmin, s_tmax, s_noise, generator)
        return self._finish(prev_sample, pred_original_sample, model_output, EulerDiscreteSchedulerOutput, return_dict)


class EDMEulerScheduler(_EulerBase, _diffusers.EDMEulerScheduler):
    """diffusers' EDMEulerScheduler with a fused ``step()``: the EDM
    preconditioning of the model output (c_skip, c_out at sigma_hat) and the
    Euler step in one pass (s_churn as in EulerDiscreteScheduler). A
    ``pred_original_sample`` given to step() is used as the data prediction, as
    diffusers uses it."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: Optional[torch.Generator] = None, return_dict: bool = True,
             pred_original_sample: Optional[torch.Tensor] = None):
        self._start(timestep, "EDMEulerScheduler")
        if not self.is_scale_input_called:
            _diffusers_logging.get_logger("diffusers.schedulers.scheduling_edm_euler").warning(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example.")
        given = pred_original_sample is not None  # then x0 = 1 * pred_original_sample
        prev_sample, pred_original_sample = self._churned_euler_step(
            model_output, sample,
            lambda sigma, sigma_hat: (0.0, 1.0) if given else _edm_data_term(self.config, sigma_hat),
            s_churn, s_tmin, s_tmax, s_noise, generator, data_input=pred_original_sample)
        return self._finish(prev_sample, pred_original_sample, model_output, EDMEulerSchedulerOutput, return_dict)


class EulerAncestralDiscreteScheduler(_EulerBase, _diffusers.EulerAncestralDiscreteScheduler):
    """diffusers' EulerAncestralDiscreteScheduler with a fused ``step()`` (the
    Euler step to sigma_down and the noise to sigma_next in one pass)."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._start(timestep, "EulerAncestralDiscreteScheduler")
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        sigma, sigma_to = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
        sample = _cast(sample, torch.float32)
        c_x, c_m = _euler_data_term(self.config.prediction_type, sigma, sigma)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_to, eta=1.0)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
        r = sigma_down / sigma
        coeffs = self._coefficients([c_x, c_m, r, 1.0 - r, sigma_up], sample.device)
        prev_sample, pred_original_sample = _ei_step(sample, model_output, [], coeffs, noise=noise)
        return self._finish(prev_sample, pred_original_sample, model_output, EulerAncestralDiscreteSchedulerOutput,
                            return_dict)


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
        sigma, sigma_next = (self._host_sigmas[i], self._host_sigmas[i + 1]) if first else (
            self._host_sigmas[i - 1], self._host_sigmas[i])
        c_x, c_m = self._data_term(sigma if first else sigma_next)
        clip = self._config_threshold(dynamic=False)
        if first:
            r = sigma_next / sigma  # sample + (sample - x0) / sigma * (sigma_next - sigma)
            coeffs = [c_x, c_m, r, 1.0 - r, 0.0]
            history = []
        else:
            # saved + dt/2 ((saved - x0_1) / sigma + (sample - x0_2) / sigma_next)
            half = self.dt / 2
            coeffs = [c_x, c_m, half / sigma_next, -half / sigma_next, 1.0 + half / sigma, -half / sigma, 0.0]
            history = [self.sample, self._first_data_prediction]
        prev_sample, pred_original_sample = _ei_step(
            sample, model_output, history, self._coefficients(coeffs, sample.device),
            threshold=clip)
        if first:
            self.dt, self.sample, self._first_data_prediction = sigma_next - sigma, sample, pred_original_sample
        else:
            self.dt = self.sample = self._first_data_prediction = None
        self.prev_derivative = None
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return HeunDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class DPMSolverSDEScheduler(_StepIndexWithoutSync, _diffusers.DPMSolverSDEScheduler):
    """diffusers' DPMSolverSDEScheduler ("DPM++ SDE", k-diffusion's
    sample_dpmpp_sde with r = 1/2) with fused steps: each of a step's two calls
    is one ei_step with its Brownian-tree noise inside it. The noise comes from
    diffusers' own BrownianTreeNoiseSampler (torchsde), made from the host
    sigmas (diffusers reads them with .item()), and the step's scalars are
    computed as diffusers computes them, in float32 on the host (its sigmas are
    CPU tensors), so the tree is queried at the same times."""

    NOT_CAPTURABLE = _TORCHSDE_NOISE

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
             s_noise: float = 1.0):
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:  # from the sample as given (its dtype is the tree's), as diffusers builds it
            host = [float(v) for v in self.sigmas.tolist()]  # CPU sigmas: no device read
            self.noise_sampler = _BrownianTreeNoiseSampler(sample, min(v for v in host if v > 0), max(host),
                                                           self.noise_sampler_seed)
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
        prev_sample, pred_original_sample = _ei_step(sample, model_output, history,
                                                     self._coefficients(coeffs, sample.device), noise=noise)
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

    def _fused_step(self, model_output, sample, sigma: float, sigma_interpol: float, sigma_to: float,
                    noise=None, sigma_up: float = 0.0):
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
        prev_sample, pred_original_sample = _ei_step(sample, model_output, history,
                                                     self._coefficients(coeffs, sample.device), noise=noise)
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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
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
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
        prev_sample, pred_original_sample = self._fused_step(model_output, sample, sigma, sigma_interpol, sigma_to,
                                                             noise=noise, sigma_up=sigma_up)
        if not return_dict:
            return prev_sample, pred_original_sample
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class LMSDiscreteScheduler(_EulerBase, _diffusers.LMSDiscreteScheduler):
    """diffusers' LMSDiscreteScheduler with a fused ``step()``: the derivative
    and the multistep sum in one ei_step (weights integrated exactly, where
    diffusers calls scipy's quad each step), then pred_original_sample."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, order: int = 4,
             return_dict: bool = True):
        sample = _promoted(sample, model_output)
        if not self.is_scale_input_called:
            warnings.warn("The `scale_model_input` function should be called before `step` to ensure correct "
                          "denoising. See `StableDiffusionPipeline` for a usage example.")
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
        weights = self._step_value((i, cur), lambda: lagrange_weights([self._host_sigmas[i - j] for j in range(cur)],
                                                                      sigma, self._host_sigmas[i + 1]))
        # diffusers zips these weights with the derivatives it has, newest first: a loop
        # that starts part-way (img2img's begin index) has fewer than cur at first.
        used = min(cur, len(self.derivatives) + 1)
        weights, history = weights[:used], self.derivatives[::-1][:used - 1]
        coeffs = self._coefficients([c_x, c_m, 1.0, *weights, 0.0], sample.device)
        prev_sample, derivative = _ei_step(sample, model_output, history, coeffs)
        self.derivatives.append(derivative)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        # pred_original_sample = sample - sigma * derivative
        pred_original_sample = _combine(
            [sample, derivative], self._coefficients([1.0, -sigma], sample.device))
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return LMSDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class FlowMatchEulerDiscreteScheduler(_EulerBase, _diffusers.FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux) with a fused
    ``step()``: one multistep_combine, x + dt v, or with stochastic_sampling
    (1 - sigma_next) (x - sigma v) + sigma_next z. Per-token timesteps run
    diffusers' step."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: Optional[torch.Generator] = None, per_token_timesteps: Optional[torch.Tensor] = None,
             return_dict: bool = True):
        if per_token_timesteps is not None:
            return super().step(model_output, timestep, sample, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                                s_noise=s_noise, generator=generator, per_token_timesteps=per_token_timesteps,
                                return_dict=return_dict)
        self._start(timestep, "FlowMatchEulerDiscreteScheduler")
        sample = _cast(sample, torch.float32)
        if self.config.stochastic_sampling:
            prev_sample = self._renoised_flow_step(sample, model_output, generator, sample.dtype)
        else:
            sigma, sigma_next = self._host_sigmas[self.step_index], self._host_sigmas[self.step_index + 1]
            prev_sample = _combine([sample, model_output],
                                   self._coefficients([1.0, sigma_next - sigma], sample.device))
        self._step_index += 1
        prev_sample = _cast(prev_sample, model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


class FlowMatchLCMScheduler(_EulerBase, _diffusers.FlowMatchLCMScheduler):
    """diffusers' FlowMatchLCMScheduler (latent consistency sampling on a
    flow-matching schedule) with a fused ``step()``: the data prediction
    x - sigma v and the renoise to the next sigma in one multistep_combine, in
    float32 as diffusers computes it. Scale factors (its scale-wise regime,
    which resizes the data prediction between steps) run diffusers' step."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if _an_index(timestep) or (self._scale_factors and self._upscale_mode):
            # diffusers' refusal of an index for a timestep; the scale-wise regime's interpolation
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self._init_size is None or self.step_index is None:
            self._init_size = model_output.size()[2:]
        if self.step_index is None:
            self._init_step_index(timestep)
        # diffusers draws the noise in the data prediction's dtype: the float32 sample's promoted with the model's
        prev_sample = self._renoised_flow_step(_cast(sample, torch.float32), model_output, generator,
                                               torch.promote_types(torch.float32, model_output.dtype))
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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        self._start(timestep, "FlowMatchHeunDiscreteScheduler")
        i = self.step_index
        first = self.state_in_first_order
        sigma, sigma_next = (self._host_sigmas[i], self._host_sigmas[i + 1]) if first else (
            self._host_sigmas[i - 1], self._host_sigmas[i])
        sample, sigma_hat = self._churn(model_output, sample, sigma, s_churn, s_tmin, s_tmax, s_noise, generator)
        if first:
            # derivative = (x - (x - sigma v)) / sigma_hat; x_next = x + dt derivative
            dt = sigma_next - sigma_hat
            coeffs = self._coefficients([0.0, sigma / sigma_hat, 1.0, dt, 0.0], sample.device)
            prev_sample, derivative = _ei_step(sample, model_output, [], coeffs)
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            half = self.dt / 2
            prev_sample = _combine([self.sample, model_output, self.prev_derivative],
                                   self._coefficients([1.0, half, half], sample.device))
            self.prev_derivative = self.dt = self.sample = None
        prev_sample = _cast(prev_sample, model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMatchHeunDiscreteSchedulerOutput(prev_sample=prev_sample)


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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        if _an_index(timestep) or vars(self).get("_host_sigmas") is None:
            # diffusers' refusal of an index for a timestep; before set_timesteps, its own step
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if not self.is_scale_input_called:
            _diffusers_logging.get_logger("diffusers.schedulers.scheduling_consistency_models").warning(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example.")
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        coefficients = self._step_value(i, lambda: self._step_coefficients(i))
        noise = None
        if len(self.timesteps) > 1:  # diffusers' noise is zeros for a one-step schedule
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
        prev_sample, _ = _ei_step(_promoted(sample, model_output), model_output, [],
                                  self._coefficients(coefficients, sample.device),
                                  threshold=self._CLIP if self.config.clip_denoised else None, noise=noise)
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

    NOT_CAPTURABLE = ("its pipelines (Sana Sprint) run a transformer on TrigFlow timesteps over timesteps[:-1], "
                      "which graph_pipeline's UNet loop does not")

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_angles = [float(v) for v in self._host_schedule.tolist()]
        self._keep_step_values_while(self._host_angles)

    def _step_coefficients(self, i: int) -> List[float]:
        """[c_x, c_m, 0, cos t, sin(t) sigma_data] of x_next = cos(t) x0 + sin(t) sigma_data z."""
        s, t = self._host_angles[i], self._host_angles[i + 1]
        return [math.cos(s), -math.sin(s), 0.0, math.cos(t), math.sin(t) * self.config.sigma_data]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        _check_set_timesteps(self)
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
        prev_sample, pred_x0 = _ei_step(state, model_output, [], self._coefficients(coefficients, state.device),
                                        noise=_cast(noise, state.dtype) if coefficients[4] != 0.0 else None)
        pred_x0 = _cast(pred_x0, pred_dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_x0
        return SCMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
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
            noise = (randn_tensor(state.shape, generator=generator, device=state.device, dtype=state.dtype)
                     if noisy else None)
            prev_sample, _ = _ei_step(state, model_output, [], self._coefficients(coefficients, state.device),
                                      noise=noise)
            prev_sample = _cast(prev_sample, sample.dtype)
        self._step_index = min(i + 1, len(self._host_sigmas) - 1)
        if not return_dict:
            return (prev_sample,)
        return LTXEulerAncestralRFSchedulerOutput(prev_sample=prev_sample)


ACCELERATED = {
    "CogVideoXDDIMScheduler": CogVideoXDDIMScheduler,
    "CogVideoXDPMScheduler": CogVideoXDPMScheduler,
    "CMStochasticIterativeScheduler": CMStochasticIterativeScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "DPMSolverMultistepInverseScheduler": DPMSolverMultistepInverseScheduler,
    "EDMDPMSolverMultistepScheduler": EDMDPMSolverMultistepScheduler,
    "CosineDPMSolverMultistepScheduler": CosineDPMSolverMultistepScheduler,
    "EDMEulerScheduler": EDMEulerScheduler,
    "DDIMScheduler": DDIMScheduler,
    "DDIMInverseScheduler": DDIMInverseScheduler,
    "DDPMScheduler": DDPMScheduler,
    "DDPMWuerstchenScheduler": DDPMWuerstchenScheduler,
    "DEISMultistepScheduler": DEISMultistepScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
    "FlowMatchHeunDiscreteScheduler": FlowMatchHeunDiscreteScheduler,
    "FlowMatchLCMScheduler": FlowMatchLCMScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "LTXEulerAncestralRFScheduler": LTXEulerAncestralRFScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
    "KDPM2DiscreteScheduler": KDPM2DiscreteScheduler,
    "KDPM2AncestralDiscreteScheduler": KDPM2AncestralDiscreteScheduler,
    "LCMScheduler": LCMScheduler,
    "PNDMScheduler": PNDMScheduler,
    "SASolverScheduler": SASolverScheduler,
    "ScoreSdeVeScheduler": ScoreSdeVeScheduler,
    "SCMScheduler": SCMScheduler,
    "TCDScheduler": TCDScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "UnCLIPScheduler": UnCLIPScheduler,
    "DPMSolverSinglestepScheduler": DPMSolverSinglestepScheduler,
    "DPMSolverSDEScheduler": DPMSolverSDEScheduler,
}


def accelerate(obj):
    """Swaps diffusers schedulers for their accelerated classes, built from the
    same config. ``obj`` is a scheduler (the accelerated one is returned) or a
    pipeline: every scheduler among its components (``scheduler``, and
    ``inverse_scheduler``, ``prior_scheduler``, ... where it has them) is
    replaced in place and the pipeline returned. Returns ``(result, changes)`` with ``changes`` a list of what was
    swapped. A scheduler without an accelerated class, or with a config option
    the accelerated step does not fuse, is kept, with a warning naming why."""
    changes: List[str] = []

    def swap(scheduler, where: str = ""):
        name = type(scheduler).__name__
        cls = ACCELERATED.get(name)
        if cls is None:
            if not isinstance(scheduler, tuple(ACCELERATED.values())):
                warnings.warn(f"diffaccel: no accelerated {name} yet; keeping the stock scheduler", stacklevel=3)
            return scheduler
        candidate = cls.from_config(scheduler.config)
        bad = candidate.unsupported_options()
        if bad:
            warnings.warn(f"diffaccel: {name} option(s) {', '.join(bad)} not accelerated; keeping the stock scheduler",
                          stacklevel=3)
            return scheduler
        changes.append(f"{name} -> diffaccel {cls.__name__}{where}")
        return candidate

    if isinstance(obj, _diffusers.SchedulerMixin):
        return swap(obj), changes
    components = getattr(obj, "components", None)  # a DiffusionPipeline's registered modules
    if isinstance(components, dict):
        # (UnCLIP's pipelines have no `scheduler`: prior_, decoder_ and super_res_scheduler)
        names = [name for name, part in components.items() if isinstance(part, _diffusers.SchedulerMixin)]
    elif hasattr(obj, "scheduler"):
        names = [name for name in ("scheduler", "inverse_scheduler") if getattr(obj, name, None) is not None]
    else:
        raise TypeError(f"accelerate() takes a diffusers scheduler or pipeline, got {type(obj).__name__}")
    for name in names:
        setattr(obj, name, swap(getattr(obj, name), "" if name == "scheduler" else f" ({name})"))
    return obj, changes


class GraphedPipeline(Replayable):
    """The denoising loop of a diffusers pipeline (UNet plus accelerated
    scheduler) for fixed shapes, captured as one CUDA graph (on CPU: run
    eagerly); made by :func:`graph_pipeline`. Call it with the initial latents
    (as the pipeline's ``prepare_latents`` returns them: noise times the
    scheduler's ``init_noise_sigma``) and the prompt embeddings; it returns the
    denoised latents, for ``pipe.vae.decode(latents / pipe.vae.config.scaling_factor)``."""

    def __init__(self, unet, scheduler, *, steps: int, latent_shape, embed_shape, guidance_scale: float, warmup: int,
                 pool, device, dtype):
        self.unet, self.scheduler, self.steps = unet, scheduler, steps
        self.guided = guidance_scale > 1.0  # diffusers' do_classifier_free_guidance
        self.latents = torch.zeros(latent_shape, device=device, dtype=dtype)
        batch = latent_shape[0]
        self.embeds = torch.zeros(((2 if self.guided else 1) * batch,) + tuple(embed_shape[1:]), device=device,
                                  dtype=dtype)
        self.result = torch.empty_like(self.latents)
        self.generator = fresh_generator(torch.device(device))
        self.weights = to_device([1.0 - guidance_scale, guidance_scale], device)
        scheduler.set_timesteps(steps, device=device)
        if hasattr(scheduler, "set_begin_index"):  # _init_step_index then needs no timestep lookup (a sync)
            scheduler.set_begin_index(0)
        self.timesteps = list(scheduler.timesteps)
        # As diffusers' pipelines do: a generator only for the steps that take one.
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        self._step_kwargs = {"generator": self.generator} if takes_generator else {}
        self._initial_state = self._copy_state(vars(scheduler))
        self._progress = Progress()
        self._constants = DeviceConstants()
        self._loop = CapturedLoop(self._run_loop, torch.device(device), warmup=warmup, pool=pool,
                                  generator=self.generator, progress=self._progress, constants=self._constants,
                                  what="the UNet")

    @staticmethod
    def _copy_state(state: dict) -> dict:
        # step() mutates the scheduler's Python state (step index, history lists in
        # place): each run starts from a copy of the state set_timesteps left.
        return {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    def _run_loop(self) -> None:
        vars(self.scheduler).clear()
        vars(self.scheduler).update(self._copy_state(self._initial_state))
        latents = self.latents
        for i, t in enumerate(self.timesteps):
            self._progress.model_call(f"UNet call {i + 1} of {len(self.timesteps)}")
            model_in = torch.cat([latents, latents]) if self.guided else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise_pred = self.unet(model_in, t, encoder_hidden_states=self.embeds, return_dict=False)[0]
            self._progress.update(f"the scheduler step after UNet call {i + 1}")
            if self.guided:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = _combine([uncond, cond], self.weights)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, **self._step_kwargs)[0]
        self.result.copy_(latents)

    def __call__(self, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: Optional[torch.Tensor] = None, *, seed: Optional[int] = None,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``seed`` reseeds the noise of stochastic schedulers (same seed, same
        result). With guidance (guidance_scale > 1) negative_prompt_embeds is
        required: the embeddings of the negative (or empty) prompt."""
        batch = self.latents.shape[0]
        check_static("latents", latents, self.latents)
        check_static("prompt_embeds", prompt_embeds, self.embeds[:batch])
        if self.guided:
            if negative_prompt_embeds is None:
                raise ValueError("negative_prompt_embeds is required with guidance_scale > 1 (the embeddings of the "
                                 "negative or empty prompt, e.g. from pipe.encode_prompt)")
            check_static("negative_prompt_embeds", negative_prompt_embeds, self.embeds[:batch])
            self.embeds[:batch].copy_(negative_prompt_embeds)  # diffusers' order: [negative, positive]
            self.embeds[batch:].copy_(prompt_embeds)
        else:
            if negative_prompt_embeds is not None:
                raise ValueError("negative_prompt_embeds: this loop was captured without guidance (guidance_scale <= 1)")
            self.embeds.copy_(prompt_embeds)
        if out is not None:
            check_static("out", out, self.result)
        return self._replay(latents, self.latents, self.result, seed, out)


def graph_pipeline(pipe, *, steps: int, height: int, width: int, batch_size: int = 1, guidance_scale: float = 7.5,
                   warmup: int = 2, pool=None) -> GraphedPipeline:
    """Captures the denoising loop of a diffusers text-to-image pipeline
    (anything with ``unet`` and ``scheduler``: StableDiffusionPipeline and
    the like) for fixed shapes: ``steps`` steps, images of height x width,
    ``batch_size`` images, classifier-free guidance at ``guidance_scale``
    (none when <= 1, as in diffusers). The scheduler is the accelerated copy of
    ``pipe.scheduler`` (``pipe`` is left unchanged). Prompt embeddings are
    [batch_size, tokenizer.model_max_length (77 without a tokenizer),
    unet.config.cross_attention_dim] in the UNet's dtype."""
    if not hasattr(pipe, "unet") or not hasattr(pipe, "scheduler"):
        raise TypeError(f"graph_pipeline() takes a pipeline with a unet and a scheduler, got {type(pipe).__name__}")
    scheduler = pipe.scheduler
    if not isinstance(scheduler, tuple(ACCELERATED.values())) or getattr(scheduler, "_unfused", False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scheduler, changes = accelerate(scheduler)
        if not changes:
            reasons = "; ".join(str(w.message) for w in caught) or "no accelerated class"
            raise ValueError(f"graph_pipeline: the stock {type(pipe.scheduler).__name__} synchronizes with the host at "
                             f"each step and cannot be captured ({reasons})")
    else:
        scheduler = type(scheduler).from_config(scheduler.config)
    if scheduler.NOT_CAPTURABLE:
        raise ValueError(f"graph_pipeline: {type(scheduler).__name__} cannot be captured: {scheduler.NOT_CAPTURABLE}")
    for name, value in (("steps", steps), ("height", height), ("width", width), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    unet = pipe.unet
    scale = getattr(pipe, "vae_scale_factor", 8)
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of the VAE scale factor {scale}, got {height}x{width}")
    latent_shape = (batch_size, unet.config.in_channels, height // scale, width // scale)
    tokens = getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77)
    embed_shape = (batch_size, tokens, unet.config.cross_attention_dim)
    return GraphedPipeline(unet, scheduler, steps=steps, latent_shape=latent_shape, embed_shape=embed_shape,
                           guidance_scale=float(guidance_scale), warmup=warmup, pool=pool, device=unet.device,
                           dtype=unet.dtype)


__all__: List[str] = ["CMStochasticIterativeScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "CosineDPMSolverMultistepScheduler", "DDIMInverseScheduler", "DDIMScheduler", "DPMSolverMultistepInverseScheduler", "DDPMScheduler", "DDPMWuerstchenScheduler", "DEISMultistepScheduler", "DPMSolverSDEScheduler", "EDMDPMSolverMultistepScheduler", "EDMEulerScheduler", "DPMSolverSinglestepScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
                  "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler",
                  "HeunDiscreteScheduler", "LTXEulerAncestralRFScheduler",
                  "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler", "PNDMScheduler", "SASolverScheduler", "SCMScheduler", "ScoreSdeVeScheduler", "TCDScheduler", "UnCLIPScheduler", "UniPCMultistepScheduler", "accelerate",
                  "ACCELERATED", "graph_pipeline", "GraphedPipeline"]
