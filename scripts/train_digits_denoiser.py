"""Trains diffaccel/models/digits_denoiser.pt, the demo's pretrained denoiser.

    pip install scikit-learn
    python scripts/train_digits_denoiser.py      # about a minute on 2 CPU cores

Data: scikit-learn's 8x8 handwritten digits (1797 images, bundled with the
package), scaled from [0, 16] to [-1, 1]. Objective: the standard epsilon
prediction loss under diffusers' linear VP schedule, uniform timesteps.
Seeded and single-threaded, so the weights are the same on every run of the
same torch version."""

import torch
from sklearn.datasets import load_digits

from diffaccel.models.digits import WEIGHTS, DigitsDenoiser, schedule

STEPS = 8000
BATCH = 512


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = torch.tensor(load_digits().data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    alphas_cumprod = schedule().alphas_cumprod.float()
    model = DigitsDenoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    for step in range(STEPS):
        x0 = data[torch.randint(0, len(data), (BATCH,))]
        t = torch.randint(0, len(alphas_cumprod), (BATCH,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(model(xt, t), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        if step % 1000 == 0 or step == STEPS - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}")
    torch.save(model.state_dict(), WEIGHTS)
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
