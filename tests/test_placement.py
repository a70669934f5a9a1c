"""Tensors placed anywhere modulo 4 KiB. The CPU's elementwise kernels walk
their range downwards where an output lies just after an input modulo 4 KiB
and upwards otherwise (csrc/cpu/blocks.h: walk_for; a load that matches a
pending store's low 12 bits waits for it). Every op that walks gets its
inputs and outputs placed in one buffer so that each walk is taken, with
sizes that leave partial blocks and partial runs, and must give the
reference's result and the same bits however its tensors lie."""

import pytest
import torch

from diffaccel import ops
from diffaccel.ops import reference

from conftest import DEVICE, assert_close

PAGE = 4096

# Byte distance from each tensor to the next, modulo 4 KiB (the inputs
# first, then the outputs): outputs 64 bytes after an input walk downwards,
# 64 bytes before one upwards; at 0 and 2048 apart nothing votes (upwards);
# "mixed" puts three inputs at 0, 1024 and 2048 and the first output 64 bytes
# after the first input, the second 64 bytes before the third (the votes cancel).
PLACEMENTS = {"after": [64] * 7, "before": [PAGE - 64] * 7, "aligned": [0] * 7, "far": [2048] * 7,
              "mixed": [1024, 1024, 2112, 1920, 1024, 1024]}  # fmt: skip


def _placed(count, shape, dtype, gaps, gen):
    """count tensors of shape in one buffer, the k-th gaps[k-1] bytes modulo
    4 KiB after the (k-1)-th, filled with standard-normal values."""
    numel = torch.Size(shape).numel()
    size = dtype.itemsize
    span = -(-numel * size // PAGE) * PAGE  # bytes, whole pages
    starts = [0]
    for gap in gaps[: count - 1]:
        starts.append(starts[-1] + span + gap)
    buffer = torch.empty((starts[-1] + span + PAGE) // size, dtype=dtype)
    base = (-buffer.data_ptr() % PAGE) // size  # the first tensor page-aligned
    tensors = [buffer[base + s // size :][:numel].view(shape) for s in starts]
    for t in tensors:
        t.copy_(torch.randn(shape, generator=gen))
    return tensors


def _coeffs(shape, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64)


# Each op: (inputs, outputs, run), run(inputs, outputs, gen) giving the op's
# outputs and the reference's; gen draws the coefficients.
def _ei_step(threshold=None, noise=False):
    def run(ins, outs, gen):
        x, m, h, *z = ins
        coeffs = _coeffs((x.shape[0], 6), gen)
        kwargs = {"threshold": threshold, "noise": z[0] if noise else None}
        return ops.ei_step(x, m, [h], coeffs, out=tuple(outs), **kwargs), reference.ei_step(x, m, [h], coeffs, **kwargs)

    return 4 if noise else 3, 2, run


def _combine(ins, outs, gen):
    coeffs = _coeffs((ins[0].shape[0], len(ins)), gen)
    return (ops.multistep_combine(ins, coeffs, out=outs[0]),), (reference.multistep_combine(ins, coeffs),)


def _combine_pair(ins, outs, gen):
    coeffs = _coeffs((ins[0].shape[0], 2, len(ins)), gen)
    return ops.multistep_combine_pair(ins, coeffs, out=tuple(outs)), reference.multistep_combine_pair(ins, coeffs)


def _langevin(ins, outs, gen):
    x, score, z = ins
    got = ops.langevin_correct(x, score, 0.16, noise=z, reduction="sample", out=tuple(outs))
    return got, reference.langevin_correct(x, score, 0.16, noise=z, reduction="sample")


def _threshold(**kwargs):
    def run(ins, outs, gen):
        return (ops.threshold(ins[0], out=outs[0], **kwargs),), (reference.threshold(ins[0], **kwargs),)

    return 1, 1, run


OPS = {
    "ei_step_2m": _ei_step(),
    "ei_step_sde_clip": _ei_step(ops.Threshold("clip", max_value=0.7), noise=True),
    "ei_step_dynamic": _ei_step(ops.Threshold("dynamic", 0.9, 10.0)),
    # The quantile beyond max_value: the scale is max_value, by a pinned pass
    # (it counts as it goes, csrc/cpu/selection.h: dynamic_threshold_samples).
    "ei_step_dynamic_pinned": _ei_step(ops.Threshold("dynamic", 0.995, 1.5)),
    "multistep_combine": (3, 1, _combine),
    "multistep_combine_pair": (3, 2, _combine_pair),
    "langevin_correct": (3, 2, _langevin),
    "threshold_clip": _threshold(kind="clip", max_value=0.7),
    "threshold_dynamic": _threshold(kind="dynamic", ratio=0.9, max_value=10.0),
    # The quantile below 1: the scale is 1, by a pinned pass.
    "threshold_dynamic_pinned": _threshold(kind="dynamic", ratio=0.5, max_value=10.0),
}

# 1000 per sample: three whole blocks of 256 and a partial one, whose last run
# is partial; 5: less than a run; (2, 4, 64, 64): split between threads.
SHAPES = [(3, 1000), (2, 5), (2, 4, 64, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", sorted(OPS))
def test_any_placement_gives_the_reference_and_the_same_bits(op, shape, dtype, gen):
    num_inputs, num_outputs, run = OPS[op]
    seed = int(torch.randint(2**31, (), generator=gen))
    results = {}
    for name, gaps in PLACEMENTS.items():
        tensors = _placed(num_inputs + num_outputs, shape, dtype, gaps, torch.Generator(DEVICE).manual_seed(seed))
        got, want = run(tensors[:num_inputs], tensors[num_inputs:], torch.Generator(DEVICE).manual_seed(seed + 1))
        for g, w in zip(got, want):
            assert_close(g, w)
        results[name] = [g.clone() for g in got]
    first = results.pop("after")
    for name, other in results.items():
        assert all(torch.equal(a, b) for a, b in zip(first, other)), f"{op}: {name} differs from after"
