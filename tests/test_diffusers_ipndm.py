"""diffaccel.integrations.diffusers against stock diffusers: IPNDMScheduler
(fourth-order Adams-Bashforth on the trigonometric schedule). The shared
tests of test_diffusers_every_class.py and the conformance and pipeline
modules take it from ACCELERATED too."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _loop, _relative_error, model  # noqa: E402

pytestmark = MARKS


# trained_betas: the schedule itself (its length less one is the step count,
# whatever set_timesteps is given), here with alpha > 0 at the first step, so
# that step is fused too.
TRAINED = {"trained_betas": [0.99 - 0.098 * k for k in range(11)]}


@pytest.mark.parametrize("config,steps", [({}, n) for n in (2, 3, 4, 5, 10, 25, 50)] + [(TRAINED, 10)])
def test_ipndm_loops_equal_stock(config, steps):
    """Whole loops: every order of the Adams-Bashforth combination (1 to 4 ets)
    and the first step (alpha 0, stock's own step) at every length."""
    want = _loop(diffusers.IPNDMScheduler(**config), steps=steps)
    scheduler = accelerated.IPNDMScheduler(**config)
    got = _loop(scheduler, steps=steps)
    assert _relative_error(got, want) < 1e-5
    assert len(scheduler.ets) == steps  # diffusers' state: every step's ets


def test_ipndm_bf16_model_output_and_float64():
    """A bf16 model output on a float32 sample steps in float32, as stock, and
    at least as close to the float32 model's loop as stock (which rounds
    alphas[i] * model_output to bf16: 4e-4 apart); a float64 loop agrees with
    stock's to float64 rounding."""
    exact = _loop(diffusers.IPNDMScheduler(), steps=10)
    stock = _loop(diffusers.IPNDMScheduler(), steps=10, model_dtype=torch.bfloat16)
    got = _loop(accelerated.IPNDMScheduler(), steps=10, model_dtype=torch.bfloat16)
    assert got.dtype == stock.dtype == torch.float32
    assert _relative_error(got, exact) <= _relative_error(stock, exact)
    want = _loop(diffusers.IPNDMScheduler(), steps=10, dtype=torch.float64)
    got = _loop(accelerated.IPNDMScheduler(), steps=10, dtype=torch.float64)
    assert got.dtype == torch.float64 and _relative_error(got, want) < 1e-12


def test_ipndm_caller_set_ets():
    """ets set by the caller, more than four of them: the last four weighed, as stock."""
    outcomes = []
    for module in (diffusers, accelerated):
        scheduler = module.IPNDMScheduler()
        scheduler.set_timesteps(10, device=DEVICE)
        g = torch.Generator(DEVICE).manual_seed(3)
        scheduler.ets = [torch.randn(2, 4, 8, 8, generator=g, device=DEVICE) for _ in range(6)]
        scheduler.set_begin_index(4)
        x = torch.randn(2, 4, 8, 8, generator=g, device=DEVICE)
        for t in scheduler.timesteps[4:7]:
            x = scheduler.step(model(x, t), t, x).prev_sample
        outcomes.append(x)
    assert _relative_error(outcomes[1], outcomes[0]) < 1e-5


def test_a_wrong_weight_fails():
    """The comparison can fail: a wrong Adams-Bashforth weight is seen."""
    from diffaccel.integrations.diffusers.ddim_ddpm import PNDMScheduler

    weights = PNDMScheduler.PLMS_WEIGHTS[3]
    try:
        PNDMScheduler.PLMS_WEIGHTS[3] = (23 / 12, -16 / 12, 6 / 12)
        got = _loop(accelerated.IPNDMScheduler(), steps=10)
    finally:
        PNDMScheduler.PLMS_WEIGHTS[3] = weights
    assert _relative_error(got, _loop(diffusers.IPNDMScheduler(), steps=10)) > 1e-4
