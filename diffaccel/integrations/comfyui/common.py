"""What every ComfyUI drop-in shares: the model sampling read from ComfyUI's
model wrapper (EPS-like or CONST, i.e. flow), the half log-SNR of each, the
noise samplers ComfyUI seeds from ``extra_args["seed"]``, the CFG++ hook, and
the loop (k-diffusion's loop with ComfyUI's seeding and its flow offset of
the first sigma).

ComfyUI is never imported here: its objects are read through the attributes
ComfyUI's own samplers read (``model.inner_model.inner_model.model_sampling``,
``model.inner_model.model_patcher.get_model_object("model_sampling")``), and
the kind of a model sampling is told by the names of its classes, which is
what ``isinstance(..., comfy.model_sampling.CONST)`` tests."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from diffaccel.integrations.k_diffusion import common as k_common
from diffaccel.integrations.k_diffusion.common import _Loop

# ComfyUI's classes whose noise_scaling is sigma * noise + latent (EPS and the
# classes built on it: V_PREDICTION, EDM, X0, IMG_TO_IMG; COSMOS_RFLOW has the same
# formula) and the flow class (sigma * noise + (1 - sigma) * latent).
_EPS_NOISE_SCALING = ("EPS", "COSMOS_RFLOW")
_FLOW = "CONST"


def _class_names(obj) -> set:
    return {cls.__name__ for cls in type(obj).__mro__}


def is_flow(model_sampling) -> bool:
    """ComfyUI's ``isinstance(model_sampling, comfy.model_sampling.CONST)``: the
    rectified-flow parameterization x = (1 - sigma) data + sigma noise (Flux, SD3,
    Wan, ...)."""
    return _FLOW in _class_names(model_sampling)


def outer_model_sampling(model):
    """The model sampling ComfyUI's ancestral samplers and lcm read:
    ``model.inner_model.inner_model.model_sampling``."""
    return model.inner_model.inner_model.model_sampling


def patcher_model_sampling(model):
    """The model sampling ComfyUI's SDE, CFG++ and half-log-SNR samplers read:
    ``model.inner_model.model_patcher.get_model_object("model_sampling")``."""
    return model.inner_model.model_patcher.get_model_object("model_sampling")


class HalfLogSNR:
    """lambda = log(alpha / sigma) of ComfyUI's sigma_to_half_log_snr, in float64 on
    the host (alpha = 1 for EPS-like model sampling, 1 - sigma for flow) and its
    inverse; and the same as tensor ops for the sigmas a model or a
    noise sampler is given (ComfyUI computes those with tensor ops, and a Brownian
    increment is rough in its end points: the same ops give the same bits)."""

    def __init__(self, model_sampling):
        self.flow = is_flow(model_sampling)

    def of(self, sigma: float) -> float:
        if self.flow:
            return np.log((1 - sigma) / sigma)
        return -np.log(sigma)

    def sigma(self, half_log_snr: float) -> float:
        if self.flow:
            return 1 / (1 + np.exp(half_log_snr))
        return np.exp(-half_log_snr)

    def of_tensor(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.logit().neg() if self.flow else sigma.log().neg()

    def sigma_tensor(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        return half_log_snr.neg().sigmoid() if self.flow else half_log_snr.neg().exp()


def first_sigma_offset(values, model_sampling) -> Optional[float]:
    """ComfyUI's offset_first_sigma_for_snr: on a flow model a first sigma >= 1 (whose
    log-SNR is -inf) becomes the model's sigma at 0.01 % of the schedule. ``values``:
    the sigmas as read on the host. The new first sigma, or None where it stays."""
    if len(values) <= 1 or not is_flow(model_sampling) or not values[0] >= 1:
        return None
    return model_sampling.percent_to_sigma(1e-4)


def solve(matrix, b) -> np.ndarray:
    """np.linalg.solve of a sampler's host weights (float64), where ComfyUI solves
    them with torch.linalg.solve: a singular system (a repeated sigma) raises
    torch's error, with torch's message, as ComfyUI's does."""
    try:
        return np.linalg.solve(matrix, b)
    except np.linalg.LinAlgError:
        raise torch.linalg.LinAlgError(
            "torch.linalg.solve: The solver failed because the input matrix is singular."
        ) from None


def seeded_noise_sampler(x: torch.Tensor, seed: Optional[int] = None) -> Callable:
    """ComfyUI's default_noise_sampler: standard normal noise in x's shape, dtype and
    device, from a generator on x's device seeded with ``seed`` (ComfyUI passes
    ``extra_args["seed"]``), or from the global generator when there is none."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    size, dtype, layout, device = x.size(), x.dtype, x.layout, x.device

    def sample(sigma, sigma_next):
        return torch.randn(size, dtype=dtype, layout=layout, device=device, generator=generator)

    return sample


class BrownianTreeNoiseSampler(k_common.BrownianTreeNoiseSampler):
    """ComfyUI's BrownianTreeNoiseSampler: k-diffusion's Brownian-tree noise with the
    trees on the CPU (``cpu=True``, the ``*_sde`` samplers) or on x's device
    (``cpu=False``, the ``*_gpu`` ones), each increment returned on the device and in
    the dtype of the sigmas it was asked for, as ComfyUI returns it."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda v: v, cpu=False):
        self.cpu = cpu
        super().__init__(x, sigma_min, sigma_max, seed=seed, transform=transform)

    def _tree_inputs(self, t0, w0, t1):
        if self.cpu:
            return t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        return t0, w0, t1

    def _increments(self, lo, hi):
        device, dtype = lo.device, lo.dtype
        if self.cpu:
            lo, hi = lo.detach().cpu().float(), hi.detach().cpu().float()
        return super()._increments(lo, hi).to(device=device, dtype=dtype)


def add_post_cfg_function(extra_args: dict, function: Callable) -> None:
    """What ComfyUI's CFG++ samplers do to reach the unconditional prediction:
    a copy of ``extra_args["model_options"]`` with ``function`` appended to its
    ``sampler_post_cfg_function`` list and the cfg = 1 shortcut (which skips the
    unconditional pass) switched off, put back into ``extra_args`` (the caller's
    dict, as ComfyUI's comfy.model_patcher.set_model_options_post_cfg_function
    leaves it)."""
    options = dict(extra_args.get("model_options", {}))
    options["sampler_post_cfg_function"] = options.get("sampler_post_cfg_function", []) + [function]
    options["disable_cfg1_optimization"] = True
    extra_args["model_options"] = options


class UnconditionalPrediction:
    """The CFG++ hook: remembers the unconditional denoised prediction of the latest
    model call and passes the guided one through unchanged."""

    def __init__(self):
        self.latest = None

    def __call__(self, args):
        self.latest = args["uncond_denoised"]
        return args["denoised"]


class ComfyLoop(_Loop):
    """k-diffusion's loop (sigmas read once, the model call, the callback dict, one
    fused step per row) with ComfyUI's defaults: noise seeded from
    ``extra_args["seed"]``, and, for the samplers that work in half log-SNR, the
    model sampling and the flow offset of the first sigma."""

    def __init__(self, model, x, sigmas, extra_args, callback, disable):
        super().__init__(model, x, sigmas, extra_args, callback, disable)
        self.seed = self.extra_args.get("seed", None)
        self.snr: Optional[HalfLogSNR] = None

    def use_half_log_snr(self) -> HalfLogSNR:
        """For the samplers that step in ComfyUI's half log-SNR: the model sampling
        read from the wrapper, and on a flow model the first sigma offset from 1
        (the sigmas the model and the callback then see)."""
        model_sampling = patcher_model_sampling(self.model)
        self.snr = HalfLogSNR(model_sampling)
        first = first_sigma_offset(self.values, model_sampling)
        if first is not None:
            sigmas = self.sigmas.clone()
            sigmas[0] = first
            self.use_sigmas(sigmas)
            # The value as the sigmas' dtype holds it, rounded on the host (no read back).
            self.values[0] = np.float64(torch.tensor(float(first), dtype=self.sigmas.dtype).item())
        return self.snr

    def default_noise(self, x, noise_sampler):
        return seeded_noise_sampler(x, self.seed) if noise_sampler is None else noise_sampler

    def brownian_noise(self, x, noise_sampler, cpu: bool):
        """ComfyUI's default for the SDE samplers: a Brownian tree over the smallest
        positive and the largest sigma (made before use_half_log_snr's offset, as
        ComfyUI makes it)."""
        if noise_sampler is not None:
            return noise_sampler
        return BrownianTreeNoiseSampler(x, *self.positive_range(), seed=self.seed, cpu=cpu)
