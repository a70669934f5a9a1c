"""Gaussian data, whose ideal denoiser and probability-flow ODE solution are
known in closed form for any schedule: the oracle the solvers are tested on.

For x_0 ~ N(mean, diag(std^2)) and x_t = alpha_t x_0 + sigma_t eps, x_t is
Gaussian with per-dimension std s_t = sqrt(alpha_t^2 std^2 + sigma_t^2), the
ideal denoiser is E[x_0 | x_t] = mean + alpha_t std^2 / s_t^2 (x_t - alpha_t mean),
and the probability-flow ODE keeps each dimension's z-score
(x_t - alpha_t mean) / s_t constant, so it maps x_t to x_u exactly.
"""

from __future__ import annotations

import torch

from diffaccel.solvers.plan import PREDICTION_TYPES


class GaussianData:
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)

    def _marginal(self, schedule, t, like):
        t = torch.as_tensor(t, dtype=torch.float64)
        shape = (-1,) + (1,) * (like.dim() - 1) if t.dim() == 1 else ()
        alpha = schedule.alpha(t).reshape(shape).to(like.device)
        sigma = schedule.sigma(t).reshape(shape).to(like.device)
        std_t = torch.sqrt(alpha**2 * self.std**2 + sigma**2)
        return alpha, sigma, std_t

    def sample_marginal(self, schedule, t: float, batch: int, generator=None) -> torch.Tensor:
        """Draws x_t for a batch (float64)."""
        alpha, _, std_t = self._marginal(schedule, t, self.mean.unsqueeze(0))
        z = torch.randn((batch,) + tuple(self.mean.shape), generator=generator, dtype=torch.float64)
        return alpha * self.mean + std_t * z

    def denoiser(self, schedule, prediction_type: str = "epsilon"):
        """model(x, t) returning the ideal prediction of the given type; t has shape [B]."""
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")

        def model(x, t):
            xd = x.to(torch.float64)
            alpha, sigma, std_t = self._marginal(schedule, t.to(torch.float64).cpu(), xd)
            x0 = self.mean + alpha * self.std**2 / std_t**2 * (xd - alpha * self.mean)
            eps = (xd - alpha * x0) / sigma
            out = {
                "sample": x0,
                "epsilon": eps,
                "v_prediction": alpha * eps - sigma * x0,
                "flow": eps - x0,
            }[prediction_type]
            return out.to(x.dtype)

        return model

    def pf_ode_solution(self, schedule, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """The exact probability-flow ODE map from time t_from to t_to."""
        a0, _, s0 = self._marginal(schedule, t_from, x)
        a1, _, s1 = self._marginal(schedule, t_to, x)
        return a1 * self.mean + s1 / s0 * (x.to(torch.float64) - a0 * self.mean)
