"""diffaccel.integrations.diffusers against stock diffusers: the Helios
schedulers (HeliosScheduler's UniPC and Euler on pyramid stages, Helios DMD),
stepped as the Helios pipelines step them, on video latents."""

import random

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel import benchmarking  # noqa: E402
from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _relative_error, model  # noqa: E402
from pipeline_builders import helios, helios_pyramid  # noqa: E402

pytestmark = MARKS

SHAPE = (2, 4, 3, 8, 6)  # (batch, channels, frames, height, width)


def _set_timesteps(scheduler, steps, stage, **options):
    """set_timesteps as the pyramid pipeline calls it for ``stage`` (HeliosPipeline's call for one stage)."""
    stage_index = stage if scheduler.config.stages > 1 else None
    scheduler.set_timesteps(steps, stage_index, device=DEVICE, **options)


def _start(dtype=torch.float32):
    return torch.randn(SHAPE, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)


def _helios_loop(scheduler, steps, stage=0, dtype=torch.float32, return_dict=True, **options):
    """A stage's loop as HeliosPipeline runs it: step(v, t, x, generator=...)."""
    _set_timesteps(scheduler, steps, stage, **options)
    x, outputs = _start(dtype), []
    for t in scheduler.timesteps:
        out = scheduler.step(model(x, t).to(dtype), t, x, generator=None, return_dict=return_dict)
        outputs.append(out)
        x = out.prev_sample if return_dict else out[0]
    return x, outputs


HELIOS_CONFIGS = [
    {},
    {"scheduler_type": "euler"},
    {"stages": 1},
    {"stages": 1, "shift": 3.0},
    {"stages": 1, "scheduler_type": "euler", "shift": 5.0},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_type": "bh1"},
    {"lower_order_final": False},
    {"disable_corrector": [0, 2]},
    {"predict_x0": False, "prediction_type": "epsilon"},
    {"use_flow_sigmas": False, "prediction_type": "v_prediction"},
    {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    {"stages": 2, "stage_range": [0, 0.5, 1], "gamma": 0.5},
]


def _config_id(config):
    return "-".join(f"{k}={v}" for k, v in config.items()) or "default"


@pytest.mark.parametrize("config", HELIOS_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("steps,stage", [(1, 0), (4, 1), (10, 2)])
def test_helios_loops_equal_stocks(config, steps, stage):
    """Every stage of the pyramid (or the one stage), UniPC of each order and
    solver type, the corrector off at some steps, the Euler mode, dynamic
    shifting (mu, as the pyramid pipeline computes it): the same samples as
    diffusers (which computes the UniPC weights in the sigmas' dtype, float32
    with one stage), and the same HeliosSchedulerOutput fields."""
    if stage >= config.get("stages", 3) and config.get("stages", 3) > 1:
        pytest.skip("no such stage in this config")
    options = {"mu": 0.8} if config.get("use_dynamic_shifting") else {}
    stock, stock_outputs = _helios_loop(diffusers.HeliosScheduler(**config), steps, stage, **options)
    ours, our_outputs = _helios_loop(accelerated.HeliosScheduler(**config), steps, stage, **options)
    assert ours.dtype == stock.dtype and torch.isfinite(stock).all()
    # (Euler: x + dt v, rounded as diffusers rounds it, to the ulp; UniPC: diffusers' weights are float32 at one stage)
    assert _relative_error(ours, stock) < (2e-7 if config.get("scheduler_type") == "euler" else 1e-5)
    for mine, theirs in zip(our_outputs, stock_outputs):
        assert mine.keys() == theirs.keys()
        assert getattr(mine, "this_order", None) == getattr(theirs, "this_order", None)
        if theirs.get("last_sample") is not None:
            assert _relative_error(mine.last_sample, theirs.last_sample) < 1e-5


def test_helios_tuple_output_is_stocks():
    """return_dict=False: UniPC's (prev_sample, model_outputs, last_sample,
    this_order), Euler's (prev_sample,), as diffusers returns them."""
    for config in ({}, {"scheduler_type": "euler"}):
        _, stock = _helios_loop(diffusers.HeliosScheduler(**config), 4, return_dict=False)
        _, ours = _helios_loop(accelerated.HeliosScheduler(**config), 4, return_dict=False)
        for mine, theirs in zip(ours, stock):
            assert len(mine) == len(theirs) == (1 if config else 4)
            assert [type(v) for v in mine] == [type(v) for v in theirs]
            if not config:
                assert mine[1] is theirs[1] is None and mine[3] == theirs[3]
                assert _relative_error(mine[2], theirs[2]) < 1e-5


def test_helios_bf16_and_mixed_dtypes_are_stocks():
    """bf16 samples and model outputs, and a float32 sample with a bf16 model
    output (the pipeline's latents with a bf16 transformer): diffusers' result
    dtypes, and loops at least as close to the float32 loop as stock's (within
    25%: stock rounds its products to bf16, the fused step computes in float32
    and rounds once)."""

    def mixed(scheduler):
        _set_timesteps(scheduler, 6, 0)
        x = _start()
        for t in scheduler.timesteps:
            x = scheduler.step(model(x.float(), t).to(torch.bfloat16), t, x).prev_sample
        return x

    for config in ({}, {"scheduler_type": "euler"}):
        exact, _ = _helios_loop(diffusers.HeliosScheduler(**config), 8, 1)
        stock, _ = _helios_loop(diffusers.HeliosScheduler(**config), 8, 1, dtype=torch.bfloat16)
        ours, _ = _helios_loop(accelerated.HeliosScheduler(**config), 8, 1, dtype=torch.bfloat16)
        assert ours.dtype == stock.dtype == torch.bfloat16
        assert _relative_error(ours, exact) <= 1.25 * _relative_error(stock, exact)
        exact = _helios_loop(diffusers.HeliosScheduler(**config), 6, 0)[0]
        stock, ours = mixed(diffusers.HeliosScheduler(**config)), mixed(accelerated.HeliosScheduler(**config))
        assert ours.dtype == stock.dtype
        assert _relative_error(ours, exact) <= 1.25 * _relative_error(stock, exact)


def test_helios_mixes_with_stocks_own_entry_points():
    """A step through diffusers' own step_unipc (which the drop-in keeps) in the
    middle of a fused loop continues the same state: the loop ends as stock's."""

    def run(scheduler):
        _set_timesteps(scheduler, 6, 1)
        x = _start()
        for i, t in enumerate(scheduler.timesteps):
            if i == 3:
                x = diffusers.HeliosScheduler.step_unipc(scheduler, model(x, t), t, x).prev_sample
            else:
                x = scheduler.step(model(x, t), t, x).prev_sample
        return x

    stock, ours = run(diffusers.HeliosScheduler()), run(accelerated.HeliosScheduler())
    assert _relative_error(ours, stock) < 1e-5


def test_helios_refusals_are_stocks():
    """What stock refuses, the drop-in refuses with the same exception: an
    index for a timestep (Euler mode), scheduler_type="dmd" (step not
    implemented), stepping before set_timesteps; thresholding (which stock's
    Helios cannot do) keeps the stock scheduler under accelerate()."""
    for module in (diffusers, accelerated):
        euler = module.HeliosScheduler(scheduler_type="euler")
        _set_timesteps(euler, 4, 0)
        with pytest.raises(ValueError, match="integer indices"):
            euler.step(model(_start(), 1), 1, _start())
        dmd = module.HeliosScheduler(scheduler_type="dmd")
        _set_timesteps(dmd, 4, 0)
        with pytest.raises(NotImplementedError):
            dmd.step(model(_start(), 1), dmd.timesteps[0], _start())
        with pytest.raises(AttributeError):
            module.HeliosScheduler().step(model(_start(), 1), 999.0, _start())
    with pytest.warns(UserWarning, match="thresholding"):
        kept, changes = accelerated.accelerate(diffusers.HeliosScheduler(thresholding=True))
    assert type(kept) is diffusers.HeliosScheduler and not changes


def _dmd_loop(scheduler, steps, stage=0, dtype=torch.float32, model_dtype=None, amplify=False, tables=None):
    """A stage's loop as the distilled pyramid pipeline runs it: the stage's
    start point as the noise, the scheduler's own tables (or ``tables``)."""
    _set_timesteps(scheduler, steps, stage, is_amplify_first_chunk=amplify)
    x = start = _start(dtype)
    for i, t in enumerate(scheduler.timesteps):
        inputs = benchmarking.helios_dmd_inputs(scheduler, i, start)
        if tables is not None:
            inputs.update(tables(scheduler))
        x = scheduler.step(model(x, t).to(model_dtype or dtype), t, x, **inputs).prev_sample
    return x


DMD_CONFIGS = [{}, {"stages": 1}, {"shift": 3.0, "stages": 1}, {"stages": 2, "stage_range": [0, 0.5, 1]}]


@pytest.mark.parametrize("config", DMD_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("steps,stage,amplify", [(1, 0, False), (2, 0, True), (4, 1, False), (8, 2, False)])
def test_helios_dmd_loops_equal_stocks(config, steps, stage, amplify):
    """The distilled students' steps on every stage, with the first chunk's
    amplified schedule too: the same samples as diffusers."""
    if stage >= config.get("stages", 3) and config.get("stages", 3) > 1:
        pytest.skip("no such stage in this config")
    stock = _dmd_loop(diffusers.HeliosDMDScheduler(**config), steps, stage, amplify=amplify)
    ours = _dmd_loop(accelerated.HeliosDMDScheduler(**config), steps, stage, amplify=amplify)
    assert ours.dtype == stock.dtype
    assert _relative_error(ours, stock) < 1e-6


def test_helios_dmd_other_tables_and_shapes_are_stocks():
    """Tables that are not the scheduler's own (copies on the device), and a
    4-d sample (which diffusers' (batch, 1, 1, 1, 1) sigmas broadcast to a
    5-d result), take diffusers' step: its results exactly."""

    def copies(scheduler):
        return {"dmd_sigmas": scheduler.sigmas.clone(), "dmd_timesteps": scheduler.timesteps.clone()}

    stock = _dmd_loop(diffusers.HeliosDMDScheduler(), 4, 1, tables=copies)
    ours = _dmd_loop(accelerated.HeliosDMDScheduler(), 4, 1, tables=copies)
    assert torch.equal(ours, stock)
    results = []
    for module in (diffusers, accelerated):
        scheduler = module.HeliosDMDScheduler()
        _set_timesteps(scheduler, 4, 0)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
        t = scheduler.timesteps[0]
        results.append(scheduler.step(model(x, t), t, x, **benchmarking.helios_dmd_inputs(scheduler, 0, x)))
    assert results[1].prev_sample.shape == results[0].prev_sample.shape == (2, 2, 4, 8, 8)
    assert torch.equal(results[1].prev_sample, results[0].prev_sample)


def test_helios_dmd_dtypes_are_stocks():
    """The result in the start point's dtype (the model output's at the last
    step); a bf16 model output on float32 latents within bf16 rounding of
    stock (stock rounds its data prediction to bf16 before renoising, the
    fused step does not); each bf16 step at least as close to the float64
    step as stock's."""
    stock = _dmd_loop(diffusers.HeliosDMDScheduler(), 4, 1, model_dtype=torch.bfloat16)
    ours = _dmd_loop(accelerated.HeliosDMDScheduler(), 4, 1, model_dtype=torch.bfloat16)
    assert ours.dtype == stock.dtype == torch.bfloat16  # (the last step: the model output's dtype)
    assert _relative_error(ours, stock) < 1e-2
    schedulers = [diffusers.HeliosDMDScheduler(), accelerated.HeliosDMDScheduler()]
    for scheduler in schedulers:
        _set_timesteps(scheduler, 6, 1)
    start = _start()
    for i, t in enumerate(schedulers[0].timesteps):
        x = _start() * (1.0 - 0.1 * i)
        v = model(x, t)
        x, v, noise = x.bfloat16(), v.bfloat16(), start.bfloat16()
        exact = schedulers[0].step(
            v.double(), t, x.double(), **benchmarking.helios_dmd_inputs(schedulers[0], i, noise.double())
        )
        steps = [s.step(v, s.timesteps[i], x, **benchmarking.helios_dmd_inputs(s, i, noise)) for s in schedulers]
        assert steps[1].prev_sample.dtype == steps[0].prev_sample.dtype == torch.bfloat16
        errors = [_relative_error(step.prev_sample, exact.prev_sample) for step in steps]
        assert errors[1] <= errors[0] * 1.0001, (i, errors)


HELIOS_OPTIONS = {
    "stages": [1, 2, 3],
    "shift": [1.0, 3.0, 0.5],
    "gamma": [1 / 3, 0.5, 1.0],
    "scheduler_type": ["unipc", "euler"],
    "solver_type": ["bh1", "bh2"],
    "predict_x0": [True, False],
    "use_flow_sigmas": [True, False],
    "prediction_type": ["flow_prediction", "epsilon", "v_prediction", "sample"],
    "solver_order": [1, 2, 3],
    "lower_order_final": [True, False],
    "disable_corrector": [[], [0], [1, 3]],
    "use_dynamic_shifting": [False, True],
    "time_shift_type": ["exponential", "linear"],
}
DMD_OPTIONS = ("stages", "shift", "gamma", "use_dynamic_shifting", "time_shift_type")


def _random_helios_runs(count, seed):
    """(class name, config, steps, stage, mu, amplify) drawn from every option's values."""
    rng = random.Random(seed)
    for _ in range(count):
        dmd = rng.random() < 0.25
        keys = DMD_OPTIONS if dmd else tuple(HELIOS_OPTIONS)
        config = {key: rng.choice(HELIOS_OPTIONS[key]) for key in keys if rng.random() < 0.5}
        if config.get("use_dynamic_shifting"):
            config["shift"] = 1.0  # (diffusers asserts it)
        mu = rng.choice([0.5, 1.2]) if config.get("use_dynamic_shifting") else None
        name = "HeliosDMDScheduler" if dmd else "HeliosScheduler"
        yield name, config, rng.choice([1, 2, 3, 5, 8, 13]), rng.choice([0, 1, 2]), mu, dmd and rng.random() < 0.5


def _random_run(cls, config, steps, stage, mu, amplify, float64=False):
    """("ran", sample) or ("raised", error) of a loop; float64: stock's reference, tables and sample in float64."""
    try:
        scheduler = cls(**config)
        options = {} if mu is None else {"mu": mu}
        if "DMD" in cls.__name__:
            options["is_amplify_first_chunk"] = amplify
        _set_timesteps(scheduler, steps, stage, **options)
        if float64:
            scheduler.sigmas, scheduler.timesteps = scheduler.sigmas.double(), scheduler.timesteps.double()
        x = start = _start(torch.float64 if float64 else torch.float32)
        for i, t in enumerate(scheduler.timesteps):
            extra = benchmarking.helios_dmd_inputs(scheduler, i, start) if "DMD" in cls.__name__ else {}
            x = scheduler.step(model(x, t), t, x, **extra).prev_sample
        return "ran", x
    except Exception as error:  # noqa: BLE001  (its type is compared)
        return "raised", error


def _gpu_solver_raised_on_a_non_finite_matrix(stock, ours):
    """On a GPU, diffusers' torch.linalg.solve of UniPC's weights raised
    'singular' where the drop-in's host solve (LAPACK's arithmetic: NaN in, NaN
    out, as stock on the CPU) gave NaN: both fail the run (one configuration of
    200 on the H200, 2026-12-04; docs/diffusers.md)."""
    return (
        DEVICE != "cpu"
        and isinstance(stock[1], torch.linalg.LinAlgError)
        and ours[0] == "ran"
        and not torch.isfinite(ours[1]).all()
    )


def test_random_helios_configurations_are_stocks():
    """200 random configurations of both Helios classes (every option's
    values, any stage, 1-13 steps, dynamic shifting, the amplified first
    chunk): the drop-in raises exactly where diffusers raises, with its
    exception type (its singular UniPC matrices included), is finite where
    diffusers is, and within 1e-5 of it, or, where the last step's weights
    are large (Helios clamps the final flow sigma at 1e-8, so with
    lower_order_final=False, bh1 or a noise prediction its last step combines
    outputs with weights of 1e2-1e8) within 3x of stock's own distance from
    the float64 loop: float32 cancellation in the fused combination, where
    diffusers forms the differences first (on 2026-12-02, over 2,700 random
    configurations, 1.3-3.0x, both sides 4e-6 - 4e-5 from float64)."""
    compared = 0
    for name, config, steps, stage, mu, amplify in _random_helios_runs(200, seed=0):
        stock = _random_run(getattr(diffusers, name), config, steps, stage, mu, amplify)
        ours = _random_run(getattr(accelerated, name), config, steps, stage, mu, amplify)
        case = (name, config, steps, stage)
        if stock[0] == "raised":
            if _gpu_solver_raised_on_a_non_finite_matrix(stock, ours):
                continue
            assert ours[0] == "raised" and type(ours[1]) is type(stock[1]), (case, stock[1], ours[1])
            continue
        assert ours[0] == "ran", (case, ours[1])
        if not torch.isfinite(stock[1]).all():
            continue
        assert torch.isfinite(ours[1]).all(), case
        compared += 1
        if _relative_error(ours[1], stock[1]) > 1e-5:
            exact = _random_run(getattr(diffusers, name), config, steps, stage, mu, amplify, float64=True)[1]
            assert _relative_error(ours[1], exact) <= 3 * _relative_error(stock[1], exact), case
    assert compared >= 120


@pytest.mark.filterwarnings("ignore")  # diffusers' notices about unused components
@pytest.mark.parametrize(
    "build",
    [
        lambda: helios(),
        lambda: helios("euler"),
        lambda: helios_pyramid(),
        lambda: helios_pyramid("euler"),
        lambda: helios_pyramid(distilled=True),
    ],
    ids=["helios-unipc", "helios-euler", "pyramid-unipc", "pyramid-euler", "pyramid-distilled-dmd"],
)
def test_helios_pipelines_give_stocks_latents(build):
    """diffusers' HeliosPipeline (chunks with history latents, classifier-free
    guidance) and HeliosPyramidPipeline (three stages, block noise between
    them; distilled: the DMD scheduler with the stage's start points), tiny
    random transformer and VAE, the stock scheduler then accelerate(pipe):
    the same latents."""

    def latents(pipe, kw):
        pipe.set_progress_bar_config(disable=True)
        torch.manual_seed(1)
        steps = {} if "pyramid_num_inference_steps_list" in kw else {"num_inference_steps": 3}
        return pipe(**kw, **steps, output_type="latent", generator=torch.Generator().manual_seed(2)).frames

    pipe, kw = build()
    stock = latents(pipe, kw)
    pipe, changes = accelerated.accelerate(pipe)
    assert len(changes) == 1
    ours = latents(pipe, kw)
    assert ours.shape == stock.shape and torch.isfinite(stock).all()
    assert _relative_error(ours, stock) < 1e-5
