"""What the diffusers drop-in tests share: a deterministic non-linear model,
one step and one loop as diffusers' pipelines run them, a small UNet, the
relative error, stock's schedule tables in float64, and the module marks."""

import inspect

import pytest
import torch

import diffusers
from diffaccel import benchmarking
from diffaccel.integrations import diffusers as accelerated

from conftest import DEVICE

# diffusers' own numpy-2 deprecation noise (numpy functions on tensors in set_timesteps).
MARKS = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.usefixtures("host_default_device"),
]

# CogVideoX-5b's scheduler config.
COGVIDEOX_5B = {
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "snr_shift_scale": 1.0,
}


def base_config(name, **config):
    """The config a generic test makes class ``name`` from: what it needs
    beyond its defaults (benchmarking.BASE_CONFIG) and ``config``."""
    return {**benchmarking.BASE_CONFIG.get(name, {}), **config}


def model(x, t):
    """A deterministic, non-linear stand-in for a network (depends on t)."""
    return torch.tanh(x) * 0.5 + 0.1 * torch.sin(x * (1 + float(t) / 1000))


def _step(scheduler, model_output, t, x, previous, **step_options):
    """One step as a pipeline takes it; returns (x, previous). CogVideoX's
    DPM-Solver is handed the previous step's timestep and data prediction
    (``previous``, None at first), as the CogVideoX pipelines hand them back;
    Wuerstchen's the timestep as a (batch,) tensor, ``t.expand(batch)``, as the
    Wuerstchen and Stable Cascade pipelines hand it; the others take diffusers'
    usual step(model_output, timestep, sample); RePaint's the known image and
    mask besides (_repaint_inputs), pi-Flow's a widened output (_widened),
    Helios DMD's its step number, tables and start point as the Helios pyramid
    pipeline hands them (``previous``: the step number and the loop's first
    sample), the sample as video latents of one frame; RFD4-Proteína's an emit
    mask, the sample as (batch, tokens, width)."""
    if isinstance(scheduler, diffusers.CogVideoXDPMScheduler):
        t_back, old = previous or (None, None)
        x, old = scheduler.step(model_output, old, t, t_back, x, **step_options)
        return x, (t, old)
    if isinstance(scheduler, diffusers.RFD4ProteinaScheduler):
        # (batch, tokens, 3)-like states: the sample's rows as tokens, every third token of the last design masked;
        # one generator per design (``previous``), the loop's and generators seeded after it
        mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device).flatten(1)
        mask[-1, ::3] = False
        tokens = (len(x), -1, x.shape[-1])
        generator = step_options.get("generator")
        if previous is None and isinstance(generator, torch.Generator):
            seed = generator.initial_seed()
            previous = [generator] + [torch.Generator(generator.device).manual_seed(seed + k) for k in range(1, len(x))]
        if previous is not None:
            step_options = {**step_options, "generator": previous}
        out = scheduler.step(model_output.reshape(tokens), t, x.reshape(tokens), mask, **step_options)
        return out.prev_sample.reshape(x.shape), previous
    if isinstance(scheduler, diffusers.HeliosDMDScheduler):
        i, start = previous or (0, x)
        tables = benchmarking.helios_dmd_inputs(scheduler, i, start.unsqueeze(2))
        x = scheduler.step(model_output.unsqueeze(2), t, x.unsqueeze(2), **tables, **step_options).prev_sample
        return x.squeeze(2), (i + 1, start)
    t = benchmarking.pipeline_timestep(scheduler, t, len(x))
    if isinstance(scheduler, diffusers.PiflowScheduler):  # a widened output: n_grid predictions per channel
        model_output = _widened(model_output, scheduler.n_grid)
    if isinstance(scheduler, diffusers.RePaintScheduler):  # the known image and its mask too
        known, mask = _repaint_inputs(x)
        return scheduler.step(model_output, t, x, known, mask, **step_options).prev_sample, None
    return scheduler.step(model_output, t, x, **step_options).prev_sample, None


def _widened(model_output, n_grid: int):
    """pi-Flow's widened output from an ordinary one: n_grid differently
    scaled copies side by side in the last dimension."""
    return torch.cat([model_output * (1.0 + 0.1 * g) for g in range(n_grid)], dim=-1)


def _repaint_inputs(x):
    """RePaint's known image and mask for a sample like ``x``: a constant
    image, every other column known (made with ops that run on meta too)."""
    known = torch.full_like(x, 0.25)
    mask = torch.zeros_like(x)
    mask[..., ::2] = 1.0
    return known, mask


def _loop(scheduler, steps=25, dtype=torch.float32, shape=(2, 4, 16, 16), model_dtype=None, start=0, **step_options):
    """A whole sampling loop from seeded noise of ``dtype`` (the model output in
    ``model_dtype``, by default the same); from the start-th step, as img2img
    runs it (set_begin_index where the scheduler has it, then
    scheduler.timesteps[start * order:])."""
    benchmarking.pipeline_set_timesteps(scheduler, steps, DEVICE)
    begin = start * getattr(scheduler, "order", 1)  # (UnCLIPScheduler has no order)
    if begin and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    x = torch.randn(shape, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    if "generator" in inspect.signature(scheduler.step).parameters:  # seeded, unless the caller gives one
        step_options = {"generator": torch.Generator(DEVICE).manual_seed(1), **step_options}
    previous = None
    for t in benchmarking.pipeline_timesteps(scheduler)[begin:]:
        scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model(scaled, t).to(model_dtype or dtype)
        x, previous = _step(scheduler, out, t, x, previous, **step_options)
    return x


def _small_unet():
    """The pipeline tests' network: a small UNet2DModel for 16x16 RGB images,
    randomly initialised from a config with seed 0 (nothing downloaded)."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).to(DEVICE)


def _relative_error(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _float64_tables(scheduler):
    """The stock scheduler whose set_timesteps leaves its tables in float64
    (the schedule itself made as in float32): with a float64 sample diffusers'
    step then computes in float64, the reference where its float32 tables cancel."""
    set_timesteps = scheduler.set_timesteps

    def set_timesteps_then_cast(*args, **kwargs):
        set_timesteps(*args, **kwargs)
        for name in ("alphas_cumprod", "betas", "alphas", "one", "sigmas", "alpha_t", "sigma_t", "lambda_t"):
            table = getattr(scheduler, name, None)
            if isinstance(table, torch.Tensor) and table.is_floating_point():
                setattr(scheduler, name, table.double())

    scheduler.set_timesteps = set_timesteps_then_cast
    return scheduler


def _matches_with_outputs(name, config, steps, field, **step_options):
    """Stock and accelerated ``name`` over the same loop, compared on the final
    sample and on every step's ``field`` output (the consistency schedulers'
    denoised / pred_noised_sample), the noise drawn from the same generator."""
    results = []
    for module in (diffusers, accelerated):
        scheduler = getattr(module, name)(**config)
        scheduler.set_timesteps(steps, device=DEVICE)
        x = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
        g = torch.Generator(DEVICE).manual_seed(1)
        outputs = []
        for t in scheduler.timesteps:
            out = scheduler.step(model(x, t), t, x, generator=g, **step_options)
            x = out.prev_sample
            outputs.append(getattr(out, field))
        results.append((x, outputs))
    (want, want_outputs), (got, got_outputs) = results
    assert _relative_error(got, want) < 1e-5
    for a, b in zip(got_outputs, want_outputs):
        assert _relative_error(a, b) < 1e-5
