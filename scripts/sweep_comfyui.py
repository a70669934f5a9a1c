"""ComfyUI's own samplers against diffaccel.comfyui's beyond the defaults: python
scripts/sweep_comfyui.py COMFYUI_DIR [--steps N] [--out FILE].

scripts/compare_comfyui.py runs every name with its default options on the
schedules KSampler makes. This runs what else a workflow can hand a sampler,
each on EPS, V and CONST model sampling with the same toy guider:

- the options of ComfyUI's sampler nodes (comfy_extras/nodes_custom_sampler.py)
  at the ends of their ranges, as the nodes pass them (SamplerSASolver's tau
  function made from its eta and percents, SamplerER_SDE's noise scaler from
  its solver type and eta);
- every name on the sigmas other nodes make: SplitSigmas' two halves,
  FlipSigmas (increasing, for unsampling), one step to 0, one step not to 0,
  a repeated sigma;
- every name with a denoise mask (inpainting), and with float16, bfloat16 and
  float64 latents (float32 sigmas).

A cell passes where the results are within 1e-5 relative (2e-3 for float16,
2e-2 for bfloat16, which only bound the dtypes' rounding), where both raise
the same exception type, or where ComfyUI's own result is not finite (then the
drop-in's need not have the same inf / NaN pattern: docs/comfyui.md). A cell
over 1e-5 runs again, ComfyUI's also in float64 (latents, sigmas and its own
small tensors), all three with the same fixed noise where the sampler takes a
noise sampler: ours within 1e-5 of ComfyUI's float64 run, and ComfyUI's
float32 run further from it, marks ComfyUI's float32 rounding; ComfyUI's own
float32 and float64 runs further apart than ours is from its float32 run
marks an ill-conditioned cell (adaptive steps, unsampling); failing both,
ComfyUI runs 6 more times, from a start or on sigmas moved by at most one ulp
per element, and a cell within that spread of ComfyUI's own is ill-conditioned
too. The report lists every cell that did not simply agree. Exit status 1
where any cell fails."""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_comfyui import (  # noqa: E402
    FixedNoise,
    ToyGuider,
    _nudged,
    _relative,
    arguments,
    import_comfyui,
    model_samplings,
)

SHAPE = (2, 4, 8, 8)
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def node_options(comfy):
    """(sampler name, options or a function of the model sampling giving them): the
    sampler nodes' options at the ends of their ranges."""
    from comfy.k_diffusion import sa_solver

    cases = []
    for name in ("dpmpp_3m_sde", "dpmpp_3m_sde_gpu"):
        for eta, s_noise in ((0.0, 1.0), (100.0, 1.0), (1.0, 0.0), (1.0, 100.0)):
            cases.append((name, {"eta": eta, "s_noise": s_noise}))
    for name in ("dpmpp_2m_sde", "dpmpp_2m_sde_gpu"):
        for solver_type in ("midpoint", "heun"):
            for eta, s_noise in ((0.0, 1.0), (100.0, 1.0), (1.0, 0.0)):
                cases.append((name, {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}))
    for name in ("dpmpp_sde", "dpmpp_sde_gpu"):
        for eta, s_noise, r in ((0.0, 1, 0.5), (100.0, 1, 0.5), (1.0, 1, 0.0), (1.0, 1, 100.0), (1.0, 0, 1.0)):
            cases.append((name, {"eta": eta, "s_noise": float(s_noise), "r": r}))
    for eta, s_noise in ((0.0, 1.0), (100.0, 1.0), (1.0, 100.0)):
        cases += [(name, {"eta": eta, "s_noise": s_noise}) for name in ("dpmpp_2s_ancestral", "euler_ancestral")]
    for eta, s_noise in ((0.0, 1.0), (1.0, 10.0), (1.0, 0.0)):
        cases.append(("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}))
    cases += [("lms", {"order": order}) for order in (1, 5, 6, 100)]
    for options in (
        {"order": 2},
        {"atol": 0.0},
        {"rtol": 0.0},
        {"order": 2, "pcoeff": 0.5, "dcoeff": 0.2},
        {"eta": 1.0},
        {"accept_safety": 0.0},
        {"eta": 10.0, "s_noise": 0.0},  # (eta 100 on a flow model: ComfyUI's own does not end in 60 s, nor ours)
        {"h_init": 100.0},
    ):
        cases.append(("dpm_adaptive", options))
    for solver_type in ("ER-SDE", "Reverse-time SDE", "ODE"):
        for max_stage, eta, s_noise in ((1, 1.0, 1.0), (2, 1.0, 1.0), (3, 1.0, 1.0), (3, 100.0, 100.0), (3, 0.0, 1.0)):
            cases.append(("er_sde", _er_sde_options(solver_type, max_stage, eta, s_noise)))
    for name in ("sa_solver", "sa_solver_pece"):
        for predictor, corrector in ((1, 0), (6, 6), (1, 6), (6, 0)):
            for flags in ((False, False), (True, True)):
                options = {"predictor_order": predictor, "corrector_order": corrector, "simple_order_2": flags[1]}
                if name == "sa_solver":
                    options["use_pece"] = flags[0]
                cases.append((name, options))
    for eta, percents, s_noise in ((10.0, (0.0, 1.0), 1.0), (0.0, (0.5, 0.5), 1.0), (1.0, (1.0, 0.0), 100.0)):

        def sa_options(model_sampling, eta=eta, percents=percents, s_noise=s_noise):
            start, end = (model_sampling.percent_to_sigma(p) for p in percents)
            return {"tau_func": sa_solver.get_tau_interval_func(start, end, eta=eta), "s_noise": s_noise}

        sa_options.label = f"SamplerSASolver eta={eta}, percents={percents}, s_noise={s_noise}"
        cases.append(("sa_solver", sa_options))
    return cases


def _er_sde_options(solver_type, max_stage, eta, s_noise):
    """SamplerER_SDE's get_sampler."""
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        eta, s_noise = 0, 0

    def reverse_time_sde_noise_scaler(x):
        return x ** (eta + 1)

    reverse_time_sde_noise_scaler.label = f"{solver_type} eta={eta}"
    noise_scaler = None if solver_type == "ER-SDE" else reverse_time_sde_noise_scaler
    return {"s_noise": s_noise, "noise_scaler": noise_scaler, "max_stage": max_stage}


def _flipped(sigmas):
    """FlipSigmas."""
    sigmas = sigmas.flip(0).clone()
    if sigmas[0] == 0:
        sigmas[0] = 0.0001
    return sigmas


SIGMA_VARIANTS = {
    "SplitSigmas, high half (ends above 0)": lambda s: s[:6].clone(),
    "SplitSigmas, low half (starts mid-schedule)": lambda s: s[5:].clone(),
    "FlipSigmas (increasing)": _flipped,
    "one step to 0": lambda s: s[-2:].clone(),
    "one step, not to 0": lambda s: s[:2].clone(),
    "a repeated sigma": lambda s: torch.cat([s[:3], s[2:3], s[3:]]),
}


def _nudged_sigmas(sigmas, seed):
    """sigmas with each nonzero one moved by at most one ulp (a final 0 stays 0)."""
    return torch.where(sigmas == 0, sigmas, _nudged(sigmas, seed))


def run(comfy, ours, name, model_sampling, flow, steps, options=None, sigmas_of=None, mask=False, dtype=None):
    """(ours, ComfyUI's run, exact, spread) for one cell: the results (a tensor or the
    exception raised) in the cell's latent dtype, and two functions judge() calls
    only where it needs them: exact() is ComfyUI's float64 run (latents, sigmas and
    its small tensors), spread() how far ComfyUI's own result moves when the start
    or its sigmas move by at most one ulp per element (3 draws each)."""
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple" if flow else "karras", steps).float()
    if name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    if sigmas_of is not None:
        sigmas = sigmas_of(sigmas)
    options = options(model_sampling) if callable(options) else dict(options or {})
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(12)) * 0.5 if mask else torch.zeros(SHAPE)
    draw = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(13))
    denoise_mask = (draw > 0.5).float() if mask else None
    latent_dtype = dtype or torch.float32
    x = model_sampling.noise_scaling(sigmas[0], noise, latent, max_denoise=sigmas_of is None and not mask)
    x = x.to(latent_dtype)

    takes_noise = "noise_sampler" in inspect.signature(ours.sampler_function(name)).parameters

    def one(side, run_dtype, start, run_sigmas=sigmas, fixed_noise=False):
        model = comfy.samplers.KSamplerX0Inpaint(ToyGuider(comfy, model_sampling, flow, SHAPE), run_sigmas.clone())
        model.latent_image, model.noise = latent.to(run_dtype), noise.to(run_dtype)
        if side == "ours":
            function = ours.ksampler_function(name)
        else:
            function = comfy.samplers.sampler_object(name).sampler_function
        extra_args = {"model_options": {}, "seed": 1234, "denoise_mask": denoise_mask}
        run_options = dict(options)
        if fixed_noise and takes_noise:  # the same noise in every dtype (ComfyUI's float64 run)
            run_options["noise_sampler"] = FixedNoise(SHAPE, run_dtype)
        torch.manual_seed(99)
        default = torch.get_default_dtype()
        exact = run_dtype == torch.float64 and latent_dtype != torch.float64
        if exact:
            torch.set_default_dtype(torch.float64)
        try:
            run_sigmas = run_sigmas.clone().double() if exact else run_sigmas.clone()
            return function(model, start.clone().to(run_dtype), run_sigmas, extra_args, None, True, **run_options)
        except Exception as error:  # noqa: BLE001  (any exception: its type is compared)
            return error
        finally:
            torch.set_default_dtype(default)

    theirs = one("comfyui", latent_dtype, x)

    def spread():
        # The start moved, and the sigmas (the host coefficients' rounding: what moves
        # dpm_adaptive's first error estimate, rounding noise itself, with float64 latents).
        moved = [one("comfyui", latent_dtype, _nudged(x, seed)) for seed in range(3)]
        moved += [one("comfyui", latent_dtype, x, _nudged_sigmas(sigmas, seed)) for seed in range(3)]
        return max(_relative(m, theirs) if isinstance(m, torch.Tensor) else math.inf for m in moved)

    def exact():
        """(ours, ComfyUI's float32 run, its float64 run), all with the same fixed noise."""
        fixed = [one(side, latent_dtype, x, fixed_noise=True) for side in ("ours", "comfyui")]
        return (*fixed, one("comfyui", torch.float64, x, fixed_noise=True))

    return one("ours", latent_dtype, x), theirs, exact, spread


def judge(mine, theirs, exact, spread, dtype) -> tuple:
    """(text, passes, agreed): how a cell came out."""
    tolerance = TOLERANCE[dtype or torch.float32]
    if isinstance(theirs, Exception) or isinstance(mine, Exception):
        same = type(mine) is type(theirs)
        ours_text = f"{type(mine).__name__}" if isinstance(mine, Exception) else "ran"
        their_text = f"{type(theirs).__name__}" if isinstance(theirs, Exception) else "ran"
        text = f"ours {ours_text}, ComfyUI {their_text}"
        # Ours running where ComfyUI raises is not a failure of a workflow that worked.
        return text, same or isinstance(theirs, Exception), False
    if mine.dtype != theirs.dtype:
        return f"dtype {mine.dtype} against ComfyUI's {theirs.dtype}", False, False
    if not bool(torch.isfinite(theirs).all()):
        return f"ComfyUI's result not finite (ours finite: {bool(torch.isfinite(mine).all())})", True, False
    rel = _relative(mine, theirs)
    if rel <= tolerance:
        return f"{rel:.1e}", True, True
    text = f"{rel:.1e}"
    if dtype in (None, torch.float32):
        fixed_mine, fixed_theirs, float64 = exact()
        if all(isinstance(t, torch.Tensor) for t in (fixed_mine, fixed_theirs, float64)):
            ours64, theirs64 = _relative(fixed_mine, float64), _relative(fixed_theirs, float64)
            text += f"; from ComfyUI's float64 run: ours {ours64:.1e}, ComfyUI's float32 {theirs64:.1e}"
            if ours64 <= tolerance and theirs64 > ours64:
                return text + " (ComfyUI's float32 rounding)", True, False
            if theirs64 > _relative(fixed_mine, fixed_theirs):
                return text + " (ill-conditioned: ComfyUI's own float32 and float64 runs further apart)", True, False
    own = spread()
    text += f"; ComfyUI from a start or sigmas moved <= 1 ulp: up to {own:.1e}"
    if rel <= own:
        return text + " (ill-conditioned: within ComfyUI's own spread)", True, False
    return text + " **over**", False, False


def _label(options) -> str:
    if callable(options):
        return options.label
    shown = {k: getattr(v, "label", v) for k, v in options.items()}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    warnings.filterwarnings("ignore")  # torchsde's and ComfyUI's notices about odd inputs
    comfy = import_comfyui(args.comfyui_dir)
    import comfyui_version

    from diffaccel import comfyui as ours

    samplings = model_samplings(comfy)
    groups = [("node options at the ends of their ranges", [(n, o, {}) for n, o in node_options(comfy)])]
    for variant, sigmas_of in SIGMA_VARIANTS.items():
        groups.append((f"sigmas: {variant}", [(n, None, {"sigmas_of": sigmas_of}) for n in ours.SAMPLER_NAMES]))
    groups.append(("a denoise mask (inpainting)", [(n, None, {"mask": True}) for n in ours.SAMPLER_NAMES]))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        groups.append((f"{dtype} latents", [(n, None, {"dtype": dtype}) for n in ours.SAMPLER_NAMES]))

    lines = [
        f"ComfyUI {comfyui_version.__version__} against diffaccel.comfyui beyond the defaults: {args.steps} steps, "
        f"shape {SHAPE}, cfg 3, CPU, torch {torch.__version__}; EPS, V and CONST model sampling.",
        "",
        "Each group lists the cells that did not simply agree within the tolerance (scripts/sweep_comfyui.py).",
    ]
    failures = 0
    for title, cases in groups:
        agreed, shown = 0, []
        for name, options, how in cases:
            cells = []
            for kind, (model_sampling, flow) in samplings.items():
                mine, theirs, exact, spread = run(comfy, ours, name, model_sampling, flow, args.steps, options, **how)
                text, passes, simply = judge(mine, theirs, exact, spread, how.get("dtype"))
                failures += not passes
                agreed += simply
                if not simply:
                    cells.append(f"{kind}: {text}")
            if cells:
                label = f"{name} ({_label(options)})" if options else name
                shown.append(f"| {label} | " + "; ".join(cells) + " |")
        total = len(cases) * len(samplings)
        lines += ["", f"**{title}**: {agreed} of {total} cells within the tolerance.", ""]
        if shown:
            lines += ["| sampler | other cells |", "|---|---|", *shown]
        print(f"{title}: {agreed} of {total}", flush=True)
    lines += ["", f"Cells failing: {failures}."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
