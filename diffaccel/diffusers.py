"""``diffaccel.diffusers`` is :mod:`diffaccel.integrations.diffusers` (the same module object)."""

import sys

from diffaccel.integrations import diffusers as _module

sys.modules[__name__] = _module
