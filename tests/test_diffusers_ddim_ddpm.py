"""diffaccel.integrations.diffusers against stock diffusers: the host-timestep schedulers
(DDIM and inverse, CogVideoX, UnCLIP, Wuerstchen, DDPM, PNDM, score SDE VE)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402
from diffaccel.integrations.diffusers import common  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, COGVIDEOX_5B, _float64_tables, _loop, _relative_error, _small_unet, model  # noqa: E402

pytestmark = MARKS


DDIM_CASES = [
    ({}, {}),
    ({"clip_sample": False}, {}),
    ({"clip_sample": False}, {"eta": 1.0}),
    ({}, {"eta": 0.5, "use_clipped_model_output": True}),
    ({"thresholding": True, "clip_sample": False}, {}),
    ({"thresholding": True, "sample_max_value": 2.0}, {"eta": 0.3}),
    ({"clip_sample_range": 0.5}, {}),
    ({"prediction_type": "sample"}, {}),
    ({"prediction_type": "v_prediction", "clip_sample": False}, {"eta": 1.0}),
    ({"set_alpha_to_one": False, "timestep_spacing": "trailing"}, {}),
    ({"timestep_spacing": "linspace", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {}),
    (
        {
            "steps_offset": 1,
            "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
        },
        {},
    ),
    # epsilon at a zero terminal SNR: the first x0 is infinite, and clip_sample makes it +-1
    ({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, {}),
]


@pytest.mark.parametrize(
    "config,step_options", DDIM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_ddim_matches_diffusers(config, step_options):
    want = _loop(diffusers.DDIMScheduler(**config), **step_options)
    got = _loop(accelerated.DDIMScheduler(**config), **step_options)
    assert _relative_error(got, want) < 1e-5


def test_ddim_outputs_and_device_timesteps():
    """pred_original_sample is the (clipped) data prediction; device timesteps are counted, not read."""
    stock, ours = diffusers.DDIMScheduler(), accelerated.DDIMScheduler()
    for s in (stock, ours):
        s.set_timesteps(10, device=DEVICE)
    x = torch.randn(2, 4, 8, 8, device=DEVICE)
    t = ours.timesteps[0]
    a = stock.step(model(x, t), t, x, return_dict=False)
    b = ours.step(model(x, t), t, x, return_dict=False)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_device_timesteps_are_found_by_position():
    """A device timestep that is an element of scheduler.timesteps is located by
    its position, not read (meta tensors have nothing to read), also when the
    loop starts part-way as img2img's does (the step counter then says 0)."""
    scheduler = accelerated.DDIMScheduler()
    scheduler.set_timesteps(10)
    host = scheduler.timesteps.tolist()
    scheduler.timesteps = scheduler.timesteps.to("meta")
    for position in (0, 4, 9):
        assert common._host_timestep(scheduler, scheduler.timesteps[position], counter=0) == host[position]
    for position, t in enumerate(scheduler.timesteps[4:], start=4):
        assert common._host_timestep(scheduler, t, counter=position - 4) == host[position]


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_ddim_pipeline_gives_the_same_images():
    """diffusers' DDIMPipeline with a small randomly initialised UNet2DModel (built
    from a config, nothing downloaded): the same images with either scheduler."""
    unet = _small_unet()
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def images():
        return pipe(
            batch_size=2,
            generator=torch.Generator(DEVICE).manual_seed(3),
            num_inference_steps=10,
            eta=0.5,
            output_type="np",
        ).images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.DDIMScheduler) and len(changes) == 1
    fused = images()
    assert abs(fused - stock).max() < 1e-4  # images in [0, 1]


COGVIDEOX_CASES = [
    {},
    # CogVideoX-2b's configuration
    {
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "clip_sample": False,
        "set_alpha_to_one": True,
        "snr_shift_scale": 3.0,
    },
    # CogVideoX-5b's (its alphas_cumprod ends on exactly 0: a half log-SNR of -inf at the first step)
    COGVIDEOX_5B,
    {"prediction_type": "sample", "snr_shift_scale": 1.0},
    {"set_alpha_to_one": False, "timestep_spacing": "linspace", "beta_schedule": "linear"},
    {"steps_offset": 1, "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"},
]


@pytest.mark.parametrize("steps", [25, 4])
@pytest.mark.parametrize(
    "config", COGVIDEOX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_cogvideox_ddim_matches_diffusers(config, steps):
    """CogVideoX's DDIM: its SNR-shifted schedule is diffusers' own; the step
    (a_t x + b_t x0, no clipping, eta unused) is one ei_step."""
    want = _loop(diffusers.CogVideoXDDIMScheduler(**config), steps=steps)
    got = _loop(accelerated.CogVideoXDDIMScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5
    # eta and a generator change nothing, as in diffusers
    eta_want = _loop(diffusers.CogVideoXDDIMScheduler(**config), steps=steps, eta=1.0)
    assert torch.equal(_loop(accelerated.CogVideoXDDIMScheduler(**config), steps=steps, eta=1.0), got)
    assert torch.equal(eta_want, want)


@pytest.mark.parametrize("steps", [50, 4, 1])
@pytest.mark.parametrize(
    "config", COGVIDEOX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_cogvideox_dpm_matches_diffusers(config, steps):
    """CogVideoX's SDE-DPM-Solver++(2M), stepped as its pipelines step it
    (_step: the previous timestep and data prediction handed back), with the
    same generator: one ei_step a step, its noise drawn where diffusers draws it."""
    want = _loop(diffusers.CogVideoXDPMScheduler(**config), steps=steps)
    got = _loop(accelerated.CogVideoXDPMScheduler(**config), steps=steps)
    # Measured: 5e-8 to 7e-7.
    assert _relative_error(got, want) < 1e-5


def test_cogvideox_dpm_draws_and_returns_as_diffusers():
    """The generator ends where diffusers leaves it (diffusers draws twice on a
    second-order step and uses the second draw), and step() returns what
    diffusers' returns: a tuple on the first-order steps (the first and the
    last) even with return_dict=True, a DDIMSchedulerOutput on the others."""
    ends = []
    for module in (diffusers, accelerated):
        scheduler = module.CogVideoXDPMScheduler()
        scheduler.set_timesteps(5)
        generator = torch.Generator().manual_seed(3)
        x, old, kinds = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), None, []
        for i, t in enumerate(scheduler.timesteps):
            result = scheduler.step(
                model(x, t), old, t, scheduler.timesteps[i - 1] if i else None, x, generator=generator, return_dict=True
            )
            kinds.append(type(result).__name__)
            x, old = result if isinstance(result, tuple) else (result.prev_sample, result.pred_original_sample)
        ends.append((kinds, generator.get_state(), x))
    (want_kinds, want_state, want), (kinds, state, got) = ends
    assert kinds == want_kinds == ["tuple"] + ["DDIMSchedulerOutput"] * 3 + ["tuple"]
    assert torch.equal(state, want_state)
    assert _relative_error(got, want) < 1e-5


def test_cogvideox_dpm_needs_the_previous_timestep_with_the_previous_prediction():
    scheduler = accelerated.CogVideoXDPMScheduler()
    scheduler.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8)
    t = scheduler.timesteps
    _, old = scheduler.step(model(x, t[0]), None, t[0], None, x)
    with pytest.raises(ValueError, match="timestep_back"):
        scheduler.step(model(x, t[1]), old, t[1], None, x)


DDIM_INVERSE_CASES = [
    {},
    {"clip_sample_range": 0.5},
    {"clip_sample": False},
    {"prediction_type": "v_prediction", "set_alpha_to_one": True},
    {"prediction_type": "sample", "clip_sample": False, "set_alpha_to_one": False},  # (else 0/0 at t = 0)
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "timestep_spacing": "trailing",
        "clip_sample": False,
    },
]


@pytest.mark.parametrize("steps", [25, 5])
@pytest.mark.parametrize(
    "config", DDIM_INVERSE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_ddim_inverse_matches_diffusers(config, steps):
    want = _loop(diffusers.DDIMInverseScheduler(**config), steps=steps)
    got = _loop(accelerated.DDIMInverseScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


UNCLIP_CASES = [{}, {"clip_sample": False}, {"clip_sample_range": 5.0}, {"prediction_type": "sample"}]


def _unclip_loop(scheduler, steps, prev, dtype=torch.float32):
    """A Kandinsky prior's loop: (2, 1280) image embeddings, each step handed the
    next timestep as prev_timestep (None at the last), or, without ``prev``, none
    (diffusers then steps to t - 1). The model's output is float32."""
    scheduler.set_timesteps(steps, device=DEVICE)
    x = torch.randn(2, 1280, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    generator = torch.Generator(DEVICE).manual_seed(1)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        following = timesteps[i + 1] if prev and i + 1 < len(timesteps) else None
        x = scheduler.step(model(x, t).float(), t, x, prev_timestep=following, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("prev", [True, False], ids=["prev_timestep", "t-1"])
@pytest.mark.parametrize("steps", [25, 5])
@pytest.mark.parametrize("config", UNCLIP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_unclip_matches_diffusers(config, steps, prev):
    """Within 3e-4 of stock and at least as close as stock to diffusers' own
    loop in float64: a step to prev_timestep computes alpha = 1 - (1 - a_t / a_prev),
    which float32 rounds badly when the step is long (5 steps: stock 1e-4 from
    the float64 loop, the fused step, whose host arithmetic is float64, 1e-7)."""
    exact = _unclip_loop(_float64_tables(diffusers.UnCLIPScheduler(**config)), steps, prev, dtype=torch.float64)
    want = _unclip_loop(diffusers.UnCLIPScheduler(**config), steps, prev)
    got = _unclip_loop(accelerated.UnCLIPScheduler(**config), steps, prev)
    assert _relative_error(got, want) < 3e-4
    assert _relative_error(got, exact) <= max(_relative_error(want, exact), 1e-6)


def test_unclip_keeps_diffusers_step_where_it_does_not_fuse():
    """learned_range variances keep the stock class; a step before set_timesteps
    (diffusers' default schedule) is diffusers' own."""
    with pytest.warns(UserWarning, match="variance_type='learned_range'"):
        kept, changes = accelerated.accelerate(diffusers.UnCLIPScheduler(variance_type="learned_range"))
    assert type(kept) is diffusers.UnCLIPScheduler and changes == []
    x = torch.randn(2, 1280, generator=torch.Generator().manual_seed(0))
    outputs = [
        module.UnCLIPScheduler().step(model(x, 999), 999, x, generator=torch.Generator().manual_seed(1))
        for module in (diffusers, accelerated)
    ]
    assert torch.equal(outputs[0].prev_sample, outputs[1].prev_sample)


WUERSTCHEN_CASES = [{}, {"scaler": 2.0}, {"scaler": 0.5}, {"s": 0.02}]


def _wuerstchen_loop(scheduler, steps=None, timesteps=None, timestep_dtype=torch.float32, per_sample=False):
    """Stable Cascade's loop: over timesteps[:-1], each step handed
    ``t.expand(batch).to(dtype)`` (a view of scheduler.timesteps in float32, a
    copy in bf16), or, with ``per_sample``, a different timestep per sample."""
    scheduler.set_timesteps(steps, timesteps=timesteps, device=DEVICE)
    x = torch.randn(2, 16, 12, 12, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps[:-1]:
        ratio = (torch.stack([t, t * 0.97]) if per_sample else t.expand(len(x))).to(timestep_dtype)
        x = scheduler.step(model(x, ratio[0]), ratio, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("timestep_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("steps", [20, 4, 1])
@pytest.mark.parametrize(
    "config", WUERSTCHEN_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_wuerstchen_matches_diffusers(config, steps, timestep_dtype):
    want = _wuerstchen_loop(diffusers.DDPMWuerstchenScheduler(**config), steps, timestep_dtype=timestep_dtype)
    got = _wuerstchen_loop(accelerated.DDPMWuerstchenScheduler(**config), steps, timestep_dtype=timestep_dtype)
    # Measured on the dev VM: 7e-8 to 3.2e-7.
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize(
    "options",
    [{"timesteps": [1.0, 0.62, 0.0]}, {"steps": 10, "per_sample": True}],
    ids=["given-timesteps", "per-sample-timesteps"],
)
def test_wuerstchen_given_and_per_sample_timesteps_match_diffusers(options):
    want = _wuerstchen_loop(diffusers.DDPMWuerstchenScheduler(), **options)
    got = _wuerstchen_loop(accelerated.DDPMWuerstchenScheduler(), **options)
    assert _relative_error(got, want) < 1e-5


DDPM_CASES = [
    {},
    {"clip_sample": False},
    {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small_log", "prediction_type": "v_prediction", "clip_sample": False},
    {"thresholding": True, "sample_max_value": 1.5},
    {"prediction_type": "sample", "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},  # epsilon, clipped: see DDIM_CASES
]


@pytest.mark.parametrize("config", DDPM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_ddpm_matches_diffusers(config):
    want = _loop(diffusers.DDPMScheduler(**config))
    got = _loop(accelerated.DDPMScheduler(**config))
    assert _relative_error(got, want) < 1e-5


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_ddpm_custom_timesteps_and_pipeline():
    stock, ours = diffusers.DDPMScheduler(), accelerated.DDPMScheduler()
    for sch in (stock, ours):
        sch.set_timesteps(timesteps=[900, 700, 400, 100, 0])
    x = torch.randn(2, 4, 8, 8, device=DEVICE)
    results = []
    for sch in (stock, ours):
        y, g = x, torch.Generator(DEVICE).manual_seed(5)
        for t in sch.timesteps:
            y = sch.step(model(y, t), t, y, generator=g).prev_sample
        results.append(y)
    assert _relative_error(results[1], results[0]) < 1e-5
    unet = _small_unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    stock_images = pipe(
        batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10, output_type="np"
    ).images
    accelerated.accelerate(pipe)
    fused_images = pipe(
        batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10, output_type="np"
    ).images
    assert abs(fused_images - stock_images).max() < 1e-4


PNDM_CASES = [
    {},
    {"skip_prk_steps": True},
    {"prediction_type": "v_prediction"},
    {"skip_prk_steps": True, "prediction_type": "v_prediction", "set_alpha_to_one": True},
    # Stable Diffusion 1.x's scheduler config
    {
        "skip_prk_steps": True,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
    },
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace", "skip_prk_steps": True},
]


@pytest.mark.parametrize("steps", [25, 4])
@pytest.mark.parametrize("config", PNDM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_pndm_matches_diffusers(config, steps):
    """Runge-Kutta warm-up stages (skip_prk_steps=False) and PLMS steps, the
    second PLMS step's repeated timestep included."""
    want = _loop(diffusers.PNDMScheduler(**config), steps=steps)
    got = _loop(accelerated.PNDMScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


def test_pndm_plms_before_the_runge_kutta_steps_is_refused_as_diffusers_refuses():
    for cls in (diffusers.PNDMScheduler, accelerated.PNDMScheduler):
        scheduler = cls()
        scheduler.set_timesteps(10)
        x = torch.randn(1, 4, 8, 8, device=DEVICE)
        with pytest.raises(ValueError, match="can only be run AFTER scheduler has been run in 'prk' mode"):
            scheduler.step_plms(x, scheduler.timesteps[0], x)


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_pndm_pipeline_gives_the_same_images():
    unet = _small_unet()
    pipe = diffusers.PNDMPipeline(unet=unet, scheduler=diffusers.PNDMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def images():
        return pipe(
            batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10, output_type="np"
        ).images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.PNDMScheduler) and len(changes) == 1
    assert abs(images() - stock).max() < 1e-4  # images in [0, 1]


def score(x, sigma):
    """A stable, non-linear score of VE-noised data: about -(x - x0) / sigma^2."""
    return -(x - 0.3 * torch.tanh(x)) / (sigma**2 + 1)


@pytest.mark.parametrize("correct_steps", [0, 1, 2])
def test_score_sde_ve_matches_diffusers(correct_steps):
    """The loop of diffusers' ScoreSdeVePipeline: correct_steps Langevin corrections, then a predictor step."""
    results = []
    for cls in (diffusers.ScoreSdeVeScheduler, accelerated.ScoreSdeVeScheduler):
        scheduler = cls(snr=0.16)
        scheduler.set_timesteps(20, device=DEVICE)
        scheduler.set_sigmas(20)
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE) * 50
        # A host generator: stock step_correct draws on the generator's device without naming one,
        # which diffusers refuses for a CUDA generator.
        g = torch.Generator().manual_seed(1)
        for i, t in enumerate(scheduler.timesteps):
            sigma = float(scheduler.sigmas[i])
            for _ in range(correct_steps):
                x = scheduler.step_correct(score(x, sigma), x, generator=g).prev_sample
            out = scheduler.step_pred(score(x, sigma), t, x, generator=g)
            x = out.prev_sample
        results.append((out.prev_sample_mean, x))
    (want_mean, want), (got_mean, got) = results
    assert _relative_error(got, want) < 1e-5
    assert _relative_error(got_mean, want_mean) < 1e-5
