"""diffaccel.schedules: marginals, the inverse of lambda, and step selection,
checked against definitions written independently here (SDE relations,
closed forms, diffusers' documented timestep tables)."""

import math

import pytest
import torch

from diffaccel import schedules as S

F64 = torch.float64

VP_SCHEDULES = {
    "discrete_linear": lambda: S.VPDiscrete.from_diffusers("linear"),
    "discrete_scaled_linear": lambda: S.VPDiscrete.from_diffusers("scaled_linear", beta_start=0.00085, beta_end=0.012),
    "discrete_cosine": lambda: S.VPDiscrete.from_diffusers("squaredcos_cap_v2"),
    "vp_linear": lambda: S.VPLinear(),
    "vp_cosine": lambda: S.VPCosine(),
}
ALL_SCHEDULES = dict(VP_SCHEDULES, edm=lambda: S.EDM(), flow=lambda: S.FlowMatching())


def _inner_times(schedule, n=200):
    # Interior times (the flow schedule's ends have lambda = +-inf).
    return torch.linspace(schedule.t_min, schedule.t_max, n + 2, dtype=F64)[1:-1]


@pytest.mark.parametrize("name", list(VP_SCHEDULES))
def test_variance_preserving(name):
    s = VP_SCHEDULES[name]()
    t = _inner_times(s)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_lambda_decreases_and_inverts(name):
    s = ALL_SCHEDULES[name]()
    t = _inner_times(s)
    lam = s.lambda_(t)
    assert bool((lam.diff() < 0).all())
    torch.testing.assert_close(s.t_from_lambda(lam), t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lam, torch.log(s.alpha(t) / s.sigma(t)), rtol=1e-12, atol=1e-12)


def test_vp_discrete_matches_alphas_cumprod_at_timesteps():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    want = torch.sqrt(torch.cumprod(1 - betas, 0))
    s = S.VPDiscrete(betas=betas)
    k = torch.arange(1000, dtype=F64)
    torch.testing.assert_close(s.alpha(k), want, rtol=1e-13, atol=0)
    torch.testing.assert_close(S.VPDiscrete(alphas_cumprod=want**2).alpha(k), want, rtol=1e-13, atol=0)
    # Between timesteps log(alpha) is linear.
    mid = s.log_alpha(torch.tensor(10.25, dtype=F64))
    torch.testing.assert_close(mid, 0.75 * torch.log(want[10]) + 0.25 * torch.log(want[11]))


def test_from_diffusers_betas():
    scaled = S.VPDiscrete.from_diffusers("scaled_linear", num_train_timesteps=10, beta_start=0.01, beta_end=0.04)
    betas = torch.tensor([(0.1 + i * (0.2 - 0.1) / 9) ** 2 for i in range(10)], dtype=F64)
    torch.testing.assert_close(scaled.alphas_cumprod, torch.cumprod(1 - betas, 0))
    cosine = S.VPDiscrete.from_diffusers("squaredcos_cap_v2")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for k in (0, 100, 500, 900):
        assert cosine.alphas_cumprod[k].item() == pytest.approx(f((k + 1) / 1000) / f(0), rel=1e-9)


def test_vp_linear_satisfies_its_sde():
    """d log(alpha) / dt = -beta(t) / 2 with beta(t) = beta_min + t (beta_max - beta_min)."""
    s = S.VPLinear(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    h = 1e-6
    derivative = (s.log_alpha(t + h) - s.log_alpha(t - h)) / (2 * h)
    torch.testing.assert_close(derivative, -(0.1 + t * 19.9) / 2, rtol=1e-7, atol=1e-7)


def test_vp_cosine_closed_form():
    s = S.VPCosine()
    for t in (0.1, 0.5, 0.9):
        want = math.cos((t + 0.008) / 1.008 * math.pi / 2) / math.cos(0.008 / 1.008 * math.pi / 2)
        assert s.alpha(t).item() == pytest.approx(want, rel=1e-12)


def test_edm_and_flow_marginals():
    edm = S.EDM()
    assert edm.alpha(3.0).item() == 1.0 and edm.sigma(3.0).item() == pytest.approx(3.0)
    flow = S.FlowMatching(shift=3.0)
    assert flow.alpha(0.25).item() == pytest.approx(0.75) and flow.sigma(0.25).item() == pytest.approx(0.25)
    assert flow.shift_times(0.5).item() == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
@pytest.mark.parametrize("select", [S.time_uniform, S.logsnr_uniform, S.time_quadratic, S.karras, S.exponential])
def test_step_selection_shape_and_order(name, select):
    s = ALL_SCHEDULES[name]()
    t_start = s.t_max if name != "flow" else 0.999
    t_end = s.t_min if name != "flow" else 0.001
    times = select(s, 10, t_start, t_end)
    assert times.dtype == F64 and times.shape == (11,)
    assert times[0].item() == t_start and times[-1].item() == t_end
    assert bool((times.diff() < 0).all())


def test_step_selection_spacings():
    s = S.VPLinear()
    lam = s.lambda_(S.logsnr_uniform(s, 8))
    torch.testing.assert_close(lam.diff(), torch.full((8,), float(lam.diff()[0]), dtype=F64), rtol=1e-9, atol=1e-9)
    q = S.time_quadratic(s, 8)
    torch.testing.assert_close(q.sqrt().diff(), torch.full((8,), float(q.sqrt().diff()[0]), dtype=F64))
    edm = S.EDM(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    sig = edm.sigma(S.karras(edm, 10))
    # k-diffusion's get_sigmas_karras: (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho
    want = torch.tensor(
        [(80 ** (1 / 7) + i / 10 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(11)], dtype=F64
    )
    torch.testing.assert_close(sig, want, rtol=1e-12, atol=0)


def test_diffusers_timestep_spacing_tables():
    """The tables of Lin et al. 2023 (Common Diffusion Noise Schedules and
    Sample Steps are Flawed), as diffusers implements timestep_spacing."""
    s = S.VPDiscrete.from_diffusers("linear")
    assert S.diffusers_timesteps(s, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert S.diffusers_timesteps(s, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert S.diffusers_timesteps(s, 10, "leading", steps_offset=1).tolist()[0] == 901
    assert S.diffusers_timesteps(s, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


def test_bad_input():
    s = S.VPLinear()
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        S.time_uniform(s, 0)
    with pytest.raises(ValueError, match="t_end < t_start"):
        S.time_uniform(s, 5, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="t_end < t_start"):
        S.karras(s, 5, t_start=2.0)
    with pytest.raises(ValueError, match="'spacing'"):
        S.diffusers_timesteps(S.VPDiscrete.from_diffusers(), 5, "uniform")
    with pytest.raises(ValueError, match="'beta_schedule'"):
        S.VPDiscrete.from_diffusers("sigmoid")
    with pytest.raises(ValueError, match="exactly one"):
        S.VPDiscrete()
    with pytest.raises(ValueError, match="decrease strictly"):
        S.VPDiscrete(alphas_cumprod=[0.5, 0.9])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.EDM(sigma_min=1.0, sigma_max=0.5)
