"""Host-computed values (a step's coefficients) onto the device without a host
synchronization.

``torch.tensor(values, device="cuda")`` copies from pageable memory, which
blocks the host until the copy is done: a synchronization per sampler step.
From pinned memory the copy is asynchronous, and PyTorch's caching host
allocator keeps the pinned block from being reused until the copy has run.
"""

from __future__ import annotations

from typing import Sequence

import torch


def to_device(values: Sequence[float], device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
