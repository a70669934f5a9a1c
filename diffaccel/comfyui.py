"""``diffaccel.comfyui`` is :mod:`diffaccel.integrations.comfyui` (the same module object)."""

import sys

from diffaccel.integrations import comfyui as _module

sys.modules[__name__] = _module
