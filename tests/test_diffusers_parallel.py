"""diffaccel.integrations.diffusers against stock diffusers: ParaDiGMS's
DDIMParallelScheduler and DDPMParallelScheduler, their step() loops and
their batch_step_no_noise (a batch of samples, each at its own timestep). The
shared tests of test_diffusers_every_class.py and the conformance and pipeline
modules take them from ACCELERATED too."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _loop, _relative_error  # noqa: E402

pytestmark = MARKS

NAMES = ["DDIMParallelScheduler", "DDPMParallelScheduler"]
CONFIGS = [
    {},
    {"clip_sample": False},
    {"clip_sample": False, "prediction_type": "v_prediction"},
    {"clip_sample": False, "prediction_type": "sample"},
    {"thresholding": True, "sample_max_value": 2.0},
    {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
]
CONFIG_IDS = ["default", "no-clip", "v", "sample", "thresholding", "zero-snr"]


def _batch(name, config, steps, positions, use_clipped=False, device=DEVICE):
    """batch_step_no_noise of the stock and the accelerated ``name`` on one
    batch: sample i at scheduler.timesteps[positions[i]]."""
    results = []
    for module in (diffusers, accelerated):
        scheduler = getattr(module, name)(**config)
        scheduler.set_timesteps(steps, device=device)
        g = torch.Generator(device).manual_seed(0)
        x = 3 * torch.randn(len(positions), 4, 8, 8, generator=g, device=device)
        m = torch.randn(len(positions), 4, 8, 8, generator=g, device=device)
        kwargs = {"use_clipped_model_output": use_clipped} if use_clipped else {}
        results.append(scheduler.batch_step_no_noise(m, scheduler.timesteps[positions], x, **kwargs))
    return results


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_batch_step_no_noise_equals_stock(name, config):
    """Every sample at its own timestep, the last one too (t - stride < 0,
    where alpha_prev is 1)."""
    want, got = _batch(name, config, 10, [0, 3, 7, 9, 9, 1])
    assert got.dtype == want.dtype and _relative_error(got, want) < 1e-5


def test_ddim_batch_with_clipped_model_output_and_one_timestep():
    want, got = _batch("DDIMParallelScheduler", {}, 25, [0, 5, 24], use_clipped=True)
    assert _relative_error(got, want) < 1e-5
    want, got = _batch("DDIMParallelScheduler", {"clip_sample": False}, 25, [4])  # one sample
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_batch_step_reads_nothing_on_the_host(name):
    """On the meta device (no data: a host read raises). (Stock assigns
    through a boolean mask there, which on CUDA turns the mask into indices
    with nonzero, a device read; on meta it does not raise.)"""
    scheduler = getattr(accelerated, name)()
    scheduler.set_timesteps(10)
    x = torch.empty(3, 4, 8, 8, device="meta")
    out = scheduler.batch_step_no_noise(x, scheduler.timesteps[[0, 4, 9]].to("meta"), x)
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.parametrize("config", CONFIGS[:3], ids=CONFIG_IDS[:3])
@pytest.mark.parametrize("name", NAMES)
def test_step_loops_equal_stock(name, config):
    step_options = {"eta": 0.5} if name.startswith("DDIM") else {}
    want = _loop(getattr(diffusers, name)(**config), **step_options)
    got = _loop(getattr(accelerated, name)(**config), **step_options)
    assert _relative_error(got, want) < 1e-5


def test_learned_variances_keep_stocks_batch_step():
    """DDPM's learned variances (a model output of twice the channels): diffusers' own step."""
    config = {"variance_type": "learned_range"}
    scheduler, stock = accelerated.DDPMParallelScheduler(**config), diffusers.DDPMParallelScheduler(**config)
    for s in (scheduler, stock):
        s.set_timesteps(10)
    x, m = torch.randn(2, 4, 8, 8), torch.randn(2, 8, 8, 8)
    t = stock.timesteps[[1, 2]]
    assert torch.equal(scheduler.batch_step_no_noise(m, t, x), stock.batch_step_no_noise(m, t, x))


def test_a_wrong_row_fails(monkeypatch):
    """The comparison can fail: a wrong coefficient in the rows is seen."""
    from diffaccel.integrations.diffusers import parallel

    real = parallel._ddim_row
    monkeypatch.setattr(parallel, "_ddim_row", lambda *a: ([v * 1.001 for v in real(*a)[0]], 0.0))
    want, got = _batch("DDIMParallelScheduler", {"clip_sample": False}, 10, [0, 3, 7])
    assert _relative_error(got, want) > 1e-4
