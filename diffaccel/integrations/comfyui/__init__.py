"""ComfyUI's KSampler samplers on diffaccel's fused ops.

Three ways in, none of which imports ComfyUI until it is used:

- ``sampler_function(name)``: the drop-in for the function ComfyUI's KSampler runs
  for a sampler name (``comfy.k_diffusion.sampling.sample_<name>``), same signature,
  same results (the same model calls, callback dicts and noise, drawn the same
  number of times from the same generators), on EPS, V-prediction and flow (CONST)
  models alike.
- ``patch()`` / ``unpatch()``: every KSampler and SamplerCustom in the running
  ComfyUI uses the drop-ins (opt-in; ``unpatch`` restores ComfyUI's own).
- ``calculate_sigmas(model_sampling, scheduler_name, steps)``: ComfyUI's nine
  schedules (``SCHEDULER_NAMES``), for code that builds sigmas without ComfyUI.
- The node pack (``NODE_CLASS_MAPPINGS``): "Diffaccel Sampler Select" (a SAMPLER
  for SamplerCustom) and "Diffaccel Accelerate KSampler"; installed into a ComfyUI
  with ``python -m diffaccel comfyui install COMFYUI_DIR``.

The package: ``common`` (model sampling, half log-SNR, ComfyUI's noise samplers,
the loop), ``samplers`` (euler, heun, dpm_2, the ancestral ones, lms, ddpm, lcm),
``sde`` (the DPM-Solver++ SDE samplers, er_sde, seeds), ``multistep`` (ipndm,
deis, res_multistep, gradient_estimation, sa_solver), ``cfg_pp`` (the CFG++
samplers), ``unipc`` (uni_pc), ``registry`` (names), ``schedules``, ``patch``,
``nodes`` and ``install`` (the custom_nodes entry).
"""

from diffaccel.integrations.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from diffaccel.integrations.comfyui.patch import patch, patched, unpatch
from diffaccel.integrations.comfyui.registry import SAMPLER_NAMES, ksampler_function, sampler_function
from diffaccel.integrations.comfyui.schedules import SCHEDULER_NAMES, calculate_sigmas

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "calculate_sigmas",
    "ksampler_function",
    "patch",
    "patched",
    "sampler_function",
    "unpatch",
]
