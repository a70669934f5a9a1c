"""diffaccel.integrations.diffusers against stock diffusers: the Euler family (Euler, Euler
ancestral, EDM Euler, Heun, LMS, DPM++ SDE, KDPM2)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _loop, _relative_error, model  # noqa: E402

pytestmark = MARKS


EULER_CASES = [
    ("EulerDiscreteScheduler", {}, {}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("EulerDiscreteScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, {}),
    ("EulerDiscreteScheduler", {"prediction_type": "sample", "final_sigmas_type": "sigma_min"}, {}),
    ("EulerDiscreteScheduler", {}, {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0}),
    (
        "EulerDiscreteScheduler",
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "interpolation_type": "log_linear",
        },
        {"s_churn": 0.5, "s_noise": 1.003},
    ),
    ("EulerAncestralDiscreteScheduler", {}, {}),
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, {}),
    (
        "EulerAncestralDiscreteScheduler",
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {},
    ),
    ("FlowMatchEulerDiscreteScheduler", {}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True, "shift": 3.0}, {}),
    ("FlowMatchLCMScheduler", {}, {}),
    ("FlowMatchLCMScheduler", {"shift": 3.0}, {}),
    ("FlowMatchLCMScheduler", {"use_karras_sigmas": True}, {}),
    ("FlowMatchLCMScheduler", {"invert_sigmas": True}, {}),
    ("FlowMatchHeunDiscreteScheduler", {}, {}),
    (
        "FlowMatchHeunDiscreteScheduler",
        {"shift": 3.0},
        {"s_churn": 0.5, "s_tmin": 0.2, "s_tmax": 0.8, "s_noise": 1.003},
    ),
    ("HeunDiscreteScheduler", {}, {}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("HeunDiscreteScheduler", {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8}, {}),
    ("LMSDiscreteScheduler", {}, {}),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("LMSDiscreteScheduler", {"prediction_type": "sample"}, {"order": 2}),
]


@pytest.mark.parametrize(
    "name,config,step_options",
    EULER_CASES,
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default",
)
def test_euler_schedulers_match_diffusers(name, config, step_options):
    want = _loop(getattr(diffusers, name)(**config), **step_options)
    got = _loop(getattr(accelerated, name)(**config), **step_options)
    assert _relative_error(got, want) < 1e-5


# (config, steps): constructing a stock KDPM2 scheduler takes ~0.2 s (its __init__'s
# set_timesteps over all 1000 training steps), so the matrix is kept small.
DPM_SDE_CASES = [
    ({"noise_sampler_seed": 3}, {}),
    ({"noise_sampler_seed": 3, "use_karras_sigmas": True}, {}),
    ({"noise_sampler_seed": 5, "prediction_type": "v_prediction"}, {"s_noise": 0.9}),
    (
        {
            "noise_sampler_seed": 1,
            "timestep_spacing": "trailing",
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
        },
        {},
    ),
]


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's, in diffusers too
@pytest.mark.parametrize("steps", [10, 3])
@pytest.mark.parametrize(
    "config,step_options", DPM_SDE_CASES, ids=lambda v: "-".join(f"{k}={w}" for k, w in v.items()) or "default"
)
def test_dpm_solver_sde_matches_diffusers(config, step_options, steps):
    """Both calls of each step, with the Brownian-tree noise of the same seed
    queried at the same times (the final Euler step to sigma = 0 included)."""
    want = _loop(diffusers.DPMSolverSDEScheduler(**config), steps=steps, **step_options)
    got = _loop(accelerated.DPMSolverSDEScheduler(**config), steps=steps, **step_options)
    assert _relative_error(got, want) < 1e-5


KDPM2_CASES = [
    ({}, 10),
    ({}, 3),
    ({"prediction_type": "v_prediction"}, 10),
    ({"use_karras_sigmas": True}, 10),
    ({"use_exponential_sigmas": True}, 3),
    ({"timestep_spacing": "trailing"}, 10),
    ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}, 10),
]


@pytest.mark.parametrize(
    "config,steps",
    KDPM2_CASES,
    ids=lambda v: v if isinstance(v, int) else "-".join(f"{k}={w}" for k, w in v.items()) or "default",
)
@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_kdpm2_schedulers_match_diffusers(name, config, steps):
    """Both calls of each DPM-Solver-2 step (the interpolated sigma's Euler step,
    then the second-order step from the kept sample; with sigma_down and
    sigma_up noise for the ancestral one), every spacing and sigma schedule."""
    want = _loop(getattr(diffusers, name)(**config), steps=steps)
    got = _loop(getattr(accelerated, name)(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_kdpm2_prediction_type_sample_is_refused_as_diffusers_refuses(name):
    scheduler = getattr(accelerated, name)(prediction_type="sample")
    scheduler.set_timesteps(4, device=DEVICE)
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    with pytest.raises(NotImplementedError, match="prediction_type not implemented yet: sample"):
        scheduler.step(x, scheduler.timesteps[0], x)


def test_edm_euler_takes_a_given_data_prediction():
    """step(pred_original_sample=...) steps from that x0, as diffusers does."""
    results = []
    for cls in (diffusers.EDMEulerScheduler, accelerated.EDMEulerScheduler):
        scheduler = cls()
        scheduler.set_timesteps(6, device=DEVICE)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE) * 80
        for t in scheduler.timesteps:
            scaled = scheduler.scale_model_input(x, t)
            out = scheduler.step(model(scaled, t), t, x, pred_original_sample=torch.tanh(scaled))
            x = out.prev_sample
        results.append((x, out.pred_original_sample))
    (want, want_x0), (got, got_x0) = results
    assert _relative_error(got, want) < 1e-5 and _relative_error(got_x0, want_x0) < 1e-6
