"""Loads the compiled ops (diffaccel._C) once and remembers why, if it could not.

Importing diffaccel never fails because of the extension: without it every op
runs on the reference backend, and the first op call says so once.
"""

import warnings

import torch

try:
    from diffaccel import _C  # registers torch.ops.diffaccel.*
except (ImportError, OSError) as error:  # not built, or built against another torch
    _C = None
    load_error = f"{type(error).__name__}: {error}"
else:
    load_error = None

_warned = False


def available() -> bool:
    return _C is not None


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether torch.ops.diffaccel.<op_name> has a kernel for this dispatch key."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"diffaccel::{op_name}", dispatch_key)


def warn_fallback_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"diffaccel: the compiled ops could not be loaded ({load_error}); "
            "running the pure-PyTorch reference backend. `python -m diffaccel info` says more.",
            RuntimeWarning,
            stacklevel=3,
        )
