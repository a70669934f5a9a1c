"""Whole 20-step DPM-Solver++(2M) loops with a real network, at batch 1 and 16:
stock diffusers' loop (its DPMSolverMultistepScheduler), diffaccel's eager
loop (diffaccel.sample), the loop captured as one CUDA graph
(diffaccel.graph.capture), and the network alone called 20 times in one
captured graph, so that (graphed loop - graphed network) / 20 is what a step
costs beyond the network. Networks: a small UNet2DModel (random weights;
needs diffusers) and the digits MLP shipped in the package.

    DIFFACCEL_BENCH_DEVICE=cuda pytest bench/test_bench_graph.py --benchmark-only

On CPU the graph rows are skipped: capture() runs the eager loop there."""

import os

import pytest
import torch

from diffaccel import benchmarking, schedules
from diffaccel.graph import CapturedLoop, Progress, capture
from diffaccel.models import digits
from diffaccel.sampling import sample

DEVICE = os.environ.get("DIFFACCEL_BENCH_DEVICE", "cpu")
STEPS = 20
IMPLS = ["stock_diffusers", "eager", "graphed", "network_graphed"]


def _unet(batch):
    pytest.importorskip("diffusers")
    unet = benchmarking.small_unet(DEVICE)
    return (lambda x, t: unet(x, t).sample), (batch, 4, 32, 32)


def _mlp(batch):
    mlp = digits.load_pretrained(DEVICE)
    return (lambda x, t: mlp(x, t.float().expand(x.shape[0]))), (batch,) + digits.IMAGE_SHAPE


NETWORKS = {"unet": _unet, "mlp": _mlp}


def _synchronized(fn):
    def call():
        result = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return result

    return call


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("impl", IMPLS)
@torch.no_grad()
def test_graph_loop(benchmark, impl, network, batch):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("DIFFACCEL_BENCH_DEVICE=cuda without a GPU")
    if impl in ("graphed", "network_graphed") and DEVICE != "cuda":
        pytest.skip("CUDA graphs need a GPU (capture() runs the eager loop on CPU)")
    net, shape = NETWORKS[network](batch)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    schedule = schedules.VPDiscrete.from_diffusers("linear")
    if impl == "stock_diffusers":
        diffusers = pytest.importorskip("diffusers")
        scheduler = diffusers.DPMSolverMultistepScheduler()

        def loop():
            scheduler.set_timesteps(STEPS, device=DEVICE)
            y = x
            for t in scheduler.timesteps:
                y = scheduler.step(net(y, t), t, y).prev_sample
            return y
    elif impl == "eager":

        def loop():
            return sample(net, x, sampler="dpmpp_2m", steps=STEPS, schedule=schedule)
    elif impl == "graphed":
        graphed = capture(net, x, sampler="dpmpp_2m", steps=STEPS, schedule=schedule)
        out = torch.empty_like(x)

        def loop():
            return graphed(x, out=out)
    else:
        t = torch.full((batch,), 500.0, device=DEVICE)

        def body():
            for _ in range(STEPS):
                net(x, t)

        network_only = CapturedLoop(body, torch.device(DEVICE), warmup=2, progress=Progress())
        loop = network_only.run
    timed = _synchronized(loop)
    timed()
    benchmark.group = f"graph_{network} batch {batch}"
    benchmark.extra_info.update(
        case=f"graph_{network}", shape=f"batch {batch} {tuple(shape)}", impl=impl, bytes=0, model_calls=STEPS
    )
    if DEVICE == "cuda":
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.pedantic(timed, rounds=20, warmup_rounds=1)


# Each pipeline family graph_pipeline captures (tiny random-weight pipelines
# from tests/pipeline_builders.py), with its denoiser made zero-cost: what a
# step costs beyond the network, the stock pipeline's own __call__ loop
# against the graphed loop (its eager fallback on CPU, the graph on CUDA).
FAMILY_STEPS = 20
FAMILY_BUILDERS = [
    "stable_diffusion",
    "stable_diffusion_xl",
    "stable_diffusion_3",
    "flux",
    "pixart_sigma",
    "sana",
    "wan",
]


def _zero_cost(module):
    """The module's forward answers each input shape with the output its first
    call of that shape gave (kept), so the loop around it is all that is timed."""
    real, seen = module.forward, {}

    def forward(*args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        key = tuple(x.shape)
        if key not in seen:
            seen[key] = real(*args, **kwargs)
        return seen[key]

    module.forward = forward


@pytest.mark.parametrize("family", FAMILY_BUILDERS)
@pytest.mark.parametrize("impl", ["stock_pipeline", "graph_pipeline"])
@torch.no_grad()
def test_pipeline_family_loop(benchmark, impl, family):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    import sys
    import warnings
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import pipeline_builders

    from diffaccel.diffusers import graph_pipeline

    torch.manual_seed(0)
    pipe, kw = getattr(pipeline_builders, family)()
    pipe.to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            _zero_cost(getattr(pipe, name))
    kw = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k != "output_type"}
    capture = {k: kw[k] for k in ("height", "width", "num_frames", "guidance_scale") if k in kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=FAMILY_STEPS, max_sequence_length=kw["prompt_embeds"].shape[1], **capture)
    latents = torch.randn(loop.latents.shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    if impl == "stock_pipeline":

        def run():
            return pipe(**kw, latents=latents, num_inference_steps=FAMILY_STEPS, output_type="latent")
    else:
        start, inputs, out = loop.prepare_latents(latents), {k: kw[k] for k in loop.inputs}, torch.empty_like(latents)

        def run():
            return loop(start, **inputs, out=out)

    timed = _synchronized(run)
    timed()
    benchmark.group = f"family_{family}"
    benchmark.extra_info.update(
        case=f"family_{family}",
        shape=f"latents {tuple(loop.latents.shape)}",
        impl=impl,
        bytes=0,
        model_calls=len(loop.timesteps),
        scheduler=type(pipe.scheduler).__name__,
    )
    if DEVICE == "cuda":
        benchmark.extra_info.update(device=torch.cuda.get_device_name(), graphed=loop.graphed)
    benchmark.pedantic(timed, rounds=10, warmup_rounds=1)
