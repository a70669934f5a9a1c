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
from diffaccel.graph import capture_for_timing
from diffaccel.models import digits
from diffaccel.models.analytic import GaussianData, GaussianMixture
from diffaccel.noise import standard_normal
from diffaccel.sampling import run_plan, sample
from diffaccel.solvers import plan

ODE_SAMPLERS = ["ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "lms"]
SDE_SAMPLERS = ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "pc"]
T_END = 1e-3


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _progress(iterable, description: str):
    """A tqdm bar over the long parts, when tqdm is installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=description, leave=False)


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
    data = GaussianData(
        torch.linspace(-1.0, 1.0, dims).reshape(latent_shape), torch.linspace(0.2, 1.5, dims).reshape(latent_shape)
    )
    data.mean, data.std = data.mean.to(device), data.std.to(device)
    x = data.sample_marginal(schedule, 1.0, 16, torch.Generator(device).manual_seed(0)).float()
    exact = data.pf_ode_solution(schedule, x, 1.0, T_END)
    model = data.denoiser(schedule)
    rows = []
    eps = torch.randn_like(x)
    zero_cost = lambda x, t: eps  # noqa: E731  (the loop's own time: the ideal model replaced by a zero-cost one)
    for sampler, steps in _progress([(s, n) for s in ODE_SAMPLERS for n in steps_list], "ODE samplers"):
        p = plan(sampler, steps=steps, schedule=schedule, t_end=T_END)
        result = run_plan(p, model, x)
        error = float((result.double() - exact).norm() / exact.norm())
        fused = _timed(lambda: run_plan(p, zero_cost, x), repeats, device)
        with ops.backend("reference"):
            reference = _timed(lambda: run_plan(p, zero_cost, x), repeats, device)
        row = dict(
            sampler=sampler,
            steps=steps,
            model_calls=len(p.rows),
            error=error,
            reference_ms=reference * 1e3,
            fused_ms=fused * 1e3,
        )
        if torch.device(device).type == "cuda":  # the same loop as one CUDA graph
            graphed = capture_for_timing(zero_cost, x, sampler=sampler, steps=steps, schedule=schedule, t_end=T_END)
            out = torch.empty_like(x)
            row["graphed_ms"] = _timed(lambda: graphed(x, out=out), repeats, device) * 1e3 if graphed else math.nan
        rows.append(row)
    return rows


def _mixture(device: str) -> GaussianMixture:
    """The demo's 2-D data: two Gaussian clusters, exact denoiser and marginal moments known."""
    mixture = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.3, 0.2], [0.2, 0.4]])
    mixture.weights, mixture.means, mixture.stds = (
        v.to(device) for v in (mixture.weights, mixture.means, mixture.stds)
    )
    return mixture


def sde_table(device: str, steps: int, batch: int, samplers: List[str] = SDE_SAMPLERS) -> List[Dict]:
    """Stochastic samplers on a 2-D Gaussian mixture: error of the sample's mean and covariance."""
    schedule = schedules.VPLinear()
    mixture = _mixture(device)
    mean, cov = mixture.marginal_moments(schedule, T_END)
    x = mixture.sample_marginal(schedule, 1.0, batch, torch.Generator(device).manual_seed(1)).float()
    rows = []
    for sampler in samplers:
        p = plan(sampler, steps=steps, schedule=schedule, t_end=T_END)
        y = run_plan(p, mixture.denoiser(schedule), x, generator=torch.Generator(device).manual_seed(2)).double()
        sample_mean = y.mean(0)
        sample_cov = torch.cov(y.T)
        rows.append(
            dict(
                sampler=sampler,
                steps=steps,
                model_calls=len(p.rows),
                mean_error=float((sample_mean - mean).norm()),
                cov_error=float((sample_cov - cov).norm()),
            )
        )
    return rows


def _plot(rows: List[Dict], path: str) -> bool:
    plt = _pyplot()
    if plt is None:
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
    plt = _pyplot()
    if plt is None:
        return []
    model = digits.load_pretrained(device)
    noise = standard_normal((64,) + digits.IMAGE_SHAPE, generator=torch.Generator().manual_seed(0), device=device)
    written = []
    for sampler, steps in _progress([(s, n) for s in samplers for n in steps_list], "digit grids"):
        with torch.no_grad():
            images = (
                sample(
                    model,
                    noise,
                    sampler=sampler,
                    steps=steps,
                    schedule=digits.schedule(),
                    generator=torch.Generator(device).manual_seed(1),
                )
                .clamp(-1, 1)
                .cpu()
            )
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


def trajectories_plot(path: str, steps: int) -> bool:
    """The seed chapter's exercise 8.1: DDIM and DDPM trajectories from the same
    starting noise on 2-D data (the demo's Gaussian mixture, exact denoiser).
    DDIM's are deterministic curves; DDPM's differ with every seed."""
    plt = _pyplot()
    if plt is None:
        return False
    schedule, mixture = schedules.VPLinear(), _mixture("cpu")
    denoiser = mixture.denoiser(schedule)
    starts = standard_normal((6, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64, device="cpu")

    def trajectory(sampler: str, seed: int) -> torch.Tensor:
        states = [starts.clone()]
        run_plan(
            plan(sampler, steps=steps, schedule=schedule, t_end=T_END),
            denoiser,
            starts,
            generator=torch.Generator().manual_seed(seed),
            callback=lambda info: states.append(info["x"].clone()),
        )
        return torch.stack(states)  # [steps + 1, 6, 2]

    data = mixture.sample_marginal(schedule, T_END, 3000, torch.Generator().manual_seed(5))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharex=True, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # DDPM's paths cross each other: three of the starting points, three seeds each, keep the panel legible.
    for ax, sampler, seeds, shown in ((axes[0], "ddim", [0, 1], 6), (axes[1], "ddpm", [1, 2, 3], 3)):
        ax.scatter(data[:, 0], data[:, 1], s=2, color="0.8", label="data")
        for seed in seeds:
            path_ = trajectory(sampler, seed)
            for k in range(shown):
                ax.plot(path_[:, k, 0], path_[:, k, 1], color=colors[k % len(colors)], lw=0.9, alpha=0.8)
                ax.plot(path_[-1, k, 0], path_[-1, k, 1], "x", color=colors[k % len(colors)])
        ax.plot(starts[:, 0], starts[:, 1], "ko", ms=4, label="x_T (shared)")
        runs = "two runs, identical" if sampler == "ddim" else f"{len(seeds)} seeds from each of three x_T"
        ax.set_title(f"{sampler.upper()}, {steps} steps ({runs})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation: keeps an interpolated Gaussian latent at a Gaussian's norm
    (a straight line between two latents passes through lower-norm, blurrier ones)."""
    angle = torch.arccos(torch.clamp((a * b).sum() / (a.norm() * b.norm()), -1.0, 1.0))
    return (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / torch.sin(angle)


def inversion_interpolation(path: str, device: str, steps: int) -> Dict:
    """The seed chapter's exercise 8.1, part 2, on the digits denoiser: two
    digits generated with DDIM, encoded back to noise by DDIM inversion
    (plan(..., reverse=True)), decoded again (reconstruction), and the
    interpolation between the two encodings decoded. Returns the errors;
    writes the figure if matplotlib is installed."""
    model, schedule = digits.load_pretrained(device), digits.schedule()
    noise = standard_normal((2,) + digits.IMAGE_SHAPE, generator=torch.Generator().manual_seed(6), device=device)
    weights = [i / 8 for i in range(9)]
    with torch.no_grad():
        x0 = sample(model, noise, sampler="ddim", steps=steps, schedule=schedule)
        encoded = run_plan(plan("ddim", steps=steps, schedule=schedule, reverse=True), model, x0)
        decoded = sample(model, encoded, sampler="ddim", steps=steps, schedule=schedule)
        between = torch.stack([_slerp(encoded[0], encoded[1], w) for w in weights])
        interpolated = sample(model, between, sampler="ddim", steps=steps, schedule=schedule)
    result = dict(
        steps=steps,
        reconstruction_error=float((decoded - x0).norm() / x0.norm()),
        noise_recovery_error=float((encoded - noise).norm() / noise.norm()),
        written=False,
    )
    plt = _pyplot()
    if plt is None:
        return result
    fig, axes = plt.subplots(2, 9, figsize=(9, 2.6))
    top = [
        (x0[0], "digit 1"),
        (encoded[0], "its encoding"),
        (decoded[0], "decoded"),
        None,
        (x0[1], "digit 2"),
        (encoded[1], "its encoding"),
        (decoded[1], "decoded"),
        None,
        None,
    ]
    for ax, item in zip(axes[0], top):
        ax.axis("off")
        if item is not None:
            ax.imshow(item[0][0].cpu(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_title(item[1], fontsize=7)
    for ax, image, w in zip(axes[1], interpolated, weights):
        ax.imshow(image[0].clamp(-1, 1).cpu(), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"{w:.3g}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"DDIM inversion and interpolation ({steps} steps each way)", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    result["written"] = True
    return result


def sampler_guide(ode_rows: List[Dict], ddpm_rows: List[Dict], inversion: Dict) -> str:
    """The seed chapter's 8.5.1 table (scenario, sampler, steps), with this run's measurements."""

    def ode_error(sampler, steps):
        found = [r["error"] for r in ode_rows if r["sampler"] == sampler and r["steps"] == steps]
        return f"{found[0]:.1e}" if found else "-"

    largest = max(r["steps"] for r in ode_rows)
    ddpm = "; ".join(
        f"{r['steps']} steps: mean error {r['mean_error']:.3f}, covariance error {r['cov_error']:.3f}"
        for r in ddpm_rows
    )
    return "\n".join(
        [
            "| scenario | sampler | steps | measured in this run |",
            "|---|---|---|---|",
            f"| highest quality, slowest | ddpm (ancestral) | 1000 | 2-D mixture, exact moments known: {ddpm} |",
            f"| balanced | dpmpp_2m (DPM-Solver++) | 20-50 | Gaussian oracle, relative error at {largest} steps: "
            f"dpmpp_2m {ode_error('dpmpp_2m', largest)}, dpmpp_3m {ode_error('dpmpp_3m', largest)}, "
            f"unipc_bh2 {ode_error('unipc_bh2', largest)}, against ddim {ode_error('ddim', largest)} |",
            "| real time | lcm (consistency) | 1-4 | needs a consistency-distilled model; the plan is in "
            '(`diffaccel.plan("lcm")`), not measured here |',
            "| editing, interpolation | ddim (deterministic) | 50-100 | digits denoiser, "
            f"{inversion['steps']} steps each "
            f"way: inversion then decoding reproduces the image to {inversion['reconstruction_error']:.1e} relative |",
        ]
    )


def _markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def run(out_dir: str = "demo-out", device: str = "cpu", quick: bool = False, print_fn=print) -> str:
    """Runs the demo, writes out_dir/index.md (and its plots and images); returns the index path."""
    os.makedirs(out_dir, exist_ok=True)
    steps_list = [10] if quick else [5, 10, 20, 40]
    latent_shape = (4, 16, 16) if quick else (4, 32, 32)
    print_fn(f"diffaccel demo on {device}: ODE samplers on Gaussian data, latents of shape {latent_shape}, batch 16")
    rows = ode_table(device, steps_list, latent_shape, repeats=2 if quick else 5)
    graphed = "graphed_ms" in rows[0]
    header = ["sampler", "steps", "model calls", "relative error", "loop ms, reference ops", "loop ms, fused ops"]
    header += ["loop ms, CUDA graph"] if graphed else []
    table = _markdown_table(
        header + ["fused vs reference"],
        [
            [
                r["sampler"],
                str(r["steps"]),
                str(r["model_calls"]),
                f"{r['error']:.2e}",
                f"{r['reference_ms']:.2f}",
                f"{r['fused_ms']:.2f}",
            ]
            + ([f"{r['graphed_ms']:.2f}"] if graphed else [])
            + [f"{r['reference_ms'] / r['fused_ms']:.1f}x"]
            for r in rows
        ],
    )
    print_fn(table)
    sde = sde_table(device, steps=10 if quick else 50, batch=2000 if quick else 20000)
    sde_table_md = _markdown_table(
        ["sampler", "steps", "model calls", "mean error", "covariance error"],
        [
            [r["sampler"], str(r["steps"]), str(r["model_calls"]), f"{r['mean_error']:.3f}", f"{r['cov_error']:.3f}"]
            for r in sde
        ],
    )
    print_fn("\nStochastic samplers on a 2-D Gaussian mixture (moments of the sample against the exact ones):")
    print_fn(sde_table_md)
    # DDPM at the step count the seed chapter recommends for the highest quality.
    ddpm = sde_table(device, steps=200 if quick else 1000, batch=2000 if quick else 20000, samplers=["ddpm"])
    images = []
    if (not quick or len(steps_list) > 1) and _plot(rows, os.path.join(out_dir, "error_vs_model_calls.png")):
        images.append("error_vs_model_calls.png")
    if trajectories_plot(os.path.join(out_dir, "ddpm_vs_ddim_trajectories.png"), steps=20 if quick else 50):
        images.append("ddpm_vs_ddim_trajectories.png")
    inversion = inversion_interpolation(
        os.path.join(out_dir, "ddim_inversion_interpolation.png"), device, steps=20 if quick else 50
    )
    if inversion["written"]:
        images.append("ddim_inversion_interpolation.png")
    print_fn(
        f"\nDDIM inversion ({inversion['steps']} steps each way) on the digits denoiser: decoding the encoding "
        f"reproduces the image to {inversion['reconstruction_error']:.1e} relative; the encoding is "
        f"{inversion['noise_recovery_error']:.1e} from the original noise"
    )
    guide = sampler_guide(rows, ddpm + [r for r in sde if r["sampler"] == "ddpm"], inversion)
    print_fn("\nChoosing a sampler (the seed chapter's 8.5.1 table, measured):\n" + guide)
    grids = digit_grids(out_dir, device, [10] if quick else [10, 25], IMAGE_SAMPLERS[:2] if quick else IMAGE_SAMPLERS)
    index = os.path.join(out_dir, "index.md")
    with open(index, "w") as f:
        f.write("# diffaccel demo\n\n")
        f.write(
            f"Device: {device}. Exact oracle: Gaussian data, VP linear schedule, t from 1 to {T_END}; "
            "errors are ||x - exact|| / ||exact|| at the end of sampling. Loop times use a zero-cost model, "
            "so they are the sampler's own per-loop cost.\n\n"
        )
        f.write("## ODE samplers\n\n" + table + "\n\n")
        if "error_vs_model_calls.png" in images:
            f.write("![error against model calls](error_vs_model_calls.png)\n\n")
        elif not quick:
            f.write("(Install matplotlib for the plots and images.)\n\n")
        f.write("## Stochastic samplers\n\n" + sde_table_md + "\n\n")
        if "ddpm_vs_ddim_trajectories.png" in images:
            f.write(
                "## DDPM against DDIM trajectories\n\nStarting points x_T on the 2-D mixture; DDIM "
                "(deterministic) follows the same curve on every run, DDPM (ancestral) a different path per "
                "seed from the same x_T.\n\n![DDPM against DDIM trajectories](ddpm_vs_ddim_trajectories.png)\n\n"
            )
        f.write(
            "## DDIM inversion and interpolation\n\n"
            f'Two digits generated with DDIM, encoded back to noise with `plan("ddim", reverse=True)` and '
            f"decoded again: reconstruction error {inversion['reconstruction_error']:.1e} relative (the "
            f"encoding is {inversion['noise_recovery_error']:.1e} from the original noise); the bottom row "
            "decodes spherical interpolations between the two encodings.\n\n"
        )
        if inversion["written"]:
            f.write("![DDIM inversion and interpolation](ddim_inversion_interpolation.png)\n\n")
        f.write("## Choosing a sampler\n\n" + guide + "\n")
        if grids:
            f.write(
                "\n## Digits from the pretrained denoiser\n\n"
                "diffaccel.models.digits (an MLP trained on scikit-learn's 8x8 digits by "
                "scripts/train_digits_denoiser.py); the same noise for every grid.\n\n"
            )
            for sampler, steps, name in grids:
                f.write(f"![{sampler}, {steps} steps]({name}) ")
            f.write("\n")
    images += [name for _, _, name in grids]
    print_fn(f"\nwrote {index}" + (f" and {len(images)} images" if images else ""))
    return index
