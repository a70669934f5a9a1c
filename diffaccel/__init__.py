"""diffaccel: fused, graph-capturable kernels for diffusion sampler updates.

The ops live in :mod:`diffaccel.ops` (and under ``torch.ops.diffaccel``);
``python -m diffaccel info`` reports which backends run on this machine.
"""

from diffaccel import ops
from diffaccel.ops import Threshold

__version__ = "0.1.0"

__all__ = ["ops", "Threshold", "__version__"]
