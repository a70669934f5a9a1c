"""Conformance: every accelerated diffusers class side by side with stock
through the generic behaviors diffusers and its pipelines rely on. Each test
runs one action on a stock scheduler and on the drop-in made the same way and
fails where stock works and the drop-in does not, where the two differ beyond
1e-5 relative, or where stock raises and the drop-in raises something else."""

import functools
import importlib
import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel import benchmarking  # noqa: E402
from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _float64_tables, _loop, _relative_error, base_config, model  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore")] + MARKS  # diffusers' notices about odd configurations

NAMES = sorted(accelerated.ACCELERATED)
STEPPING = sorted(set(NAMES) - {"ScoreSdeVeScheduler"})  # (ScoreSdeVe has step_pred / step_correct, no step)


def _outcome(action):
    """("ran", result) or ("raised", the exception)."""
    try:
        return "ran", action()
    except Exception as error:  # noqa: BLE001  (any exception: its type is compared)
        return "raised", error


def _tensors(result):
    """The tensors of a result, in order (a tensor, a tuple, a diffusers output)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict) or hasattr(result, "to_tuple"):
        result = result.to_tuple() if hasattr(result, "to_tuple") else tuple(result.values())
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _tensors(r)]
    return []


def _distance(a, b):
    return (a.double() - b.double()).norm()


def assert_same_outcome(stock, ours, tolerance=1e-5):
    """Stock raised and ours raised the same type, or both ran with results of
    the same shapes and dtypes within ``tolerance`` relative. Where stock's
    result is not finite (configurations that divide by a zero SNR, or whose
    float32 arithmetic overflows), the values are not compared: which of inf,
    NaN or a huge number comes out is down to rounding (docs/diffusers.md)."""
    (stock_kind, stock_result), (our_kind, our_result) = stock, ours
    if stock_kind == "raised":
        assert our_kind == "raised", f"stock raised {stock_result!r}, the drop-in ran"
        assert type(our_result) is type(stock_result), (stock_result, our_result)
        return
    assert our_kind == "ran", f"stock ran, the drop-in raised {our_result!r}"
    want, got = _tensors(stock_result), _tensors(our_result)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert (g.shape, g.dtype) == (w.shape, w.dtype)
        if not w.dtype.is_floating_point:
            assert torch.equal(g, w)
        elif torch.isfinite(w).all():
            assert torch.isfinite(g).all()
            assert _distance(g, w) <= tolerance * w.double().norm(), _relative_error(g, w)


def side_by_side(name, action, make=None, tolerance=1e-5):
    """``action(scheduler)`` on stock ``name`` and on the drop-in, each made by
    ``make(cls)`` (default: the class with base_config's config), compared."""
    make = make or (lambda cls: cls(**base_config(name)))
    outcomes = []
    for module in (diffusers, accelerated):
        cls = getattr(module, name)
        torch.manual_seed(0)  # (noise a step draws without a generator comes from the global one)
        outcomes.append(_outcome(lambda: action(make(cls))))
    assert_same_outcome(*outcomes, tolerance=tolerance)
    return outcomes


# --- signatures ----------------------------------------------------------------------------------


def _public_methods(cls):
    for attr in sorted(dir(cls)):
        value = getattr(cls, attr)
        if not attr.startswith("_") and callable(value) and not isinstance(value, type):
            yield attr, value


@pytest.mark.parametrize("name", NAMES)
def test_every_public_method_has_stocks_signature(name):
    """Names, kinds, defaults and annotations of every public method stock has
    (pipelines inspect them: retrieve_timesteps looks for ``sigmas``,
    ``timesteps`` and ``mu`` in set_timesteps' parameters; the FluxPipeline
    broke on a ``(*args, **kwargs)`` set_timesteps)."""
    stock, ours = getattr(diffusers, name), getattr(accelerated, name)
    differ = []
    for attr, method in _public_methods(stock):
        try:
            want = inspect.signature(method)
        except (TypeError, ValueError):  # a builtin without one
            continue
        if inspect.signature(getattr(ours, attr)) != want:
            differ.append((attr, str(want), str(inspect.signature(getattr(ours, attr)))))
    assert not differ


@pytest.mark.parametrize("module", ["flux.pipeline_flux", "stable_diffusion_3.pipeline_stable_diffusion_3"])
def test_retrieve_timesteps_sees_sigmas_and_mu(module):
    """diffusers' retrieve_timesteps decides from set_timesteps' signature
    whether custom sigmas (and Flux's mu) may be passed."""
    pytest.importorskip("transformers", reason="diffusers' pipelines import it (make test installs it)")
    module = importlib.import_module(f"diffusers.pipelines.{module}")
    scheduler = accelerated.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sigmas = [1.0, 0.75, 0.5, 0.25]
    timesteps, steps = module.retrieve_timesteps(scheduler, 4, DEVICE, sigmas=sigmas, mu=0.5)
    stock = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    want, _ = module.retrieve_timesteps(stock, 4, DEVICE, sigmas=sigmas, mu=0.5)
    assert steps == 4 and torch.equal(timesteps, want)


# --- stepping without set_timesteps, off the schedule ---------------------------------------------


def _three_steps_without_set_timesteps(scheduler):
    """Steps at the first timesteps of the schedule __init__ leaves (some classes
    have one: Euler, Euler ancestral, Heun), or at 999, 998, 997."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    initial = getattr(scheduler, "timesteps", None)
    if isinstance(initial, torch.Tensor) and initial.numel() >= 3:
        timesteps = list(initial[:3])
    else:
        timesteps = [999, 998, 997]
    for t in timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", STEPPING)
def test_step_before_set_timesteps_as_stock(name):
    """Stock Euler, Euler ancestral and Heun build their training sigmas in
    __init__ and can step at once; the others raise, and so must the drop-ins,
    with the same exception type."""
    side_by_side(name, _three_steps_without_set_timesteps)


# --- saved configs, compatible classes ------------------------------------------------------------


def _public(config):
    """A scheduler config's public keys (not diffusers' _class_name, _use_default_values, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", NAMES)
def test_save_config_from_pretrained_round_trip(name, tmp_path):
    """A drop-in saved with save_config and loaded with from_pretrained is the
    same class with the same config, and steps identically."""
    cls = getattr(accelerated, name)
    original = cls(**base_config(name), steps_offset=1) if "steps_offset" in inspect.signature(cls).parameters else None
    original = original or cls(**base_config(name))
    original.save_config(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls and _public(loaded.config) == _public(original.config)
    if name != "ScoreSdeVeScheduler":
        assert torch.equal(_loop(loaded, steps=6, shape=(1, 4, 8, 8)), _loop(original, steps=6, shape=(1, 4, 8, 8)))


@functools.cache
def _default_config(module, name):
    """A default ``name``'s config, as a pipeline's scheduler has it (made
    once: KDPM2's __init__ takes 0.2 s, and the pairs ask for each class's often)."""
    return getattr(module, name)(**base_config(name)).config


COMPATIBLE_PAIRS = sorted(
    {
        (name, other.__name__)
        for name in STEPPING
        for other in getattr(diffusers, name)._get_compatibles()
        if other.__name__ in STEPPING and other.__name__ != name
    }
)


@pytest.mark.parametrize("name,other", COMPATIBLE_PAIRS, ids=[f"{a}<-{b}" for a, b in COMPATIBLE_PAIRS])
def test_from_config_of_a_compatible_class(name, other):
    """``name.from_config(other().config)``, the way a user swaps a pipeline's
    scheduler: a drop-in ``other``'s config is stock's (so either side may
    come from either), and the drop-in ``name`` made from it steps as stock
    ``name`` does."""
    config = _default_config(diffusers, other)
    assert _public(_default_config(accelerated, other)) == _public(config)
    want = _loop(getattr(diffusers, name).from_config(config, **base_config(name)), steps=5, shape=(1, 4, 8, 8))
    got = _loop(getattr(accelerated, name).from_config(config, **base_config(name)), steps=5, shape=(1, 4, 8, 8))
    assert _relative_error(got, want) <= 1e-5


# --- every config option over its range -----------------------------------------------------------

# Values each option takes in diffusers, the ends of its range included; a
# case sets one option (with what it needs to be read) on the class's defaults.
OPTION_VALUES = {
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "prediction_type": ["epsilon", "v_prediction", "sample", "flow_prediction"],
    "timestep_spacing": ["linspace", "leading", "trailing"],
    "steps_offset": [0, 1, 5],
    "rescale_betas_zero_snr": [True],
    "use_karras_sigmas": [True],
    "use_exponential_sigmas": [True],
    "use_beta_sigmas": [True],
    "final_sigmas_type": ["zero", "sigma_min"],
    "clip_sample": [True, False],
    "clip_sample_range": [0.0, 0.5, 1.0, 3.0],
    "thresholding": [True],
    "dynamic_thresholding_ratio": [0.0, 0.5, 0.995, 1.0],
    "sample_max_value": [0.0, 0.5, 1.0, 3.0],
    "set_alpha_to_one": [True, False],
    "solver_order": [1, 2, 3, 4],
    "solver_type": ["midpoint", "heun", "logrho", "bh1", "bh2"],
    "algorithm_type": ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver", "deis", "data_prediction"],
    "lower_order_final": [True, False],
    "euler_at_final": [True],
    "variance_type": ["fixed_small", "fixed_large", "learned", "learned_range"],
    "skip_prk_steps": [True],
    "timestep_type": ["discrete", "continuous"],
    "interpolation_type": ["linear", "log_linear"],
    "shift": [0.5, 3.0],
    "use_dynamic_shifting": [False],
    "invert_sigmas": [True],
    "shift_terminal": [0.1],
    "stochastic_sampling": [True],
    "sigma_min": [0.002, 0.1],
    "sigma_max": [1.0, 80.0],
    "sigma_data": [0.5, 1.0],
    "rho": [1.0, 7.0],
    "eta": [0.0, 0.5, 1.0],
    "s_noise": [0.0, 1.0],
    "predictor_order": [1, 2, 3],
    "corrector_order": [1, 2, 3],
    "disable_corrector": [[0], [0, 1, 2]],
}

# What an option needs set beside it to be read at all.
NEEDS = {
    "clip_sample_range": {"clip_sample": True},
    "dynamic_thresholding_ratio": {"thresholding": True},
    "sample_max_value": {"thresholding": True},
}


def _option_cases():
    for name in STEPPING:
        parameters = inspect.signature(getattr(diffusers, name).__init__).parameters
        for option, values in OPTION_VALUES.items():
            if option not in parameters:
                continue
            for value in values:
                config = {k: v for k, v in NEEDS.get(option, {}).items() if k in parameters}
                yield name, {**config, option: value}


OPTION_CASES = list(_option_cases())


@pytest.mark.parametrize(
    "name,config", OPTION_CASES, ids=[f"{n}-" + "-".join(f"{k}={v}" for k, v in c.items()) for n, c in OPTION_CASES]
)
@pytest.mark.parametrize("steps", [1, 7])
def test_every_config_option_over_its_range(name, config, steps):
    """Each option at each value stock takes (ratio 0 and 1, range 0,
    every spacing, sigma kind, solver type, ...): the drop-in runs where stock
    runs, with stock's result, and raises stock's exception type where stock
    raises (at construction or in the loop)."""

    def make(module, dtype=torch.float32):
        def loop():  # (building the scheduler is part of the outcome: stock refuses some configs)
            scheduler = getattr(module, name)(**base_config(name), **config)
            scheduler = _float64_tables(scheduler) if dtype == torch.float64 else scheduler
            torch.manual_seed(0)  # (noise a step draws without a generator comes from the global one)
            return _loop(scheduler, steps=steps, shape=(2, 4, 8, 8), dtype=dtype)

        return loop

    stock, ours = _outcome(make(diffusers)), _outcome(make(accelerated))
    try:
        assert_same_outcome(stock, ours)
    except AssertionError:
        # Where stock's float32 tables cancel, or a step amplifies float32 rounding
        # (DPM-Solver inversion's one step from sigma 0.01 to 157), the drop-in
        # (float64 coefficients, float32 tensors) must be about as close as stock
        # to stock's own float64 computation.
        if "ran" != stock[0] or "ran" != ours[0] or not torch.isfinite(ours[1]).all():
            raise
        exact = make(diffusers, torch.float64)()
        assert _relative_error(ours[1], exact) <= 1.25 * _relative_error(stock[1], exact)


# --- state a caller sets ---------------------------------------------------------------------------


def _steps_after(prepare, steps=8, stop=None):
    """An action: set_timesteps(steps), ``prepare(scheduler, x)`` (state set
    from outside), then the loop's steps from the first to ``stop``."""

    def action(scheduler):
        scheduler.set_timesteps(steps)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        prepare(scheduler, x)
        for t in list(scheduler.timesteps)[:stop]:
            x = scheduler.step(model(x, t), t, x).prev_sample
        return x

    return action


def _filled_history(scheduler, x):
    """model_outputs full of earlier outputs and lower_order_nums at its top, as
    a caller resuming a loop part way sets them."""
    for k in range(len(scheduler.model_outputs)):
        scheduler.model_outputs[k] = torch.tanh(x) * (0.5 + 0.1 * k)
    scheduler.lower_order_nums = len(scheduler.model_outputs)


MULTISTEP = [n for n in STEPPING if hasattr(getattr(diffusers, n)(**base_config(n)), "model_outputs")]


@pytest.mark.parametrize("name", MULTISTEP)
def test_model_outputs_and_lower_order_nums_set_by_the_caller(name):
    side_by_side(name, _steps_after(_filled_history))


@pytest.mark.parametrize("entries", [0, 1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("counter", [0, 1, 2, 6])
def test_pndm_ets_and_counter_set_by_the_caller(entries, counter):
    """PNDM's ets (stock uses the last four; it held five or more: KeyError) and
    counter set from outside, PLMS steps."""

    def prepare(scheduler, x):
        scheduler.ets = [torch.sin(x * (k + 1)) for k in range(entries)]
        scheduler.counter = counter
        scheduler.cur_sample = x

    side_by_side("PNDMScheduler", _steps_after(prepare, stop=4), make=lambda cls: cls(skip_prk_steps=True))


@pytest.mark.parametrize("name", sorted(n for n in STEPPING if hasattr(getattr(diffusers, n), "set_begin_index")))
@pytest.mark.parametrize("begin", [0, 3])
def test_set_begin_index_then_steps_from_there(name, begin):
    """set_begin_index, then the schedule from there on (img2img; see also
    test_a_loop_that_starts_part_way_matches_diffusers for pipelines' loops)."""

    def action(scheduler):
        benchmarking.pipeline_set_timesteps(scheduler, 8, DEVICE)
        scheduler.set_begin_index(begin)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        for t in list(benchmarking.pipeline_timesteps(scheduler))[begin:]:
            x = scheduler.step(model(x, t), benchmarking.pipeline_timestep(scheduler, t, 2), x).prev_sample
        return x

    side_by_side(name, action)


# --- timesteps off the schedule ---------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-1, 0.5])
@pytest.mark.parametrize("name", STEPPING)
def test_a_step_at_a_timestep_off_the_schedule(name, offset):
    """The first step at a timestep the schedule does not hold (one below its
    first, or half-way), then the rest of the schedule: the drop-in runs where
    stock runs, with its result, and raises its exception type where it raises."""

    def action(scheduler):
        benchmarking.pipeline_set_timesteps(scheduler, 6, DEVICE)
        timesteps = list(benchmarking.pipeline_timesteps(scheduler))
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        first = timesteps[0] + offset
        for t in [first] + timesteps[1:]:
            x = scheduler.step(model(x, t), t, x).prev_sample
        return x

    side_by_side(name, action)


# --- sample dtypes ------------------------------------------------------------------------------------

DTYPE_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name", STEPPING)
def test_half_bfloat16_and_double_samples(name, dtype):
    """Loops whose sample and model output are float16, bfloat16 or float64:
    the drop-in runs where stock runs and returns stock's dtype; its sample is
    within the dtype's rounding of stock's, or closer than stock's to the
    float32 loop (the fused step computes in float32 where stock computes in
    the half dtype); float64 within 1e-5 of stock or closer to stock's float64
    tables."""

    def loop(module, dtype, tables64=False):
        def run():
            scheduler = getattr(module, name)(**base_config(name))
            scheduler = _float64_tables(scheduler) if tables64 else scheduler
            torch.manual_seed(0)
            return _loop(scheduler, steps=6, shape=(2, 4, 8, 8), dtype=dtype)

        return _outcome(run)

    stock, ours = loop(diffusers, dtype), loop(accelerated, dtype)
    if stock[0] == "raised" or ours[0] == "raised" or not torch.isfinite(stock[1]).all():
        assert_same_outcome(stock, ours)
        return
    got, want = ours[1], stock[1]
    assert got.dtype == want.dtype
    if dtype == torch.float64:
        if _relative_error(got, want) > 1e-5:
            exact = loop(diffusers, torch.float64, tables64=True)[1]
            assert _relative_error(got, exact) <= _relative_error(want, exact)
        return
    exact = loop(diffusers, torch.float32)[1]
    assert _relative_error(got, want) < DTYPE_TOLERANCE[dtype] or _relative_error(got, exact) <= 1.25 * _relative_error(
        want, exact
    )


# --- torch.compile ------------------------------------------------------------------------------------


def _compiled_steps(name, timestep_form, backend):
    """An action: three steps of ``torch.compile(scheduler.step, fullgraph=True)``
    after set_timesteps and set_begin_index(0) (where the class has it), the
    timesteps as Python numbers or as the schedule's own tensor elements."""

    def action(scheduler):
        benchmarking.pipeline_set_timesteps(scheduler, 6, DEVICE)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        step = torch.compile(scheduler.step, fullgraph=True, backend=backend)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        timesteps = benchmarking.pipeline_timesteps(scheduler)
        for t in timesteps.tolist()[:3] if timestep_form == "number" else list(timesteps)[:3]:
            t = benchmarking.pipeline_timestep(scheduler, torch.as_tensor(t), 1) if timestep_form == "tensor" else t
            x = step(torch.tanh(x), t, x, return_dict=False)[0]
        return x

    return action


COMPILE_CASES = [
    (name, form, "eager") for name in STEPPING if name != "CogVideoXDPMScheduler" for form in ("number", "tensor")
] + [("DPMSolverMultistepScheduler", "tensor", "inductor")]


@pytest.mark.parametrize("name,form,backend", COMPILE_CASES, ids=["-".join(c) for c in COMPILE_CASES])
def test_torch_compile_fullgraph_wherever_stocks_compiles(name, form, backend):
    """Wherever stock's step compiles with fullgraph=True, the drop-in's does
    too (the fused op is a custom op the compiler sees; the coefficients become
    constants of the graph) and gives stock's steps; where stock's cannot (a
    host read, numpy on tensors, a logger), the drop-in's may or may not.
    Dynamo's tracing is what either passes or fails, so the sweep compiles with
    the "eager" backend (no code generation: seconds, not minutes), and
    DPM-Solver++ with inductor. (CogVideoXDPM's step takes other arguments; its own
    tests cover it.)"""
    torch._dynamo.reset()
    action = _compiled_steps(name, form, backend)
    torch.manual_seed(0)
    stock = _outcome(lambda: action(getattr(diffusers, name)(**base_config(name))))
    if stock[0] == "raised":
        pytest.skip(f"stock's step does not compile: {str(stock[1]).splitlines()[0]}")
    torch._dynamo.reset()
    torch.manual_seed(0)
    ours = _outcome(lambda: action(getattr(accelerated, name)(**base_config(name))))
    assert_same_outcome(stock, ours)
