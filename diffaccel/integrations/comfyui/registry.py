"""The ComfyUI sampler names diffaccel covers and the function each runs:
``SAMPLER_NAMES`` in ComfyUI's order, ``sampler_function(name)`` (the function
ComfyUI's KSampler runs for the name, with its signature) and
``ksampler_function(name)`` (what ComfyUI's KSAMPLER object is given: for
dpm_fast and dpm_adaptive the adapter that turns the sigmas into their range)."""

from __future__ import annotations

from typing import Callable, Dict, List

from diffaccel.integrations.comfyui import cfg_pp, multistep, samplers, sde, unipc
from diffaccel.integrations.comfyui.common import seeded_noise_sampler
from diffaccel.integrations.k_diffusion import dpm_solver as k_dpm_solver
from diffaccel.integrations.k_diffusion.common import _sampler


@_sampler
def sample_dpm_fast(
    model,
    x,
    sigma_min,
    sigma_max,
    n,
    extra_args=None,
    callback=None,
    disable=None,
    eta=0.0,
    s_noise=1.0,
    noise_sampler=None,
):
    """DPM-Solver-Fast (fixed step size), its noise seeded from extra_args["seed"] as in ComfyUI."""
    if noise_sampler is None:
        noise_sampler = seeded_noise_sampler(x, (extra_args or {}).get("seed", None))
    return k_dpm_solver.sample_dpm_fast(
        model, x, sigma_min, sigma_max, n, extra_args, callback, disable, eta, s_noise, noise_sampler
    )


@_sampler
def sample_dpm_adaptive(
    model,
    x,
    sigma_min,
    sigma_max,
    extra_args=None,
    callback=None,
    disable=None,
    order=3,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    pcoeff=0.0,
    icoeff=1.0,
    dcoeff=0.0,
    accept_safety=0.81,
    eta=0.0,
    s_noise=1.0,
    noise_sampler=None,
    return_info=False,
):
    """DPM-Solver-12 and 23 (adaptive step size), its noise seeded from extra_args["seed"] as in ComfyUI."""
    if noise_sampler is None:
        noise_sampler = seeded_noise_sampler(x, (extra_args or {}).get("seed", None))
    return k_dpm_solver.sample_dpm_adaptive(
        model,
        x,
        sigma_min,
        sigma_max,
        extra_args,
        callback,
        disable,
        order,
        rtol,
        atol,
        h_init,
        pcoeff,
        icoeff,
        dcoeff,
        accept_safety,
        eta,
        s_noise,
        noise_sampler,
        return_info,
    )


# ComfyUI's name -> the drop-in for comfy.k_diffusion.sampling.sample_<name> (for uni_pc
# and uni_pc_bh2: comfy.extra_samplers.uni_pc.sample_unipc / sample_unipc_bh2), in the
# order of ComfyUI 0.3.64's SAMPLER_NAMES.
_FUNCTIONS: Dict[str, Callable] = {
    "euler": samplers.sample_euler,
    "euler_cfg_pp": cfg_pp.sample_euler_cfg_pp,
    "euler_ancestral": samplers.sample_euler_ancestral,
    "euler_ancestral_cfg_pp": cfg_pp.sample_euler_ancestral_cfg_pp,
    "heun": samplers.sample_heun,
    "heunpp2": samplers.sample_heunpp2,
    "dpm_2": samplers.sample_dpm_2,
    "dpm_2_ancestral": samplers.sample_dpm_2_ancestral,
    "lms": samplers.sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": samplers.sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": cfg_pp.sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sde.sample_dpmpp_sde,
    "dpmpp_sde_gpu": sde.sample_dpmpp_sde_gpu,
    "dpmpp_2m": samplers.sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": cfg_pp.sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sde.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sde.sample_dpmpp_2m_sde_gpu,
    "dpmpp_2m_sde_heun": sde.sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sde.sample_dpmpp_2m_sde_heun_gpu,
    "dpmpp_3m_sde": sde.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sde.sample_dpmpp_3m_sde_gpu,
    "ddpm": samplers.sample_ddpm,
    "lcm": samplers.sample_lcm,
    "ipndm": multistep.sample_ipndm,
    "ipndm_v": multistep.sample_ipndm_v,
    "deis": multistep.sample_deis,
    "res_multistep": multistep.sample_res_multistep,
    "res_multistep_cfg_pp": multistep.sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": multistep.sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": multistep.sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": multistep.sample_gradient_estimation,
    "gradient_estimation_cfg_pp": multistep.sample_gradient_estimation_cfg_pp,
    "er_sde": sde.sample_er_sde,
    "seeds_2": sde.sample_seeds_2,
    "seeds_3": sde.sample_seeds_3,
    "sa_solver": multistep.sample_sa_solver,
    "sa_solver_pece": multistep.sample_sa_solver_pece,
}
_UNI_PC = {"uni_pc": unipc.sample_unipc, "uni_pc_bh2": unipc.sample_unipc_bh2}

# "ddim" in ComfyUI's KSampler is sample_euler with freshly seeded inpainting noise.
SAMPLER_NAMES: List[str] = list(_FUNCTIONS) + ["ddim", "uni_pc", "uni_pc_bh2"]


def _check_name(name: str) -> None:
    if name not in SAMPLER_NAMES:
        raise ValueError(
            f"diffaccel.comfyui: argument 'name' must be one of the covered ComfyUI sampler names "
            f"{', '.join(SAMPLER_NAMES)}; got {name!r}"
        )


def sampler_function(name: str) -> Callable:
    """The drop-in for the function ComfyUI's KSampler runs for ``name``
    (``comfy.k_diffusion.sampling.sample_<name>``; for "ddim", sample_euler; for
    uni_pc / uni_pc_bh2, ``comfy.extra_samplers.uni_pc.sample_unipc`` /
    ``sample_unipc_bh2``), with its signature and keyword options."""
    _check_name(name)
    if name in _UNI_PC:
        return _UNI_PC[name]
    return _FUNCTIONS["euler" if name == "ddim" else name]


def ksampler_function(name: str) -> Callable:
    """What ComfyUI's KSAMPLER is built with for ``name``: the sampler function, or for
    dpm_fast / dpm_adaptive ComfyUI's adapter from the sigmas to (sigma_min, sigma_max)
    (the last positive sigma as sigma_min, the step count for dpm_fast)."""
    _check_name(name)
    if name not in ("dpm_fast", "dpm_adaptive"):
        return sampler_function(name)

    def sigma_range(sigmas):
        # ComfyUI's: the last sigma, or the one before it where the last is 0.
        return sigmas[-2] if sigmas[-1] == 0 else sigmas[-1], sigmas[0]

    if name == "dpm_fast":

        def dpm_fast_function(model, noise, sigmas, extra_args, callback, disable):
            if len(sigmas) <= 1:
                return noise
            sigma_min, sigma_max = sigma_range(sigmas)
            n = len(sigmas) - 1
            return sample_dpm_fast(
                model, noise, sigma_min, sigma_max, n, extra_args=extra_args, callback=callback, disable=disable
            )

        return dpm_fast_function

    def dpm_adaptive_function(model, noise, sigmas, extra_args, callback, disable, **extra_options):
        if len(sigmas) <= 1:
            return noise
        sigma_min, sigma_max = sigma_range(sigmas)
        return sample_dpm_adaptive(
            model,
            noise,
            sigma_min,
            sigma_max,
            extra_args=extra_args,
            callback=callback,
            disable=disable,
            **extra_options,
        )

    return dpm_adaptive_function
