"""Opt-in: ComfyUI's KSampler and SamplerCustom running diffaccel's samplers.

ComfyUI looks its samplers up by name each time a KSampler or a sampler node
builds its sampler: ``getattr(comfy.k_diffusion.sampling, "sample_" + name)``,
and ``comfy.extra_samplers.uni_pc.sample_unipc`` / ``sample_unipc_bh2`` for
uni_pc. Replacing those attributes makes every existing workflow run the fused
samplers, and putting ComfyUI's back restores it exactly."""

from __future__ import annotations

import importlib
from typing import Dict, Iterable, List, Optional, Tuple

from diffaccel.integrations.comfyui.registry import SAMPLER_NAMES, _check_name, sampler_function

# (module, attribute) -> ComfyUI's own function, for every attribute patch() replaced.
_ORIGINALS: Dict[Tuple[str, str], object] = {}
_UNI_PC = {"uni_pc": "sample_unipc", "uni_pc_bh2": "sample_unipc_bh2"}


def _where(name: str) -> Tuple[str, str]:
    """The module and attribute ComfyUI looks the sampler ``name`` up in."""
    if name in _UNI_PC:
        return "comfy.extra_samplers.uni_pc", _UNI_PC[name]
    return "comfy.k_diffusion.sampling", "sample_" + ("euler" if name == "ddim" else name)


def patch(names: Optional[Iterable[str]] = None) -> List[str]:
    """Puts the drop-ins for ``names`` (default: every covered name) where ComfyUI's
    samplers look them up; returns the names patched. Calling it again is harmless;
    ``unpatch()`` restores ComfyUI's functions."""
    names = [name for name in SAMPLER_NAMES if name != "ddim"] if names is None else list(names)
    for name in names:
        _check_name(name)
    for name in names:
        module_name, attribute = _where(name)
        module = importlib.import_module(module_name)
        _ORIGINALS.setdefault((module_name, attribute), getattr(module, attribute))
        setattr(module, attribute, sampler_function(name))
    return names


def unpatch() -> None:
    """Restores every function patch() replaced."""
    for (module_name, attribute), original in _ORIGINALS.items():
        setattr(importlib.import_module(module_name), attribute, original)
    _ORIGINALS.clear()


def patched() -> List[str]:
    """The ComfyUI sampler names now running diffaccel's samplers."""
    where = {_where(name): name for name in SAMPLER_NAMES if name != "ddim"}
    return [where[key] for key in _ORIGINALS]
