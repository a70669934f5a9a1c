"""diffaccel.comfyui without ComfyUI: every covered sampler against its
pure-PyTorch twin (tests/comfyui_reference.py) on stand-ins with ComfyUI's
attributes for EPS, V-prediction and CONST model sampling; ComfyUI's default
noise and the global generator's state; no host read in the loop; 16-bit
latents; the analytic Gaussian oracle; patch/unpatch, the node pack and the
install command against stand-in ComfyUI modules. Parity with the real
ComfyUI: scripts/compare_comfyui.py (its report is under bench/results/)."""

import importlib.util
import collections
import inspect
import math
import sys
import types

import pytest
import torch

import comfyui_reference as reference
from comfyui_standins import CONST, EPS, DiscreteEPS, OwnScaling, model_for, sigmas_for
from conftest import DEVICE
from diffaccel import comfyui as ours
from diffaccel.integrations.comfyui import install as install_module
from diffaccel.integrations.comfyui.common import seeded_noise_sampler
from diffaccel.integrations.k_diffusion import dpm_solver as k_dpm_solver

NAMES = [name for name in ours.SAMPLER_NAMES if name in reference.TWINS]
KINDS = ["EPS", "V", "CONST"]
SHAPE = (2, 4, 8, 8)


def _takes(function, parameter):
    return parameter in inspect.signature(function).parameters


class FixedNoise:
    """A noise sampler whose draws do not depend on x's dtype (float32 draws from its
    own generator, cast): so a float64 twin and a float32 run see the same noise."""

    def __init__(self, seed=21, dtype=torch.float32):
        self.generator = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def __call__(self, sigma, sigma_next):
        return torch.randn(SHAPE, generator=self.generator, device="cpu").to(DEVICE, self.dtype)


def _start(kind, steps=8, dtype=torch.float32):
    sigmas = sigmas_for(kind, steps)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), device="cpu").to(DEVICE)
    x = noise * sigmas[0] if kind != "CONST" else noise * sigmas[0]
    return x.to(dtype), sigmas


def _relative(a, b):
    b = b.double()
    return float((a.double() - b).abs().max() / b.abs().max())


def name_of(function):
    """The sampler name of a drop-in or a twin."""
    for table in (reference.TWINS, {name: ours.sampler_function(name) for name in ours.SAMPLER_NAMES}):
        for name, candidate in table.items():
            if candidate is function:
                return name
    raise KeyError(function)


def _run(function, kind, x, sigmas, noise=None, **options):
    model = model_for(kind, SHAPE)
    calls = []
    kwargs = dict(options)
    if noise is not None and _takes(ours.sampler_function(name_of(function)), "noise_sampler"):
        kwargs["noise_sampler"] = noise
    out = function(  # a copy of the sigmas: uni_pc writes into them, as ComfyUI's does
        model,
        x,
        sigmas.clone(),
        extra_args={"model_options": {}, "seed": 5},
        callback=calls.append,
        disable=True,
        **kwargs,
    )
    return out, calls, model.inner_model.calls


class SigmaWriter:
    """A model wrapper whose model halves its sigma tensor in place after each call."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, sigma, **kwargs):
        out = self.model(x, sigma, **kwargs)
        sigma.mul_(0.5)
        return out


@pytest.mark.parametrize("name", ["euler", "dpm_2", "heun", "ipndm"])
def test_a_model_that_writes_to_its_sigma_gets_new_sigmas_next_run(name):
    """The model's sigma tensors of a schedule (the steps', dpm_2's midpoints) are kept
    for its next run: a model that changes its sigma in place (ComfyUI hands it a new
    tensor every call) must not see the changed values in a later run."""
    x, sigmas = _start("EPS")

    def run(function):
        model = SigmaWriter(model_for("EPS", SHAPE))
        return function(model, x, sigmas.clone(), extra_args={"model_options": {}, "seed": 5}, disable=True)

    want = run(reference.TWINS[name])
    for _ in range(2):
        assert _relative(run(ours.sampler_function(name)), want) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_equal_to_the_reference_twin(name, kind):
    """Float32 against the twin in float64 on the same (float32) sigmas and noise:
    the result, every callback dict and the number of model calls."""
    x, sigmas = _start(kind)
    out, calls, n_calls = _run(ours.sampler_function(name), kind, x, sigmas, FixedNoise())
    expected, expected_calls, expected_n = _run(reference.TWINS[name], kind, x.double(), sigmas.double(), FixedNoise())
    assert out.dtype == torch.float32
    assert _relative(out, expected) <= 1e-5
    assert n_calls == expected_n
    assert [sorted(c) for c in calls] == [sorted(c) for c in expected_calls]
    for got, want in zip(calls, expected_calls):
        assert got["i"] == want["i"]
        for key in {"sigma", "sigma_hat"} & set(want):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-6)
        for key in ("x", "denoised"):
            assert _relative(got[key], want[key]) <= 1e-5, key


@pytest.mark.parametrize("callback", [True, False], ids=["callback", "no-callback"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_short_schedules(name, steps, callback):
    """UniPC's orders ramp up at the start and down at the end (1 step: no update, 2
    steps: first order throughout), and its last step is the predictor alone, whose
    result is reported before ComfyUI divides it by alpha: the twin's result, callbacks
    and model calls at every length, with and without a callback."""
    x, sigmas = _start("EPS", steps=steps)
    results = []
    for function, dtype in ((ours.sampler_function(name), torch.float32), (reference.TWINS[name], torch.float64)):
        model, calls = model_for("EPS", SHAPE), []
        out = function(
            model,
            x.to(dtype),
            sigmas.clone().to(dtype),
            extra_args={"model_options": {}},
            callback=calls.append if callback else None,
            disable=True,
        )
        results.append((out, calls, model.inner_model.calls))
    (out, calls, n_calls), (expected, expected_calls, expected_n) = results
    assert _relative(out, expected) <= 1e-5
    assert n_calls == expected_n == steps
    assert [c["i"] for c in calls] == [c["i"] for c in expected_calls]
    for got, want in zip(calls, expected_calls):
        for key in ("x", "denoised"):
            assert _relative(got[key], want[key]) <= 1e-5, key


class _Marked(torch.Tensor):
    """A tensor subclass: the loops hand it to the ops' fronts, not to the kernels' entries."""


class SubclassOutput(SigmaWriter):
    """A model wrapper whose model returns its output as a tensor subclass."""

    def __call__(self, x, sigma, **kwargs):
        return self.model(x, sigma, **kwargs).as_subclass(_Marked)


@pytest.mark.parametrize("kind", ["EPS", "CONST"])
@pytest.mark.parametrize("name", ["euler", "ddim", "ipndm", "uni_pc"])
def test_kernel_entries_equal_the_fronts(name, kind):
    """Where a loop calls a kernel's entry itself (plain tensors of the state's dtype)
    and where it takes the op's front (a model returning a tensor subclass): the
    same bits, and the same states reported."""
    x, sigmas = _start(kind)
    runs = []
    for wrap in (lambda model: model, SubclassOutput):
        calls = []
        out = ours.ksampler_function(name)(
            wrap(model_for(kind, SHAPE)),
            x,
            sigmas.clone(),
            extra_args={"model_options": {}},
            callback=calls.append,
            disable=True,
        )
        runs.append((out.as_subclass(torch.Tensor), [c["x"].as_subclass(torch.Tensor) for c in calls]))
    (plain, plain_calls), (marked, marked_calls) = runs
    assert torch.equal(plain, marked)
    assert len(plain_calls) == len(marked_calls) > 0
    assert all(torch.equal(a, b) for a, b in zip(plain_calls, marked_calls))


STOCHASTIC = [name for name in NAMES if _takes(ours.sampler_function(name), "noise_sampler")]


@pytest.mark.parametrize("seeded", [True, False], ids=["extra_args-seed", "global-generator"])
@pytest.mark.parametrize("kind", ["EPS", "CONST"])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_default_noise_and_generator_state(name, kind, seeded):
    """No noise_sampler: ComfyUI's default (a generator seeded with extra_args["seed"],
    or the SDE samplers' Brownian tree; the global generator without a seed), the
    same draws, and the global generator left in the same state."""
    x, sigmas = _start(kind)
    results = []
    for function in (ours.sampler_function(name), reference.TWINS[name]):
        torch.manual_seed(3)
        extra_args = {"model_options": {}, **({"seed": 5} if seeded else {})}
        out = function(model_for(kind, SHAPE), x, sigmas, extra_args=extra_args, disable=True)
        results.append((out, torch.get_rng_state()))
    (out, state), (expected, expected_state) = results
    assert _relative(out, expected) <= 1e-5
    assert torch.equal(state, expected_state)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2", "heunpp2"])
def test_churn_noise(name):
    """s_churn: ComfyUI draws torch.randn_like(x) only on steps that add noise (heunpp2 on every step)."""
    x, sigmas = _start("EPS")
    results = []
    for function in (ours.sampler_function(name), reference.TWINS[name]):
        torch.manual_seed(3)
        out = function(model_for("EPS", SHAPE), x, sigmas, disable=True, s_churn=2.0, s_tmin=0.1, s_tmax=5.0)
        results.append((out, torch.get_rng_state()))
    assert _relative(results[0][0], results[1][0]) <= 1e-5
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize(
    "name, options",
    [
        ("euler_ancestral", {"eta": 0.0}),
        ("euler_ancestral", {"eta": 2.5, "s_noise": 0.5}),
        ("dpm_2_ancestral", {"eta": 0.5}),
        ("dpmpp_2s_ancestral", {"eta": 0.0}),
        ("dpmpp_sde", {"eta": 0.0, "r": 0.3}),
        ("dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun"}),
        ("dpmpp_3m_sde", {"eta": 0.0}),
        ("lms", {"order": 2}),
        ("lms", {"order": 0}),
        ("lms", {"order": 7}),
        ("ipndm", {"max_order": 2}),
        ("ipndm", {"max_order": 6}),
        ("ipndm_v", {"max_order": 3}),
        ("res_multistep_ancestral", {"eta": 0.5}),
        ("gradient_estimation", {"ge_gamma": 3.0}),
        ("euler_ancestral_cfg_pp", {"eta": 0.5}),
        ("dpmpp_2s_ancestral_cfg_pp", {"eta": 2.5}),
        ("deis", {"max_order": 2}),
        ("deis", {"max_order": 4}),
        ("er_sde", {"max_stage": 2}),
        ("er_sde", {"s_noise": 0.0}),
        ("er_sde", {"noise_scaler": lambda v: v * 2.0 + 0.5}),
        ("seeds_2", {"eta": 0.5, "r": 0.3}),
        ("seeds_3", {"eta": 0.0}),
        ("sa_solver", {"predictor_order": 2, "corrector_order": 2, "simple_order_2": True}),
        ("sa_solver", {"predictor_order": 1, "corrector_order": 1}),
        ("sa_solver", {"predictor_order": 3, "corrector_order": 0}),
        ("sa_solver", {"tau_func": lambda sigma: 0.5}),
        ("sa_solver_pece", {"s_noise": 0.0}),
    ],
)
@pytest.mark.parametrize("kind", ["EPS", "CONST"])
def test_options(name, options, kind):
    x, sigmas = _start(kind)
    out, _, _ = _run(ours.sampler_function(name), kind, x, sigmas, FixedNoise(), **options)
    expected, _, _ = _run(reference.TWINS[name], kind, x.double(), sigmas.double(), FixedNoise(), **options)
    assert _relative(out, expected) <= 1e-5


@pytest.mark.parametrize("orders", [(6, 6), (6, 2), (2, 6), (8, 8), (7, 0)], ids=str)
@pytest.mark.parametrize("kind", ["EPS", "CONST"])
def test_sa_solver_high_orders(kind, orders):
    """High orders over 16 steps (ComfyUI's node takes up to 6, a direct call any):
    where the folded prediction sums more than the 8 tensors a fused combine takes,
    it takes two."""
    x, sigmas = _start(kind, steps=16)
    options = {"predictor_order": orders[0], "corrector_order": orders[1]}
    with _FusedOpCount() as ops_run:
        out, _, calls = _run(ours.sampler_function("sa_solver"), kind, x, sigmas, FixedNoise(), **options)
    expected, _, _ = _run(reference.TWINS["sa_solver"], kind, x.double(), sigmas.double(), FixedNoise(), **options)
    assert _relative(out, expected) <= 1e-5
    # from predictor order 6 some steps sum 9 or more terms (x_pred, 7 or more predictions, the noise)
    assert (ops_run.count > calls) == (orders[0] >= 6) and ops_run.count <= 2 * calls


@pytest.mark.parametrize("kind", ["EPS", "CONST"])
def test_deis_rhoab(kind):
    """rhoab on a schedule short enough for ComfyUI's table (steps <= max_order)."""
    x, sigmas = _start(kind, steps=3)
    out, _, _ = _run(ours.sampler_function("deis"), kind, x, sigmas, deis_mode="rhoab", max_order=3)
    expected, _, _ = _run(reference.TWINS["deis"], kind, x.double(), sigmas.double(), deis_mode="rhoab", max_order=3)
    assert _relative(out, expected) <= 1e-5


def test_deis_rhoab_past_its_order_raises_as_comfyui_does():
    """ComfyUI's rhoab table has one weight more than its loop unpacks once the step
    index reaches max_order: ValueError at that step, in both."""
    x, sigmas = _start("EPS")
    for function in (ours.sampler_function("deis"), reference.TWINS["deis"]):
        with pytest.raises(ValueError, match="too many values to unpack"):
            function(model_for("EPS", SHAPE), x, sigmas, deis_mode="rhoab", max_order=2, disable=True)


@pytest.mark.parametrize("name", ["sa_solver", "uni_pc", "uni_pc_bh2"])
def test_a_repeated_sigma_raises_torchs_singular_matrix_error_as_comfyui_does(name):
    """ComfyUI solves these samplers' weights with torch.linalg.solve, which a repeated
    sigma makes singular: the same exception type and message (ours solve in numpy)."""
    x, sigmas = _start("EPS")
    sigmas = torch.cat([sigmas[:3], sigmas[2:3], sigmas[3:]])
    with pytest.raises(torch.linalg.LinAlgError, match="input matrix is singular"):
        ours.sampler_function(name)(model_for("EPS", SHAPE), x, sigmas, disable=True)


def test_lcm_calls_a_model_samplings_own_noise_scaling():
    from comfyui_standins import Model

    x, sigmas = _start("EPS")
    results = []
    for function in (ours.sampler_function("lcm"), reference.TWINS["lcm"]):
        model = Model(OwnScaling(), SHAPE)
        results.append(function(model, x, sigmas, extra_args={"seed": 5}, noise_sampler=FixedNoise(), disable=True))
    assert _relative(*results) <= 1e-5


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_dpm_solver_is_k_diffusions_with_comfyuis_seeded_noise(name):
    """ComfyUI's DPM-Solver functions are k-diffusion's, their default noise seeded
    from extra_args["seed"]: the k-diffusion drop-in (tested against k-diffusion) with
    that noise sampler gives the same result; ksampler_function(name) takes ComfyUI's
    (model, noise, sigmas, ...) and uses the last positive sigma."""
    x, sigmas = _start("EPS")
    options = {"eta": 0.5} if name == "dpm_adaptive" else {}  # ComfyUI's dpm_fast adapter takes no options
    results = []
    for use_ours in (True, False):
        model = model_for("EPS", SHAPE)
        if use_ours:
            out = ours.ksampler_function(name)(model, x, sigmas, {"seed": 5}, None, True, **options)
        else:
            noise = seeded_noise_sampler(x, 5)
            function = getattr(k_dpm_solver, "sample_" + name)
            args = (model, x, sigmas[-2], sigmas[0]) + ((len(sigmas) - 1,) if name == "dpm_fast" else ())
            out = function(*args, extra_args={"seed": 5}, disable=True, noise_sampler=noise, **options)
        results.append(out)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("kind", ["EPS", "CONST"])
@pytest.mark.parametrize("name", NAMES + ["dpm_fast"])
def test_no_host_read_of_the_state(name, kind):
    """The sigmas are read once; the state, the model's outputs and the noise never:
    with them on the meta device (no data), any .item(), bool() or .cpu() would raise."""
    sigmas = sigmas_for(kind, 6).cpu()  # (host sigmas work with any state's device; DEVICE's not with meta)
    x = torch.empty(SHAPE, device="meta")
    model = model_for(kind, SHAPE)
    noise = lambda sigma, sigma_next: torch.empty(SHAPE, device="meta")  # noqa: E731
    function = ours.ksampler_function(name)
    options = {"noise_sampler": noise} if _takes(ours.sampler_function(name), "noise_sampler") else {}
    if name == "dpm_fast":
        out = ours.sampler_function(name)(model, x, 0.03, 14.6, 6, disable=True, noise_sampler=noise)
    else:
        out = function(model, x, sigmas, extra_args={"model_options": {}}, disable=True, **options)
    assert out.device.type == "meta" and out.shape == x.shape


class _FusedOpCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the diffaccel ops that run, in all and by name (a dispatch mode keeps the
    loops on the ops' fronts, so every fused pass is seen here)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.by_name = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "diffaccel":
            self.count += 1
            self.by_name[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["EPS", "CONST"])
@pytest.mark.parametrize("name", NAMES + ["dpm_fast", "dpm_adaptive"])
def test_one_fused_op_per_model_call(name, kind):
    """As KSampler runs them (with a callback), every sampler makes one fused pass per
    model call at most; dpm_adaptive one per model call and, per trial step (three
    model calls at its default order), the error norm its step-size control reads."""
    x, sigmas = _start(kind)
    model = model_for(kind, SHAPE)
    options = {"noise_sampler": FixedNoise()} if _takes(ours.ksampler_function(name), "noise_sampler") else {}
    with _FusedOpCount() as ops_run:
        ours.ksampler_function(name)(
            model, x, sigmas.clone(), extra_args={"model_options": {}}, callback=lambda d: None, disable=True, **options
        )
    calls = model.inner_model.calls
    if name == "dpm_adaptive":
        norms = ops_run.by_name["error_norm"]
        assert norms * 3 == calls and ops_run.count - norms == calls
    else:
        assert 1 <= ops_run.count <= calls


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "res_multistep", "ipndm"])
def test_16_bit_latents(name, dtype):
    """16-bit latents: the dtype ComfyUI's tensor arithmetic gives, and a result at
    least as close to the float64 run as the twin's chain of 16-bit ops is (the fused
    step rounds to 16 bits once per step, not after every op)."""
    x, sigmas = _start("EPS", dtype=dtype)
    out, _, _ = _run(ours.sampler_function(name), "EPS", x, sigmas, FixedNoise(dtype=dtype))
    expected, _, _ = _run(reference.TWINS[name], "EPS", x, sigmas, FixedNoise(dtype=dtype))
    exact, _, _ = _run(reference.TWINS[name], "EPS", x.double(), sigmas.double(), FixedNoise(dtype=dtype))
    assert out.dtype == expected.dtype
    assert _relative(out, exact) <= max(1.5 * _relative(expected, exact), 1e-2)


def _plain_twin(name):
    twin = reference.TWINS[name]
    return (
        twin if getattr(twin, "__module__", "") == reference.__name__ and twin.__name__.startswith("sample_") else None
    )


@pytest.mark.parametrize("name", [name for name in NAMES if _plain_twin(name) is not None])
def test_signature_is_comfyuis(name):
    """The same parameters, kinds and defaults as ComfyUI's function (the twin's,
    written from ComfyUI 0.3.64; its ``cpu`` keyword is the twin's own)."""
    twin = inspect.signature(_plain_twin(name))
    expected = twin.replace(parameters=[p for p in twin.parameters.values() if p.name != "cpu"])
    got = inspect.signature(ours.sampler_function(name))
    assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == [
        (p.name, p.kind, p.default) for p in expected.parameters.values()
    ]


def test_cfg_pp_installs_comfyuis_post_cfg_hook():
    """The hook goes into a copy of extra_args["model_options"] put back into the
    caller's extra_args, with the cfg = 1 shortcut off, as ComfyUI's CFG++ samplers do."""
    x, sigmas = _start("EPS")
    options = {"sampler_post_cfg_function": [lambda args: args["denoised"]]}
    extra_args = {"model_options": options}
    ours.sampler_function("dpmpp_2m_cfg_pp")(model_for("EPS", SHAPE), x, sigmas, extra_args=extra_args, disable=True)
    assert extra_args["model_options"] is not options and len(options["sampler_post_cfg_function"]) == 1
    assert len(extra_args["model_options"]["sampler_post_cfg_function"]) == 2
    assert extra_args["model_options"]["disable_cfg1_optimization"] is True


def test_flow_offset_of_the_first_sigma():
    """On a flow model the half-log-SNR samplers start from the model's sigma at 0.01 %
    of the schedule instead of 1 (ComfyUI's offset): the first model call sees it."""
    x, sigmas = _start("CONST")
    model = model_for("CONST", SHAPE)
    calls = []
    ours.sampler_function("dpmpp_2m_sde")(
        model, x, sigmas, callback=calls.append, noise_sampler=FixedNoise(), disable=True
    )
    assert float(sigmas[0]) == 1.0
    assert float(calls[0]["sigma"]) == pytest.approx(CONST().percent_to_sigma(1e-4), rel=1e-6)


# The analytic oracle: with cfg = 1 the denoiser is the exact posterior mean of Gaussian
# data, whose probability-flow ODE solution from sigma_0 to 0 is known in closed form.
DETERMINISTIC_ORDERS = {
    "euler": 1,
    "heun": 2,
    "dpm_2": 2,
    "dpmpp_2m": 2,
    "lms": 2,
    "ipndm": 2,
    "ipndm_v": 2,
    "res_multistep": 2,
    "heunpp2": 1,
    "gradient_estimation": 1,
    "deis": 2,
    "uni_pc": 2,
    "uni_pc_bh2": 2,
}


def _ode_solution(model, x, sigma_0, flow):
    guider = model.inner_model
    mean, var = guider.mean_cond.double(), guider.std**2
    if flow:
        scale = var**0.5 / ((1 - sigma_0) ** 2 * var + sigma_0**2) ** 0.5
        return mean + scale * (x.double() - (1 - sigma_0) * mean)
    return mean + (var / (var + sigma_0**2)) ** 0.5 * (x.double() - mean)


@pytest.mark.parametrize(
    "name, kind",
    [(name, kind) for name in DETERMINISTIC_ORDERS for kind in ("EPS", "CONST") if not name.startswith("uni_pc")]
    + [("uni_pc", "EPS"), ("uni_pc_bh2", "EPS")],
)
def test_gaussian_oracle_order(name, kind):
    """The error against the exact ODE solution falls with the step count at (at
    least about) the sampler's order. (ComfyUI's uni_pc steps in a variance-preserving
    view of sigma that is not the flow model's, so on CONST it converges to another
    ODE: checked on EPS only.)"""
    errors = []
    for steps in (16, 32):
        x, sigmas = _start(kind, steps=steps, dtype=torch.float64)
        sigmas = sigmas.double()
        model = model_for(kind, SHAPE, cfg=1.0)
        out = ours.sampler_function(name)(model, x, sigmas, disable=True)
        exact = _ode_solution(model, x, float(sigmas[0]), kind == "CONST")
        errors.append(float((out - exact).abs().max() / exact.abs().max()))
    order = DETERMINISTIC_ORDERS[name]
    assert errors[1] < 0.05
    assert errors[0] / errors[1] >= 2**order * 0.7, errors


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="argument 'name' must be one of .*euler.*dpmpp_2m"):
        ours.sampler_function("euler_a")
    with pytest.raises(ValueError, match="argument 'name'"):
        ours.patch(["nope"])


def test_bad_solver_type_is_refused_as_comfyui_refuses_it():
    x, sigmas = _start("EPS")
    for function in (ours.sampler_function("dpmpp_2m_sde"), reference.TWINS["dpmpp_2m_sde"]):
        with pytest.raises(ValueError, match="solver_type must be 'heun' or 'midpoint'"):
            function(model_for("EPS", SHAPE), x, sigmas, solver_type="euler", disable=True)


def test_a_single_sigma_returns_x_untouched():
    x, _ = _start("EPS")
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        assert ours.sampler_function(name)(model_for("EPS", SHAPE), x, torch.tensor([1.0])) is x


@pytest.fixture
def comfy_modules(monkeypatch):
    """Stand-ins for comfy.k_diffusion.sampling (one function per sampler name) and
    comfy.samplers (KSAMPLER keeps what it is built with)."""
    sampling = types.ModuleType("comfy.k_diffusion.sampling")
    for name in ours.SAMPLER_NAMES:
        setattr(sampling, "sample_" + name, lambda *args, name=name, **kwargs: ("comfyui", name))
    uni_pc = types.ModuleType("comfy.extra_samplers.uni_pc")
    uni_pc.sample_unipc = lambda *args, **kwargs: ("comfyui", "uni_pc")
    uni_pc.sample_unipc_bh2 = lambda *args, **kwargs: ("comfyui", "uni_pc_bh2")
    extra_samplers = types.ModuleType("comfy.extra_samplers")
    extra_samplers.uni_pc = uni_pc
    samplers = types.ModuleType("comfy.samplers")

    class KSAMPLER:
        def __init__(self, sampler_function, extra_options=None, inpaint_options=None):
            self.sampler_function = sampler_function
            self.extra_options, self.inpaint_options = extra_options or {}, inpaint_options or {}

    samplers.KSAMPLER = KSAMPLER
    comfy = types.ModuleType("comfy")
    k_diffusion = types.ModuleType("comfy.k_diffusion")
    k_diffusion.sampling, comfy.k_diffusion, comfy.samplers = sampling, k_diffusion, samplers
    comfy.extra_samplers = extra_samplers
    for module in (comfy, k_diffusion, sampling, samplers, extra_samplers, uni_pc):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    yield sampling, uni_pc
    ours.unpatch()


def test_patch_and_unpatch(comfy_modules):
    sampling, uni_pc = comfy_modules
    originals = {name: getattr(sampling, name) for name in dir(sampling) if name.startswith("sample_")}
    unipc_original = uni_pc.sample_unipc
    assert ours.patch(["euler", "dpmpp_2m"]) == ["euler", "dpmpp_2m"]
    assert sampling.sample_euler is ours.sampler_function("euler")
    assert sampling.sample_heun is originals["sample_heun"]
    ours.patch()
    ours.patch()  # idempotent: the originals kept are ComfyUI's, not the drop-ins
    assert sampling.sample_heun is ours.sampler_function("heun")
    assert uni_pc.sample_unipc is ours.sampler_function("uni_pc")
    assert uni_pc.sample_unipc_bh2 is ours.sampler_function("uni_pc_bh2")
    assert set(ours.patched()) == {name for name in ours.SAMPLER_NAMES if name != "ddim"}
    ours.unpatch()
    assert {name: getattr(sampling, name) for name in originals} == originals
    assert uni_pc.sample_unipc is unipc_original
    assert ours.patched() == []


def test_node_pack(comfy_modules):
    sampling, _ = comfy_modules
    select = ours.NODE_CLASS_MAPPINGS["DiffaccelSamplerSelect"]()
    assert ours.NODE_CLASS_MAPPINGS["DiffaccelSamplerSelect"].INPUT_TYPES()["required"]["sampler_name"][0] == (
        ours.SAMPLER_NAMES
    )
    (sampler,) = select.get_sampler("dpmpp_2m")
    assert sampler.sampler_function is ours.sampler_function("dpmpp_2m")
    (sampler,) = select.get_sampler("ddim")
    assert sampler.sampler_function is ours.sampler_function("euler") and sampler.inpaint_options == {"random": True}
    accelerate = ours.NODE_CLASS_MAPPINGS["DiffaccelAccelerateKSampler"]()
    model = object()
    assert accelerate.accelerate(model, True) == (model,)
    assert sampling.sample_lms is ours.sampler_function("lms")
    accelerate.accelerate(model, False)
    assert sampling.sample_lms("a") == ("comfyui", "lms")
    assert set(ours.NODE_DISPLAY_NAME_MAPPINGS) == set(ours.NODE_CLASS_MAPPINGS)


def test_install_and_uninstall(tmp_path, comfy_modules, capsys):
    from diffaccel.__main__ import main

    (tmp_path / "custom_nodes").mkdir()
    assert main(["comfyui", "install", str(tmp_path), "--patch"]) == 0
    entry = tmp_path / "custom_nodes" / "diffaccel" / "__init__.py"
    spec = importlib.util.spec_from_file_location("diffaccel_custom_node", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is ours.NODE_CLASS_MAPPINGS
    assert comfy_modules[0].sample_euler is ours.sampler_function("euler")  # --patch
    assert main(["comfyui", "install", str(tmp_path)]) == 0  # again: rewritten, no error
    assert main(["comfyui", "install", str(tmp_path), "--uninstall"]) == 0
    assert not entry.parent.exists()
    assert "nothing to remove" not in capsys.readouterr().out


def test_install_refuses_what_is_not_its_own(tmp_path):
    with pytest.raises(FileNotFoundError, match="COMFYUI_DIR"):
        install_module.install(str(tmp_path))
    (tmp_path / "custom_nodes" / "diffaccel").mkdir(parents=True)
    (tmp_path / "custom_nodes" / "diffaccel" / "__init__.py").write_text("# someone else's\n")
    with pytest.raises(FileExistsError):
        install_module.install(str(tmp_path))
    with pytest.raises(FileExistsError):
        install_module.uninstall(str(tmp_path))


def test_importing_needs_no_comfyui():
    assert "comfy" not in sys.modules or not hasattr(sys.modules["comfy"], "__file__")
    assert isinstance(EPS(), EPS)


@pytest.mark.parametrize("steps", [1, 2, 10, 31])
@pytest.mark.parametrize("scheduler", ours.SCHEDULER_NAMES)
def test_schedules_shape(scheduler, steps):
    """Every schedule: float32 on the CPU, from about sigma_max down to a final 0,
    never increasing; steps + 1 values (beta drops repeats; kl_optimal at 1 step is
    ComfyUI's 0/0)."""
    model_sampling = DiscreteEPS()
    sigmas = ours.calculate_sigmas(model_sampling, scheduler, steps)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    if scheduler == "kl_optimal" and steps == 1:
        assert torch.isnan(sigmas[0])
        return
    assert float(sigmas[-1]) == 0.0
    assert (sigmas[1:] <= sigmas[:-1]).all()
    if scheduler == "beta":
        assert len(sigmas) <= steps + 1
    elif scheduler != "ddim_uniform":  # ddim_uniform: every len(table) // steps-th entry, however many
        assert len(sigmas) == steps + 1
    assert float(sigmas[0]) <= float(model_sampling.sigma_max) * (1 + 1e-6)


def test_host_made_values_ignore_the_default_device():
    """What is made on the host stays there under another default device (the GPU
    run sets CUDA's; meta stands in for it here, and numpy cannot read it): the
    kl_optimal schedule and er_sde's noise-scaler integrals, which both followed
    the default device on the H200 (2026-12-04)."""
    x, sigmas = _start("EPS", steps=6)
    model, model_sampling = model_for("EPS", SHAPE), DiscreteEPS()
    with torch.device("meta"):
        schedule = ours.calculate_sigmas(model_sampling, "kl_optimal", 10)
        out = ours.sampler_function("er_sde")(model, x, sigmas, disable=True, noise_sampler=FixedNoise())
    assert schedule.device.type == "cpu" and out.device == x.device and torch.isfinite(out).all()


def test_schedules_values():
    model_sampling = DiscreteEPS()
    table = model_sampling.sigmas.cpu()  # (the schedules are made on the host, wherever the model is)
    assert torch.equal(ours.calculate_sigmas(model_sampling, "simple", 4)[:-1], table[[999, 749, 499, 249]])
    assert torch.equal(
        ours.calculate_sigmas(model_sampling, "karras", 7),
        ours.calculate_sigmas.__globals__["get_sigmas_karras"](7, float(table[0]), float(table[-1])),
    )
    ddim = ours.calculate_sigmas(model_sampling, "ddim_uniform", 10)
    assert torch.equal(ddim[:-1], table[1::100].flip(0))
    kl = ours.calculate_sigmas(model_sampling, "kl_optimal", 5)[:-1].double()
    expected = torch.linspace(math.atan(float(table[-1])), math.atan(float(table[0])), 5, dtype=torch.float64).tan()
    assert torch.allclose(kl, expected, rtol=1e-5)
    flow = ours.calculate_sigmas(CONST(), "linear_quadratic", 4)
    assert torch.allclose(flow, torch.tensor([1.0, 0.9875, 0.975, 0.725, 0.0]), atol=1e-6)


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'scheduler_name' must be one of simple, sgm_uniform, karras"):
        ours.calculate_sigmas(DiscreteEPS(), "uniform", 10)


def test_an_option_a_sampler_does_not_take_is_refused_as_in_comfyui():
    x, sigmas = _start("EPS")
    for function in (ours.sampler_function("euler"), reference.TWINS["euler"]):
        with pytest.raises(TypeError, match="eta"):
            function(model_for("EPS", SHAPE), x, sigmas, eta=1.0)


def test_a_wrapper_without_model_sampling():
    """A plain denoiser function (no ComfyUI wrapper around it): the samplers that never
    read the model sampling run on it, as ComfyUI's do; the ones that read it fail the
    same way ComfyUI's do (AttributeError)."""
    x, sigmas = _start("EPS")

    def plain(x, sigma, **kwargs):
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    for name in ("euler", "dpmpp_2m", "lms", "ipndm"):
        out = ours.sampler_function(name)(plain, x, sigmas)
        assert _relative(out, reference.TWINS[name](plain, x.double(), sigmas.double())) <= 1e-5
    for name in ("euler_ancestral", "dpmpp_2m_sde", "lcm"):
        for function in (ours.sampler_function(name), reference.TWINS[name]):
            with pytest.raises(AttributeError):
                function(plain, x, sigmas, noise_sampler=FixedNoise())
