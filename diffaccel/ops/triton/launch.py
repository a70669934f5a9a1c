"""Host side of the Triton backend: argument checks, contiguous staging, the
quantile rank, the generator state, and the kernel launches (through
``wrap_triton`` on CUDA, so torch.compile can trace them)."""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from diffaccel.ops import validation
from diffaccel.ops.triton import INTERPRET, kernels, selection

if INTERPRET:

    def _kernel(k):
        return k

else:
    from torch.library import wrap_triton as _kernel

TORCH_QUANTILE_MAX_SIZE = 1 << 24  # csrc/include/diffaccel/quantile.h: kTorchQuantileMaxSize
NUM_WARPS = 4


def _acc(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _acc_torch(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _split(value: float):
    """A double as a float32 pair (hi, lo), hi + lo exact to ~48 bits: Triton
    passes Python floats as float32, and float64 states need more."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def _batch(x):
    return x.shape[0] if x.dim() else 1


def _per_sample(x):
    b = _batch(x)
    return x.numel() // b if b else 0


class _Output:
    """An output written through a contiguous buffer when it is not contiguous."""

    def __init__(self, target: torch.Tensor):
        self.target = target
        self.buffer = (
            target if target.is_contiguous() else torch.empty_like(target, memory_format=torch.contiguous_format)
        )

    def finish(self):
        if self.buffer is not self.target:
            self.target.copy_(self.buffer)


def quantile_rank(ratio: float, n: int, float64: bool):
    """(below, above, weight) as diffaccel/quantile.h and torch.quantile compute them."""
    if n <= TORCH_QUANTILE_MAX_SIZE:
        f = np.float64 if float64 else np.float32
        rank = f(ratio) * f(n - 1)
        below = int(rank)
        weight = float(rank - f(below))
        above = int(math.ceil(rank))
    else:
        rank = ratio * (n - 1)
        below = int(rank)
        weight = rank - below
        above = int(math.ceil(rank))
    return below, min(above, n - 1), weight


def bracket_sample_ranks(below: int, above: int, n: int, size: int):
    """The sample ranks at the wide bracket's ends, as diffaccel/quantile.h's
    bracket_sample_ranks with kWideMargin."""
    p_below, p_above = below / n, (above + 1) / n
    sd = math.sqrt(size * max(p_below * (1 - p_below), p_above * (1 - p_above)))
    spread = selection.BRACKET_MARGIN_SDS * sd + selection.BRACKET_MARGIN_VALUES
    return math.floor(p_below * size - spread), math.ceil(p_above * size + spread)


# Programs of one selection pass, all samples together: about four per
# multiprocessor of an H100 / H200, so that a batch of one fills the GPU.
SELECT_PROGRAMS = 512


def _select_scales(x, m, coeffs, per_sample, ratio, max_value, style, from_ei):
    """One dynamic-threshold scale per sample: from selection.BRACKET_MIN elements
    a sample, the sampled bracket's ends and its pass (one read of the
    samples); then the radix select's digit passes (many programs per sample,
    their histograms added up atomically) over the bracket's candidates where
    they hold the ranks, else over the whole sample; the pass for the
    interpolation's second order statistic where it is another key, and the
    scale. A few small launches, none of which waits on the host."""
    batch = _batch(x)
    float64 = x.dtype == torch.float64
    scales = torch.empty(batch, dtype=_acc_torch(x), device=x.device)
    below, above, weight = quantile_rank(ratio, per_sample, float64)
    w_hi, w_lo = _split(weight)
    mv_hi, mv_lo = _split(max_value)
    key_bits, key = (63, tl.int64) if float64 else (31, tl.int32)
    max_key = (1 << key_bits) - 1  # the keys are bit patterns of magnitudes: the sign bit is 0
    passes = -(-key_bits // selection.DIGIT_BITS)
    block = selection.SELECT_BLOCK
    chunks = max(1, min(triton.cdiv(SELECT_PROGRAMS, batch), triton.cdiv(per_sample, block)))
    chunk = triton.cdiv(triton.cdiv(per_sample, chunks), block) * block
    chunks = triton.cdiv(per_sample, chunk)
    bins = 1 << selection.DIGIT_BITS
    key_dtype = torch.int64 if float64 else torch.int32
    inf_key = 0x7FF0000000000000 if float64 else 0x7F800000
    # Zeroed: the digit passes' histograms, then per sample the NaNs, the
    # bracket's candidates found, the keys below it, and its flag.
    counts = torch.zeros(passes * batch * bins + 4 * batch, dtype=torch.int32, device=x.device)
    hist = counts[: passes * batch * bins]
    nans, found, under, flags = counts[passes * batch * bins :].split(batch)
    above_keys = torch.full((batch,), max_key, dtype=key_dtype, device=x.device)
    c_stride = coeffs.shape[1] if coeffs.dim() == 2 else 0
    common = dict(FROM_EI=from_ei, ACC=_acc(x), KEY=key)
    bracket = per_sample >= selection.BRACKET_MIN
    capacity = -(-per_sample // 4)  # as the CUDA kernels': a quarter of the sample
    candidates = above_keys  # (not read without the bracket)
    if bracket:
        size = 1 << selection.BRACKET_SAMPLE_LOG2
        k_lo, k_hi = bracket_sample_ranks(below, above, per_sample, size)
        ends = torch.empty(2 * batch, dtype=key_dtype, device=x.device)
        candidates = torch.empty(batch * capacity, dtype=key_dtype, device=x.device)
        _kernel(selection.select_bracket_ends_kernel)[(batch,)](
            x, m, coeffs, c_stride, ends, flags, per_sample, k_lo, k_hi,
            INF_KEY=inf_key, LOG2=selection.BRACKET_SAMPLE_LOG2, num_warps=4, **common,
        )  # fmt: skip
        _kernel(selection.select_bracket_kernel)[(batch, chunks)](
            x, m, coeffs, c_stride, ends, flags, found, under, nans, candidates, per_sample, chunk, capacity,
            INF_KEY=inf_key, BLOCK=block, num_warps=8, **common,
        )  # fmt: skip
    digits = dict(KEY_BITS=key_bits, BLOCK=block, DIGIT_BITS=selection.DIGIT_BITS, BRACKET=bracket, **common)
    for pass_index in range(passes):
        _kernel(selection.select_histogram_kernel)[(batch, chunks)](
            x, m, coeffs, c_stride, hist, nans, found, under, flags, candidates, per_sample, chunk, below, above,
            batch, pass_index, capacity, INF_KEY=inf_key, num_warps=8, **digits,
        )  # fmt: skip
    _kernel(selection.select_above_kernel)[(batch, chunks)](
        x, m, coeffs, c_stride, hist, above_keys, found, under, flags, candidates, per_sample, chunk, below, above,
        batch, passes, capacity, MAX_KEY=max_key, num_warps=8, **digits,
    )  # fmt: skip
    _kernel(selection.select_scale_kernel)[(batch,)](
        hist, nans, above_keys, found, under, flags, scales, per_sample, below, above, batch, passes, capacity,
        w_hi, w_lo, mv_hi, mv_lo, BRACKET=bracket, DPM_SOLVER_STYLE=style == "dpm-solver", ACC=_acc(x), KEY=key,
        KEY_BITS=key_bits, DIGIT_BITS=selection.DIGIT_BITS, num_warps=1,
    )  # fmt: skip
    return scales


def ei_step(x, model_out, history, coeffs, noise, threshold_kind, ratio, max_value, style, x_next_out, d_out):
    op = "diffaccel.ei_step"
    validation.ei_step(x, model_out, history, coeffs, noise)
    validation.check_out_pair(op, ("x_next", "d"), (x_next_out, d_out), x)
    if threshold_kind is not None:
        validation.check_threshold_options(op, threshold_kind, ratio, max_value, style)
    n, per_sample = x.numel(), _per_sample(x)
    if n == 0:
        return
    xc, mc, cc = x.contiguous(), model_out.contiguous(), coeffs.contiguous()
    hc = [h.contiguous() for h in history]
    zc = noise.contiguous() if noise is not None else None
    x_next, d = _Output(x_next_out), _Output(d_out)
    mode, scales, clip = 0, xc, 0.0
    if threshold_kind == "clip":
        mode, clip = 1, max_value
    elif threshold_kind == "dynamic":
        mode = 2
        scales = _select_scales(xc, mc, cc, per_sample, ratio, max_value, style, True)
    clip_hi, clip_lo = _split(clip)
    slots = hc + [xc] * (4 - len(hc))
    _kernel(kernels.ei_step_kernel)[(triton.cdiv(n, kernels.BLOCK),)](
        xc,
        mc,
        *slots,
        zc if zc is not None else xc,
        cc,
        cc.shape[1] if cc.dim() == 2 else 0,
        scales,
        clip_hi,
        clip_lo,
        x_next.buffer,
        d.buffer,
        n,
        per_sample,
        K=len(hc),
        NOISE=zc is not None,
        THRESHOLD=mode,
        PER_SAMPLE=cc.dim() == 2 or mode == 2,
        ACC=_acc(x),
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    x_next.finish()
    d.finish()


def multistep_combine(tensors, coeffs, out):
    dtype = validation.multistep_combine(tensors, coeffs)
    validation.check_out("diffaccel.multistep_combine", "out", out, tensors[0], dtype=dtype)
    _combine(tensors, coeffs, (out,), dtype)


def multistep_combine_pair(tensors, coeffs, y0_out, y1_out):
    dtype = validation.multistep_combine_pair(tensors, coeffs)
    validation.check_out_pair("diffaccel.multistep_combine_pair", ("y0", "y1"), (y0_out, y1_out), tensors[0], dtype)
    _combine(tensors, coeffs, (y0_out, y1_out), dtype)


def _combine(tensors, coeffs, outs, dtype):
    """One pass writing outs[m] = sum_j coeffs[..., m, j] * tensors[j] (one
    output: coeffs [n] / [B, n]; two: [2, n] / [B, 2, n])."""
    first = tensors[0]
    n = first.numel()
    if n == 0:
        return
    tc = [t.contiguous() for t in tensors]
    cc = coeffs.contiguous()
    per_sample = cc.dim() == len(outs) + 1
    ys = [_Output(out) for out in outs]
    slots = tc + [tc[0]] * (8 - len(tc))
    _kernel(kernels.multistep_combine_kernel)[(triton.cdiv(n, kernels.BLOCK),)](
        *slots,
        cc,
        cc[0].numel() if per_sample else 0,
        ys[0].buffer,
        ys[-1].buffer,
        n,
        _per_sample(first),
        N=len(tc),
        M=len(ys),
        PER_SAMPLE=per_sample,
        ACC=tl.float64 if dtype == torch.float64 else tl.float32,
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    for y in ys:
        y.finish()


def threshold(x, kind, ratio, max_value, style, out):
    validation.threshold(x, kind, ratio, max_value, style)
    validation.check_out("diffaccel.threshold", "out", out, x)
    n, per_sample = x.numel(), _per_sample(x)
    if n == 0:
        return
    xc = x.contiguous()
    y = _Output(out)
    dynamic = kind == "dynamic"
    scales = _select_scales(xc, xc, xc, per_sample, ratio, max_value, style, False) if dynamic else xc
    clip_hi, clip_lo = _split(max_value)
    _kernel(kernels.threshold_kernel)[(triton.cdiv(n, kernels.BLOCK),)](
        xc,
        scales,
        clip_hi,
        clip_lo,
        y.buffer,
        n,
        per_sample,
        DYNAMIC=dynamic,
        ACC=_acc(x),
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    y.finish()


def philox_words(generator, device):
    """[seed_lo, seed_hi, offset_lo, offset_hi] of an in-kernel draw, consuming
    the generator as the cuda backend does (philox_cuda_state(4)), so both
    backends draw the same noise from the same generator state."""
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "diffaccel.langevin_correct: the triton backend cannot draw noise inside a CUDA graph "
                "capture; pass noise= or use the cuda backend"
            )
        gen = generator if generator is not None else torch.cuda.default_generators[device.index or 0]
        offset = gen.get_offset()
        gen.set_offset(offset + 4)
        seed = gen.initial_seed()
    else:
        # Under the interpreter (CPU tensors): a fresh stream drawn from the CPU generator.
        low, high = torch.randint(0, 1 << 32, (2,), generator=generator, dtype=torch.int64).tolist()
        seed, offset = low | (high << 32), 0
    return [seed & 0xFFFFFFFF, seed >> 32, offset & 0xFFFFFFFF, (offset >> 32) & 0xFFFFFFFF]


def langevin_correct(x, score, snr, alpha, noise, philox, reduction, x_new_out, x_mean_out):
    op = "diffaccel.langevin_correct"
    validation.langevin_correct(x, score, snr, alpha, noise, reduction)
    validation.check_out_pair(op, ("x_new", "x_mean"), (x_new_out, x_mean_out), x)
    n, batch, per_sample = x.numel(), _batch(x), _per_sample(x)
    if n == 0:
        return
    xc, sc = x.contiguous(), score.contiguous()
    zc = noise.contiguous() if noise is not None else None
    philox = [int(w) for w in philox] if zc is None else [0, 0, 0, 0]
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full((), float(alpha), dtype=torch.float64, device=x.device)
    alpha_c = alpha.contiguous() if alpha.is_floating_point() else alpha.to(torch.float64)
    chunks = -(-per_sample // kernels.NORM_CHUNK)
    partial = torch.empty(batch * chunks * 2, dtype=torch.float64, device=x.device)
    _kernel(kernels.langevin_norms_kernel)[(chunks, batch)](
        sc,
        zc if zc is not None else sc,
        partial,
        per_sample,
        chunks,
        *philox,
        HAS_NOISE=zc is not None,
        ACC=_acc(x),
        CHUNK=kernels.NORM_CHUNK,
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    step = torch.empty(batch, dtype=_acc_torch(x), device=x.device)
    noise_scale = torch.empty_like(step)
    snr_hi, snr_lo = _split(snr)
    _kernel(kernels.langevin_steps_kernel)[(1,)](
        partial,
        alpha_c,
        1 if alpha_c.dim() == 1 else 0,
        step,
        noise_scale,
        batch,
        chunks,
        snr_hi,
        snr_lo,
        PER_SAMPLE=reduction == "sample",
        BATCH_BLOCK=max(16, triton.next_power_of_2(batch)),
        num_warps=NUM_WARPS,
    )
    x_new, x_mean = _Output(x_new_out), _Output(x_mean_out)
    _kernel(kernels.langevin_update_kernel)[(triton.cdiv(n, kernels.BLOCK),)](
        xc,
        sc,
        zc if zc is not None else xc,
        step,
        noise_scale,
        x_new.buffer,
        x_mean.buffer,
        n,
        per_sample,
        *philox,
        HAS_NOISE=zc is not None,
        ACC=_acc(x),
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    x_new.finish()
    x_mean.finish()


def error_norm(x_high, x_low, x_prev, atol, rtol, out):
    """Two launches: per-chunk sums of squared scaled errors, then per-sample RMS."""
    batch, per_sample = _batch(x_high), _per_sample(x_high)
    if batch == 0:
        return
    hc, lc, pc = x_high.contiguous(), x_low.contiguous(), x_prev.contiguous()
    chunks = max(1, -(-per_sample // kernels.NORM_CHUNK))  # an empty sample: 0 / 0 = NaN
    partial = torch.empty(batch * chunks, dtype=torch.float64, device=x_high.device)
    atol_hi, atol_lo = _split(atol)
    rtol_hi, rtol_lo = _split(rtol)
    _kernel(kernels.error_norm_partials_kernel)[(chunks, batch)](
        hc,
        lc,
        pc,
        partial,
        per_sample,
        chunks,
        atol_hi,
        atol_lo,
        rtol_hi,
        rtol_lo,
        ACC=_acc(x_high),
        CHUNK=kernels.NORM_CHUNK,
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    _kernel(kernels.error_norm_finish_kernel)[(1,)](
        partial,
        out,
        batch,
        chunks,
        per_sample,
        BATCH_BLOCK=max(16, triton.next_power_of_2(batch)),
        num_warps=NUM_WARPS,
    )


def error_norm_backward(grad, error, x_high, x_low, x_prev, atol, rtol, grad_high, grad_low, grad_prev):
    """One elementwise launch; k = grad / (N E) per sample first (torch ops, as the C++ op)."""
    n, per_sample = x_high.numel(), _per_sample(x_high)
    if n == 0:
        return
    k = (grad.to(torch.float64) / (error.to(torch.float64) * per_sample)).to(_acc_torch(x_high)).contiguous()
    atol_hi, atol_lo = _split(atol)
    rtol_hi, rtol_lo = _split(rtol)
    _kernel(kernels.error_norm_backward_kernel)[(triton.cdiv(n, kernels.BLOCK),)](
        x_high.contiguous(),
        x_low.contiguous(),
        x_prev.contiguous(),
        k,
        grad_high,
        grad_low,
        grad_prev,
        n,
        per_sample,
        atol_hi,
        atol_lo,
        rtol_hi,
        rtol_lo,
        ACC=_acc(x_high),
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )


def threshold_backward(grad, x, scale, passed, dot):
    """Per (chunk, sample) programs: the passed gradient and the chunk sums of
    passed * x; each sample's chunks then added by torch (on the device)."""
    batch, per_sample = _batch(x), _per_sample(x)
    if batch == 0:
        return
    if per_sample == 0:
        dot.zero_()
        return
    chunks = -(-per_sample // kernels.NORM_CHUNK)
    partial = torch.empty(batch * chunks, dtype=torch.float64, device=x.device)
    _kernel(kernels.threshold_backward_partials_kernel)[(chunks, batch)](
        grad.contiguous(),
        x.contiguous(),
        scale.to(_acc_torch(x)).contiguous(),
        passed,
        partial,
        per_sample,
        chunks,
        ACC=_acc(x),
        CHUNK=kernels.NORM_CHUNK,
        BLOCK=kernels.BLOCK,
        num_warps=NUM_WARPS,
    )
    dot.copy_(partial.view(batch, chunks).sum(dim=1))
