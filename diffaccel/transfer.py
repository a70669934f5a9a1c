"""Host-computed values (a step's coefficients) onto the device without a host
synchronization.

``torch.tensor(values, device="cuda")`` copies from pageable memory, which
blocks the host until the copy is done: a synchronization per sampler step.
From pinned memory the copy is asynchronous, and PyTorch's caching host
allocator keeps the pinned block from being reused until the copy has run.

Inside a CUDA-graph capture no host copy may happen at all: the graph would
replay the copy from a pinned block the allocator has since reused. A loop
that computes its coefficients on the host at each step (the diffusers
drop-ins) is captured inside :class:`DeviceConstants`: its eager warm-up
records every coefficient tensor, and the capture reuses them, in order, from
device memory that lives as long as the graph.
"""

from __future__ import annotations

import contextlib
from array import array
from typing import Callable, List, Optional, Sequence, Tuple

import torch

_active: Optional["DeviceConstants"] = None


def to_device(values: Sequence[float], device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    if _active is not None:
        return _active.get(values, device, dtype)
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "diffaccel: a sampler step computed its coefficients on the host inside a CUDA graph capture, "
            "where the copy would replay from reused host memory; capture the loop with diffaccel.graph "
            "(capture() or diffaccel.integrations.diffusers.graph_pipeline), which keeps them on the device"
        )
    return _copy_from_pinned(values, device, dtype)


def _copy_from_pinned(values: Sequence[float], device, dtype: torch.dtype) -> torch.Tensor:
    # Staged on the host explicitly: under torch.set_default_device("cuda") a bare
    # torch.tensor would already be on the GPU (and could not be pinned).
    return torch.tensor(values, dtype=dtype, device="cpu").pin_memory().to(device, non_blocking=True)


# device -> whether it is a CUDA device (torch.device.type costs 0.3 us a read).
_CUDA_DEVICES = {}


def _is_cuda(device: torch.device) -> bool:
    cuda = _CUDA_DEVICES.get(device)
    if cuda is None:
        cuda = _CUDA_DEVICES[device] = device.type == "cuda"
    return cuda


class ConstantCache:
    """Coefficient tensors kept on the device and handed out again for equal
    values: a scheduler that runs the same schedule again (a pipeline called
    with the same number of steps) then makes no host-to-device copy at all.

    The tensors are shared, so they are for reading only (the fused ops' coefficient
    arguments). Values are compared bit for bit (float64 bytes: -0.0 is not 0.0).
    A CUDA tensor is reused only on the stream it was copied on, so it is never
    read before its copy or freed under another stream's kernels. Inside a
    capture (and in a DeviceConstants context) the cache steps aside: the
    capture's constants must live as long as its graph, which DeviceConstants
    sees to, and a cache that drops entries could not. Under torch.compile the
    values become a tensor made in the graph (the compiler keeps the floats as
    constants of the compiled code)."""

    def __init__(self, capacity: int = 512):
        self._capacity = capacity
        self._tensors = {}

    def clear(self) -> None:
        self._tensors.clear()

    def get(self, values: Sequence[float], device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self._cached(values, device, dtype, None)

    def rows(self, rows: Sequence[Sequence[float]], device, dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor]:
        """The coefficient rows of a whole loop (rows of one length) as a tuple of tensors,
        views of one table made by one copy: for a loop whose host knows every step's
        coefficients before the first. A step then spends nothing on them, and a run of
        the same schedule again nothing at all."""
        return self._cached([v for row in rows for v in row], device, dtype, ("rows", len(rows[0])))

    def table(self, rows: Sequence[Sequence[float]], device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Rows of one length as one [len(rows), width] tensor: the two coefficient
        rows of an ops.multistep_combine_pair call."""
        return self._cached([v for row in rows for v in row], device, dtype, ("table", len(rows[0])))

    def kept(self, values: Sequence[float], device, tag, make: Callable):
        """make()'s result, kept per (values, device, tag): for tensors a loop makes from
        its schedule with device ops (equal values in give equal bits out), such as the
        model's sigma tensors. Made anew under torch.compile and inside a capture."""
        if torch.compiler.is_compiling():
            return make()
        if not isinstance(device, torch.device):
            device = torch.device(device)
        cuda = _is_cuda(device)
        if cuda and torch.cuda.is_current_stream_capturing():
            return make()
        return self._lookup((array("d", values).tobytes(), device, tag, _stream(device, cuda)), make)

    def _cached(self, values, device, dtype, layout: Optional[Tuple[str, int]]):
        """values as a tensor (layout None), or as a table ``width`` wide (layout
        ("table", width)) or its rows (("rows", width))."""
        # (Called once per sampler step: each check below is kept to its cheapest form.)
        if torch.compiler.is_compiling():
            return _shaped(torch.tensor(values, dtype=dtype, device=device), layout)
        if not isinstance(device, torch.device):
            device = torch.device(device)
        cuda = _is_cuda(device)
        if _active is not None or (cuda and torch.cuda.is_current_stream_capturing()):
            return _shaped(to_device(values, device, dtype), layout)
        key = (array("d", values).tobytes(), device, dtype, _stream(device, cuda), layout)
        return self._lookup(key, lambda: _shaped(to_device(values, device, dtype), layout))

    def _lookup(self, key, make):
        value = self._tensors.get(key)
        if value is None:
            if len(self._tensors) >= self._capacity:  # many schedules seen: start over rather than grow
                self._tensors.clear()
            value = self._tensors[key] = make()
        return value


def _stream(device: torch.device, cuda: bool):
    """The current stream of a CUDA device (a tensor made on one stream is not handed to
    another: it could be read before it is written); None elsewhere."""
    return torch.cuda.current_stream(device).cuda_stream if cuda else None


def _shaped(tensor: torch.Tensor, layout: Optional[Tuple[str, int]]):
    if layout is None:
        return tensor
    kind, width = layout
    table = tensor.view(-1, width)
    return table.unbind(0) if kind == "rows" else table


class DeviceConstants:
    """The coefficient tensors of one fixed loop, recorded by its first eager
    run and handed out again, in the same order, to every later run (the
    warm-ups and the capture). A later run that asks for other values, or for
    more of them, is not the same fixed loop: that is an error, not a silent
    replay of stale numbers."""

    def __init__(self):
        self._keys: List[Tuple] = []
        self._tensors: List[torch.Tensor] = []
        self._cursor: Optional[int] = None

    @contextlib.contextmanager
    def reuse(self):
        """Runs of the loop inside this context record (the first) or reuse (the later ones) its constants."""
        global _active
        previous, _active, self._cursor = _active, self, 0
        recorded = len(self._keys)
        try:
            yield self
            if recorded and self._cursor != recorded:
                raise RuntimeError(
                    f"diffaccel: the loop used {self._cursor} coefficient sets, its warm-up {recorded}: "
                    "it is not a fixed loop and cannot be captured"
                )
        finally:
            _active, self._cursor = previous, None

    def get(self, values: Sequence[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (tuple(float(v) for v in values), device, dtype)
        i = self._cursor
        self._cursor += 1
        if i < len(self._keys):
            if self._keys[i] != key:
                raise RuntimeError(
                    f"diffaccel: coefficient set {i} of the loop differs from its warm-up's "
                    f"({list(key[0])} vs {list(self._keys[i][0])}): it is not a fixed loop"
                )
            return self._tensors[i]
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"diffaccel: the loop used more coefficient sets ({i + 1}) in capture than in its "
                "warm-up: it is not a fixed loop"
            )
        tensor = _copy_from_pinned(values, device, dtype)
        self._keys.append(key)
        self._tensors.append(tensor)
        return tensor
