"""diffaccel.integrations.diffusers against stock diffusers: the predictor-correctors (UniPC, SA-Solver)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from diffusers_helpers import MARKS, _float64_tables, _loop, _relative_error  # noqa: E402

pytestmark = MARKS


UNIPC_CASES = [
    {},
    {"solver_order": 3},
    # (bh1 and predict_x0=False give NaN in diffusers itself at a zero final sigma: sigma_min there.)
    {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"solver_order": 3, "solver_type": "bh1", "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"disable_corrector": [0, 5, 6]},
    {"thresholding": True, "solver_order": 3},
    {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "prediction_type": "v_prediction", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"prediction_type": "sample", "use_exponential_sigmas": True},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("config", UNIPC_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_unipc_matches_diffusers(config):
    want = _loop(diffusers.UniPCMultistepScheduler(**config))
    got = _loop(accelerated.UniPCMultistepScheduler(**config))
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize(
    "config",
    [
        {"solver_order": 3, "lower_order_final": False},
        {"solver_order": 3, "lower_order_final": False, "solver_type": "bh1"},
        {"solver_order": 3, "lower_order_final": False, "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    ],
    ids=["bh2", "bh1", "flow"],
)
def test_unipc_singular_weights_raise_as_stocks(config):
    """Order 3 on the last step to a zero sigma (lower_order_final=False):
    the log-SNR ratios make the rho matrix singular, and diffusers'
    torch.linalg.solve raises; so does the drop-in's solve (it gave NaN
    until 2026-12-02)."""
    for module in (diffusers, accelerated):
        with pytest.raises(torch.linalg.LinAlgError):
            _loop(module.UniPCMultistepScheduler(**config), steps=8)


def _tau_zero(t):  # an ODE sampler (no noise)
    return 0


def _tau_one(t):  # noise at every step
    return 1


SASOLVER_CASES = [
    {},
    {"predictor_order": 1, "corrector_order": 1},
    {"predictor_order": 3, "corrector_order": 3},
    {"predictor_order": 4, "corrector_order": 4},
    {"predictor_order": 2, "corrector_order": 4, "lower_order_final": False},
    {"algorithm_type": "noise_prediction"},
    {"algorithm_type": "noise_prediction", "predictor_order": 3, "corrector_order": 4},
    {"algorithm_type": "noise_prediction", "prediction_type": "v_prediction", "tau_func": _tau_one},
    {"tau_func": _tau_zero},
    {"tau_func": _tau_one, "predictor_order": 3},
    {"thresholding": True, "sample_max_value": 1.5},
    {"prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"prediction_type": "sample", "use_exponential_sigmas": True},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("steps", [25, 8])
@pytest.mark.parametrize(
    "config",
    SASOLVER_CASES,
    ids=lambda c: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()) or "default",
)
def test_sasolver_matches_diffusers(config, steps):
    """Stock SA-Solver with its weights from float64 tables within 1e-5 (measured
    on the dev VM: 9.4e-8 to 2e-6), stock itself within 2e-5 up to second order
    (2.5e-7 to 7.6e-6). Stock's third- and fourth-order weights, expanded
    Lagrange polynomials times exponential integrals in float32, cancel: stock
    drifts from its own float64-weight run by 1.6e-5 (order 3) to 1.3e-4 (order
    4) at 25 steps, 1.4e-3 at 50, and the drop-in with it."""
    got = _loop(accelerated.SASolverScheduler(**config), steps=steps)
    assert _relative_error(got, _loop(_float64_tables(diffusers.SASolverScheduler(**config)), steps=steps)) < 1e-5
    higher = max(config.get("predictor_order", 2), config.get("corrector_order", 2)) > 2
    assert _relative_error(got, _loop(diffusers.SASolverScheduler(**config), steps=steps)) < (3e-4 if higher else 2e-5)
