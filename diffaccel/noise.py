"""Standard normal noise for the sampling loops and the analytic models.

A generator may live on another device than the tensors it feeds (a CPU
generator for CUDA latents is how diffusers' pipelines make results
reproducible across machines): the noise is then drawn on the generator's
device and moved, as diffusers' ``randn_tensor`` does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def standard_normal(
    shape: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    device = torch.device(device) if device is not None else torch.get_default_device()
    if generator is None or generator.device.type == device.type:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)
