"""Stock diffusers scheduler steps against diffaccel's accelerated ones
(pytest-benchmark): a whole 25-step DPMSolverMultistepScheduler loop with a
zero-cost model at (4,4,128,128) float32, with and without dynamic
thresholding (set_timesteps, diffusers' own code in both, outside the timing);
bench/report.py prints the time per step."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

STEPS = 25
SHAPE = (4, 4, 128, 128)


@pytest.mark.parametrize("thresholding", [False, True], ids=["plain", "thresholding"])
@pytest.mark.parametrize("impl", ["stock_diffusers", "diffaccel"])
def test_dpm_solver_multistep_loop(benchmark, impl, thresholding):
    cls = accelerated.DPMSolverMultistepScheduler if impl == "diffaccel" else diffusers.DPMSolverMultistepScheduler
    scheduler = cls(thresholding=thresholding)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))

    def loop():
        x = x0
        for t in scheduler.timesteps:
            x = scheduler.step(eps, t, x).prev_sample
        return x

    def reset():  # set_timesteps is the same code in both: kept out of the timing
        scheduler.set_timesteps(STEPS)

    reset()
    loop()
    case = "diffusers_dpmpp_2m" + ("_thresholding" if thresholding else "")
    benchmark.group = case
    benchmark.extra_info.update(case=case, shape="medium", impl="fused" if impl == "diffaccel" else "stock_diffusers",
                                bytes=0, model_calls=STEPS)
    benchmark.pedantic(loop, setup=reset, rounds=20 if thresholding and impl == "stock_diffusers" else 100)
