"""A CPU stand-in for CUDA-graph replay, so the CPU machines can test what
diffaccel.graph keeps in tensors and what it keeps in Python.

On CPU, diffaccel.graph.CapturedLoop runs its loop body eagerly at every call,
Python included. ReplayedLoop, put in its place by :func:`use_replayed_loops`,
does what a CUDA graph does instead: after the warm-up runs it records the
body once, op by op below Python (a TorchDispatchMode sees every aten and
diffaccel op with the tensors it reads and writes), and each run() re-executes
exactly those ops on exactly those tensors without running any Python. A loop
that keeps something in Python (a guidance scale in a float, a plan rebound
instead of copied into its tables, a step counter) then behaves as it would on
a GPU: its replays do not see the change. Random ops draw from the generator
object they were recorded with, as a graph draws from the generator registered
with it, so reseeding that generator repeats the noise.

What it does not model: memory addresses (every tensor here is the one the
recording saw, as in a graph's private pool), streams, and which ops could not
be captured at all (every tensor here is a host tensor, so a read of one is
allowed); tests/test_cuda.py and the cuda-marked tests cover those on a GPU,
and the meta-device tests cover host reads of device data.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from diffaccel import graph

aten = torch.ops.aten

# Allocations launch no kernel: a graph replays nothing for them (their memory
# keeps whatever the ops that write it leave there). A host read of a value
# (.item() of a host tensor here: every tensor is on the host) is no kernel
# either; its value, like every number Python computed during the capture,
# stays baked into the ops recorded after it.
_NOT_REPLAYED = {
    aten.empty.memory_format,
    aten.empty_like.default,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten._local_scalar_dense.default,
}


class _Recorder(TorchDispatchMode):
    """Runs each op and keeps (op, args, kwargs, outputs) in order."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class ReplayedLoop:
    """CapturedLoop's interface (graph, pool, run) over a recording of the body."""

    def __init__(
        self,
        body,
        device,
        *,
        warmup,
        pool=None,
        generator=None,
        progress,
        constants=None,
        what="the model",
        compiles=False,
    ):
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (eager runs before the capture), got {warmup!r}")
        with torch.no_grad():
            for _ in range(warmup + compiles):  # (a compiling body runs once more first, as CapturedLoop's)
                body()
            recorder = _Recorder()
            with recorder:
                body()
        self.graph = recorder.ops  # not None: the sampler reports itself as graphed
        self.replays = 0

    @property
    def pool(self):
        return None

    def run(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, recorded in self.graph:
                if func in _NOT_REPLAYED:
                    continue
                result = func(*args, **kwargs)
                # A functional op made a new tensor: its result goes where the
                # recording's was, which is what later ops read.
                for old, new in zip(tree_leaves(recorded), tree_leaves(result)):
                    if isinstance(old, torch.Tensor) and old is not new:
                        old.copy_(new)
        self.replays += 1


def use_replayed_loops(monkeypatch) -> None:
    """Makes diffaccel.graph (and graph_pipeline, which uses it) capture CPU
    loops as ReplayedLoops for the rest of the test."""
    monkeypatch.setattr(graph, "CapturedLoop", ReplayedLoop)
    try:
        from diffaccel.integrations.diffusers import graphed
    except ImportError:  # diffusers is optional
        return
    monkeypatch.setattr(graphed, "CapturedLoop", ReplayedLoop)
