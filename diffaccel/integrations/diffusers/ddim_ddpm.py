"""The discrete-timestep schedulers whose step reads host timesteps
(_HostTimesteps): DDIM and its inverse, the CogVideoX pair, DDPM, Wuerstchen,
UnCLIP, PNDM; and ScoreSdeVeScheduler's predictor and Langevin corrector."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import diffusers as _diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm_wuerstchen import DDPMWuerstchenSchedulerOutput
from diffusers.schedulers.scheduling_sde_ve import SdeVeOutput
from diffusers.schedulers.scheduling_unclip import UnCLIPSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffaccel import ops
from diffaccel.integrations.diffusers.common import (
    _cast,
    _combine,
    _data_and_noise_terms,
    _ei_step,
    _FusedStep,
    _host_timestep,
    _HostTimesteps,
    _log,
    _position_in,
    _promoted,
    _ratio,
    _sqrt,
)


def _ddim_row(prediction_type: str, alpha_t: float, alpha_prev: float, eta: float, use_clipped: bool):
    """DDIM's step from alphas_cumprod alpha_t to alpha_prev as ei_step
    coefficients: ([c_x, c_m, a, b0, *weights], std), where the weights are
    those of the model output as a history tensor (none when the noise
    prediction comes from the clipped data prediction), std the noise's."""
    beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
    sqrt_a, sqrt_b = math.sqrt(alpha_t), math.sqrt(beta_t)
    (c_x, c_m), (e_x, e_m) = _data_and_noise_terms(prediction_type, alpha_t)
    variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev)
    std = eta * math.sqrt(variance)
    k = math.sqrt(max(1.0 - alpha_prev - std * std, 0.0))
    # prev = sqrt(alpha_prev) x0 + k eps (+ std noise); eps from the clipped x0 when asked.
    b0 = math.sqrt(alpha_prev)
    if use_clipped:
        return [c_x, c_m, _ratio(k, sqrt_b), b0 - k * _ratio(sqrt_a, sqrt_b)], std
    return [c_x, c_m, k * e_x, b0, k * e_m], std


class _DDIMSteps(_HostTimesteps):
    """DDIM's fused ``step()``, shared by DDIMScheduler and DDIMParallelScheduler
    (diffusers' two copies of one step), each with its output class."""

    _OUTPUT = DDIMSchedulerOutput

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        sample = _promoted(sample, model_output)
        alpha_t, alpha_prev = self._ddim_alphas(timestep)
        row, std = _ddim_row(self.config.prediction_type, alpha_t, alpha_prev, eta, use_clipped_model_output)
        history = [] if use_clipped_model_output else [model_output]
        threshold = self._config_threshold()
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure that either "
                    "`generator` or `variance_noise` stays `None`."
                )
            noise = (
                variance_noise
                if variance_noise is not None
                else randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            )
        coeffs = self._coefficients([*row, std if noise is not None else 0.0], sample.device)
        prev_sample, pred_original_sample = _ei_step(
            sample, model_output, history, coeffs, threshold=threshold, noise=noise
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return self._OUTPUT(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class DDIMScheduler(_DDIMSteps, _diffusers.DDIMScheduler):
    """diffusers' DDIMScheduler with a fused ``step()`` (eta, clip_sample,
    thresholding, every prediction type, use_clipped_model_output)."""


class CogVideoXDDIMScheduler(_HostTimesteps, _diffusers.CogVideoXDDIMScheduler):
    """diffusers' CogVideoXDDIMScheduler (CogVideoX's DDIM, with its SNR-shifted
    schedule) with a fused ``step()``: the data prediction and
    x_prev = a_t x + b_t x0, a_t = sqrt((1 - alpha_prev) / (1 - alpha_t)),
    b_t = sqrt(alpha_prev) - sqrt(alpha_t) a_t, in one ei_step. Like diffusers'
    step it takes eta, use_clipped_model_output, generator and variance_noise
    and uses none of them, nor clip_sample."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        sample = _promoted(sample, model_output)
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

    NOT_CAPTURABLE = (
        "its step takes the previous step's timestep and data prediction from the pipeline "
        "(CogVideoX's loop), which graph_pipeline's loop does not hand it"
    )

    def step(
        self,
        model_output: torch.Tensor,
        old_pred_original_sample: Optional[torch.Tensor],
        timestep,
        timestep_back,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = False,
    ):
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
        alpha_prev = alphas[prev_t] if prev_t >= 0 else self._host_final_alpha_cumprod
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
                raise ValueError(
                    "CogVideoXDPMScheduler.step: 'timestep_back' (the previous step's timestep) must be "
                    "given with 'old_pred_original_sample'"
                )
            half_inverse_r = _ratio(1.0, 2.0 * _ratio(lambda_t - half_log_snr(alphas[t_back]), h))
            coeffs = [c_x, c_m, mult1, -mult2 * (1.0 + half_inverse_r), mult2 * half_inverse_r, noise_scale]
            history = [old_pred_original_sample]
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype)
        prev_sample, pred_original_sample = _ei_step(
            sample, model_output, history, self._coefficients(coeffs, sample.device), noise=noise
        )
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
        alpha_t = self._host_alphas_cumprod[t] if t >= 0 else self._host_initial_alpha_cumprod
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


class _DDPMSteps(_HostTimesteps):
    """DDPM's fused ``step()``, shared by DDPMScheduler and DDPMParallelScheduler
    (diffusers' two copies of one step), each with its output class."""

    _OUTPUT = DDPMSchedulerOutput

    def unsupported_options(self) -> List[str]:
        if self.config.variance_type in ("learned", "learned_range", "fixed_large_log"):
            return [f"variance_type={self.config.variance_type!r}"]
        return []

    def _previous_host_timestep(self, t: int) -> int:
        if self.custom_timesteps or self.num_inference_steps:
            if t not in self._host_timesteps:  # (diffusers looks it up on the device: an empty result)
                raise IndexError(f"timestep {t} is not in the schedule, where diffusers looks up the next one")
            index = self._host_timesteps.index(t)
            return self._host_timesteps[index + 1] if index + 1 < len(self._host_timesteps) else -1
        return t - 1

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        sample = _promoted(sample, model_output)
        t = _host_timestep(self, timestep, self._step_counter)
        self._step_counter += 1
        prev_t = self._previous_host_timestep(t)
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        beta = 1.0 - self._host_alphas_cumprod[t] / alpha_prev
        prev_sample, pred_original_sample = self._posterior_step(
            model_output,
            sample,
            generator,
            t,
            prev_t,
            beta,
            self._config_threshold(),
            large_variance=self.variance_type == "fixed_large",
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return self._OUTPUT(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class DDPMScheduler(_DDPMSteps, _diffusers.DDPMScheduler):
    """diffusers' DDPMScheduler with a fused ``step()`` (clip_sample,
    thresholding, prediction types, fixed_small / fixed_small_log / fixed_large
    variances, custom timesteps)."""


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

    NOT_CAPTURABLE = (
        "its step takes the timestep as a (batch,) tensor, as only the Wuerstchen and Stable Cascade pipelines hand it"
    )

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps = self.timesteps.tolist()
        self._keep_step_values_while(self._host_timesteps)

    def _timestep_values(self, timestep: torch.Tensor) -> List[float]:
        """The (batch,) timestep's values: from its position in self.timesteps
        when every element is one element of it, else read."""
        if (
            timestep.device.type != "cpu"
            and timestep.dtype == self.timesteps.dtype
            and (timestep.stride(0) == 0 or len(timestep) == 1)
        ):
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

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if (
            not isinstance(timestep, torch.Tensor)
            or timestep.dim() != 1
            or len(timestep) not in (1, len(sample))
            or torch.compiler.is_compiling()
        ):
            # a timestep diffusers' step takes otherwise (or refuses), or one torch.compile
            # cannot read (a graph input: its values are known only when the graph runs)
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        values = tuple(self._timestep_values(timestep))
        coefficients, per_sample = self._step_value(
            (values, timestep.dtype), lambda: self._step_coefficients(values, timestep.dtype)
        )
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
        bad = []
        if self.config.variance_type != "fixed_small_log":
            bad.append(f"variance_type={self.config.variance_type!r}")
        if self.config.prediction_type not in ("epsilon", "sample"):
            bad.append(f"prediction_type={self.config.prediction_type!r} (diffusers' step refuses it)")
        return bad

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

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        prev_timestep=None,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
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
            model_output, sample, generator, t, prev_t, beta, self._config_threshold(dynamic=False)
        )
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
    stage, where diffusers keeps a running sum in ``cur_model_output`` (made
    before a stock step runs, and read after one)."""

    # PLMS (Adams-Bashforth) weights of ets[-1], ets[-2], ... by how many there are.
    PLMS_WEIGHTS = {
        1: (1.0,),
        2: (3 / 2, -1 / 2),
        3: (23 / 12, -16 / 12, 5 / 12),
        4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
    }
    PRK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # the four Runge-Kutta stages' outputs

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._prk_outputs: List[torch.Tensor] = []

    def _prev_sample(self, sample, outputs, weights, timestep: int, prev_timestep: int) -> torch.Tensor:
        """diffusers' _get_prev_sample(sample, timestep, prev_timestep, sum_j weights[j] outputs[j])
        (formula 9 of the PNDM paper) as one weighted sum of sample and outputs."""
        alpha_t = self._host_alphas_cumprod[timestep]
        alpha_prev = self._host_alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self._host_final_alpha_cumprod
        beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
        sample_coeff = math.sqrt(alpha_prev / alpha_t)
        output_coeff = -(alpha_prev - alpha_t) / (
            alpha_t * math.sqrt(beta_prev) + math.sqrt(alpha_t * beta_t * alpha_prev)
        )
        if self.config.prediction_type == "v_prediction":  # eps = sqrt(alpha_t) v + sqrt(beta_t) sample
            sample_coeff += output_coeff * math.sqrt(beta_t)
            output_coeff *= math.sqrt(alpha_t)
        elif self.config.prediction_type != "epsilon":
            raise ValueError(
                f"prediction_type given as {self.config.prediction_type} must be one of `epsilon` or `v_prediction`"
            )
        coeffs = self._coefficients([sample_coeff, *(output_coeff * w for w in weights)], sample.device)
        return _combine([sample, *outputs], coeffs)

    def _host_step_timestep(self, timestep) -> int:
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
        # Once a stock stage has begun stock's running sum (cur_model_output), the
        # group goes on in stock's form, with stock's arithmetic (and errors).
        stock_sum = isinstance(self.cur_model_output, torch.Tensor)
        if stock_sum and stage < 3:
            self.cur_model_output += self.PRK_WEIGHTS[stage] * model_output
        elif not stock_sum:
            self._prk_outputs.append(model_output)
        if stage < 3:
            outputs, weights = [model_output], (1.0,)
        elif stock_sum:
            outputs, weights = [self.cur_model_output, model_output], (1.0, self.PRK_WEIGHTS[3])
        else:
            outputs, weights = self._prk_outputs, self.PRK_WEIGHTS
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._prev_sample(cur_sample, outputs, weights, group_t, prev_t)
        if stage == 3:
            self._prk_outputs, self.cur_model_output = [], 0
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _before_stock_step(self) -> None:
        # Stock keeps the Runge-Kutta stages' weighted sum so far in cur_model_output.
        if self._prk_outputs:
            stage, done = self.counter % 4, len(self._prk_outputs)  # the fused stages just before this one
            stages = zip(self._prk_outputs, self.PRK_WEIGHTS[stage - done : stage])
            self.cur_model_output = sum(w * o for o, w in stages)
            self._prk_outputs = []

    def step_plms(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        t = self._host_step_timestep(timestep)
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                f"{self.__class__} can only be run AFTER scheduler has been run in 'prk' mode for at least "
                "12 iterations See: https://github.com/huggingface/diffusers/blob/main/src/diffusers/"
                "pipelines/pipeline_pndm.py for more information."
            )
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
        elif len(self.ets) in (2, 3):
            outputs, weights = self.ets[::-1], self.PLMS_WEIGHTS[len(self.ets)]
        else:  # the last four, as stock takes them (its IndexError where there are fewer)
            outputs, weights = [self.ets[-k] for k in range(1, 5)], self.PLMS_WEIGHTS[4]
        prev_sample = self._prev_sample(sample, outputs, weights, t, prev_t)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


class ScoreSdeVeScheduler(_FusedStep, _diffusers.ScoreSdeVeScheduler):
    """diffusers' ScoreSdeVeScheduler (Song et al.'s VE SDE, predictor-corrector)
    with fused steps: step_pred as one ei_step (the mean and the noisy sample),
    step_correct on the fused Langevin op (the noise drawn as diffusers draws it)."""

    NOT_CAPTURABLE = (
        "its loop calls step_pred and step_correct, not step(), and the corrector's noise is drawn on "
        "the CPU and copied over, as diffusers draws it"
    )

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps = self.timesteps.tolist()
        self._pred_counter = 0

    def set_sigmas(self, *args, **kwargs):
        super().set_sigmas(*args, **kwargs)
        self._host_discrete_sigmas = self.discrete_sigmas.tolist()

    def step_pred(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if self.timesteps is None:
            raise ValueError(
                "`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler"
            )
        t = _host_timestep(self, timestep, self._pred_counter, cast=float)
        self._pred_counter += 1
        # diffusers' index: float32 t times (N - 1), truncated.
        index = int(torch.tensor(t, dtype=torch.float32) * (len(self._host_timesteps) - 1))
        sigma = self._host_discrete_sigmas[index]
        adjacent = self._host_discrete_sigmas[index - 1] if index > 0 else 0.0
        g2 = sigma * sigma - adjacent * adjacent
        noise = randn_tensor(
            sample.shape, layout=sample.layout, generator=generator, device=sample.device, dtype=sample.dtype
        )
        # mean = sample + g^2 model_output (the data term); prev = mean + g noise
        coeffs = self._coefficients([1.0, g2, 0.0, 1.0, math.sqrt(g2)], sample.device)
        prev_sample, prev_sample_mean = _ei_step(sample, model_output, [], coeffs, noise=noise)
        if not return_dict:
            return prev_sample, prev_sample_mean
        return SdeVeOutput(prev_sample=prev_sample, prev_sample_mean=prev_sample_mean)

    def step_correct(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        if self.timesteps is None:
            raise ValueError(
                "`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler"
            )
        noise = randn_tensor(sample.shape, layout=sample.layout, generator=generator).to(sample.device)
        prev_sample, _ = ops.langevin_correct(
            sample, model_output, float(self.config.snr), noise=noise, reduction="batch"
        )
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
