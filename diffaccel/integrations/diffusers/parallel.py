"""ParaDiGMS's parallel samplers: DDIMParallelScheduler and
DDPMParallelScheduler, diffusers' copies of DDIM's and DDPM's step with a
``batch_step_no_noise`` that steps a batch of samples each at its own
timestep (the parallel Picard iterations of StableDiffusionParadigmsPipeline)."""

from __future__ import annotations

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_ddim_parallel import DDIMParallelSchedulerOutput
from diffusers.schedulers.scheduling_ddpm_parallel import DDPMParallelSchedulerOutput

from diffaccel.integrations.diffusers.common import _ei_step, _posterior_mean_row, _promoted
from diffaccel.integrations.diffusers.ddim_ddpm import _ddim_row, _DDIMSteps, _DDPMSteps


class _BatchStepNoNoise:
    """batch_step_no_noise as one ei_step with a coefficient row per sample:
    a step's row depends only on its timestep t (the previous one is t less
    the stride), so the rows of every t of the training schedule are made on
    the host once per schedule, with the same host code as step(), and kept on
    the device; a batch gathers its rows there by its timesteps (diffusers
    reads the device: a boolean-mask assignment where t - stride < 0)."""

    def _row(self, t: int, use_clipped: bool) -> list:
        raise NotImplementedError

    def _stride(self) -> int:
        raise NotImplementedError

    def _history(self, model_output: torch.Tensor, use_clipped: bool) -> list:
        """The history tensors the rows weigh after the data prediction."""
        return []

    def _rows_on(self, device: torch.device, use_clipped: bool) -> torch.Tensor:
        """The [num_train_timesteps, 5 + k] rows (s = 0: no noise) on ``device``,
        made again when set_timesteps has made new host tables."""
        key = (device, use_clipped, self._stride(), self.config.prediction_type)
        kept = vars(self).get("_batched_rows")
        if kept is None or kept[0] is not self._host_alphas_cumprod or kept[1] != key:
            rows = [self._row(t, use_clipped) + [0.0] for t in range(len(self._host_alphas_cumprod))]
            table = torch.tensor(rows, dtype=torch.float64).to(device)
            kept = self._batched_rows = (self._host_alphas_cumprod, key, table)
        return kept[2]

    def _batched(self, model_output, timesteps, sample, use_clipped: bool) -> torch.Tensor:
        sample = _promoted(sample, model_output)
        rows = self._rows_on(model_output.device, use_clipped)[timesteps.reshape(-1).to(model_output.device)]
        rows = rows.expand(model_output.shape[0], -1) if rows.shape[0] == 1 else rows
        history = self._history(model_output, use_clipped)
        return _ei_step(sample, model_output, history, rows, threshold=self._config_threshold())[0]


class DDIMParallelScheduler(_DDIMSteps, _BatchStepNoNoise, _diffusers.DDIMParallelScheduler):
    """diffusers' DDIMParallelScheduler: DDIM's fused ``step()``, and
    ``batch_step_no_noise`` as one ei_step with a row per sample (eta 0, as
    diffusers asserts; clip_sample, thresholding, prediction types,
    use_clipped_model_output)."""

    _OUTPUT = DDIMParallelSchedulerOutput

    def _stride(self) -> int:
        return self.config.num_train_timesteps // self.num_inference_steps

    def _history(self, model_output, use_clipped):
        return [] if use_clipped else [model_output]  # the noise prediction's model output term

    def _row(self, t: int, use_clipped: bool) -> list:
        prev_t = t - self._stride()
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        return _ddim_row(self.config.prediction_type, self._host_alphas_cumprod[t], alpha_prev, 0.0, use_clipped)[0]

    def batch_step_no_noise(
        self,
        model_output: torch.Tensor,
        timesteps: torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ) -> torch.Tensor:
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        assert eta == 0.0  # (diffusers' own check)
        return self._batched(model_output, timesteps, sample, use_clipped_model_output)


class DDPMParallelScheduler(_DDPMSteps, _BatchStepNoNoise, _diffusers.DDPMParallelScheduler):
    """diffusers' DDPMParallelScheduler: DDPM's fused ``step()``, and
    ``batch_step_no_noise`` (the posterior mean, no noise) as one ei_step with
    a row per sample (clip_sample, thresholding, prediction types; learned
    variances keep diffusers' step)."""

    _OUTPUT = DDPMParallelSchedulerOutput

    def _stride(self) -> int:
        steps = self.num_inference_steps if self.num_inference_steps else self.config.num_train_timesteps
        return self.config.num_train_timesteps // steps

    def _row(self, t: int, use_clipped: bool) -> list:
        prev_t = t - self._stride()
        alpha_t = self._host_alphas_cumprod[t]
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        return _posterior_mean_row(self.config.prediction_type, alpha_t, alpha_prev, 1.0 - alpha_t / alpha_prev)

    def batch_step_no_noise(self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor):
        return self._batched(model_output, timesteps, sample, False)
