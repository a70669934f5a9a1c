"""Solver plans on the exact oracle (Gaussian data, whose probability-flow ODE
solution is known): measured convergence orders, agreement of the fused and
reference ops, prediction types, and bad input."""

import math

import pytest
import torch

from diffaccel import ops, schedules as S
from diffaccel.models.analytic import GaussianData, GaussianMixture
from diffaccel.sampling import classifier_free_guidance, run_plan, sample
from diffaccel.solvers import SAMPLERS, plan, samplers

SCHEDULE = S.VPLinear()
DATA = GaussianData(torch.linspace(-1.0, 1.0, 8), torch.linspace(0.2, 1.5, 8))
T_END = 1e-3


def _x_T(batch=64):
    return DATA.sample_marginal(SCHEDULE, 1.0, batch, torch.Generator().manual_seed(0))


def _error(sampler, steps, **options):
    x = _x_T()
    exact = DATA.pf_ode_solution(SCHEDULE, x, 1.0, T_END)
    p = plan(sampler, steps=steps, schedule=SCHEDULE, t_end=T_END, **options)
    return (run_plan(p, DATA.denoiser(SCHEDULE), x) - exact).abs().max().item()


def _slope(errors, steps):
    xs = [math.log(n) for n in steps]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


STEPS = [20, 40, 80, 160]


@pytest.mark.parametrize(
    "sampler, options, order",
    [
        ("ddim", {}, 1),
        ("dpmpp_1m", {}, 1),
        ("dpmpp_2m", {"solver_type": "midpoint"}, 2),
        ("dpmpp_2m", {"solver_type": "heun"}, 2),
        ("euler", {}, 1),
        ("heun", {}, 2),
        ("dpm_solver_1", {}, 1),
        ("dpm_solver_2", {}, 2),
        ("dpm_solver_3", {}, 3),
        ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
    ],
)
def test_convergence_order(sampler, options, order):
    slope = _slope([_error(sampler, n, **options) for n in STEPS], STEPS)
    assert abs(slope - order) <= 0.3, f"{sampler} {options}: measured order {slope:.2f}, theory {order}"


def test_third_order_multistep_converges_at_least_like_2m():
    """3M starts with lower-order steps, so globally it converges at order 2
    (first step's local error is O(h^2)); it must beat 2M at every step count."""
    errors_3m = [_error("dpmpp_3m", n) for n in STEPS]
    errors_2m = [_error("dpmpp_2m", n) for n in STEPS]
    assert _slope(errors_3m, STEPS) >= 1.7
    assert all(e3 < e2 for e3, e2 in zip(errors_3m, errors_2m))


def test_dpmpp_2m_beats_ddim_at_20_steps():
    assert _error("ddim", 20) >= 5 * _error("dpmpp_2m", 20)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m", "heun", "dpm_solver_3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fused_and_reference_ops_agree(sampler, dtype):
    x = _x_T(16).to(dtype)
    model = DATA.denoiser(SCHEDULE)
    fused = sample(model, x, sampler=sampler, steps=12, schedule=SCHEDULE, t_end=T_END)
    with ops.backend("reference"):
        ref = sample(model, x, sampler=sampler, steps=12, schedule=SCHEDULE, t_end=T_END)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "dpm_solver_2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_agree_for_the_ideal_model(sampler, prediction_type):
    x = _x_T(16)
    want = sample(
        DATA.denoiser(SCHEDULE, "sample"),
        x,
        sampler=sampler,
        steps=15,
        schedule=SCHEDULE,
        t_end=T_END,
        prediction_type="sample",
    )
    got = sample(
        DATA.denoiser(SCHEDULE, prediction_type),
        x,
        sampler=sampler,
        steps=15,
        schedule=SCHEDULE,
        t_end=T_END,
        prediction_type=prediction_type,
    )
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_flow_prediction_on_a_flow_schedule():
    """A flow-matching velocity model on the rectified-flow schedule converges
    to the exact solution at second order with DPM-Solver++(2M)."""
    flow = S.FlowMatching()
    x = DATA.sample_marginal(flow, 0.999, 32, torch.Generator().manual_seed(1))
    exact = DATA.pf_ode_solution(flow, x, 0.999, 0.001)
    errors = []
    for n in STEPS:
        got = sample(
            DATA.denoiser(flow, "flow"),
            x,
            sampler="dpmpp_2m",
            steps=n,
            schedule=flow,
            t_start=0.999,
            t_end=0.001,
            prediction_type="flow",
        )
        errors.append((got - exact).abs().max().item())
    assert abs(_slope(errors, STEPS) - 2) <= 0.3


def test_ddim_eta_one_is_stochastic_and_seeded():
    x = _x_T(8)
    model = DATA.denoiser(SCHEDULE)
    a = sample(
        model, x, sampler="ddim", eta=1.0, steps=10, schedule=SCHEDULE, generator=torch.Generator().manual_seed(5)
    )
    b = sample(
        model, x, sampler="ddim", eta=1.0, steps=10, schedule=SCHEDULE, generator=torch.Generator().manual_seed(5)
    )
    c = sample(
        model, x, sampler="ddim", eta=1.0, steps=10, schedule=SCHEDULE, generator=torch.Generator().manual_seed(6)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_plan_repr_and_callback():
    p = plan("dpmpp_3m", steps=5, schedule=SCHEDULE)
    text = repr(p)
    assert "dpmpp_3m" in text and text.count("order=") == 5
    seen = []
    sample(
        DATA.denoiser(SCHEDULE),
        _x_T(4),
        sampler="dpmpp_2m",
        steps=5,
        schedule=SCHEDULE,
        callback=lambda info: seen.append(info),
    )
    assert [info["i"] for info in seen] == list(range(5))
    for info in seen:
        t = torch.tensor(info["t"], dtype=torch.float64)
        assert info["sigma"] == pytest.approx(float(SCHEDULE.sigma(t) / SCHEDULE.alpha(t)), rel=1e-12)
        assert set(info) >= {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_bad_input():
    with pytest.raises(ValueError, match="valid samplers: ddim, ddpm, dpm_adaptive_12"):
        plan("euler_magic")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        plan("dpmpp_2m", steps=0)
    with pytest.raises(ValueError, match="t_end < t_start"):
        plan("dpmpp_2m", schedule=SCHEDULE, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        plan("dpmpp_2m", prediction_type="noise")
    with pytest.raises(ValueError, match="unsupported option"):
        plan("ddim", order=3)
    with pytest.raises(ValueError, match="solver_type"):
        plan("dpmpp_2m", solver_type="rk4")
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        sample(lambda x, t: x[:1], torch.randn(2, 8), steps=3)
    assert "dpmpp_2m" in samplers()


MIXTURE = GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.5], [0.0, -1.0], [2.0, 1.0]], [[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]])


@pytest.mark.parametrize(
    "sampler, options",
    [
        ("ddpm", {}),
        ("ddim", {"eta": 0.5}),
        ("euler_ancestral", {}),
        ("dpmpp_2m_sde", {}),
        ("dpmpp_2m_sde", {"solver_type": "heun"}),
        ("dpmpp_2s_ancestral", {}),
        ("dpmpp_2m", {}),
    ],
)
def test_samplers_reproduce_the_mixture_moments(sampler, options):
    """From x_T drawn at t = 1, the samples at t_end must have the mixture's
    marginal mean and covariance there, within sampling error (5 standard
    errors) plus a small allowance for the discretization bias at 200 steps."""
    n = 20000
    x = MIXTURE.sample_marginal(SCHEDULE, 1.0, n, torch.Generator().manual_seed(0))
    mean, cov = MIXTURE.marginal_moments(SCHEDULE, T_END)
    p = plan(sampler, steps=200, schedule=SCHEDULE, t_end=T_END, **options)
    y = run_plan(p, MIXTURE.denoiser(SCHEDULE), x, generator=torch.Generator().manual_seed(1))
    var = torch.diagonal(cov)
    se_mean = torch.sqrt(var / n)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    assert bool(((y.mean(0) - mean).abs() <= 5 * se_mean + 0.02).all())
    assert bool(((torch.cov(y.T) - cov).abs() <= 5 * se_cov + 0.03).all())


def test_ddpm_is_euler_ancestral():
    """DDPM's posterior step and Euler ancestral (eta = 1) are the same update."""
    x = _x_T(8)
    a = sample(
        DATA.denoiser(SCHEDULE),
        x,
        sampler="ddpm",
        steps=10,
        schedule=SCHEDULE,
        generator=torch.Generator().manual_seed(2),
    )
    b = sample(
        DATA.denoiser(SCHEDULE),
        x,
        sampler="euler_ancestral",
        steps=10,
        schedule=SCHEDULE,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "schedule, t_start, t_end",
    [(SCHEDULE, 1.0, T_END), (S.EDM(), 80.0, 0.002)],
    ids=["vp", "ve"],
)
def test_predictor_corrector_langevin_steps_help(schedule, t_start, t_end):
    """score_sde's PC sampler, for a VP and a VE schedule: one Langevin
    corrector step per time (snr 0.16) brings the mixture's covariance much
    closer than the predictor alone."""
    n = 20000
    x = MIXTURE.sample_marginal(schedule, t_start, n, torch.Generator().manual_seed(0))
    mean, cov = MIXTURE.marginal_moments(schedule, t_end)

    def cov_error(n_correct):
        p = plan("pc", steps=100, schedule=schedule, t_start=t_start, t_end=t_end, n_correct=n_correct, snr=0.16)
        y = run_plan(p, MIXTURE.denoiser(schedule), x, generator=torch.Generator().manual_seed(1))
        assert bool(((y.mean(0) - mean).abs() <= 0.05).all())
        return (torch.cov(y.T) - cov).abs().max().item()

    assert cov_error(1) < 0.5 * cov_error(0)


@pytest.mark.parametrize(
    "threshold", [ops.Threshold("clip", max_value=1.0), ops.Threshold("dynamic", 0.9, 1.0)], ids=repr
)
def test_thresholded_samplers_stay_within_bounds(threshold):
    data = GaussianData(torch.full((8,), 1.5), torch.full((8,), 0.5))  # mostly beyond [-1, 1]
    x = data.sample_marginal(SCHEDULE, 1.0, 32, torch.Generator().manual_seed(3))
    seen = []
    sample(
        data.denoiser(SCHEDULE),
        x,
        sampler="dpmpp_2m",
        steps=10,
        schedule=SCHEDULE,
        threshold=threshold,
        callback=lambda info: seen.append(info["denoised"].abs().max().item()),
    )
    assert max(seen) <= 1.0 + 1e-12
    unthresholded = []
    sample(
        data.denoiser(SCHEDULE),
        x,
        sampler="dpmpp_2m",
        steps=10,
        schedule=SCHEDULE,
        callback=lambda info: unthresholded.append(info["denoised"].abs().max().item()),
    )
    assert max(unthresholded) > 1.5  # so the bound above was the threshold's doing


def test_classifier_free_guidance_batches_one_call():
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return x * 0 + c  # the "prediction" is the conditioning value

    x = torch.zeros(3, 4, dtype=torch.float64)
    cond, uncond = torch.full((3, 4), 2.0, dtype=torch.float64), torch.full((3, 4), 1.0, dtype=torch.float64)
    guided = classifier_free_guidance(model, cond, uncond, 7.5)
    out = guided(x, torch.zeros(3, dtype=torch.float64))
    assert calls == [6]
    torch.testing.assert_close(out, torch.full((3, 4), 1.0 + 7.5 * (2.0 - 1.0), dtype=torch.float64))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lms_convergence_order(order):
    steps = STEPS[1:]
    slope = _slope([_error("lms", n, order=order) for n in steps], steps)
    assert abs(slope - order) <= 0.3, f"lms order {order}: measured {slope:.2f}"


def test_lms_order_4_beats_order_3():
    steps = STEPS[1:]
    errors_4 = [_error("lms", n, order=4) for n in steps]
    errors_3 = [_error("lms", n, order=3) for n in steps]
    assert _slope(errors_4, steps) >= 3.3
    assert all(e4 < e3 for e4, e3 in zip(errors_4, errors_3))


def test_lcm_with_an_exact_consistency_function_samples_the_data():
    """For Gaussian data the consistency function is the exact ODE map to
    t = 0; LCM's multistep sampling with it returns data-distributed samples."""
    n = 20000
    x = DATA.sample_marginal(SCHEDULE, 1.0, n, torch.Generator().manual_seed(0))
    consistency = lambda x, t: DATA.pf_ode_solution(SCHEDULE, x, t, 0.0)  # noqa: E731
    y = sample(
        consistency,
        x,
        sampler="lcm",
        steps=4,
        schedule=SCHEDULE,
        prediction_type="sample",
        boundary=False,
        generator=torch.Generator().manual_seed(1),
    )
    se = DATA.std / math.sqrt(n)
    assert bool(((y.mean(0) - DATA.mean).abs() <= 5 * se).all())
    assert bool(((y.std(0) - DATA.std).abs() <= 5 * DATA.std / math.sqrt(2 * n)).all())


def test_denoise_to_zero_returns_the_last_data_prediction():
    x = _x_T(8)
    model = DATA.denoiser(SCHEDULE)
    p = plan("dpmpp_2m", steps=6, schedule=SCHEDULE, denoise_to_zero=True)
    assert len(p.rows) == 7
    plain = sample(model, x, sampler="dpmpp_2m", steps=6, schedule=SCHEDULE)
    t_end = torch.full((8,), SCHEDULE.t_min, dtype=torch.float64)
    want = DATA.denoiser(SCHEDULE, "sample")(plain, t_end)
    torch.testing.assert_close(run_plan(p, model, x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "sampler, order, measured",
    [("unipc_bh2", 1, 2), ("unipc_bh2", 2, 3), ("unipc_bh1", 2, 3)],
)
def test_unipc_corrector_raises_the_order_by_one(sampler, order, measured):
    errors = [_error(sampler, n, order=order) for n in STEPS]
    assert abs(_slope(errors, STEPS) - measured) <= 0.3
    if sampler == "unipc_bh2" and order == 2:  # the bar for UniPC-bh2
        assert all(e < e2m for e, e2m in zip(errors, [_error("dpmpp_2m", n) for n in STEPS]))


def test_unipc_predictor_alone_is_dpmpp_2m():
    """UniP-2 with B(h) = expm1(h) is DPM-Solver++(2M): the known special case."""
    x = _x_T(8)
    model = DATA.denoiser(SCHEDULE)
    a = sample(model, x, sampler="unipc_bh2", corrector=False, steps=12, schedule=SCHEDULE)
    b = sample(model, x, sampler="dpmpp_2m", steps=12, schedule=SCHEDULE)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler", samplers())
def test_every_sampler_runs_the_same_on_fused_and_reference_ops(sampler):
    x = _x_T(16)
    model = DATA.denoiser(SCHEDULE)
    fused = sample(model, x, sampler=sampler, steps=9, schedule=SCHEDULE, generator=torch.Generator().manual_seed(4))
    with ops.backend("reference"):
        ref = sample(model, x, sampler=sampler, steps=9, schedule=SCHEDULE, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "sampler, order, atol, rtol", [("dpm_adaptive_12", 2, 1e-4, 1e-3), ("dpm_adaptive_23", 3, 1e-3, 1e-2)]
)
def test_adaptive_beats_fixed_steps_at_equal_model_calls(sampler, order, atol, rtol):
    """With as many model calls as the adaptive run used, DPM-Solver of the
    same order on a uniform-time grid (the official DPM-Solver's baseline) is
    less accurate; and a tighter tolerance gives a smaller error."""
    from diffaccel.solvers.adaptive import sample_adaptive

    x = _x_T()
    exact = DATA.pf_ode_solution(SCHEDULE, x, 1.0, T_END)
    model = DATA.denoiser(SCHEDULE)
    result, stats = sample_adaptive(model, x, SCHEDULE, order=order, t_end=T_END, atol=atol, rtol=rtol)
    adaptive_error = (result - exact).abs().max().item()
    steps = stats["model_calls"] // order
    fixed = run_plan(
        plan(f"dpm_solver_{order}", steps=steps, schedule=SCHEDULE, spacing="time_uniform", t_end=T_END), model, x
    )
    assert adaptive_error < (fixed - exact).abs().max().item()
    looser, _ = sample_adaptive(model, x, SCHEDULE, order=order, t_end=T_END, atol=10 * atol, rtol=10 * rtol)
    assert adaptive_error < (looser - exact).abs().max().item()
    via_sample = sample(model, x, sampler=sampler, schedule=SCHEDULE, t_end=T_END, atol=atol, rtol=rtol)
    torch.testing.assert_close(via_sample, result, rtol=0, atol=0)


def test_adaptive_bad_input():
    with pytest.raises(ValueError, match="no fixed plan"):
        plan("dpm_adaptive_12")
    with pytest.raises(ValueError, match="atol > 0"):
        sample(DATA.denoiser(SCHEDULE), _x_T(2), sampler="dpm_adaptive_23", schedule=SCHEDULE, atol=0.0)
    assert {"dpm_adaptive_12", "dpm_adaptive_23"} <= set(samplers())


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2), ("dpm_solver_3", 3)])
def test_reverse_plans_integrate_the_ode_from_data_to_noise(sampler, order):
    """reverse=True (DDIM inversion and its higher-order kin) converges to the
    exact inverse flow map at the solver's order."""
    x0 = DATA.sample_marginal(SCHEDULE, T_END, 64, torch.Generator().manual_seed(3))
    exact = DATA.pf_ode_solution(SCHEDULE, x0, T_END, 1.0)
    errors = []
    for steps in STEPS:
        p = plan(sampler, steps=steps, schedule=SCHEDULE, t_end=T_END, reverse=True)
        assert p.rows[0].t < p.rows[-1].t
        errors.append((run_plan(p, DATA.denoiser(SCHEDULE), x0.double()) - exact).abs().max().item())
    assert _slope(errors, STEPS) > order - 0.3


def test_reverse_refuses_stochastic_samplers_and_denoise_to_zero():
    with pytest.raises(ValueError, match="ddpm is stochastic"):
        plan("ddpm", steps=10, reverse=True)
    with pytest.raises(ValueError, match="pc is stochastic"):
        plan("pc", steps=10, reverse=True)
    with pytest.raises(ValueError, match="drop denoise_to_zero"):
        plan("ddim", steps=10, reverse=True, denoise_to_zero=True)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampling_loops_never_read_the_state(sampler):
    """Every fixed-step loop runs on meta tensors, which have no data: any read
    of the state, a model output or a device table on the host (.item(), bool(),
    nonzero, .cpu(), .tolist()) would raise here. On CUDA such a read is a host
    synchronization, so this is the CPU machines' check that the loop the CUDA
    graph captures never synchronizes (a host-to-device copy from pageable
    memory, the other kind, is caught by tests/test_graph.py on a GPU). Every
    sampler with a plan; the adaptive ones read their error norm by design."""
    x = torch.empty(2, 4, 8, 8, device="meta")
    guided = classifier_free_guidance(
        lambda x, t, c: x * c, torch.empty(2, 1, 1, 1, device="meta"), torch.empty(2, 1, 1, 1, device="meta"), 3.0
    )
    for model in (lambda x, t: torch.tanh(x) * t.view(-1, 1, 1, 1), guided):
        y = sample(model, x, sampler=sampler, steps=6, threshold=ops.Threshold("dynamic", 0.9, 1.5))
        assert y.device.type == "meta" and y.shape == x.shape


def test_the_meta_check_catches_a_host_read():
    """The check above can fail: a model that reads its input's value raises on meta."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        sample(lambda x, t: x * float(x.mean()), torch.empty(2, 4, 8, 8, device="meta"), sampler="dpmpp_2m", steps=4)
