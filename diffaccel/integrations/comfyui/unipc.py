"""ComfyUI's uni_pc and uni_pc_bh2 (comfy/extra_samplers/uni_pc.py) on the fused
ops: UniPC multistep (Zhao et al. 2023) in data prediction with the B(h) = h
(bh1) or e^h - 1 (bh2) variant, order up to 3 with lower orders at the end, on
ComfyUI's variance-preserving view of the sigmas (alpha = 1 / sqrt(1 +
sigma^2)). The state is kept as ComfyUI keeps it (scaled by alpha). One fused
op per model call: after the model's call at a step's prediction, one
ops.multistep_combine_pair pass writes the corrected state (the callback's x
and the next step's start) and the next step's prediction, unscaled (the
model's next input): the prediction's weight on the corrected state is folded
into its weights on the tensors that state is made of, so both come from the
same reads."""

from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch

from diffaccel import ops
from diffaccel.integrations import float64_if_any
from diffaccel.integrations.comfyui.common import ComfyLoop, solve
from diffaccel.integrations.k_diffusion.common import _combine, _merged
from diffaccel.integrations.k_diffusion import common as k_common
from diffaccel.integrations.k_diffusion.common import _sampler

# ComfyUI's stand-in for a final sigma of 0 (written into the caller's sigmas, as ComfyUI does).
_LAST_SIGMA = 0.001


def _alpha(sigma: float) -> float:
    return 1.0 / np.sqrt(1.0 + sigma * sigma)


def _vp_sigma(sigma: float) -> float:
    return sigma / np.sqrt(1.0 + sigma * sigma)


@functools.lru_cache(maxsize=1024)
def _weights(lam_prev: Tuple[float, ...], lam_t: float, order: int, variant: str, predictor: bool):
    """UniPC's rks, rhos and h terms for a step from the newest of lam_prev (newest
    last) to lam_t: (h_phi_1, B_h, r_k for k = 1 .. order-1, rhos). Kept per
    arguments: a schedule run again (the next image) solves nothing."""
    h = lam_t - lam_prev[-1]
    rks = [(lam_prev[-(k + 1)] - lam_prev[-1]) / h for k in range(1, order)] + [1.0]
    hh = -h
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else np.expm1(hh)
    factorial, rows, b = 1, [], []
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    matrix = np.array(rows, dtype=np.float64)
    if predictor:
        if order < 2:
            rhos = []
        elif order == 2:
            rhos = [0.5]
        else:
            rhos = list(solve(matrix[:-1, :-1], np.array(b[:-1])))
    else:
        rhos = [0.5] if order == 1 else list(solve(matrix, np.array(b)))
    return h_phi_1, b_h, tuple(rks[:-1]), tuple(rhos)


# Where the corrected state stands in a prediction's terms before it is made
# (the prediction is then folded into the same pass as the corrected state).
_STATE = object()


def _corrected_and_predicted(corrected, predicted, direct):
    """(x_c, x_t) in one fused pass: x_c = sum of the corrected terms, x_t = the
    predicted terms with _STATE standing for x_c (its terms substituted).
    direct: the loop's ops.loop_entry("multistep_combine_pair"), taken where
    every tensor is a plain tensor of one dtype."""
    folded = []
    for tensor, weight in predicted:
        folded += [(t, weight * w) for t, w in corrected] if tensor is _STATE else [(tensor, weight)]
    # Both rows over the same tensors, in the same order: each list names every tensor once.
    tensors, row0 = _merged(corrected + [(t, 0.0) for t, _ in folded])
    _, row1 = _merged([(t, 0.0) for t, _ in corrected] + folded)
    return k_common.combine_pair(tensors, [row0, row1], direct)


@_sampler
def sample_unipc(model, noise, sigmas, extra_args=None, callback=None, disable=False, variant="bh1"):
    """UniPC (bh1 by default) as ComfyUI runs it."""
    if variant not in ("bh1", "bh2"):
        raise NotImplementedError()
    loop = ComfyLoop(model, noise, sigmas, extra_args, None, disable)
    if loop.values[-1] == 0:
        # ComfyUI writes its stand-in into the caller's sigmas (a view of them), and KSampler
        # then reads that last sigma back: kept, so KSampler's result is ComfyUI's.
        sigmas[-1] = _LAST_SIGMA
        loop.use_sigmas(sigmas)
        loop.values[-1] = np.float64(torch.tensor(_LAST_SIGMA, dtype=sigmas.dtype).item())
    t = loop.values
    lam = [-np.log(v) for v in t]
    steps = len(t) - 1
    order = min(3, len(t) - 2)
    x = noise / torch.sqrt(1.0 + sigmas[0] ** 2.0)

    def report(i, x_vp, denoised):
        if callback is not None:
            callback({"x": x_vp, "i": i, "denoised": denoised})

    def unscaled(x_vp):
        return x_vp / torch.exp(0.5 * torch.log(1 / (sigmas[-1] * sigmas[-1] + 1)))  # ComfyUI's marginal_alpha

    if steps < 1:
        return unscaled(x)
    models, indices = [loop.denoise_at(noise, 0)], [0]
    report(0, x, models[-1])
    if steps == 1:  # ComfyUI's order is then 0: no update
        return unscaled(x)

    def step_order(k):
        """The order of the update to t[k]: lower at the start and the end, 1 for the last."""
        if k == steps:
            return 1
        return k if k < order else min(order, steps + 1 - k)

    def weights(models, t_index_prev, k, predictor: bool):
        """(ratio, alpha_t, h_phi_1, B(h) rho_j / r_j for the older models, B(h) rho_last, older models)."""
        lam_prev = tuple(lam[j] for j in t_index_prev[-step_order(k) :])
        h_phi_1, b_h, rks, rhos = _weights(lam_prev, lam[k], step_order(k), variant, predictor)
        ratio = _vp_sigma(t[k]) / _vp_sigma(t[t_index_prev[-1]])
        extra = [b_h * rho / r for rho, r in zip(rhos, rks)]
        older = [models[-(j + 1)] for j in range(1, len(extra) + 1)]
        return ratio, _alpha(t[k]), h_phi_1, extra, (0.0 if predictor else b_h * rhos[-1]), older

    def predicted(state, models, t_index_prev, k):
        """The terms of the prediction at t[k], ratio x - alpha_t (h_phi_1 m0 + B_h sum_j rho_j
        (m_j - m0) / r_j), divided by alpha_t: the model's input, or at the end the result
        (which ComfyUI divides by alpha_t after reporting it)."""
        ratio, alpha_t, h_phi_1, extra, _, older = weights(models, t_index_prev, k, predictor=True)
        scale = 1.0 if (k == steps and callback is not None) else 1.0 / alpha_t
        return [
            (state, ratio * scale),
            (models[-1], -(h_phi_1 - sum(extra)) * alpha_t * scale),
            *((h, -e * alpha_t * scale) for h, e in zip(older, extra)),
        ]

    def corrected(state, model_t, models, t_index_prev, k):
        """The terms of the corrected state at t[k] from the model's output there."""
        ratio, alpha_t, h_phi_1, extra, last, older = weights(models, t_index_prev, k, predictor=False)
        return [
            (state, ratio),
            (model_t, -last * alpha_t),
            (models[-1], -(h_phi_1 - sum(extra) - last) * alpha_t),
            *((h, -e * alpha_t) for h, e in zip(older, extra)),
        ]

    first = predicted(x, models, indices, 1)
    x_t = _combine(float64_if_any([t for t, _ in first]), [w for _, w in first])
    pair = ops.loop_entry("multistep_combine_pair", x_t)
    # Each step: the model at the prediction, then one pass that makes the corrected state
    # (what the callback sees and the next step starts from) and the next prediction.
    for k in range(1, steps):
        model_t = loop.denoise_at(x_t, k)
        correction = corrected(x, model_t, models, indices, k)
        models, indices = (models + [model_t])[-order:], (indices + [k])[-order:]
        x, x_t = _corrected_and_predicted(correction, predicted(_STATE, models, indices, k + 1), pair)
        if k < steps - 1:
            report(k, x, models[-1])
    # x_t is now the last update, to t[steps]: the predictor alone, first order.
    if callback is None:
        return x_t  # already divided by alpha_t
    report(steps - 1, x_t, models[-1])
    return unscaled(x_t)


@_sampler
def sample_unipc_bh2(model, noise, sigmas, extra_args=None, callback=None, disable=False):
    """UniPC with B(h) = e^h - 1."""
    return sample_unipc(model, noise, sigmas, extra_args, callback, disable, variant="bh2")
