"""Drop-in replacements for the sampler APIs people already use:
``diffaccel.integrations.diffusers`` (accelerated diffusers schedulers and
``accelerate(pipe)``) and ``diffaccel.integrations.k_diffusion`` (k-diffusion's
sampling functions). Both need their package only where they compare or
subclass: diffusers for the schedulers, torchsde for k-diffusion's
Brownian-tree noise."""

from typing import List, Optional, Sequence

import torch


def float64_if_any(tensors: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """The tensors as a fused op takes them where torch's arithmetic would be
    float64: all cast to float64 when any is (the ops do not mix float64 with
    16/32-bit tensors), else as they are; None stays None."""
    if not any(t is not None and t.dtype == torch.float64 for t in tensors):
        return list(tensors)
    return [t if t is None or t.dtype == torch.float64 else t.to(torch.float64) for t in tensors]
