"""Opt-in: ComfyUI's KSampler and SamplerCustom running diffaccel's samplers.

ComfyUI looks its samplers up by name in ``comfy.k_diffusion.sampling``
(``getattr(module, "sample_" + name)``) each time a KSampler or a sampler node
builds its sampler, so replacing those attributes makes every existing workflow
run the fused samplers, and putting ComfyUI's back restores it exactly."""

from __future__ import annotations

import importlib
from typing import Dict, Iterable, List, Optional

from diffaccel.integrations.comfyui.registry import SAMPLER_NAMES, _check_name, sampler_function

# The attribute name -> ComfyUI's own function, for every attribute patch() replaced.
_ORIGINALS: Dict[str, object] = {}


def _sampling_module():
    return importlib.import_module("comfy.k_diffusion.sampling")


def patch(names: Optional[Iterable[str]] = None) -> List[str]:
    """Puts the drop-ins for ``names`` (default: every covered name) where ComfyUI's
    samplers look them up; returns the names patched. Calling it again is harmless;
    ``unpatch()`` restores ComfyUI's functions."""
    names = [name for name in SAMPLER_NAMES if name != "ddim"] if names is None else list(names)
    for name in names:
        _check_name(name)
    module = _sampling_module()
    for name in names:
        attribute = "sample_" + ("euler" if name == "ddim" else name)
        _ORIGINALS.setdefault(attribute, getattr(module, attribute))
        setattr(module, attribute, sampler_function(name))
    return names


def unpatch() -> None:
    """Restores every function patch() replaced."""
    if not _ORIGINALS:
        return
    module = _sampling_module()
    for attribute, original in _ORIGINALS.items():
        setattr(module, attribute, original)
    _ORIGINALS.clear()


def patched() -> List[str]:
    """The ComfyUI sampler names now running diffaccel's samplers."""
    return [attribute[len("sample_") :] for attribute in _ORIGINALS]
