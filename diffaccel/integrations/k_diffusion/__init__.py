"""k-diffusion's samplers on the fused ops: the same functions, signatures,
callback dicts and noise-sampler semantics as ``k_diffusion.sampling``, so a
k-diffusion user changes one import::

    from diffaccel.integrations import k_diffusion as K    # was: import k_diffusion.sampling as K
    x = K.sample_dpmpp_2m(denoiser, x, K.get_sigmas_karras(25, 0.03, 14.6))

``model(x, sigma * s_in, **extra_args)`` returns the denoised sample, as in
k-diffusion. Each step is one fused ``ei_step`` (plus a ``multistep_combine``
where s_churn adds noise), with the step's coefficients computed on the host in
float64 from the sigmas, which are read once. Random numbers are drawn exactly
where k-diffusion draws them (``torch.randn_like`` for s_churn, the noise
sampler for ancestral steps), so a seeded run gives the same images up to
rounding (about 1e-6 relative per step in float32: the update is one fused
expression instead of k-diffusion's chain of tensor ops).

Covered so far: get_sigmas_karras / exponential / polyexponential / vp,
sample_euler, sample_euler_ancestral, sample_heun, sample_dpm_2,
sample_dpm_2_ancestral, sample_lms, sample_dpmpp_2s_ancestral,
sample_dpmpp_sde, sample_dpmpp_2m, sample_dpmpp_2m_sde,
sample_dpmpp_3m_sde (the SDE samplers with k-diffusion's Brownian-tree noise
by default, which needs torchsde), sample_dpm_fast and sample_dpm_adaptive.

The package: ``common`` (the loop, the fused step, schedules and noise
samplers), ``samplers`` (the fixed-step samplers), ``dpm_solver``
(sample_dpm_fast, sample_dpm_adaptive).
"""

from diffaccel.integrations.k_diffusion.common import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    get_ancestral_step,
    get_sigmas_exponential,
    get_sigmas_karras,
    get_sigmas_polyexponential,
    get_sigmas_vp,
)
from diffaccel.integrations.k_diffusion.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from diffaccel.integrations.k_diffusion.samplers import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
)

__all__ = [
    "BrownianTreeNoiseSampler",
    "default_noise_sampler",
    "get_ancestral_step",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
]
