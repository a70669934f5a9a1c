"""Objects with the attributes ComfyUI's samplers read, for tests without
ComfyUI: model samplings of the three kinds the samplers tell apart (classes
named as ComfyUI's: EPS, V_PREDICTION built on EPS, CONST), and the model
wrapper chain KSampler hands a sampler (``model.inner_model`` the CFG guider,
``model.inner_model.inner_model.model_sampling``,
``model.inner_model.model_patcher.get_model_object("model_sampling")``), around
a Gaussian toy denoiser with classifier-free guidance and ComfyUI's
``sampler_post_cfg_function`` hooks."""

from __future__ import annotations

import torch

from conftest import DEVICE


class EPS:
    sigma_min, sigma_max = 0.0292, 14.6146

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return noise * sigma + latent_image

    def percent_to_sigma(self, percent):
        log_min, log_max = torch.tensor(self.sigma_min).log(), torch.tensor(self.sigma_max).log()
        return float(torch.exp(log_min + (log_max - log_min) * (1.0 - percent)))


class V_PREDICTION(EPS):
    pass


class CONST:
    sigma_min, sigma_max = torch.tensor(0.0), torch.tensor(1.0)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image

    def percent_to_sigma(self, percent):
        return 1.0 - percent


class OwnScaling(EPS):
    """A model sampling with a noise_scaling of its own (the samplers must call it)."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return 0.5 * sigma * noise + latent_image


KINDS = {"EPS": EPS, "V": V_PREDICTION, "CONST": CONST}


class _Patcher:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name):
        return getattr(self, name)


class _Base:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling


class Guider:
    """The CFG guider: the conditional and unconditional Gaussian denoisers (data
    N(mean, std^2) per element, exact posterior means), combined with scale cfg,
    then ComfyUI's post-CFG hooks called with the dict ComfyUI passes."""

    def __init__(self, model_sampling, shape, cfg=3.0, std=0.6, seed=7):
        self.inner_model = _Base(model_sampling)
        self.model_patcher = _Patcher(model_sampling)
        self.flow = isinstance(model_sampling, CONST)
        self.cfg, self.std = cfg, std
        generator = torch.Generator().manual_seed(seed)
        self.mean_cond = torch.randn(shape[1:], generator=generator, device="cpu").to(DEVICE) * 0.5
        self.mean_uncond = torch.randn(shape[1:], generator=generator, device="cpu").to(DEVICE) * 0.5
        self.calls = 0

    def denoise(self, x, sigma, mean):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        mean = mean.to(device=x.device, dtype=x.dtype)
        var = self.std**2
        if self.flow:
            alpha = 1 - s
            return mean + alpha * var / (alpha**2 * var + s**2) * (x - alpha * mean)
        return mean + var / (var + s**2) * (x - mean)

    def __call__(self, x, sigma, model_options=None, seed=None):
        model_options = {} if model_options is None else model_options
        self.calls += 1
        cond = self.denoise(x, sigma, self.mean_cond)
        uncond = self.denoise(x, sigma, self.mean_uncond)
        result = uncond + (cond - uncond) * self.cfg
        for hook in model_options.get("sampler_post_cfg_function", []):
            result = hook(
                {"denoised": result, "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sigma, "input": x}
            )
        return result


class Model:
    """KSamplerX0Inpaint as a sampler sees it: called as model(x, sigma, **extra_args)."""

    def __init__(self, model_sampling, shape, **guider_options):
        self.inner_model = Guider(model_sampling, shape, **guider_options)

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        return self.inner_model(x, sigma, model_options=model_options or {}, seed=seed)


def model_for(kind: str, shape, **guider_options) -> Model:
    return Model(KINDS[kind](), shape, **guider_options)


def karras(n, sigma_min=0.0292, sigma_max=14.6146, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)]).float()


def flow_simple(n):
    """ComfyUI's "simple" schedule of a flow model with shift 1: 1, 1 - 1/n, ..., then 0."""
    return torch.cat([1 - torch.arange(n, dtype=torch.float64) / n, torch.zeros(1, dtype=torch.float64)]).float()


def sigmas_for(kind: str, n: int):
    return flow_simple(n) if kind == "CONST" else karras(n)


class DiscreteEPS(EPS):
    """A discrete model sampling as ComfyUI's ModelSamplingDiscrete exposes it: the
    sigma table of SD's scaled-linear betas, timestep(sigma) (nearest table index in log
    sigma) and sigma(timestep) (log-linear interpolation)."""

    def __init__(self, timesteps=1000, linear_start=0.00085, linear_end=0.012):
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
