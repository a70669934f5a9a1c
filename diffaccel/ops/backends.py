"""Which implementation runs an op: the compiled kernels, the Triton kernels or
the reference.

``DIFFACCEL_BACKEND`` (read at import) and the :func:`backend` context manager
pick it:

- ``auto`` (default): on CPU the compiled CPU kernels; on CUDA, per op, the
  GPU backend that measured faster (:data:`AUTO_CUDA_CHOICE`), or the other
  one when that is not available; the reference where neither is.
- ``cuda``: the compiled C++ kernels (csrc/cuda on CUDA tensors; csrc/cpu on
  CPU tensors).
- ``triton``: the Triton kernels on CUDA tensors (and on CPU tensors under
  ``TRITON_INTERPRET=1``); CPU tensors otherwise run the compiled CPU kernels.
- ``reference``: the pure-PyTorch twin everywhere (to compare, or to rule the
  kernels out).

Asking for ``cuda`` or ``triton`` where that backend cannot run on CUDA
tensors is an error that says why; ``auto`` falls back quietly.
"""

from __future__ import annotations

import contextlib
import os

from diffaccel import _extension
from diffaccel.ops import triton as triton_backend

BACKENDS = ("auto", "cuda", "triton", "reference")
OPS = ("ei_step", "multistep_combine", "multistep_combine_pair", "threshold", "langevin_correct", "error_norm")

# What `auto` runs on CUDA tensors, per op: the faster backend in the GPU
# check's side-by-side benchmark (bench/results/2026-11-27-h200.md), large sizes.
AUTO_CUDA_CHOICE = {
    "ei_step": "cuda",
    "multistep_combine": "cuda",
    # Not yet timed on a GPU; multistep_combine's kernel with a second output.
    "multistep_combine_pair": "cuda",
    "threshold": "cuda",
    "langevin_correct": "cuda",
    # Not yet timed on a GPU; the CUDA kernel, like the other ops' (one launch).
    "error_norm": "cuda",
}

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _parse(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"diffaccel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


_current = _parse(os.environ.get("DIFFACCEL_BACKEND", "auto"))

# op name -> device types with a compiled kernel; computed once, so that
# torch.compile sees plain constants when it traces the op fronts.
COMPILED_DEVICE_TYPES = {
    op: frozenset(dev for dev, key in _DISPATCH_KEYS.items() if _extension.has_kernel(op, key)) for op in OPS
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


def _cuda_unavailable(op: str) -> str:
    if not _extension.available():
        return f"the compiled extension did not load ({_extension.load_error})"
    return "diffaccel was built without CUDA kernels (rebuild with a CUDA torch and nvcc)"


# The common case, answered first: `auto` on CPU tensors with the CPU kernel built.
_AUTO_CPU_COMPILED = frozenset(op for op in OPS if "cpu" in COMPILED_DEVICE_TYPES[op])


def resolve(op: str, device_type: str) -> str:
    """'compiled', 'triton' or 'reference': what runs ``op`` on this device type."""
    if device_type == "cpu" and _current == "auto" and op in _AUTO_CPU_COMPILED:
        return "compiled"
    if _current == "reference":
        return "reference"
    compiled = device_type in COMPILED_DEVICE_TYPES[op]
    triton_ok = triton_backend.available(device_type)
    if device_type == "cuda":
        wanted = AUTO_CUDA_CHOICE[op] if _current == "auto" else _current
        if wanted == "cuda" and compiled:
            return "compiled"
        if wanted == "triton" and triton_ok:
            return "triton"
        if _current != "auto":
            why = _cuda_unavailable(op) if wanted == "cuda" else triton_backend.unavailable_reason
            raise RuntimeError(f"diffaccel.{op}: backend {wanted!r} cannot run on CUDA tensors: {why}")
        if compiled:
            return "compiled"
        if triton_ok:
            return "triton"
        return "reference"
    if _current == "triton" and triton_ok:
        return "triton"
    if compiled:
        return "compiled"
    if not _extension.available():
        _extension.warn_fallback_once()
    return "reference"
