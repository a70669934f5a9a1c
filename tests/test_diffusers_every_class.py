"""diffaccel.integrations.diffusers against stock diffusers: behaviours every accelerated
class shares (dtypes, no host reads, reuse, random configurations)."""

import inspect
import pathlib
import random
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel import benchmarking  # noqa: E402
from diffaccel.integrations import diffusers as accelerated  # noqa: E402
from diffaccel.integrations.diffusers import common  # noqa: E402

from conftest import DEVICE, RANDOM_SEEDS  # noqa: E402
from diffusers_helpers import (  # noqa: E402
    MARKS,
    COGVIDEOX_5B,
    _float64_tables,
    _loop,
    _relative_error,
    _step,
    base_config,
    model,
)

pytestmark = MARKS


BF16_CASES = [
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"thresholding": True}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("PNDMScheduler", {}),
    ("PNDMScheduler", {"skip_prk_steps": True}),
    ("EDMEulerScheduler", {}),
    ("EDMDPMSolverMultistepScheduler", {}),
    ("CogVideoXDPMScheduler", COGVIDEOX_5B),
    ("CosineDPMSolverMultistepScheduler", {}),
    ("UnCLIPScheduler", {}),
    ("DDPMWuerstchenScheduler", {}),
]


@pytest.mark.parametrize(
    "name,config",
    BF16_CASES,
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default",
)
def test_bf16_model_within_bf16_tolerance(name, config):
    """With a bf16 model, within bf16 rounding of stock's bf16 loop and as close
    to the float32 loop as stock is (diffusers' EDM DPM-Solver updates in bf16,
    with no float32 upcast, where the fused step computes in float32: there the
    fused loop is about twice as close)."""
    exact = _loop(getattr(diffusers, name)(**config))
    stock = _loop(getattr(diffusers, name)(**config), dtype=torch.bfloat16)
    got = _loop(getattr(accelerated, name)(**config), dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert _relative_error(got, exact) <= 1.25 * _relative_error(stock, exact)
    assert _relative_error(got, stock) < 3e-2


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize(
    "dtypes",
    [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
    ids=["float32-sample-bf16-model", "bf16-sample-float32-model"],
)
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_mixed_dtypes_step_in_diffusers_dtype(name, dtypes):
    """A sample and a model output of different dtypes give diffusers' result
    dtype (their promotion: DPM-Solver++ with float32 latents and a bf16 model
    returned bf16 before, diffusers float32), and a sample close to diffusers'
    or, where diffusers computes in bf16 (the DPM-Solver inverse), to the float32 loop."""
    config = base_config(name)

    def run(module, sample_dtype, model_dtype):
        return _loop(
            getattr(module, name)(**config), steps=10, dtype=sample_dtype, shape=(2, 4, 8, 8), model_dtype=model_dtype
        )

    stock, got = run(diffusers, *dtypes), run(accelerated, *dtypes)
    exact = run(diffusers, torch.float32, torch.float32)
    assert got.dtype == stock.dtype
    assert min(_relative_error(got, stock), _relative_error(got, exact)) < 3e-2


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize(
    "dtypes",
    [(torch.float64, torch.float64), (torch.float32, torch.float64), (torch.float64, torch.float32)],
    ids=["float64", "float32-sample-float64-model", "float64-sample-float32-model"],
)
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_float64_inputs_step_as_diffusers(name, dtypes):
    """A float64 sample or model output: diffusers' arithmetic is then float64
    (also where it upcasts the sample to float32 first), and the fused ops,
    which do not mix float64 with 16/32-bit tensors, take every input in
    float64 (integrations.float64_if_any): diffusers' result dtype and sample
    (measured on the dev VM: within 2.3e-6), the Brownian-tree and renoising
    noise drawn in diffusers' dtype. (Before 2026-11-28 nearly every drop-in
    raised TypeError here, and four drew other noise.)"""
    config = base_config(name)
    stock, got = (
        _loop(getattr(module, name)(**config), steps=10, shape=(2, 4, 8, 8), dtype=dtypes[0], model_dtype=dtypes[1])
        for module in (diffusers, accelerated)
    )
    assert got.dtype == stock.dtype
    assert _relative_error(got, stock) < 1e-5


# (Helios DMD's step is the data prediction renoised: stock rounds twice a step in
# float64, the fused step once, and is closer step by step, but a loop's end
# is as much the toy model's response to each step's rounding: checked step
# by step in tests/test_diffusers_helios.py.)
@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler", "HeliosDMDScheduler"}))
def test_bf16_loops_are_as_close_to_float32_as_stock(name):
    """A bf16 sample and bf16 model output (a GPU pipeline in bf16): diffusers'
    result dtype, and a sample at least as close to the float32 loop as stock's
    bf16 loop (within 25%). Measured on the dev VM, 10 steps: the drop-in
    0.73e-3 to 1.3e-2 from float32, stock 1.5e-3 to 8.5e-2, never closer than
    the drop-in (the fused step rounds to bf16 once, stock at each tensor op)."""
    config = base_config(name)

    def run(module, dtype):
        return _loop(getattr(module, name)(**config), steps=10, shape=(2, 4, 8, 8), dtype=dtype, model_dtype=dtype)

    exact, stock, got = run(diffusers, torch.float32), run(diffusers, torch.bfloat16), run(accelerated, torch.bfloat16)
    assert got.dtype == stock.dtype
    assert _relative_error(got, exact) <= 1.25 * _relative_error(stock, exact)


def test_state_api_is_diffusers():
    s = accelerated.DPMSolverMultistepScheduler(solver_order=3)
    s.set_timesteps(10, device=DEVICE)
    s.set_begin_index(2)
    assert s.begin_index == 2
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    t = s.timesteps[2]
    assert torch.equal(s.scale_model_input(x, t), x)
    out = s.step(model(x, t), t, x, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == x.shape
    assert s.step_index == 3 and s.lower_order_nums == 1
    assert s.model_outputs[-1] is not None
    noisy = s.add_noise(x, torch.randn_like(x), s.timesteps[:1])
    assert noisy.shape == x.shape


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))  # (no step())
def test_steps_do_not_synchronize(name):
    """On CUDA every step, the first included (its step index comes from the
    timestep's position in scheduler.timesteps), runs under
    torch.cuda.set_sync_debug_mode("error"), in a first loop and in a repeat
    (whose coefficients come from the scheduler's ConstantCache). set_timesteps,
    diffusers' own and once per loop, runs outside: it moves its schedule to the
    host itself."""
    scheduler = getattr(accelerated, name)(**base_config(name))
    x = torch.randn(2, 4, 16, 16, device="cuda")
    out = model(x, 0)
    for _run in range(2):
        benchmarking.pipeline_set_timesteps(scheduler, 10, "cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            previous = None
            for t in benchmarking.pipeline_timesteps(scheduler):
                x, previous = _step(scheduler, out, t, x, previous)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x).all()


# (RFD4-Proteína starts part way through set_timesteps(start_time=...) and
# refuses any other first timestep: tests/test_diffusers_proteina.py.)
@pytest.mark.parametrize("start", [1, 4])
@pytest.mark.parametrize(
    "name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler", "RFD4ProteinaScheduler"})
)
def test_a_loop_that_starts_part_way_matches_diffusers(name, start):
    """img2img's loop: set_timesteps, set_begin_index where the scheduler has it,
    then scheduler.timesteps[start * order:] only. (The LMS drop-in failed this:
    diffusers pairs its order-4 weights with the fewer derivatives it has at first.
    On a GPU, DIFFACCEL_TEST_DEVICE=cuda, the timesteps are device views whose
    value the DDIM-family steps take from their position.)"""
    config = base_config(name)
    want, got = (
        _loop(getattr(module, name)(**config), steps=10, shape=(2, 4, 8, 8), start=start)
        for module in (diffusers, accelerated)
    )
    assert _relative_error(got, want) < 1e-5


# Options some schedulers take and others do not, at values that would change
# any step that read them.
FOREIGN_OPTIONS = {"thresholding": True, "sample_max_value": 0.01, "clip_sample": True, "clip_sample_range": 0.01}


FOREIGN_CASES = [
    (name, foreign)
    for name in sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"})
    if (
        foreign := {
            k: v
            for k, v in FOREIGN_OPTIONS.items()
            if k not in inspect.signature(getattr(diffusers, name).__init__).parameters
        }
    )
]


@pytest.mark.filterwarnings("ignore")  # diffusers' notice that the config has keys the class ignores
@pytest.mark.parametrize("name,foreign", FOREIGN_CASES, ids=[name for name, _ in FOREIGN_CASES])
def test_options_the_scheduler_does_not_take_change_nothing(name, foreign):
    """A config loaded from another scheduler's (a DDPM config into DPM-Solver,
    as ``Scheduler.from_config(pipe.scheduler.config)`` does) keeps the keys
    its class does not take; diffusers' step ignores them, so must the fused one."""
    config = base_config(name, **foreign)
    want, got = (
        _loop(getattr(module, name).from_config(config), steps=10, shape=(2, 4, 8, 8))
        for module in (diffusers, accelerated)
    )
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize(
    "name",
    [
        "DPMSolverMultistepScheduler",
        "DEISMultistepScheduler",
        "EDMDPMSolverMultistepScheduler",
        "CosineDPMSolverMultistepScheduler",
        "DDPMWuerstchenScheduler",
        "DPMSolverMultistepInverseScheduler",
        "UniPCMultistepScheduler",
        "LMSDiscreteScheduler",
    ],
)
def test_one_scheduler_reused_across_loops_matches_fresh_ones(name):
    """The multistep steps keep their coefficient values while set_timesteps
    gives the same sigmas (_step_value): a scheduler run for a whole loop, then
    part way (fewer lower-order steps), then for another length, then whole
    again, gives each time what a fresh scheduler gives."""
    cls = getattr(accelerated, name)
    reused = cls()
    for steps, start in [(10, 0), (10, 3), (12, 0), (10, 0)]:
        got = _loop(reused, steps=steps, shape=(2, 4, 8, 8), start=start)
        assert torch.equal(got, _loop(cls(), steps=steps, shape=(2, 4, 8, 8), start=start))


# Options the random-configuration test draws from (each scheduler takes those its __init__ has).
RANDOM_OPTIONS = {
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "timestep_spacing": ["linspace", "leading", "trailing"],
    "prediction_type": ["epsilon", "v_prediction", "sample"],
    "use_karras_sigmas": [True],
    "use_exponential_sigmas": [True],
    "use_beta_sigmas": [True],
    "final_sigmas_type": ["zero", "sigma_min"],
    "steps_offset": [0, 1],
    "rescale_betas_zero_snr": [True, False],
    "solver_order": [1, 2, 3],
    "solver_type": ["midpoint", "heun"],
    "lower_order_final": [True, False],
    "algorithm_type": ["dpmsolver++", "sde-dpmsolver++"],
    "thresholding": [True, False],
    "clip_sample": [True, False],
    "set_alpha_to_one": [True, False],
    "skip_prk_steps": [True, False],
    "euler_at_final": [True, False],
}


def _random_configurations(count, seed=0):
    rng = random.Random(seed)
    names = sorted(
        set(accelerated.ACCELERATED)
        - {"ScoreSdeVeScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
    )  # (slow to build: ~0.2 s)
    while count:
        name = rng.choice(names)
        parameters = inspect.signature(getattr(diffusers, name).__init__).parameters
        config = {k: rng.choice(v) for k, v in RANDOM_OPTIONS.items() if k in parameters and rng.random() < 0.4}
        if sum(k in config for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
            continue
        count -= 1
        yield name, config, rng.choice([1, 2, 3, 4, 7, 16])


def _outcome(cls, config, steps):
    try:
        scheduler = cls(**config)
    except Exception:  # noqa: BLE001  (a configuration diffusers refuses)
        return "refused", None
    if getattr(scheduler, "unsupported_options", lambda: [])():
        return "stock", None
    try:
        return "ran", _loop(scheduler, steps=steps, shape=(1, 3, 8, 8))
    except Exception as error:  # noqa: BLE001
        return "raised", error


@pytest.mark.filterwarnings("ignore")  # diffusers' and torchsde's notices about odd configurations
def test_random_configurations_fail_only_where_diffusers_fails():
    """200 random configurations of the accelerated schedulers per seed
    (RANDOM_SEEDS, see conftest): each raises exactly where stock diffusers
    raises, and gives a finite sample wherever diffusers' is finite. (This
    comparison found the ZeroDivisionError of a step between equal sigmas, the
    NaN of an epsilon model at a zero terminal SNR and the NaN of EDM's SDE
    step where sigma rises by a float32 rounding; those cases are in the
    matrices above. 15 seeds, 2943 configurations compared, found nothing
    more on 2026-11-27.)"""
    compared = 0
    for name, config, steps in (run for seed in RANDOM_SEEDS for run in _random_configurations(200, seed)):
        stock, stock_result = _outcome(getattr(diffusers, name), config, steps)
        ours, our_result = _outcome(getattr(accelerated, name), config, steps)
        if "refused" in (stock, ours) or ours == "stock":
            continue
        assert (ours == "raised") == (stock == "raised"), (name, config, steps, stock_result, our_result)
        if stock == "ran" and torch.isfinite(stock_result).all():
            assert torch.isfinite(our_result).all(), (name, config, steps)
        compared += 1
    assert compared >= 150 * len(RANDOM_SEEDS)


# Found by comparing 2000 random configurations' samples: a cosine schedule's last
# sigma is about 6e2, where stock's float32 coefficients lose digits.
FAR_FROM_STOCK = [
    (
        "DEISMultistepScheduler",
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "use_exponential_sigmas": True},
        2,
    ),
    (
        "DEISMultistepScheduler",
        {
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction",
            "steps_offset": 1,
            "lower_order_final": False,
        },
        4,
    ),
    ("DPMSolverMultistepInverseScheduler", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, 3),
]


@pytest.mark.parametrize("name,config,steps", FAR_FROM_STOCK, ids=lambda v: v if isinstance(v, str) else None)
def test_where_stock_float32_cancels_the_drop_in_is_closer_to_float64(name, config, steps):
    """Loops 2e-4 to 2e-2 from stock (measured on the dev VM): stock with its
    tables in float64 and a float64 sample is the reference; the drop-in in
    float64 gives it to 1e-11, and in float32 lands 8x to 12x closer to it than
    stock does (bound: 5x)."""

    def run(scheduler, dtype):
        return _loop(scheduler, steps=steps, shape=(1, 3, 8, 8), dtype=dtype)

    reference = run(_float64_tables(getattr(diffusers, name)(**config)), torch.float64)
    assert _relative_error(run(getattr(accelerated, name)(**config), torch.float64), reference) < 1e-10
    ours, stock = (
        _relative_error(run(getattr(module, name)(**config), torch.float32), reference)
        for module in (accelerated, diffusers)
    )
    assert stock > 1e-4 and ours < stock / 5


REPEATED = [
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
]


@pytest.mark.parametrize("name", REPEATED)
def test_a_repeated_schedule_copies_no_coefficients(name, monkeypatch):
    """Running the same schedule again (a pipeline called again with the same
    steps) takes every coefficient tensor from the scheduler's cache: no copy
    to the device, and the same result bit for bit; another schedule makes its
    own coefficients."""
    from diffaccel import transfer

    copies = []
    original = transfer.to_device
    monkeypatch.setattr(transfer, "to_device", lambda *args: copies.append(args) or original(*args))
    scheduler = getattr(accelerated, name)()
    first = _loop(scheduler, steps=10)
    made = len(copies)
    assert made >= 10
    again = _loop(scheduler, steps=10)
    assert len(copies) == made
    assert torch.equal(again, first)
    other = _loop(scheduler, steps=12)
    assert len(copies) > made
    assert torch.equal(other, _loop(getattr(accelerated, name)(), steps=12))


# What diffusers' set_timesteps(device=...) leaves on the device; every other
# schedule tensor it keeps on the host (`self.sigmas.to("cpu")`).
ON_DEVICE = {
    "HeliosScheduler": ("timesteps", "sigmas"),
    "HeliosDMDScheduler": ("timesteps", "sigmas"),
    "FlowMatchEulerDiscreteScheduler": ("timesteps", "sigmas"),
    "FlowMatchLCMScheduler": ("timesteps", "sigmas"),
    "FlowMatchHeunDiscreteScheduler": ("timesteps", "sigmas"),
    "LTXEulerAncestralRFScheduler": ("timesteps", "sigmas"),
    "KDPM2DiscreteScheduler": ("timesteps", "sigmas_interpol"),
    "KDPM2AncestralDiscreteScheduler": ("timesteps", "sigmas_interpol", "sigmas_up", "sigmas_down"),
}


NO_READ_CASES = [(name, {}) for name in sorted(accelerated.ACCELERATED)] + [
    ("DPMSolverMultistepScheduler", {"thresholding": True}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_type": "heun"}),
    ("DDIMScheduler", {"thresholding": True}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("HeliosScheduler", {"solver_order": 3}),
    ("HeliosScheduler", {"scheduler_type": "euler"}),
]


def _steps_on_meta(cls, config, steps=10):
    """A whole loop of ``cls`` whose device is the meta device: set_timesteps
    on the host, then the tensors diffusers would put on the device moved to
    meta, the sample and model output on meta too."""
    scheduler = cls(**base_config(cls.__name__, **config))
    benchmarking.pipeline_set_timesteps(scheduler, steps, "cpu")
    if cls.__name__ == "ScoreSdeVeScheduler":
        scheduler.set_sigmas(steps)
    for name in ON_DEVICE.get(cls.__name__, ("timesteps",)):
        setattr(scheduler, name, getattr(scheduler, name).to("meta"))
    x = torch.empty(2, 4, 16, 16, device="meta")
    if cls.__name__ in ("DPMSolverSDEScheduler", "CosineDPMSolverMultistepScheduler"):
        # Their Brownian-tree noise is torchsde's, which cannot make meta tensors
        # (it seeds a generator on the tensors' device): noise of the right shape instead.
        scheduler.noise_sampler = lambda sigma, sigma_next: torch.empty_like(x)
    previous = None
    for t in benchmarking.pipeline_timesteps(scheduler):
        if cls.__name__ == "ScoreSdeVeScheduler":
            x = scheduler.step_correct(x, x).prev_sample
            x = scheduler.step_pred(x, t, x).prev_sample
        else:
            scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            x, previous = _step(scheduler, scaled, t, x, previous)
    return x


@pytest.mark.parametrize(
    "name, config",
    NO_READ_CASES,
    ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default",
)
def test_steps_never_read_the_device(name, config):
    """The CPU machines' check of what test_steps_do_not_synchronize checks on a
    GPU: every step, the first included, runs with the sample, the model output
    and scheduler.timesteps on the meta device, which has no data, so any host
    read of them (.item(), bool(), nonzero, .cpu(), .tolist()) would raise. Stock
    diffusers fails this (next test)."""
    x = _steps_on_meta(getattr(accelerated, name), config)
    assert x.device.type == "meta" and x.shape == (2, 4, 16, 16)


# (Stock Helios reads its device sigmas through torch.tensor(list of 0-d
# tensors), which on the meta device makes a meta tensor without reading.)
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"HeliosScheduler"}))
def test_stock_steps_read_the_device(name):
    """The check above can fail: each stock scheduler reads the device (the
    first step's nonzero / .item() index lookup, or its step's own reads)."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        _steps_on_meta(getattr(diffusers, name), {})


STEP_INDEXED = sorted(
    name for name, cls in accelerated.ACCELERATED.items() if issubclass(cls, common._StepIndexWithoutSync)
)


@pytest.mark.parametrize("name", STEP_INDEXED)
def test_first_step_index_is_diffusers_own(name):
    """The first step's index, found without reading the device, equals stock
    diffusers' for every position (repeated timesteps of Heun included), for
    the timestep given as an element of scheduler.timesteps, a number, or
    another tensor."""
    ours, stock = getattr(accelerated, name)(), getattr(diffusers, name)()
    for scheduler in (ours, stock):
        benchmarking.pipeline_set_timesteps(scheduler, 7, DEVICE)
    for position in range(len(stock.timesteps)):
        for given in (
            lambda s: s.timesteps[position],
            lambda s: s.timesteps[position].item(),
            lambda s: s.timesteps[position].clone(),
        ):
            for scheduler in (ours, stock):
                scheduler._step_index = None
                scheduler._init_step_index(given(scheduler))
            assert ours.step_index == stock.step_index, (position, ours.step_index, stock.step_index)


def test_position_of_a_timestep_view():
    schedule = torch.arange(10.0, 0.0, -1.0)
    assert [common._position_in(schedule, t) for t in schedule] == list(range(10))
    assert common._position_in(schedule[2:], schedule[5]) == 3
    assert common._position_in(schedule[::2], schedule[4]) == 2
    assert common._position_in(schedule[::2], schedule[3]) is None
    assert common._position_in(schedule, schedule[3].clone()) is None
    assert common._position_in(schedule, torch.tensor(3.0)) is None


def _gradients(scheduler, steps=6):
    """Gradients of a loss on a short loop's sample with respect to the initial
    noise and a weight inside the model: backpropagation through the steps
    (reward fine-tuning, gradient guidance, distillation)."""
    benchmarking.pipeline_set_timesteps(scheduler, steps, DEVICE)
    start = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    x = start = start.requires_grad_()
    weight = torch.tensor(0.9, device=DEVICE, requires_grad=True)
    options = (
        {"generator": torch.Generator(DEVICE).manual_seed(1)}
        if "generator" in inspect.signature(scheduler.step).parameters
        else {}
    )
    previous = None
    for t in benchmarking.pipeline_timesteps(scheduler):
        scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x, previous = _step(scheduler, model(scaled, t) * weight, t, x, previous, **options)
    loss = (x * torch.linspace(-1, 1, x.numel(), device=DEVICE).reshape(x.shape)).sum()
    return x.detach(), torch.autograd.grad(loss, [start, weight])


# Every class with a step() (ScoreSdeVe has step_pred / step_correct instead).
GRADIENT_CLASSES = sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"})


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's, in stock too
@pytest.mark.parametrize("name", GRADIENT_CLASSES)
def test_gradients_through_steps_equal_stocks(name):
    """Stock diffusers' step() is differentiable, and so is the drop-in's: the
    same sample and the same gradients (to float32 rounding), where before the
    fused ops had no backward and gradients silently vanished."""
    config = base_config(name)
    stock_x, stock_grads = _gradients(getattr(diffusers, name)(**config))
    x, grads = _gradients(getattr(accelerated, name)(**config))
    assert _relative_error(x, stock_x) < 1e-5
    for got, expected in zip(grads, stock_grads):
        assert float(expected.abs().sum()) > 0
        assert _relative_error(got, expected) < 1e-4, name


def test_every_accelerated_class_subclasses_the_diffusers_class_of_its_name():
    """ACCELERATED (found in the family modules) holds the 43 classes, each
    importable from diffaccel.diffusers and a subclass of its diffusers class."""
    assert len(accelerated.ACCELERATED) == 43
    for name, cls in accelerated.ACCELERATED.items():
        assert issubclass(cls, getattr(diffusers, name)) and getattr(accelerated, name) is cls


def test_the_docs_give_every_diffusers_scheduler_a_status():
    """docs/diffusers.md has a row in its classes table for every accelerated
    class, and names every other diffusers scheduler in its Limits with why
    not (a new diffusers release's new schedulers show up here)."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "diffusers.md").read_text()
    table = text[text.index("## The classes") : text.index("## Numerics")]
    limits = text[text.index("## Limits") : text.index("## Where the code is")]
    rows = {name for line in table.splitlines() if line.startswith("| `") for name in re.findall(r"`(\w+)`", line)}
    schedulers = {
        name
        for name in dir(diffusers)
        if name.endswith("Scheduler") and isinstance(getattr(diffusers, name, None), type)
    }
    assert set(accelerated.ACCELERATED) <= rows
    assert {name for name in schedulers - set(accelerated.ACCELERATED) if f"`{name}`" not in limits} == set()
