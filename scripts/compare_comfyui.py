"""ComfyUI's own samplers against diffaccel.comfyui's, side by side, on a toy
model: python scripts/compare_comfyui.py COMFYUI_DIR [--steps N] [--out FILE].

COMFYUI_DIR is a ComfyUI source tree (its Python dependencies einops,
safetensors, psutil, av, scipy, torchsde and tqdm importable). ComfyUI is run on
the CPU, with torchvision stubbed (a CPU-only torch has no matching
torchvision wheel, and the samplers do not use it).

For every covered sampler name and each model sampling, EPS, V-prediction and
CONST (flow, with a first sigma of 1), built from ComfyUI's own classes, both
run from the same state, seed and global RNG state with ComfyUI's real
KSamplerX0Inpaint and cfg_function around a Gaussian toy denoiser with
classifier-free guidance (cfg 3, so the CFG++ samplers see a real
unconditional prediction). Where a cell is over 1e-5, ComfyUI runs again in
float64 (its small tensors too) and both are measured from that run, with
the same dtype-independent noise: a cell where ours is within 1e-5 of it and
ComfyUI's float32 run is further away is ComfyUI's rounding, and passes. Where
that does not explain it either, ComfyUI runs 12 times more from starts moved by
at most one ulp per element: how far float32 rounding alone takes ComfyUI from
itself (large only for a sampler whose control flow amplifies rounding, such as
dpm_adaptive's step-size control); a cell whose result and callbacks are both
within that spread is marked ill-conditioned and passes.
The table gives the largest difference of the
results relative to the largest |value| of ComfyUI's (and whether the
function's parameters, kinds and defaults are ComfyUI's), the same for every
entry of the callback dicts where it is over 1e-5, and whether the global
generator ends in the same state. Exit status 1 where any cell is over 1e-5."""

from __future__ import annotations

import argparse
import importlib.machinery
import inspect
import math
import os
import sys
import types

import torch


class _Stub(types.ModuleType):
    """A module whose every attribute is a callable stub (ComfyUI imports torchvision
    names at module level, and never calls them in the samplers)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        module = sys.modules.get(full) or _Stub(full)
        module.__spec__ = importlib.machinery.ModuleSpec(full, None)
        sys.modules[full] = module
        return module

    def __call__(self, *args, **kwargs):
        return self


class _StubFinder:
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def import_comfyui(comfyui_dir: str):
    sys.path.insert(0, os.path.abspath(comfyui_dir))
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.insert(0, _StubFinder())
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_sampling
    import comfy.samplers

    return comfy


class _Patcher:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name):
        return getattr(self, name)


class _BaseModel:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def scale_latent_inpaint(self, x, sigma, noise, latent_image):
        return latent_image


class ToyGuider:
    """ComfyUI's CFGGuider as the samplers see it: inner_model (with model_sampling),
    model_patcher, and a call that runs the conditional and unconditional Gaussian
    denoisers through ComfyUI's cfg_function (with its post-CFG hooks)."""

    def __init__(self, comfy, model_sampling, flow: bool, shape, cfg=3.0):
        self.comfy, self.flow, self.cfg = comfy, flow, cfg
        self.inner_model = _BaseModel(model_sampling)
        self.model_patcher = _Patcher(model_sampling)
        generator = torch.Generator().manual_seed(7)
        self.mean_cond = torch.randn(shape[1:], generator=generator) * 0.5
        self.mean_uncond = torch.randn(shape[1:], generator=generator) * 0.5
        self.std = 0.6

    def _denoise(self, x, sigma, mean):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        var = self.std**2
        if self.flow:
            alpha = 1 - s
            return mean + alpha * var / (alpha**2 * var + s**2) * (x - alpha * mean)
        return mean + var / (var + s**2) * (x - mean)

    def __call__(self, x, sigma, model_options=None, seed=None):
        model_options = {} if model_options is None else model_options
        cond = self._denoise(x, sigma, self.mean_cond)
        uncond = self._denoise(x, sigma, self.mean_uncond)
        return self.comfy.samplers.cfg_function(
            self.inner_model, cond, uncond, self.cfg, x, sigma, model_options=model_options
        )


def model_samplings(comfy):
    ms = comfy.model_sampling
    return {
        "EPS": (type("EpsSampling", (ms.ModelSamplingDiscrete, ms.EPS), {})(), False),
        "V": (type("VSampling", (ms.ModelSamplingDiscrete, ms.V_PREDICTION), {})(), False),
        "CONST": (type("FlowSampling", (ms.ModelSamplingDiscreteFlow, ms.CONST), {})(), True),
    }


def _callback_difference(ours, theirs) -> float:
    """The largest difference between the callback dicts, relative to the largest
    |value| of each of ComfyUI's entries; inf where the steps or keys differ."""
    if len(ours) != len(theirs):
        return float("inf")
    worst = 0.0
    for a, b in zip(ours, theirs):
        if set(a) != set(b):
            return float("inf")
        for key in a:
            va, vb = torch.as_tensor(a[key], dtype=torch.float64), torch.as_tensor(b[key], dtype=torch.float64)
            if va.shape != vb.shape:
                return float("inf")
            scale = float(vb.abs().max()) if vb.numel() else 0.0
            difference = float((va - vb).abs().max()) if vb.numel() else 0.0
            worst = max(worst, difference / scale if scale > 0 else difference)
    return worst


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


class FixedNoise:
    """Noise that does not depend on the run's dtype (float32 draws from its own
    generator, cast), for comparing a float32 run with ComfyUI's float64 one."""

    def __init__(self, shape, dtype):
        self.generator, self.shape, self.dtype = torch.Generator().manual_seed(21), shape, dtype

    def __call__(self, sigma, sigma_next):
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float32).to(self.dtype)


def _relative(ours, theirs) -> float:
    scale = float(theirs.abs().max())
    return float((ours.double() - theirs.double()).abs().max()) / scale if scale > 0 else float("inf")


def _nudged(x, seed):
    """x with each element moved by -1, 0 or +1 ulp (drawn from ``seed``)."""
    step = torch.randint(-1, 2, x.shape, generator=torch.Generator().manual_seed(seed))
    up, down = torch.nextafter(x, torch.full_like(x, math.inf)), torch.nextafter(x, torch.full_like(x, -math.inf))
    return torch.where(step > 0, up, torch.where(step < 0, down, x))


def run_one(
    comfy, name, model_sampling, flow, steps, shape, ours_module, dtype=torch.float32, fixed_noise=False, nudge=None
):
    """((result, callback dicts, generator state) of ours, the same of ComfyUI's) for one
    cell. ComfyUI runs in ``dtype`` (its own small tensors too), ours in float32; with
    fixed_noise both get FixedNoise where the sampler takes a noise_sampler; with nudge
    (a seed) both start from the state moved by at most one ulp per element."""
    scheduler = "simple" if flow else "karras"
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).to(torch.float32)
    if name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    latent = torch.zeros(shape)
    x = model_sampling.noise_scaling(sigmas[0], noise, latent, max_denoise=True)
    if nudge is not None:
        x = _nudged(x, nudge)
    results = {}
    for side in ("comfyui", "diffaccel"):
        side_dtype = dtype if side == "comfyui" else torch.float32
        side_sigmas = sigmas.clone().to(side_dtype)  # a clone: uni_pc writes into its sigmas
        guider = ToyGuider(comfy, model_sampling, flow, shape)
        model = comfy.samplers.KSamplerX0Inpaint(guider, side_sigmas)
        model.latent_image, model.noise = latent.to(side_dtype), noise.to(side_dtype)
        if side == "comfyui":
            function = comfy.samplers.sampler_object(name).sampler_function
        else:
            function = ours_module.ksampler_function(name)
        options = {}
        if fixed_noise and "noise_sampler" in inspect.signature(ours_module.sampler_function(name)).parameters:
            options["noise_sampler"] = FixedNoise(shape, side_dtype)
        calls = []
        extra_args = {"model_options": {}, "seed": 1234, "denoise_mask": None}
        torch.manual_seed(99)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(side_dtype)
        try:
            out = function(
                model,
                x.clone().to(side_dtype),
                side_sigmas,
                extra_args=extra_args,
                callback=calls.append,
                disable=True,
                **options,
            )
        finally:
            torch.set_default_dtype(default_dtype)
        results[side] = (out, calls, torch.get_rng_state())
    return results["diffaccel"], results["comfyui"]


def compare_cell(comfy, name, model_sampling, flow, steps, shape, ours_module):
    """(text, passes): the float32 comparison; where it is over 1e-5, both measured from
    ComfyUI's float64 run (fixed noise), which tells whose float32 rounding it is."""
    (ours, our_calls, our_state), (theirs, their_calls, their_state) = run_one(
        comfy, name, model_sampling, flow, steps, shape, ours_module
    )
    rel, calls = _relative(ours, theirs), _callback_difference(our_calls, their_calls)
    rng_ok = bool(torch.equal(our_state, their_state))
    text = f"{rel:.1e}{'' if calls <= 1e-5 else f', callbacks {calls:.1e}'}{'' if rng_ok else ', RNG differs'}"
    if rel <= 1e-5 and calls <= 1e-5 and rng_ok:
        return text, True
    (ours, our_calls, _), (exact, exact_calls, _) = run_one(
        comfy, name, model_sampling, flow, steps, shape, ours_module, dtype=torch.float64, fixed_noise=True
    )
    (_, _, _), (theirs32, their_calls, _) = run_one(
        comfy, name, model_sampling, flow, steps, shape, ours_module, fixed_noise=True
    )
    ours64 = max(_relative(ours, exact), _callback_difference(our_calls, exact_calls))
    theirs64 = max(_relative(theirs32, exact), _callback_difference(their_calls, exact_calls))
    text += f"; from ComfyUI's float64 run: ours {ours64:.1e}, ComfyUI's float32 {theirs64:.1e}"
    if rng_ok and ours64 <= 1e-5 and theirs64 > ours64:
        return text + " (ComfyUI's float32 rounding)", True
    spread, calls_spread = ulp_spread(comfy, name, model_sampling, flow, steps, shape, ours_module, theirs, their_calls)
    text += f"; ComfyUI against itself from starts moved <= 1 ulp: up to {spread:.1e}, callbacks {calls_spread:.1e}"
    if rng_ok and rel <= spread and calls <= calls_spread:
        return text + " (ill-conditioned: within ComfyUI's own spread)", True
    return text + " **over 1e-5**", False


def ulp_spread(comfy, name, model_sampling, flow, steps, shape, ours_module, theirs, their_calls, draws=12):
    """(result, callback dicts): the largest differences, as a cell measures them,
    between ComfyUI's float32 run and its runs from starts moved by at most one ulp
    per element: how far apart float32 rounding alone takes ComfyUI's own results."""
    result, calls = 0.0, 0.0
    for seed in range(1, draws + 1):
        _, (moved, moved_calls, _) = run_one(comfy, name, model_sampling, flow, steps, shape, ours_module, nudge=seed)
        result = max(result, _relative(moved, theirs))
        calls = max(calls, _callback_difference(moved_calls, their_calls))
    return result, calls


def integration_checks(comfy, comfyui_dir, ours, steps, shape) -> list:
    """The node pack loaded by ComfyUI's own custom-node loader, its sampler node and
    patch() through ComfyUI's KSAMPLER.sample (noise scaling, the sampler, the inverse
    scaling: what KSampler runs), against ComfyUI's own KSAMPLER: (name, result) rows."""
    import asyncio
    import shutil
    import tempfile

    from diffaccel.integrations.comfyui import install

    rows = []
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "custom_nodes"))
    try:
        entry = install.install(root, patch=False)
        import nodes

        loaded = asyncio.run(nodes.load_custom_node(entry))
        names = [name for name in ours.NODE_CLASS_MAPPINGS if name in nodes.NODE_CLASS_MAPPINGS]
        rows.append(("ComfyUI's load_custom_node on `diffaccel comfyui install`'s entry", f"{loaded}, nodes {names}"))
    finally:
        shutil.rmtree(root)
    samplings = model_samplings(comfy)

    def through_ksampler(name, kind, make_sampler):
        model_sampling, flow = samplings[kind]
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple" if flow else "karras", steps)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(11))
        latent = torch.randn(shape, generator=torch.Generator().manual_seed(12)) * 0.1
        guider = ToyGuider(comfy, model_sampling, flow, shape)
        torch.manual_seed(99)
        extra_args = {"model_options": {}, "seed": 1234}
        out = make_sampler().sample(guider, sigmas.clone(), extra_args, None, noise, latent_image=latent)
        return out, torch.get_rng_state()

    worst, states, over = 0.0, True, []
    select = ours.NODE_CLASS_MAPPINGS["DiffaccelSamplerSelect"]()
    for name in ours.SAMPLER_NAMES:
        for kind in samplings:
            theirs, their_state = through_ksampler(name, kind, lambda: comfy.samplers.sampler_object(name))
            mine, my_state = through_ksampler(name, kind, lambda: select.get_sampler(name)[0])
            rel = _relative(mine, theirs)
            worst, states = max(worst, rel), states and torch.equal(my_state, their_state)
            if rel > 1e-5:
                over.append(f"{name} {kind} {rel:.1e}")
    rows.append(
        (
            "Diffaccel Sampler Select's SAMPLER in KSAMPLER.sample, every name x EPS/V/CONST",
            f"largest difference {worst:.1e}; generator states {'equal' if states else '**differ**'}; "
            f"over 1e-5: {', '.join(over) or 'none'}",
        )
    )
    originals = {name: comfy.samplers.sampler_object(name).sampler_function for name in comfy.samplers.SAMPLER_NAMES}
    ours.patch()
    try:
        # (dpm_fast / dpm_adaptive: ComfyUI's adapter, a new closure each time, looks the function up when it runs.)
        direct = [n for n in ours.SAMPLER_NAMES if n not in ("dpm_fast", "dpm_adaptive")]
        swapped = [n for n in direct if comfy.samplers.sampler_object(n).sampler_function is not originals[n]]
        worst = 0.0
        for name in ("euler", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "ddim"):
            mine, _ = through_ksampler(name, "CONST", lambda: comfy.samplers.sampler_object(name))
            ours.unpatch()
            theirs, _ = through_ksampler(name, "CONST", lambda: comfy.samplers.sampler_object(name))
            ours.patch()
            worst = max(worst, _relative(mine, theirs))
    finally:
        ours.unpatch()
    restored = all(
        comfy.samplers.sampler_object(n).sampler_function is originals[n]
        for n in originals
        if n not in ("dpm_fast", "dpm_adaptive")
    )
    rows.append(("patch(): names whose KSampler function is now diffaccel's", f"{len(swapped)} of {len(direct)}"))
    rows.append(
        (
            "patch(), KSAMPLER.sample on CONST (euler, dpmpp_2m, dpmpp_2m_sde, uni_pc, ddim) vs unpatched",
            f"largest difference {worst:.1e}",
        )
    )
    rows.append(("unpatch() restores ComfyUI's functions", str(restored)))
    return rows


def arguments(doc: str, argv=None) -> argparse.Namespace:
    """A ComfyUI comparison script's command line: COMFYUI_DIR [--steps N] [--out FILE]."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("comfyui_dir")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", help="also write the markdown report to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    comfy = import_comfyui(args.comfyui_dir)
    import comfyui_version

    from diffaccel import comfyui as ours
    from diffaccel.integrations.comfyui.patch import _where

    shape = (2, 4, 16, 16)
    samplings = model_samplings(comfy)
    lines = [
        f"ComfyUI {comfyui_version.__version__} against diffaccel.comfyui: {args.steps} steps, float32, "
        f"shape {shape}, cfg 3, CPU, torch {torch.__version__}.",
        "",
        "Each cell: largest |ours - ComfyUI's| / largest |ComfyUI's| of the result (and of the callback dicts' "
        "entries where over 1e-5); the global generator's state at the end is equal unless the cell says not.",
        "",
        "| sampler | signature | " + " | ".join(samplings) + " |",
        "|---|---|" + "---|" * len(samplings),
    ]
    failures = 0
    not_covered = [name for name in comfy.samplers.SAMPLER_NAMES if name not in ours.SAMPLER_NAMES]
    for name in [n for n in comfy.samplers.SAMPLER_NAMES if n in ours.SAMPLER_NAMES]:
        module_name, attribute = _where(name)
        theirs = getattr(sys.modules[module_name], attribute)
        same = _parameters(ours.sampler_function(name)) == _parameters(theirs)
        failures += not same
        cells = ["same" if same else "**differs**"]
        for model_sampling, flow in samplings.values():
            try:
                text, ok = compare_cell(comfy, name, model_sampling, flow, args.steps, shape, ours)
            except Exception as error:  # a failure is a row of the report, not the end of it
                text, ok = f"error: {type(error).__name__}: {error}"[:80], False
            failures += not ok
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Sigma schedules, diffaccel.comfyui.calculate_sigmas against comfy.samplers.calculate_sigmas:", ""]
    lines += ["| scheduler | " + " | ".join(f"{kind}, {n} steps" for kind in samplings for n in (1, 10, 30)) + " |"]
    lines += ["|---|" + "---|" * (3 * len(samplings))]
    for scheduler in comfy.samplers.SCHEDULER_NAMES:
        cells = []
        for model_sampling, _ in samplings.values():
            for steps in (1, 10, 30):
                try:
                    theirs = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
                    mine = ours.calculate_sigmas(model_sampling, scheduler, steps)
                    same = theirs.dtype == mine.dtype and torch.allclose(theirs, mine, rtol=0, atol=0, equal_nan=True)
                    cells.append("equal" if same else f"**{_relative(mine, theirs):.1e}**")
                except Exception as error:
                    same = False
                    cells.append(f"error: {type(error).__name__}"[:40])
                failures += not same
        lines.append(f"| {scheduler} | " + " | ".join(cells) + " |")
    lines += ["", "Inside ComfyUI (its loader, KSAMPLER and sampler_object):", "", "| check | result |", "|---|---|"]
    lines += [
        f"| {check} | {result} |"
        for check, result in integration_checks(comfy, args.comfyui_dir, ours, args.steps, shape)
    ]
    lines += [
        "",
        f"Cells over 1e-5 or differing: {failures}.",
        f"Not covered (ComfyUI's own run): {', '.join(not_covered) or 'none'}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
