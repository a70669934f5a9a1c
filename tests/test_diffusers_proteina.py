"""diffaccel.integrations.diffusers against stock diffusers: RFD4-Proteína's
scheduler, stepped as RFD4ProteinaPipeline steps its two modalities
(backbone coordinates (batch, residues, 3), local latents (batch, residues,
width)) with per-design generators and emit masks."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffusers.schedulers import scheduling_rfd4_proteina  # noqa: E402

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _relative_error  # noqa: E402

pytestmark = MARKS

BACKBONE = {"schedule_mode": "log", "noise_mode": "1/t", "tsr_k": 1.0, "tsr_sigma": 1.0}
LATENTS = {"schedule_mode": "power", "noise_mode": "tan", "tsr_k": 10.0, "tsr_sigma": 2.0}


def _velocity(x, t):
    """A deterministic, non-linear stand-in for the network's velocity."""
    return torch.tanh(x.float()) * 0.5 - x.float() * float(t) + 0.1


def _mask(batch=3, tokens=11):
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=DEVICE)
    mask[1, 7:] = False  # (a shorter design: its padding)
    mask[2] = False  # (a design with no token emitted)
    return mask


def _loop(scheduler, steps, width=3, dtype=torch.float32, model_dtype=None, generators="rows", start_time=None):
    """The pipeline's loop for one modality; returns the state and the
    generators' (or the global generator's) state."""
    scheduler.set_timesteps(steps, device=DEVICE, start_time=start_time)
    mask = _mask()
    x = torch.randn(*mask.shape, width, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    if generators == "rows":
        generator = [torch.Generator(DEVICE).manual_seed(10 + row) for row in range(len(x))]
    elif generators == "one":  # (a batch of one design)
        x, mask = x[:1], mask[:1]
        generator = torch.Generator(DEVICE).manual_seed(10)
    else:
        torch.manual_seed(3)
        generator = None
    for index in range(len(scheduler.timesteps)):
        t = scheduler.timesteps[index]  # (as the pipeline indexes it)
        x = scheduler.step(_velocity(x, t).to(model_dtype or dtype), t, x, mask, generator=generator).prev_sample
    if generator is None:
        return x, torch.get_rng_state()
    return x, (generator[-1] if isinstance(generator, list) else generator).get_state()


@pytest.mark.parametrize(
    "config",
    [
        BACKBONE,
        LATENTS,
        dict(BACKBONE, tail_steps=0),
        dict(LATENTS, tail_steps=3, tail_step_multiplier=3),
        dict(BACKBONE, t_lim_ode=0.5, t_lim_ode_below=0.2),
        dict(LATENTS, t_lim_ode=1.0, t_lim_ode_below=0.0),
    ],
    ids=["backbone", "latents", "no-tail", "tail-3x3", "narrow-window", "window-everywhere"],
)
@pytest.mark.parametrize("steps,start_time", [(20, None), (50, None), (30, 0.4)])
@pytest.mark.parametrize("generators", ["rows", "one", "global"])
def test_proteina_loops_equal_stocks(config, steps, start_time, generators):
    """Both modalities' configs, tails, stochastic windows, partial diffusion
    (start_time), per-design generators, one generator, the global stream:
    the same states as diffusers, the same noise drawn (the generators end in
    the same state), padding and empty designs zeroed as diffusers does."""
    stock, stock_rng = _loop(
        diffusers.RFD4ProteinaScheduler(**config), steps, generators=generators, start_time=start_time
    )
    ours, our_rng = _loop(
        accelerated.RFD4ProteinaScheduler(**config), steps, generators=generators, start_time=start_time
    )
    assert ours.dtype == stock.dtype and torch.isfinite(stock).all()
    assert _relative_error(ours, stock) < 2e-6
    assert torch.equal(our_rng, stock_rng)
    if generators != "one":
        assert torch.equal(ours[1, 7:], stock[1, 7:]) and not ours[2].any()


def test_proteina_latent_width_and_dtypes_are_stocks():
    """The local latents' width; bf16 and float64 states and a bf16 velocity
    on a float32 state: diffusers' result dtype (its float32 times promote a
    bf16 state to float32) and its values."""
    cases = [
        dict(width=8),
        dict(dtype=torch.bfloat16),
        dict(dtype=torch.float64),
        dict(dtype=torch.float32, model_dtype=torch.bfloat16),
        dict(dtype=torch.bfloat16, model_dtype=torch.float32),
    ]
    for case in cases:
        stock, _ = _loop(diffusers.RFD4ProteinaScheduler(**LATENTS), 20, **case)
        ours, _ = _loop(accelerated.RFD4ProteinaScheduler(**LATENTS), 20, **case)
        assert ours.dtype == stock.dtype, case
        assert _relative_error(ours, stock) < 1e-4, case  # (bf16 inputs, float32 arithmetic in both)


def _patch_schedule(monkeypatch, times):
    """diffusers' schedules (both classes call its _schedule) with each of
    ``times`` put in place of the nearest time (the schedule stays increasing)."""
    schedule = scheduling_rfd4_proteina._schedule

    def patched(*args, **kwargs):
        result = schedule(*args, **kwargs)
        for time in times:
            result[(result - time).abs().argmin()] = time
        return result

    monkeypatch.setattr(scheduling_rfd4_proteina, "_schedule", patched)


@pytest.mark.parametrize(
    "times",
    [[0.0], [0.02, 0.95], [0.0199999, 0.9500001]],
    ids=["starts-at-zero", "on-the-window-edges", "beside-the-edges"],
)
def test_proteina_edges_are_stocks(monkeypatch, times):
    """Schedules patched to start at t = 0 (the score is undefined: diffusers
    holds the masked state, as the fused step does) or to put a time exactly
    on the stochastic window's edges (compared in float32 as diffusers
    compares them), or beside them: diffusers' states and noise draws."""
    _patch_schedule(monkeypatch, times)
    for generators in ("rows", "global"):
        stock, stock_rng = _loop(diffusers.RFD4ProteinaScheduler(**BACKBONE), 20, generators=generators)
        ours, our_rng = _loop(accelerated.RFD4ProteinaScheduler(**BACKBONE), 20, generators=generators)
        assert torch.isfinite(ours).all()
        assert _relative_error(ours, stock) < 2e-6
        assert torch.equal(our_rng, stock_rng)


def test_proteina_refusals_are_stocks():
    """What diffusers refuses, the drop-in refuses with its exception: a step
    before set_timesteps, a timestep out of order (also a number or another
    tensor of the right value: then diffusers' own check runs), a step past
    the end, too few or repeated generators."""
    for module in (diffusers, accelerated):
        scheduler = module.RFD4ProteinaScheduler(**BACKBONE)
        x, mask = torch.zeros(3, 11, 3, device=DEVICE), _mask()
        with pytest.raises(ValueError, match="set_timesteps"):
            scheduler.step(x, torch.tensor(0.5), x, mask)
        scheduler.set_timesteps(20, device=DEVICE)
        with pytest.raises(ValueError, match="next element"):
            scheduler.step(x, scheduler.timesteps[1], x, mask)
        with pytest.raises(ValueError, match="one torch.Generator per batch row"):
            scheduler.step(x, scheduler.timesteps[0], x, mask, generator=[torch.Generator(DEVICE)] * 2)
        with pytest.raises(ValueError, match="distinct"):
            scheduler.step(x, scheduler.timesteps[0], x, mask, generator=[torch.Generator(DEVICE)] * 3)
        copy = scheduler.timesteps[0].clone()  # (not a view of the schedule: diffusers' check, which passes)
        scheduler.step(x, copy, x, mask)
        for t in scheduler.timesteps[1:]:
            scheduler.step(x, t, x, mask)
        with pytest.raises(ValueError, match="complete"):
            scheduler.step(x, scheduler.timesteps[-1], x, mask)


@pytest.mark.parametrize("config", [BACKBONE, LATENTS], ids=["backbone", "latents"])
@pytest.mark.parametrize("steps", [1, 2])
def test_proteina_few_steps_stay_near_float64(config, steps):
    """One or two steps from t = 1e-3 (deterministic: t_lim_ode=0): diffusers
    computes (x + (1 - t) r s) / t in float32, where x + r (t v - x) cancels
    (r is about 1 at small t) and the division by t = 1e-3 magnifies it, so it
    lands 1-3e-5 from its own float64 run; the fused step's weights, made in
    float64, stay within 1e-6 of that run."""
    config = dict(config, tail_steps=0, t_lim_ode=0.0)
    exact, _ = _loop(diffusers.RFD4ProteinaScheduler(**config), steps, dtype=torch.float64)
    stock, _ = _loop(diffusers.RFD4ProteinaScheduler(**config), steps)
    ours, _ = _loop(accelerated.RFD4ProteinaScheduler(**config), steps)
    assert _relative_error(ours, exact) < 1e-6 < _relative_error(stock, exact)
