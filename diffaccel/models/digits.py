"""A small pretrained denoiser shipped with the package, for the demo's images:
an MLP that predicts the noise (epsilon) of 8x8 handwritten digits (scikit-learn's
digits data set, scaled to [-1, 1]) under diffusers' linear VP schedule
(1000 training timesteps, betas 1e-4 to 0.02). scripts/train_digits_denoiser.py
trains it reproducibly; the weights (digits_denoiser.pt, about 0.5 MB) are in
the package, so using it needs neither scikit-learn nor a download."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from diffaccel import schedules

WEIGHTS = os.path.join(os.path.dirname(__file__), "digits_denoiser.pt")
IMAGE_SHAPE = (1, 8, 8)


def schedule() -> schedules.VPDiscrete:
    """The schedule the denoiser was trained with."""
    return schedules.VPDiscrete.from_diffusers("linear")


class DigitsDenoiser(nn.Module):
    """epsilon(x_t, t) for x_t of shape [B, 1, 8, 8] and t in [0, 999], shape [B]."""

    def __init__(self, hidden: int = 256, time_features: int = 32):
        super().__init__()
        self.time_features = time_features
        self.net = nn.Sequential(
            nn.Linear(64 + time_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 64),
        )

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_features // 2
        frequencies = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        features = torch.cat(
            [x.reshape(x.shape[0], 64).float(), self.time_embedding(t.reshape(-1).expand(x.shape[0]))], 1
        )
        return self.net(features).reshape(x.shape).to(x.dtype)


def load_pretrained(device="cpu") -> DigitsDenoiser:
    model = DigitsDenoiser()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval()
