"""ComfyUI's uni_pc and uni_pc_bh2 (comfy/extra_samplers/uni_pc.py) on the fused
ops: UniPC multistep (Zhao et al. 2023) in data prediction with the B(h) = h
(bh1) or e^h - 1 (bh2) variant, order up to 3 with lower orders at the end, on
ComfyUI's variance-preserving view of the sigmas (alpha = 1 / sqrt(1 +
sigma^2)). The state is kept as ComfyUI keeps it (scaled by alpha); the
predictor writes the model's input (unscaled) directly and the corrector the
next state: two fused ops per model call, no other pass."""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from diffaccel.integrations.comfyui.common import ComfyLoop
from diffaccel.integrations.k_diffusion.common import _sampler

# ComfyUI's stand-in for a final sigma of 0 (written into the caller's sigmas, as ComfyUI does).
_LAST_SIGMA = 0.001


def _alpha(sigma: float) -> float:
    return 1.0 / np.sqrt(1.0 + sigma * sigma)


def _vp_sigma(sigma: float) -> float:
    return sigma / np.sqrt(1.0 + sigma * sigma)


def _weights(lam_prev: List[float], lam_t: float, order: int, variant: str, predictor: bool):
    """UniPC's rks, rhos and h terms for a step from the newest of lam_prev (newest
    last) to lam_t: (h_phi_1, B_h, r_k for k = 1 .. order-1, rhos)."""
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
            rhos = list(np.linalg.solve(matrix[:-1, :-1], np.array(b[:-1])))
    else:
        rhos = [0.5] if order == 1 else list(np.linalg.solve(matrix, np.array(b)))
    return h_phi_1, b_h, rks[:-1], rhos


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
    if steps < 1:
        return x / torch.exp(0.5 * torch.log(1 / (sigmas[-1] * sigmas[-1] + 1)))  # ComfyUI's marginal_alpha

    def report(i, x_vp, denoised):
        if callback is not None:
            callback({"x": x_vp, "i": i, "denoised": denoised})

    def update(x, models, t_index_prev, k, step_order, corrector: bool, final: bool):
        """One UniPC update of the state x to sigma t[k]: (new state or result, model at the prediction)."""
        lam_prev = [lam[j] for j in t_index_prev[-step_order:]]
        h_phi_1, b_h, rks, rhos_p = _weights(lam_prev, lam[k], step_order, variant, predictor=True)
        ratio = _vp_sigma(t[k]) / _vp_sigma(t[t_index_prev[-1]])
        alpha_t = _alpha(t[k])
        m0, older = models[-1], [models[-(j + 1)] for j in range(1, step_order)]
        # The prediction x_t = ratio x - alpha_t (h_phi_1 m0 + B_h sum_j rho_j (m_j - m0) / r_j), written
        # divided by alpha_t: the model's input (or, at the end, the result ComfyUI divides out).
        scale = 1.0 if (final and callback is not None) else 1.0 / alpha_t
        extra = [b_h * rho / r for rho, r in zip(rhos_p, rks)]
        coefficients = [-(h_phi_1 - sum(extra)) * alpha_t * scale, *(-e * alpha_t * scale for e in extra)]
        x_t, _ = loop.step(x, m0, older[: len(extra)], ratio * scale, coefficients)
        if not corrector:
            return x_t, None
        model_t = loop.denoise_at(x_t, k)
        _, _, _, rhos_c = _weights(lam_prev, lam[k], step_order, variant, predictor=False)
        extra = [b_h * rho / r for rho, r in zip(rhos_c[:-1], rks)]
        last = b_h * rhos_c[-1]
        coefficients = [-last * alpha_t, -(h_phi_1 - sum(extra) - last) * alpha_t, *(-e * alpha_t for e in extra)]
        x_c, _ = loop.step(x, model_t, [m0, *older[: len(extra)]], ratio, coefficients)
        return x_c, model_t

    models = [loop.denoise_at(noise, 0)]
    indices = [0]
    report(0, x, models[-1])
    for step_index in range(1, steps):
        if step_index < order:
            x, model_x = update(x, models, indices, step_index, step_index, True, False)
            models.append(model_x)
            indices.append(step_index)
        else:
            x, model_x = update(x, models, indices, step_index, min(order, steps + 1 - step_index), True, False)
            models, indices = (models + [model_x])[-order:], (indices + [step_index])[-order:]
            if step_index == steps - 1:
                break
        report(step_index, x, models[-1])
    if steps == 1:  # ComfyUI's order is then 0: no update, the state divided by the last alpha
        return x / torch.exp(0.5 * torch.log(1 / (sigmas[-1] * sigmas[-1] + 1)))
    # The last update, to t[steps]: the predictor alone, first order.
    result, _ = update(x, models, indices, steps, min(order, 1), False, True)
    if callback is None:
        return result  # already divided by alpha_t
    report(steps - 1, result, models[-1])
    return result / torch.exp(0.5 * torch.log(1 / (sigmas[-1] * sigmas[-1] + 1)))


@_sampler
def sample_unipc_bh2(model, noise, sigmas, extra_args=None, callback=None, disable=False):
    """UniPC with B(h) = e^h - 1."""
    return sample_unipc(model, noise, sigmas, extra_args, callback, disable, variant="bh2")
