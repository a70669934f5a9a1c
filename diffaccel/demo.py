"""``diffaccel demo``: what diffaccel does, on the analytic Gaussian oracle.

For Gaussian data the ideal denoiser and the exact probability-flow ODE
solution are known in closed form (diffaccel.models.analytic), so every
sampler's error is measured, not guessed. The demo runs the main samplers at
several step counts on a batch of latents drawn at t = 1, and prints and writes:

- a table: sampler, model calls, relative error against the exact solution,
  and the time of the sampling loop (with a zero-cost model, so the time is
  the sampler's own) on the reference ops and on the fused ops;
- error against model calls on log-log axes (matplotlib, if installed);
- for the stochastic samplers, on a Gaussian mixture, the error of the
  sample's mean and covariance against the exact marginal;
- images: 64 digits per sampler and step count from the small pretrained
  denoiser shipped in the package (diffaccel.models.digits), from one noise;
- an index.md in the output folder linking all of it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Dict, List, Tuple

import torch

from diffaccel import ops, schedules
from diffaccel.models import digits
from diffaccel.models.analytic import GaussianData, GaussianMixture
from diffaccel.sampling import run_plan, sample
from diffaccel.solvers import plan

ODE_SAMPLERS = ["ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "lms"]
SDE_SAMPLERS = ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "pc"]
T_END = 1e-3


def _timed(fn, repeats: int, device: str) -> float:
    """Median seconds of fn() over repeats runs (after a warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ode_table(device: str, steps_list: List[int], latent_shape: Tuple[int, ...], repeats: int) -> List[Dict]:
    """Every ODE sampler at every step count: model calls, error, loop time (reference and fused ops)."""
    schedule = schedules.VPLinear()
    dims = math.prod(latent_shape)
    data = GaussianData(torch.linspace(-1.0, 1.0, dims).reshape(latent_shape),
                        torch.linspace(0.2, 1.5, dims).reshape(latent_shape))
    data.mean, data.std = data.mean.to(device), data.std.to(device)
    x = data.sample_marginal(schedule, 1.0, 16, torch.Generator(device).manual_seed(0)).float()
    exact = data.pf_ode_solution(schedule, x, 1.0, T_END)
    model = data.denoiser(schedule)
    rows = []
    for sampler in ODE_SAMPLERS:
        for steps in steps_list:
            p = plan(sampler, steps=steps, schedule=schedule, t_end=T_END)
            result = run_plan(p, model, x)
            error = float((result.double() - exact).norm() / exact.norm())
            # The loop's own time: the ideal model is replaced by a zero-cost one.
            eps = torch.randn_like(x)
            zero_cost = lambda x, t: eps  # noqa: E731
            fused = _timed(lambda: run_plan(p, zero_cost, x), repeats, device)
            with ops.backend("reference"):
                reference = _timed(lambda: run_plan(p, zero_cost, x), repeats, device)
            rows.append(dict(sampler=sampler, steps=steps, model_calls=len(p.rows), error=error,
                             reference_ms=reference * 1e3, fused_ms=fused * 1e3))
    return rows


def sde_table(device: str, steps: int, batch: int) -> List[Dict]:
    """Stochastic samplers on a 2-D Gaussian mixture: error of the sample's mean and covariance."""
    schedule = schedules.VPLinear()
    mixture = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.3, 0.2], [0.2, 0.4]])
    mixture.weights, mixture.means, mixture.stds = (v.to(device) for v in (mixture.weights, mixture.means, mixture.stds))
    mean, cov = mixture.marginal_moments(schedule, T_END)
    x = mixture.sample_marginal(schedule, 1.0, batch, torch.Generator(device).manual_seed(1)).float()
    rows = []
    for sampler in SDE_SAMPLERS:
        p = plan(sampler, steps=steps, schedule=schedule, t_end=T_END)
        y = run_plan(p, mixture.denoiser(schedule), x, generator=torch.Generator(device).manual_seed(2)).double()
        sample_mean = y.mean(0)
        sample_cov = torch.cov(y.T)
        rows.append(dict(sampler=sampler, steps=steps, model_calls=len(p.rows),
                         mean_error=float((sample_mean - mean).norm()), cov_error=float((sample_cov - cov).norm())))
    return rows


def _plot(rows: List[Dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for sampler in ODE_SAMPLERS:
        points = [(r["model_calls"], r["error"]) for r in rows if r["sampler"] == sampler]
        ax.loglog(*zip(*points), marker="o", label=sampler)
    ax.set_xlabel("model calls")
    ax.set_ylabel("relative error vs the exact PF-ODE solution")
    ax.set_title("ODE samplers on Gaussian data (VP linear schedule)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


IMAGE_SAMPLERS = ["ddim", "dpmpp_2m", "unipc_bh2", "euler_ancestral"]


def digit_grids(out_dir: str, device: str, steps_list: List[int], samplers: List[str]) -> List[Tuple[str, int, str]]:
    """A grid of 64 generated digits per sampler and step count, from one noise; [(sampler, steps, file)]."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    model = digits.load_pretrained(device)
    noise = torch.randn((64,) + digits.IMAGE_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    written = []
    for sampler in samplers:
        for steps in steps_list:
            with torch.no_grad():
                images = sample(model, noise, sampler=sampler, steps=steps, schedule=digits.schedule(),
                                generator=torch.Generator(device).manual_seed(1)).clamp(-1, 1).cpu()
            fig, axes = plt.subplots(8, 8, figsize=(3.2, 3.2))
            for ax, image in zip(axes.flat, images):
                ax.imshow(image[0], cmap="gray_r", vmin=-1, vmax=1)
                ax.axis("off")
            fig.suptitle(f"{sampler}, {steps} steps", fontsize=9)
            name = f"digits_{sampler}_{steps}.png"
            fig.savefig(os.path.join(out_dir, name), dpi=90)
            plt.close(fig)
            written.append((sampler, steps, name))
    return written


def run(out_dir: str = "demo-out", device: str = "cpu", quick: bool = False, print_fn=print) -> str:
    """Runs the demo, writes out_dir/index.md (and the plot); returns the index path."""
    os.makedirs(out_dir, exist_ok=True)
    steps_list = [10] if quick else [5, 10, 20, 40]
    latent_shape = (4, 16, 16) if quick else (4, 32, 32)
    print_fn(f"diffaccel demo on {device}: ODE samplers on Gaussian data, latents of shape {latent_shape}, batch 16")
    rows = ode_table(device, steps_list, latent_shape, repeats=2 if quick else 5)
    lines = ["| sampler | steps | model calls | relative error | loop ms, reference ops | loop ms, fused ops | speedup |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['model_calls']} | {r['error']:.2e} | "
                     f"{r['reference_ms']:.2f} | {r['fused_ms']:.2f} | {r['reference_ms'] / r['fused_ms']:.1f}x |")
    table = "\n".join(lines)
    print_fn(table)
    sde = sde_table(device, steps=10 if quick else 50, batch=2000 if quick else 20000)
    sde_lines = ["| sampler | steps | model calls | mean error | covariance error |", "|---|---:|---:|---:|---:|"]
    for r in sde:
        sde_lines.append(f"| {r['sampler']} | {r['steps']} | {r['model_calls']} | {r['mean_error']:.3f} | "
                         f"{r['cov_error']:.3f} |")
    sde_table_md = "\n".join(sde_lines)
    print_fn("\nStochastic samplers on a 2-D Gaussian mixture (moments of the sample against the exact ones):")
    print_fn(sde_table_md)
    plotted = _plot(rows, os.path.join(out_dir, "error_vs_model_calls.png")) if not quick or len(steps_list) > 1 else False
    grids = digit_grids(out_dir, device, [10] if quick else [10, 25], IMAGE_SAMPLERS[:2] if quick else IMAGE_SAMPLERS)
    index = os.path.join(out_dir, "index.md")
    with open(index, "w") as f:
        f.write("# diffaccel demo\n\n")
        f.write(f"Device: {device}. Exact oracle: Gaussian data, VP linear schedule, t from 1 to {T_END}; "
                "errors are ||x - exact|| / ||exact|| at the end of sampling. Loop times use a zero-cost model, "
                "so they are the sampler's own per-loop cost.\n\n")
        f.write("## ODE samplers\n\n" + table + "\n\n")
        if plotted:
            f.write("![error against model calls](error_vs_model_calls.png)\n\n")
        elif not quick:
            f.write("(Install matplotlib for the error plot.)\n\n")
        f.write("## Stochastic samplers\n\n" + sde_table_md + "\n")
        if grids:
            f.write("\n## Digits from the pretrained denoiser\n\n"
                    "diffaccel.models.digits (an MLP trained on scikit-learn's 8x8 digits by "
                    "scripts/train_digits_denoiser.py); the same noise for every grid.\n\n")
            for sampler, steps, name in grids:
                f.write(f"![{sampler}, {steps} steps]({name}) ")
            f.write("\n")
    extras = (["error_vs_model_calls.png"] if plotted else []) + [name for _, _, name in grids]
    print_fn(f"\nwrote {index}" + (f" and {len(extras)} images" if extras else ""))
    return index
