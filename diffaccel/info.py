"""``python -m diffaccel info``: versions, which backends are live on this
machine, the CPU ISA level in use, and why any backend is not available."""

from __future__ import annotations

import platform
from typing import List, Tuple

import torch

import diffaccel
from diffaccel import _extension
from diffaccel.ops import backends


def backend_rows() -> List[Tuple[str, bool, str]]:
    """(backend, live, detail) for each backend."""
    rows = [("reference", True, "pure PyTorch; runs on every device")]
    if _extension.available():
        isa = _extension._C.cpu_isa_level()
        rows.append(("cpu", True, f"compiled kernels, ISA level {isa}, {torch.get_num_threads()} threads"))
    else:
        rows.append(("cpu", False, f"compiled extension not loaded: {_extension.load_error}"))
    if not torch.cuda.is_available():
        why = "this torch has no CUDA" if torch.version.cuda is None else "no CUDA device visible"
        rows.append(("cuda", False, why))
    elif not backends.COMPILED_DEVICE_TYPES["ei_step"] >= {"cuda"}:
        rows.append(("cuda", False, "diffaccel was built without CUDA kernels (CUDA ops run on the reference)"))
    else:
        rows.append(("cuda", True, f"compiled kernels on {torch.cuda.get_device_name()}"))
    from diffaccel.ops import triton as triton_backend

    if triton_backend.unavailable_reason is None:
        where = "CPU tensors under TRITON_INTERPRET=1" if triton_backend.INTERPRET else "CUDA tensors"
        rows.append(("triton", True, f"Triton kernels on {where}"))
    else:
        rows.append(("triton", False, triton_backend.unavailable_reason))
    return rows


def report() -> str:
    lines = [
        f"diffaccel {diffaccel.__version__}",
        f"python    {platform.python_version()} ({platform.machine()})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    try:
        import triton

        lines.append(f"triton    {triton.__version__}")
    except ImportError:
        lines.append("triton    not installed")
    lines.append(f"selected backend setting: {backends.current()} (DIFFACCEL_BACKEND)")
    lines.append("")
    lines.append("backends:")
    for name, live, detail in backend_rows():
        lines.append(f"  {name:<10} {'live' if live else 'off ':<5} {detail}")
    lines.append("")
    lines.append(f"whole-loop graphs (diffaccel.graph): {graph_support()}")
    return "\n".join(lines)


def graph_support() -> str:
    """Whether diffaccel.graph.capture makes CUDA graphs here, or runs its eager fallback."""
    if not torch.cuda.is_available():
        return "eager fallback on CPU tensors (CUDA graphs need a CUDA device)"
    return f"CUDA graphs on {torch.cuda.get_device_name()}"
