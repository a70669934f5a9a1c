"""diffaccel.integrations.diffusers against stock diffusers: RePaintScheduler,
in RePaint's own loop (steps forward, jumps back with undo_step), and
RePaintPipeline with a small UNet. The shared tests of
test_diffusers_every_class.py take it from ACCELERATED too (with a known image
and mask, tests/diffusers_helpers.py)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _relative_error, _small_unet, model  # noqa: E402

pytestmark = MARKS


def _repaint_loop(
    module, config, steps, jump_length, jump_n_sample, mask_dtype=torch.float32, sample_dtype=torch.float32
):
    """RePaint's loop as RePaintPipeline runs it: a step where the schedule
    goes down, undo_step (renoising) where it jumps back up."""
    scheduler = module.RePaintScheduler(**config)
    scheduler.set_timesteps(steps, jump_length, jump_n_sample, device=DEVICE)
    g = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g, device=DEVICE).to(sample_dtype)
    original = (torch.rand(2, 3, 8, 8, generator=g, device=DEVICE) * 2 - 1).to(sample_dtype)
    mask = (torch.rand(1, 1, 8, 8, generator=g, device=DEVICE) > 0.5).to(mask_dtype)
    generator = torch.Generator(DEVICE).manual_seed(1)
    t_last = scheduler.timesteps[0] + 1
    for t in scheduler.timesteps:
        if t < t_last:
            # (a model that mixes neighbouring columns, so the known region shapes the unknown one)
            out = model(x.float(), t) + 0.3 * x.float().roll(1, -1)
            x = scheduler.step(out.to(sample_dtype), t, x, original, mask, generator).prev_sample
        else:
            x = scheduler.undo_step(x, t_last, generator)
        t_last = t
    return x


@pytest.mark.parametrize(
    "config,steps,jump_length,jump_n_sample",
    [
        ({}, 25, 10, 10),
        ({"eta": 1.0}, 20, 3, 2),
        ({"eta": 0.5, "clip_sample": False}, 10, 2, 3),
        ({"beta_schedule": "squaredcos_cap_v2", "eta": 0.3}, 30, 5, 2),
    ],
    ids=["default", "eta-1", "eta-0.5-no-clip", "cosine"],
)
def test_repaint_loops_equal_stock(config, steps, jump_length, jump_n_sample):
    want = _repaint_loop(diffusers, config, steps, jump_length, jump_n_sample)
    got = _repaint_loop(accelerated, config, steps, jump_length, jump_n_sample)
    assert got.dtype == want.dtype and _relative_error(got, want) < 1e-5


def test_repaint_mask_and_sample_dtypes():
    """A float64 mask on a float32 sample (diffusers' result is float64, and so is
    the drop-in's), a soft float32 mask, a float64 loop."""
    for mask_dtype, sample_dtype in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        want = _repaint_loop(diffusers, {"eta": 0.5}, 10, 3, 2, mask_dtype, sample_dtype)
        got = _repaint_loop(accelerated, {"eta": 0.5}, 10, 3, 2, mask_dtype, sample_dtype)
        assert got.dtype == want.dtype and _relative_error(got, want) < 1e-5


@pytest.mark.filterwarnings("ignore")
def test_repaint_pipeline_gives_the_same_images(exact_float32_convolutions):
    """diffusers' RePaintPipeline with a small UNet: the same images with the drop-in."""
    unet = _small_unet()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3), device="cpu") * 2 - 1
    mask = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4), device="cpu") > 0.5).float()
    images = []
    for module in (diffusers, accelerated):
        pipe = diffusers.RePaintPipeline(unet=unet, scheduler=module.RePaintScheduler())
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            image,
            mask,
            num_inference_steps=10,
            jump_length=3,
            jump_n_sample=2,
            eta=0.5,
            generator=torch.Generator(DEVICE).manual_seed(0),
            output_type="np",
        )
        images.append(torch.from_numpy(out.images))
    assert _relative_error(images[1], images[0]) < 1e-5
