"""Stock diffusers scheduler steps against diffaccel's accelerated ones
(pytest-benchmark): a whole 25-step loop with a zero-cost model at
(4,4,128,128) float32, DPMSolverMultistepScheduler with and without dynamic
thresholding, DDIM, Euler and PLMS, and every drop-in class at (1,4,8,8), its
host time per step (set_timesteps, diffusers' own code in both, outside the
timing); bench/report.py prints the time per step. On the GPU
check (DIFFACCEL_BENCH_DEVICE=cuda) the loop runs on CUDA and each timed loop
ends with a synchronization. Each records the page faults per step beside its
time (diffaccel.benchmarking.page_faults_per_call: on CPU a step that faults
in fresh pages for its temporaries costs several times more)."""

import os

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffaccel import benchmarking  # noqa: E402
from diffaccel.integrations import diffusers as accelerated  # noqa: E402

STEPS = 25
SHAPE = (4, 4, 128, 128)
DEVICE = os.environ.get("DIFFACCEL_BENCH_DEVICE", "cpu")


@pytest.mark.parametrize("case", list(benchmarking.SCHEDULER_CASES))
@pytest.mark.parametrize("impl", ["stock_diffusers", "diffaccel"])
def test_scheduler_loop(benchmark, impl, case):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("DIFFACCEL_BENCH_DEVICE=cuda without a GPU")
    loop, reset = benchmarking.scheduler_loop(case, impl, DEVICE, SHAPE, STEPS)
    reset()
    loop()

    def reset_and_loop():
        reset()
        loop()

    benchmark.group = case
    benchmark.extra_info["faults_per_step"] = benchmarking.page_faults_per_call(reset_and_loop, calls=2) / STEPS
    benchmark.extra_info.update(
        case=case,
        shape="medium",
        impl="fused" if impl == "diffaccel" else "stock_diffusers",
        bytes=0,
        model_calls=STEPS,
    )
    if DEVICE == "cuda":
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    slow = "thresholding" in case and impl == "stock_diffusers"
    benchmark.pedantic(loop, setup=reset, rounds=20 if slow else 100)


HOST_SHAPE = (1, 4, 8, 8)


@pytest.mark.parametrize("case", list(benchmarking.host_time_cases()))
@pytest.mark.parametrize("impl", ["stock_diffusers", "diffaccel"])
def test_step_host_time(benchmark, impl, case):
    """Every drop-in class's step at its default config, 25-step loops at
    (1,4,8,8), where the data costs nothing: the host time of one step() call
    (on CUDA with the launch, each loop ending with a synchronization)."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("DIFFACCEL_BENCH_DEVICE=cuda without a GPU")
    loop, reset = benchmarking.scheduler_loop(case, impl, DEVICE, HOST_SHAPE, STEPS)
    reset()
    loop()
    benchmark.group = "step_host_time"
    benchmark.extra_info.update(
        case=case,
        shape=str(HOST_SHAPE),
        impl="fused" if impl == "diffaccel" else "stock_diffusers",
        bytes=0,
        model_calls=loop.step_calls,
    )
    if DEVICE == "cuda":
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.pedantic(loop, setup=reset, rounds=30)


@pytest.mark.parametrize("impl", ["stock_diffusers", "diffaccel"])
def test_unet_pipeline_loop(benchmark, impl):
    """A whole 25-step DPM-Solver++ sampling loop with a small UNet2DModel
    (random weights, (2,4,32,32) latents): the scheduler's share of a real loop."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("DIFFACCEL_BENCH_DEVICE=cuda without a GPU")
    unet = benchmarking.small_unet(DEVICE)
    cls = accelerated.DPMSolverMultistepScheduler if impl == "diffaccel" else diffusers.DPMSolverMultistepScheduler
    scheduler = cls()
    x0 = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)

    @torch.no_grad()
    def loop():
        x = x0
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return x

    def reset():
        scheduler.set_timesteps(STEPS, device=DEVICE)

    reset()
    loop()
    benchmark.group = "unet_dpmpp_2m_loop"
    benchmark.extra_info.update(
        case="unet_dpmpp_2m_loop",
        shape="(2,4,32,32)",
        impl="fused" if impl == "diffaccel" else "stock_diffusers",
        bytes=0,
        model_calls=STEPS,
    )
    if DEVICE == "cuda":
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.pedantic(loop, setup=reset, rounds=5)
