"""diffaccel: fused, graph-capturable kernels for diffusion sampler updates.

The ops live in :mod:`diffaccel.ops` (and under ``torch.ops.diffaccel``);
``python -m diffaccel info`` reports which backends run on this machine.
"""

from diffaccel import ops, schedules
from diffaccel.ops import Threshold
from diffaccel.sampling import classifier_free_guidance, sample
from diffaccel.solvers import plan, samplers

__version__ = "0.1.0"

__all__ = ["ops", "schedules", "Threshold", "sample", "plan", "samplers", "classifier_free_guidance", "__version__"]
