"""``diffaccel.k_diffusion`` is :mod:`diffaccel.integrations.k_diffusion` (the same module object)."""

import sys

from diffaccel.integrations import k_diffusion as _module

sys.modules[__name__] = _module
