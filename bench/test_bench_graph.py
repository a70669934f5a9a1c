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
