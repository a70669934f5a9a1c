"""Which implementation runs an op: the compiled kernels or the reference.

``DIFFACCEL_BACKEND`` (read at import) and the :func:`backend` context manager
pick it. ``auto`` runs the compiled kernel where one is registered for the
tensors' device and the reference elsewhere; ``reference`` always runs the
pure-PyTorch twin (useful to compare, or to rule the kernels out).
"""

from __future__ import annotations

import contextlib
import os

from diffaccel import _extension

BACKENDS = ("auto", "reference")

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _parse(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"diffaccel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


_current = _parse(os.environ.get("DIFFACCEL_BACKEND", "auto"))

# op name -> device types with a compiled kernel; computed once, so that
# torch.compile sees plain constants when it traces the op fronts.
COMPILED_DEVICE_TYPES = {
    op: frozenset(dev for dev, key in _DISPATCH_KEYS.items() if _extension.has_kernel(op, key))
    for op in ("ei_step", "multistep_combine", "threshold", "langevin_correct")
}


def current() -> str:
    return _current


@contextlib.contextmanager
def backend(name: str):
    """Run the ops inside the ``with`` block on the named backend."""
    global _current
    previous, _current = _current, _parse(name)
    try:
        yield
    finally:
        _current = previous


def use_compiled(op: str, device_type: str) -> bool:
    if _current == "reference":
        return False
    if device_type in COMPILED_DEVICE_TYPES[op]:
        return True
    if not _extension.available():
        _extension.warn_fallback_once()
    return False
