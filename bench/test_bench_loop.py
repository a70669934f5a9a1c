"""The whole 20-step sampling loop with a zero-cost model: what a user pays
per step beyond the network, with the fused ops and with the reference ops
(the same plan, so the difference is the update itself)."""

import pytest
import torch

from diffaccel import ops, schedules
from diffaccel.benchmarking import SHAPES
from diffaccel.sampling import run_plan
from diffaccel.solvers import plan

SAMPLERS = ["ddim", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "lms"]
STEPS = 20


@pytest.mark.parametrize("shape_name", ["small", "medium"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("impl", ["fused", "eager_reference"])
def test_loop(benchmark, sampler, shape_name, impl):
    x = torch.randn(SHAPES[shape_name])
    eps = torch.randn_like(x)
    model = lambda x, t: eps  # noqa: E731  (zero cost: the loop's own time is measured)
    p = plan(
        sampler,
        steps=STEPS,
        schedule=schedules.VPDiscrete.from_diffusers("scaled_linear", beta_start=0.00085, beta_end=0.012),
    )
    benchmark.group = f"loop_{sampler} {shape_name}"
    benchmark.extra_info.update(case=f"loop_{sampler}", shape=shape_name, impl=impl, bytes=0, model_calls=len(p.rows))
    generator = torch.Generator().manual_seed(0)
    if impl == "fused":
        benchmark(run_plan, p, model, x, generator=generator)
    else:
        with ops.backend("reference"):
            benchmark(run_plan, p, model, x, generator=generator)
