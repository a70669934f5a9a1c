"""diffaccel's ComfyUI node pack: ``NODE_CLASS_MAPPINGS`` and
``NODE_DISPLAY_NAME_MAPPINGS`` for ComfyUI's custom_nodes loader.

- "Diffaccel Sampler Select": like ComfyUI's KSamplerSelect, a SAMPLER for
  SamplerCustom / SamplerCustomAdvanced, running diffaccel's sampler.
- "Diffaccel Accelerate KSampler": put between a model loader and KSampler;
  with ``enabled`` it switches every KSampler (and KSamplerSelect) to the
  fused samplers (diffaccel.comfyui.patch), without it back to ComfyUI's own.
  The model passes through unchanged.

``python -m diffaccel comfyui install COMFYUI_DIR`` writes the custom_nodes
entry that loads this pack."""

from __future__ import annotations

from diffaccel.integrations.comfyui.patch import patch, unpatch
from diffaccel.integrations.comfyui.registry import SAMPLER_NAMES, ksampler_function


class DiffaccelSamplerSelect:
    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    DESCRIPTION = "A SAMPLER running diffaccel's fused version of the chosen ComfyUI sampler."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler_name": (SAMPLER_NAMES,)}}

    def get_sampler(self, sampler_name):
        import comfy.samplers

        inpaint_options = {"random": True} if sampler_name == "ddim" else {}
        return (comfy.samplers.KSAMPLER(ksampler_function(sampler_name), inpaint_options=inpaint_options),)


class DiffaccelAccelerateKSampler:
    CATEGORY = "sampling"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "accelerate"
    DESCRIPTION = (
        "Switches KSampler to diffaccel's fused samplers (enabled) or back to ComfyUI's; the model passes through."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "enabled": ("BOOLEAN", {"default": True})}}

    def accelerate(self, model, enabled):
        if enabled:
            patch()
        else:
            unpatch()
        return (model,)


NODE_CLASS_MAPPINGS = {
    "DiffaccelSamplerSelect": DiffaccelSamplerSelect,
    "DiffaccelAccelerateKSampler": DiffaccelAccelerateKSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiffaccelSamplerSelect": "Diffaccel Sampler Select",
    "DiffaccelAccelerateKSampler": "Diffaccel Accelerate KSampler",
}
