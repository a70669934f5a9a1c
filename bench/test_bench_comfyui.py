"""ComfyUI's samplers against diffaccel.comfyui's, one run, with a zero-cost
denoiser (a fixed tensor; the CFG++ hook still called): the time a ComfyUI
user pays per step beyond the network. Host time per step at (1,4,8,8), where
the data costs nothing, and time per step at (1,4,128,128) and (1,16,128,128),
float32, 10 steps of a Karras schedule on an EPS model.

ComfyUI's own functions run where COMFYUI_DIR names a ComfyUI source tree
(python deps: einops, safetensors, psutil; see scripts/compare_comfyui.py);
without it, "comfyui" is the pure-PyTorch twin of each sampler in
tests/comfyui_reference.py (the same chain of tensor ops ComfyUI runs), and
the report says so."""

import os
import sys

import pytest
import torch

from diffaccel import comfyui as ours

HERE = os.path.dirname(os.path.abspath(__file__))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
STEPS = 10
SHAPES = {"tiny": (1, 4, 8, 8), "latent": (1, 4, 128, 128), "latent16": (1, 16, 128, 128)}


def _their_functions():
    """name -> (ComfyUI's function or its twin, 'comfyui' or 'comfyui_twin', EPS model sampling)."""
    if COMFYUI_DIR:
        sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
        import compare_comfyui

        comfy = compare_comfyui.import_comfyui(COMFYUI_DIR)
        sampling = compare_comfyui.model_samplings(comfy)["EPS"][0]
        return {n: comfy.samplers.sampler_object(n).sampler_function for n in ours.SAMPLER_NAMES}, "comfyui", sampling
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import comfyui_reference
    import comfyui_standins

    twins = dict(comfyui_reference.TWINS)
    twins["ddim"] = twins["euler"]
    return twins, "comfyui_twin", comfyui_standins.EPS()


THEIRS, THEIR_IMPL, MODEL_SAMPLING = _their_functions()
NAMES = [name for name in ours.SAMPLER_NAMES if name in THEIRS]


class _Patcher:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name):
        return self.model_sampling


class ZeroCostModel:
    """A KSamplerX0Inpaint-shaped model whose denoiser costs nothing: it returns fixed
    tensors and calls ComfyUI's post-CFG hooks (the CFG++ samplers read them)."""

    def __init__(self, shape):
        generator = torch.Generator().manual_seed(0)
        self.denoised = torch.randn(shape, generator=generator) * 0.5
        self.uncond = torch.randn(shape, generator=generator) * 0.5
        self.inner_model = self
        self.model_sampling = MODEL_SAMPLING
        self.model_patcher = _Patcher(MODEL_SAMPLING)

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        result = self.denoised
        for hook in (model_options or {}).get("sampler_post_cfg_function", []):
            result = hook({"denoised": result, "uncond_denoised": self.uncond, "cond_denoised": result})
        return result


def _sigmas():
    ramp = torch.linspace(0, 1, STEPS)
    low, high = 0.0292 ** (1 / 7), 14.6146 ** (1 / 7)
    return torch.cat([(high + ramp * (low - high)) ** 7, torch.zeros(1)])


# impl varies fastest: ComfyUI's and diffaccel's run of a case are timed one after the other.
@pytest.mark.parametrize("impl", ["fused", THEIR_IMPL])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_comfyui_sampler(benchmark, name, shape_name, impl):
    shape = SHAPES[shape_name]
    model = ZeroCostModel(shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 14.6
    sigmas = _sigmas()
    function = ours.ksampler_function(name) if impl == "fused" else THEIRS[name]
    extra_args = {"model_options": {}, "seed": 5}
    benchmark.group = f"comfyui_{name} {shape_name}"
    benchmark.extra_info.update(
        case=f"comfyui_{name}",
        shape=shape_name,
        impl="stock_comfyui" if impl != "fused" else "fused",
        bytes=0,
        steps=STEPS,
        comfyui=THEIR_IMPL,
    )

    def run():
        return function(model, x, sigmas.clone(), extra_args=dict(extra_args), callback=None, disable=True)

    benchmark(run)
