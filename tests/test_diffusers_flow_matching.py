"""diffaccel.integrations.diffusers against stock diffusers: the flow-matching schedulers
(FlowMatch LCM and Heun, LTX's Euler ancestral RF)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _loop, _relative_error, model  # noqa: E402

pytestmark = MARKS


def _flow_match_lcm_loop(scheduler, steps, sigmas=None, scale_factors=None):
    """A FlowMatchLCM loop (no scale_model_input, as its pipelines), from its
    schedule or given sigmas, optionally in its scale-wise regime; returns the
    sample and the generator's state."""
    scheduler.set_timesteps(None if sigmas else steps, sigmas=sigmas, device=DEVICE)
    if scale_factors:
        scheduler.set_scale_factors(scale_factors, "bilinear")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x, generator.get_state()


@pytest.mark.parametrize(
    "steps,sigmas,scale_factors",
    [(1, None, None), (2, None, None), (4, None, None), (None, [1.0, 0.75, 0.4], None), (3, None, [1.0, 1.5])],
    ids=["1-step", "2-steps", "4-steps", "given-sigmas", "scale-wise"],
)
def test_flow_match_lcm_few_steps(steps, sigmas, scale_factors):
    """FlowMatchLCM's usual few steps, from its schedule and from given sigmas:
    the same samples, and the generators end equal (the last step's noise is
    drawn as in diffusers, though its weight is 0). The scale-wise regime
    (set_scale_factors: the data prediction resized between steps) runs
    diffusers' step: the same sample, larger than the input."""
    (want, want_state), (got, state) = (
        _flow_match_lcm_loop(module.FlowMatchLCMScheduler(), steps, sigmas, scale_factors)
        for module in (diffusers, accelerated)
    )
    assert got.shape == want.shape and _relative_error(got, want) < 1e-5
    assert torch.equal(state, want_state)
    if scale_factors:
        assert got.shape[-1] > 8


@pytest.mark.parametrize("steps", [3, 1])
@pytest.mark.parametrize(
    "config,step_options", [({}, {}), ({"shift": 3.0}, {"s_churn": 1.0})], ids=["default", "shift=3-s_churn=1"]
)
def test_flow_match_heun_few_steps(config, step_options, steps):
    """Few steps end on a small sigma_next, where diffusers' second derivative,
    (x - (x - sigma_next v)) / sigma_next, keeps only the bits of v that survive
    the subtraction from x (the fused step uses v itself): 6e-6 to 8e-6 apart
    at 3 steps, measured. Both draw the churn's noise alike: the generators end equal."""
    ends = []
    for module in (diffusers, accelerated):
        generator = torch.Generator().manual_seed(1)
        x = _loop(module.FlowMatchHeunDiscreteScheduler(**config), steps=steps, generator=generator, **step_options)
        ends.append((x, generator.get_state()))
    (want, want_state), (got, state) = ends
    assert _relative_error(got, want) < 3e-5
    assert torch.equal(state, want_state)


# LTX's set_timesteps builds its sigmas with a FlowMatchEulerDiscreteScheduler made from its
# config, so a FlowMatch option in that config (shift, as in LTX-Video's) shapes them.
LTX_CASES = [{}, {"eta": 0.5}, {"eta": 0.0}, {"s_noise": 0.9}, {"s_noise": 0.0}, {"shift": 3.0}]


# LTX-2's distilled sigmas, ending on 0 as its pipelines pass them.
LTX2_SIGMAS = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0]


def _ltx_loop(scheduler, sigmas):
    scheduler.set_timesteps(sigmas=sigmas, device=DEVICE)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x


@pytest.mark.filterwarnings("ignore")  # diffusers' notice that a FlowMatch config gets LTX's eta / s_noise
@pytest.mark.parametrize("steps", [25, 8, 1])
@pytest.mark.parametrize("config", LTX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_ltx_euler_ancestral_rf_matches_diffusers(config, steps):
    want = _loop(diffusers.LTXEulerAncestralRFScheduler.from_config(config), steps=steps)
    got = _loop(accelerated.LTXEulerAncestralRFScheduler.from_config(config), steps=steps)
    # Measured on the dev VM: 0 to 7.6e-7 (with the given LTX-2 sigmas: 4.4e-7, 1.6e-6).
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ltx_euler_ancestral_rf_with_given_sigmas_matches_diffusers(eta):
    want = _ltx_loop(diffusers.LTXEulerAncestralRFScheduler(eta=eta), LTX2_SIGMAS)
    got = _ltx_loop(accelerated.LTXEulerAncestralRFScheduler(eta=eta), LTX2_SIGMAS)
    assert _relative_error(got, want) < 1e-5


def test_ltx_euler_ancestral_rf_edges_are_diffusers():
    """A step past the schedule's end returns the sample itself; an integer
    timestep and a step before set_timesteps get diffusers' errors."""
    scheduler = accelerated.LTXEulerAncestralRFScheduler()
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="Call `set_timesteps` before `step`"):
        scheduler.step(x, torch.tensor(1000.0), x)
    scheduler.set_timesteps(sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="integer indices"):
        scheduler.step(x, 3, x)
    t = scheduler.timesteps[0]
    x = scheduler.step(model(x, t), t, x).prev_sample
    assert scheduler.step(model(x, t), t, x).prev_sample is x


@pytest.mark.parametrize(
    "steps,config,schedule",
    [
        (1, {}, {}),
        (4, {}, {}),
        (25, {}, {}),
        (8, {"shift": 5.0}, {}),
        (None, {"shift": 3.0}, {"sigmas": [1.0, 0.7, 0.3, 0.1]}),
        (None, {}, {"timesteps": [999.0, 500.0, 250.0]}),
    ],
    ids=["1-step", "4-steps", "25-steps", "shift-5", "given-sigmas", "given-timesteps"],
)
def test_flow_map_euler_loops(steps, config, schedule):
    """FlowMapEuler's loop from its schedule, a shifted one and given sigmas or timesteps."""
    outcomes = []
    for module in (diffusers, accelerated):
        scheduler = module.FlowMapEulerDiscreteScheduler(**config)
        scheduler.set_timesteps(steps, device=DEVICE, **schedule)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x).prev_sample
        outcomes.append((x, scheduler.step_index))
    (want, want_index), (got, index) = outcomes
    assert index == want_index and _relative_error(got, want) < 1e-6


def test_flow_map_euler_any_step():
    """Any-step sampling: one call from t to a chosen r (on or off the schedule,
    numbers or tensors); an off-schedule device tensor and several timesteps
    at once take diffusers' step; no r for an off-schedule t is diffusers' error."""
    schedulers = [m.FlowMapEulerDiscreteScheduler(shift=2.0) for m in (diffusers, accelerated)]
    for s in schedulers:
        s.set_timesteps(6, device=DEVICE)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    t = schedulers[0].timesteps
    cases = [
        (t[0], 0.0),
        (1000.0, 0.0),
        (t[1].item(), t[4].item()),
        (333.3, 100.0),
        (torch.tensor(600.0), torch.tensor(10.0)),
        (t[2], None),
        (t[3].clone(), None),  # on the schedule, not a view of it (on a GPU: diffusers' step)
        (torch.full((2,), 700.0, device=DEVICE), torch.tensor(0.0)),
    ]
    for timestep, r in cases:
        want, got = (s.step(model(x, 500), timestep, x, r_timestep=r).prev_sample for s in schedulers)
        assert _relative_error(got, want) < 1e-6, (timestep, r)
    for s in schedulers:
        with pytest.raises(ValueError, match="`r_timestep` is None"):
            s.step(x, 123.4, x)


def _minimax_loop(module, steps, dtype, config=None, sigmas=None):
    scheduler = module.MiniMaxH3Scheduler(**(config or {}))
    scheduler.set_timesteps(None if sigmas else steps, device=DEVICE, sigmas=sigmas)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x.float(), t).to(dtype), t, x).prev_sample
    return x, scheduler.step_index


@pytest.mark.parametrize(
    "steps,config,sigmas",
    [(2, {}, None), (10, {}, None), (30, {"shift": 3.0}, None), (None, {}, [1.0, 0.6, 0.25, 0.0])],
    ids=["2-points", "10-points", "shift-3", "given-sigmas"],
)
def test_minimax_h3_loops(steps, config, sigmas):
    """MiniMax-H3's data-ward Euler loop in float32 and float64: stock's samples.
    In bfloat16, where diffusers rounds x + s v to bf16 before its float32 blend
    and the fused pass does not, at least as close to the float64 loop as stock."""
    for dtype, bound in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        (want, want_index), (got, index) = (
            _minimax_loop(m, steps, dtype, config, sigmas) for m in (diffusers, accelerated)
        )
        assert got.dtype == want.dtype == dtype and index == want_index
        assert _relative_error(got, want) < bound
    exact = _minimax_loop(diffusers, steps, torch.float64, config, sigmas)[0]
    stock = _minimax_loop(diffusers, steps, torch.bfloat16, config, sigmas)[0]
    got = _minimax_loop(accelerated, steps, torch.bfloat16, config, sigmas)[0]
    assert got.dtype == torch.bfloat16
    assert _relative_error(got, exact) <= 1.1 * _relative_error(stock, exact)


def test_minimax_h3_refusals_are_stocks():
    """An integer index for a timestep and a timestep off the schedule: diffusers' ValueError."""
    for module in (diffusers, accelerated):
        scheduler = module.MiniMaxH3Scheduler()
        scheduler.set_timesteps(5, device=DEVICE)
        x = torch.randn(1, 4, 4, 4, device=DEVICE)
        with pytest.raises(ValueError, match="integer indices"):
            scheduler.step(x, 1, x)
        with pytest.raises(ValueError, match="not in `self.timesteps`"):
            scheduler.step(x, 0.123, x)


def _piflow_loop(module, config, steps, dtype=torch.float32, begin=None):
    scheduler = module.PiflowScheduler(**config)
    scheduler.set_timesteps(steps, device=DEVICE)
    if begin is not None:
        scheduler.set_begin_index(begin)
    grid = scheduler.n_grid
    x = torch.randn(2, 16, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    scales = torch.linspace(0.5, 1.5, grid * 8, device=DEVICE)
    for t in scheduler.timesteps[begin or 0 :]:
        out = torch.tanh(x.float().repeat(1, 1, grid) * scales + 0.01 * float(t))  # n_grid predictions per channel
        x = scheduler.step(out.to(dtype), t, x).prev_sample
    return x


@pytest.mark.parametrize(
    "config,steps",
    [
        ({}, 1),
        ({}, 4),
        ({"n_grid": 4}, 2),
        ({"n_grid": 7}, 3),
        ({"n_grid": 16}, 3),
        ({"shift": 3.0, "num_policy_substeps": 64}, 8),
    ],
    ids=["1-step", "4-steps", "grid-4", "grid-7", "grid-16", "shift-3-64-substeps"],
)
def test_piflow_rollout_equals_stock(config, steps):
    """pi-Flow's policy rollout traced on coefficients (one multistep_combine,
    two beyond 7 grid points) against diffusers' substep loop: diffusers rounds
    to float32 at each of up to 128 substeps, hence 1e-5."""
    want, got = (_piflow_loop(m, config, steps) for m in (diffusers, accelerated))
    assert got.dtype == want.dtype and _relative_error(got, want) < 1e-5


def test_piflow_bf16_and_begin_index():
    want, got = (_piflow_loop(m, {}, 4, torch.bfloat16) for m in (diffusers, accelerated))
    assert got.dtype == torch.bfloat16 and _relative_error(got, want) < 1e-2
    want, got = (_piflow_loop(m, {}, 6, begin=2) for m in (diffusers, accelerated))
    assert _relative_error(got, want) < 1e-5


def test_piflow_refusals_are_stocks_and_a_wrong_weight_fails(monkeypatch):
    """An output not n_grid times wider and an index for a timestep: diffusers'
    ValueError; a perturbed rollout weight is seen."""
    for module in (diffusers, accelerated):
        scheduler = module.PiflowScheduler()
        scheduler.set_timesteps(4, device=DEVICE)
        x = torch.randn(2, 16, 8, device=DEVICE)
        with pytest.raises(ValueError, match="not divisible by n_grid"):
            scheduler.step(x, scheduler.timesteps[0], x)
        with pytest.raises(ValueError, match="integer indices"):
            scheduler.step(x.repeat(1, 1, 10), 1, x)
    real = accelerated.PiflowScheduler._rollout_weights
    monkeypatch.setattr(accelerated.PiflowScheduler, "_rollout_weights", lambda s, i: [w * 1.001 for w in real(s, i)])
    assert _relative_error(_piflow_loop(accelerated, {}, 4), _piflow_loop(diffusers, {}, 4)) > 1e-4
