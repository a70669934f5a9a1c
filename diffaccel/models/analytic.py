"""Gaussian and Gaussian-mixture data, whose ideal denoisers are known in
closed form for any schedule (and, for Gaussian data, the probability-flow
ODE solution too): the oracle the solvers are tested on.

For x_0 ~ N(mean, diag(std^2)) and x_t = alpha_t x_0 + sigma_t eps, x_t is
Gaussian with per-dimension std s_t = sqrt(alpha_t^2 std^2 + sigma_t^2), the
ideal denoiser is E[x_0 | x_t] = mean + alpha_t std^2 / s_t^2 (x_t - alpha_t mean),
and the probability-flow ODE keeps each dimension's z-score
(x_t - alpha_t mean) / s_t constant, so it maps x_t to x_u exactly.
"""

from __future__ import annotations

import torch

from diffaccel.noise import standard_normal
from diffaccel.solvers.plan import PREDICTION_TYPES


def _per_sample(schedule, t, like):
    """alpha_t, sigma_t (float64) shaped to broadcast over a [B, ...] tensor."""
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    shape = (-1,) + (1,) * (like.dim() - 1) if t.dim() == 1 else ()
    return schedule.alpha(t).reshape(shape).to(like.device), schedule.sigma(t).reshape(shape).to(like.device)


def ideal_model(schedule, prediction_type: str, x0_hat):
    """Wraps a posterior mean x0_hat(x, alpha, sigma) as model(x, t) returning
    the prediction type the samplers are told about."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")

    def model(x, t):
        xd = x.to(torch.float64)
        alpha, sigma = _per_sample(schedule, t, xd)
        x0 = x0_hat(xd, alpha, sigma)
        eps = (xd - alpha * x0) / sigma
        out = {"sample": x0, "epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0}[
            prediction_type
        ]
        return out.to(x.dtype)

    return model


class GaussianData:
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)

    def _marginal(self, schedule, t, like):
        alpha, sigma = _per_sample(schedule, t, like)
        return alpha, sigma, torch.sqrt(alpha**2 * self.std**2 + sigma**2)

    def sample_marginal(self, schedule, t: float, batch: int, generator=None) -> torch.Tensor:
        """Draws x_t for a batch (float64)."""
        alpha, _, std_t = self._marginal(schedule, t, self.mean.unsqueeze(0))
        z = standard_normal(
            (batch,) + tuple(self.mean.shape), generator=generator, dtype=torch.float64, device=self.mean.device
        )
        return alpha * self.mean + std_t * z

    def denoiser(self, schedule, prediction_type: str = "epsilon"):
        """model(x, t) returning the ideal prediction of the given type; t has shape [B]."""

        def x0_hat(xd, alpha, sigma):
            std_t = torch.sqrt(alpha**2 * self.std**2 + sigma**2)
            return self.mean + alpha * self.std**2 / std_t**2 * (xd - alpha * self.mean)

        return ideal_model(schedule, prediction_type, x0_hat)

    def pf_ode_solution(self, schedule, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """The exact probability-flow ODE map from time t_from to t_to."""
        a0, _, s0 = self._marginal(schedule, t_from, x)
        a1, _, s1 = self._marginal(schedule, t_to, x)
        return a1 * self.mean + s1 / s0 * (x.to(torch.float64) - a0 * self.mean)


class GaussianMixture:
    """x_0 ~ sum_k weights[k] N(means[k], diag(stds[k]^2)) over D dimensions."""

    def __init__(self, weights, means, stds):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, D]
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # [K, D]

    def marginal_moments(self, schedule, t: float):
        """Mean [D] and covariance [D, D] of x_t."""
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        means = alpha * self.means
        mean = self.weights @ means
        centered = means - mean
        cov = torch.diag(self.weights @ (alpha**2 * self.stds**2 + sigma**2)) + centered.T @ (
            self.weights[:, None] * centered
        )
        return mean, cov

    def sample_marginal(self, schedule, t: float, batch: int, generator=None) -> torch.Tensor:
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        # Drawn on the generator's device (a CPU generator may feed CUDA data).
        weights = self.weights.to(generator.device) if generator is not None else self.weights
        k = torch.multinomial(weights, batch, replacement=True, generator=generator).to(self.means.device)
        shape = (batch, self.means.shape[1])
        z0 = standard_normal(shape, generator=generator, dtype=torch.float64, device=self.means.device)
        z = standard_normal(shape, generator=generator, dtype=torch.float64, device=self.means.device)
        return alpha * (self.means[k] + self.stds[k] * z0) + sigma * z

    def denoiser(self, schedule, prediction_type: str = "epsilon"):
        """The ideal model for data of shape [B, D]."""

        def x0_hat(xd, alpha, sigma):
            var_t = alpha[..., None] ** 2 * self.stds**2 + sigma[..., None] ** 2  # [B, K, D]
            diff = xd[:, None, :] - alpha[..., None] * self.means
            log_p = torch.log(self.weights) - 0.5 * (diff**2 / var_t + torch.log(var_t)).sum(-1)
            resp = torch.softmax(log_p, dim=1)  # p(k | x_t)
            per_k = self.means + alpha[..., None] * self.stds**2 / var_t * diff
            return (resp[..., None] * per_k).sum(1)

        return ideal_model(schedule, prediction_type, x0_hat)
