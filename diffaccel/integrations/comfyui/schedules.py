"""ComfyUI's sigma schedules (its KSampler "scheduler" names), for code that
computes sigmas without ComfyUI: ``calculate_sigmas(model_sampling, name,
steps)`` gives ComfyUI's ``comfy.samplers.calculate_sigmas`` for the same model
sampling object (read through the attributes ComfyUI reads: ``sigmas``,
``sigma_min``, ``sigma_max``, ``timestep()``, ``sigma()``), as a float32 tensor
on the CPU, bit for bit."""

from __future__ import annotations

import math
from typing import Callable, Dict, List

import numpy as np
import torch

from diffaccel.integrations.k_diffusion.common import get_sigmas_exponential, get_sigmas_karras


def simple(model_sampling, steps: int) -> torch.Tensor:
    """Every len(sigmas) / steps-th sigma of the model's table from the top, then 0."""
    table = model_sampling.sigmas
    stride = len(table) / steps
    return torch.FloatTensor([float(table[-(1 + int(k * stride))]) for k in range(steps)] + [0.0])


def ddim_uniform(model_sampling, steps: int) -> torch.Tensor:
    """Every len(sigmas) // steps-th sigma of the table from index 1, from the top; a
    final 0 unless the table's second sigma already is (about) 0."""
    table = model_sampling.sigmas
    values = []
    if math.isclose(float(table[1]), 0, abs_tol=0.00001):
        steps += 1
    else:
        values = [0.0]
    stride = max(len(table) // steps, 1)
    values += [float(table[k]) for k in range(1, len(table), stride)]
    return torch.FloatTensor(values[::-1])


def normal(model_sampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Evenly spaced model timesteps from sigma_max's to sigma_min's, their sigmas, then
    0 (sgm_uniform: steps + 1 of them with the last dropped)."""
    start = model_sampling.timestep(model_sampling.sigma_max)
    end = model_sampling.timestep(model_sampling.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(model_sampling.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    values = [float(model_sampling.sigma(t)) for t in timesteps]
    return torch.FloatTensor(values + ([0.0] if append_zero else []))


def sgm_uniform(model_sampling, steps: int) -> torch.Tensor:
    return normal(model_sampling, steps, sgm=True)


def karras(model_sampling, steps: int) -> torch.Tensor:
    return get_sigmas_karras(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))


def exponential(model_sampling, steps: int) -> torch.Tensor:
    return get_sigmas_exponential(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))


def beta(model_sampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Table sigmas at the quantiles of a Beta(alpha, beta) distribution (Lee et al.
    2024, arXiv:2407.12173), repeats dropped, then 0."""
    from scipy.stats import beta as beta_distribution

    table = model_sampling.sigmas
    last_index = len(table) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(beta_distribution.ppf(quantiles, alpha, beta_) * last_index)
    values, previous = [], -1
    for index in indices:
        if index != previous:
            values.append(float(table[int(index)]))
        previous = index
    return torch.FloatTensor(values + [0.0])


def linear_quadratic(model_sampling, steps: int, threshold_noise: float = 0.025, linear_steps=None) -> torch.Tensor:
    """Mochi's schedule: linear in the first half down to 1 - threshold_noise, then
    quadratic to 0, times sigma_max."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [k * threshold_noise / linear_steps for k in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (k**2) + linear_coef * k + const for k in range(linear_steps, steps)]
        schedule = [1.0 - v for v in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * model_sampling.sigma_max.cpu()


def kl_optimal(model_sampling, steps: int) -> torch.Tensor:
    """tan of evenly spaced points between atan(sigma_max) and atan(sigma_min), then 0
    (AUTOMATIC1111's KL-optimal schedule)."""
    sigma_min, sigma_max = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    fractions = torch.arange(steps, dtype=torch.float, device="cpu").div_(steps - 1)
    sigmas = fractions.new_zeros(steps + 1)
    sigmas[:-1] = (fractions * math.atan(sigma_min) + (1 - fractions) * math.atan(sigma_max)).tan_()
    return sigmas


SCHEDULERS: Dict[str, Callable] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}
SCHEDULER_NAMES: List[str] = list(SCHEDULERS)


def calculate_sigmas(model_sampling, scheduler_name: str, steps: int) -> torch.Tensor:
    """ComfyUI's calculate_sigmas: the sigmas of ``steps`` steps (a final 0 included) of
    the named schedule for this model sampling."""
    if scheduler_name not in SCHEDULERS:
        raise ValueError(
            f"diffaccel.comfyui.calculate_sigmas: argument 'scheduler_name' must be one of "
            f"{', '.join(SCHEDULER_NAMES)}; got {scheduler_name!r}"
        )
    return SCHEDULERS[scheduler_name](model_sampling, steps)
