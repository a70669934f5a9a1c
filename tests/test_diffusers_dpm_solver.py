"""diffaccel.integrations.diffusers against stock diffusers: the DPM-Solver family
(multistep, inverse, EDM, cosine, DEIS, singlestep)."""

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from diffusers_helpers import MARKS, _loop, _relative_error  # noqa: E402

pytestmark = MARKS


CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_type": "heun"},
    {"solver_order": 3, "solver_type": "heun"},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3, "solver_type": "heun"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"},
    {"thresholding": True},
    {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9, "solver_order": 3},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"use_lu_lambdas": True},
    {"final_sigmas_type": "sigma_min"},
    {"lower_order_final": False},
    {"euler_at_final": True},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "v_prediction", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"prediction_type": "sample", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading", "steps_offset": 1},
    # These sigma schedules end on sigma_min, and sigma_min is appended again: the last
    # step is between equal sigmas (h = 0), finite in diffusers' tensor arithmetic.
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
    {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min", "algorithm_type": "sde-dpmsolver++"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "algorithm_type": "sde-dpmsolver"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_dpm_solver_multistep_matches_diffusers(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' deprecation of the dpmsolver algorithm types
        stock = diffusers.DPMSolverMultistepScheduler(**config)
        ours = accelerated.DPMSolverMultistepScheduler(**config)
    assert not ours.unsupported_options()
    want, got = _loop(stock), _loop(ours)
    # Measured: 1e-7 to 1e-6 (coefficients in float64, one fused expression per step).
    assert _relative_error(got, want) < 1e-5


DPM_INVERSE_CASES = [
    {},
    {"solver_order": 3},
    {"solver_order": 1},
    {"solver_type": "heun"},
    {"prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"algorithm_type": "dpmsolver"},
    {"thresholding": True},
    # fewer timesteps than sigmas - 1 (duplicates dropped): the last step is len(timesteps) - 1
    {
        "beta_schedule": "squaredcos_cap_v2",
        "use_karras_sigmas": True,
        "lower_order_final": False,
        "euler_at_final": True,
    },
]


@pytest.mark.parametrize("steps", [25, 6])
@pytest.mark.parametrize(
    "config", DPM_INVERSE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_dpm_solver_multistep_inverse_matches_diffusers(config, steps):
    """DPM-Solver inversion (data to noise); diffusers' inverse step runs in the
    sample's dtype (no upcast), so float32 rounding is larger here: 1e-6, the
    fused step nearer diffusers' own loop run in float64."""
    want = _loop(diffusers.DPMSolverMultistepInverseScheduler(**config), steps=steps)
    got = _loop(accelerated.DPMSolverMultistepInverseScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


EDM_CASES = [
    ("EDMEulerScheduler", {}, {}),
    ("EDMEulerScheduler", {"prediction_type": "v_prediction", "sigma_schedule": "exponential"}, {}),
    ("EDMEulerScheduler", {"final_sigmas_type": "sigma_min"}, {"s_churn": 1.0, "s_tmin": 0.1, "s_tmax": 20.0}),
    ("EDMDPMSolverMultistepScheduler", {}, {}),
    ("EDMDPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False}, {}),
    ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, {}),
    (
        "EDMDPMSolverMultistepScheduler",
        {"prediction_type": "v_prediction", "sigma_schedule": "exponential", "final_sigmas_type": "sigma_min"},
        {},
    ),
    ("EDMDPMSolverMultistepScheduler", {"thresholding": True, "sample_max_value": 1.5, "solver_order": 3}, {}),
    ("EDMDPMSolverMultistepScheduler", {"solver_type": "heun", "euler_at_final": True}, {}),
    # The last step goes from the schedule's sigma_min, a float32 rounding below the configured
    # one, to the configured one appended: h = -5e-7 in float64, whose SDE noise was NaN here.
    (
        "EDMDPMSolverMultistepScheduler",
        {
            "algorithm_type": "sde-dpmsolver++",
            "final_sigmas_type": "sigma_min",
            "solver_order": 1,
            "lower_order_final": False,
        },
        {},
    ),
]


@pytest.mark.parametrize("steps", [25, 5])
@pytest.mark.parametrize(
    "name,config,step_options",
    EDM_CASES,
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default",
)
def test_edm_schedulers_match_diffusers(name, config, step_options, steps):
    want = _loop(getattr(diffusers, name)(**config), steps=steps, **step_options)
    got = _loop(getattr(accelerated, name)(**config), steps=steps, **step_options)
    assert _relative_error(got, want) < 1e-5


# Stable Audio Open's scheduler is the default config. (final_sigmas_type="sigma_min" is left
# out: diffusers' step then asks the Brownian tree for the noise between two equal sigmas, and
# torchsde recurses until Python's limit; the drop-in, using the same sampler, does the same.)
COSINE_CASES = [
    {},
    {"solver_order": 1},
    {"solver_type": "heun"},
    {"sigma_schedule": "karras"},
    {"prediction_type": "epsilon"},
    {"euler_at_final": True, "lower_order_final": False},
    {"sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0, "sigma_schedule": "karras"},
]


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's: the last step queries sigma 0
@pytest.mark.parametrize("steps", [25, 5, 1])
@pytest.mark.parametrize("config", COSINE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_cosine_dpm_solver_matches_diffusers(config, steps):
    """Each step one ei_step, its noise what diffusers' own Brownian-tree sampler
    gives for the generator's seed at the step's two sigmas."""
    want = _loop(diffusers.CosineDPMSolverMultistepScheduler(**config), steps=steps)
    got = _loop(accelerated.CosineDPMSolverMultistepScheduler(**config), steps=steps)
    # Measured on the dev VM: 0 to 3.8e-7.
    assert _relative_error(got, want) < 1e-5


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
def test_cosine_dpm_solver_without_a_generator_seeds_its_tree_as_diffusers():
    """With no generator, torchsde seeds the tree from the global generator, in
    the drop-in as in diffusers: the same sample, the global generator left in the same state."""
    ends = []
    for module in (diffusers, accelerated):
        torch.manual_seed(7)
        ends.append(
            (_loop(module.CosineDPMSolverMultistepScheduler(), steps=10, generator=None), torch.get_rng_state())
        )
    (want, want_state), (got, state) = ends
    assert torch.equal(state, want_state)
    assert _relative_error(got, want) < 1e-5


DEIS_CASES = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"use_karras_sigmas": True},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    {"solver_order": 3, "lower_order_final": False, "timestep_spacing": "trailing"},
    {"use_exponential_sigmas": True, "solver_order": 3},
]


class _Float64Sigmas:
    """Wraps a stock scheduler so that its set_timesteps leaves float64 sigmas:
    with a float64 sample and model, diffusers' whole update runs in float64."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def set_timesteps(self, *args, **kwargs):
        self.scheduler.set_timesteps(*args, **kwargs)
        self.scheduler.sigmas = self.scheduler.sigmas.double()

    def __getattr__(self, name):
        return getattr(self.scheduler, name)


@pytest.mark.parametrize("steps", [25, 6])
@pytest.mark.parametrize("config", DEIS_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_deis_matches_diffusers(config, steps):
    """Within the drop-in bound (1e-4) of stock diffusers, and at least as close
    as stock to diffusers' own loop run in float64: diffusers evaluates DEIS's
    weights in float32, where the third order's cancel (stock is 4e-6 off at 25
    steps, the fused step 3e-7)."""
    exact = _loop(_Float64Sigmas(diffusers.DEISMultistepScheduler(**config)), steps=steps, dtype=torch.float64)
    want = _loop(diffusers.DEISMultistepScheduler(**config), steps=steps)
    got = _loop(accelerated.DEISMultistepScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-4
    assert _relative_error(got, exact) <= max(_relative_error(want, exact), 1e-6)


SINGLESTEP_CASES = [
    {},
    {"solver_order": 3},
    {"solver_order": 3, "solver_type": "heun"},
    {"solver_type": "heun"},
    {"solver_order": 1},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"thresholding": True, "solver_order": 3},
    {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},  # a last step between equal sigmas
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_order": 3},
]


@pytest.mark.parametrize(
    "config", SINGLESTEP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
@pytest.mark.parametrize("steps", [25, 10])
def test_dpm_solver_singlestep_matches_diffusers(config, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stock = diffusers.DPMSolverSinglestepScheduler(**config)
        ours = accelerated.DPMSolverSinglestepScheduler(**config)
    want, got = _loop(stock, steps=steps), _loop(ours, steps=steps)
    # The third-order SDE heun variant drives this toy model's samples to about 1e3 (in
    # diffusers too), which amplifies float32 rounding: 4e-5 there, 1e-7..1e-6 elsewhere.
    diverged = float(want.abs().max()) > 100
    assert _relative_error(got, want) < (1e-4 if diverged else 1e-5)
