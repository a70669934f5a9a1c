"""diffaccel.integrations.k_diffusion against the real k-diffusion package on
the same denoiser, sigmas and noise.

k-diffusion's sampling module is loaded without its package's __init__
(tests/k_diffusion_loader.py).
"""

import inspect
import random

import pytest
import torch

from diffaccel.integrations import k_diffusion as ours
from diffaccel.integrations.k_diffusion import dpm_solver

from conftest import DEVICE, RANDOM_SEEDS
from k_diffusion_loader import load_k_diffusion_sampling


K = load_k_diffusion_sampling()

# torchsde warns when a query falls a rounding error outside the tree's interval; k-diffusion does the same.
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")


def denoiser(x, sigma):
    """A deterministic, non-linear stand-in for a network's denoised output."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(x / torch.sqrt(1 + s**2)) * 0.9 + 0.05 * torch.sin(3 * x) / (1 + s)


def _x(shape=(2, 3, 16, 16), sigma_max=14.6):
    g = torch.Generator(DEVICE).manual_seed(0)
    return torch.randn(shape, generator=g, device=DEVICE) * sigma_max


SCHEDULES = {
    "karras": lambda n: ours.get_sigmas_karras(n, 0.03, 14.6, device=DEVICE),
    "exponential": lambda n: ours.get_sigmas_exponential(n, 0.03, 14.6, device=DEVICE),
}


@pytest.mark.parametrize("name", ["karras", "exponential", "polyexponential", "vp"])
def test_sigma_schedules_are_k_diffusions(name):
    args = {
        "karras": (25, 0.03, 14.6),
        "exponential": (25, 0.03, 14.6),
        "polyexponential": (25, 0.03, 14.6),
        "vp": (25,),
    }[name]
    got = getattr(ours, f"get_sigmas_{name}")(*args)
    want = getattr(K, f"get_sigmas_{name}")(*args)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize(
    "sampler,options",
    [
        ("sample_euler", {}),
        ("sample_euler", {"s_churn": 1.0, "s_tmin": 0.1, "s_tmax": 5.0}),
        ("sample_euler_ancestral", {}),
        ("sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
        ("sample_heun", {}),
        ("sample_heun", {"s_churn": 2.0}),
        ("sample_dpm_2", {}),
        ("sample_dpm_2_ancestral", {}),
        ("sample_dpmpp_2m", {}),
        ("sample_lms", {}),
        ("sample_lms", {"order": 2}),
        ("sample_lms", {"order": 7}),
        ("sample_lms", {"order": 0}),
        ("sample_dpmpp_2s_ancestral", {}),
        ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
        ("sample_dpmpp_sde", {}),
        ("sample_dpmpp_sde", {"eta": 0.5, "r": 0.3}),
        ("sample_dpmpp_2m_sde", {}),
        ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7}),
        ("sample_dpmpp_2m_sde", {"eta": 0.0}),
        ("sample_dpmpp_3m_sde", {}),
        ("sample_dpmpp_3m_sde", {"eta": 0.0}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default",
)
def test_same_samples_as_k_diffusion(sampler, options, schedule):
    sigmas = SCHEDULES[schedule](25)
    x = _x()
    torch.manual_seed(7)  # the global generator both draw their noise from
    got = getattr(ours, sampler)(denoiser, x, sigmas, disable=True, **options)
    torch.manual_seed(7)
    want = getattr(K, sampler)(denoiser, x, sigmas, disable=True, **options)
    # Measured: 1e-7 to 1e-6 (the update fused into one expression, coefficients in float64).
    assert _relative_error(got, want) < 1e-5
    # and both drew the same random numbers: the generator states agree afterwards
    torch.manual_seed(7)
    getattr(ours, sampler)(denoiser, x, sigmas, disable=True, **options)
    after_ours = torch.randn(3)
    torch.manual_seed(7)
    getattr(K, sampler)(denoiser, x, sigmas, disable=True, **options)
    assert torch.equal(after_ours, torch.randn(3))


def test_callback_dicts_match():
    sigmas = SCHEDULES["karras"](6)
    x = _x()
    seen_ours, seen_theirs = [], []
    ours.sample_heun(denoiser, x, sigmas, disable=True, callback=seen_ours.append)
    K.sample_heun(denoiser, x, sigmas, disable=True, callback=seen_theirs.append)
    assert [sorted(d) for d in seen_ours] == [sorted(d) for d in seen_theirs]
    for a, b in zip(seen_ours, seen_theirs):
        assert a["i"] == b["i"]
        torch.testing.assert_close(a["sigma"], b["sigma"])
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=1e-4, atol=1e-5)


def test_custom_noise_sampler_is_called_like_k_diffusions():
    sigmas = SCHEDULES["karras"](8)
    x = _x()
    calls_ours, calls_theirs = [], []

    def sampler_for(calls):
        g = torch.Generator(DEVICE).manual_seed(3)
        return lambda s, s_next: (
            calls.append((float(s), float(s_next))) or torch.randn(x.shape, generator=g, device=DEVICE)
        )

    got = ours.sample_euler_ancestral(denoiser, x, sigmas, disable=True, noise_sampler=sampler_for(calls_ours))
    want = K.sample_euler_ancestral(denoiser, x, sigmas, disable=True, noise_sampler=sampler_for(calls_theirs))
    assert calls_ours == calls_theirs
    assert _relative_error(got, want) < 1e-4


@pytest.mark.parametrize("n", [10, 11, 12])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_dpm_fast_matches_k_diffusion(n, eta):
    x = _x()
    torch.manual_seed(4)
    got = ours.sample_dpm_fast(denoiser, x, 0.03, 14.6, n, disable=True, eta=eta)
    torch.manual_seed(4)
    want = K.sample_dpm_fast(denoiser, x, 0.03, 14.6, n, disable=True, eta=eta)
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 301])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dpm_fast_gives_the_model_k_diffusions_sigmas(n, x_dtype):
    """dpm_fast without noise makes every step's times at once (vectors, where
    k-diffusion computes them step by step as 0-d tensors): the model and the
    callback get the same sigmas bit for bit, at schedules long enough for the
    vectorized kernels, and a bf16 latent's sigma in bf16."""
    seen = {"ours": [], "theirs": []}

    def recording(tag):
        def model(x, sigma):
            seen[tag].append(sigma.clone())
            return denoiser(x, sigma)

        return model

    x = _x((1, 2, 4, 4)).to(x_dtype)
    calls = {"ours": [], "theirs": []}
    ours.sample_dpm_fast(recording("ours"), x, 0.03, 14.6, n, disable=True, callback=calls["ours"].append)
    K.sample_dpm_fast(recording("theirs"), x, 0.03, 14.6, n, disable=True, callback=calls["theirs"].append)
    assert len(seen["ours"]) == len(seen["theirs"]) == n
    for a, b in zip(seen["ours"], seen["theirs"]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for a, b in zip(calls["ours"], calls["theirs"]):
        assert all(torch.equal(a[key], b[key]) for key in ("sigma", "sigma_hat", "t", "t_up"))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(
    "x_dtype, times_dtype, sigma_range",
    [
        (torch.float32, None, (0.03, 14.6)),  # numbers: times in the default dtype
        (torch.bfloat16, None, (0.03, 14.6)),
        (torch.float32, torch.float64, (0.03, 14.6)),
        (torch.float32, torch.float32, (0.0292, 1.0)),  # tensors, as ComfyUI's KSampler passes them
        (torch.float32, None, (14.6, 0.03)),  # reverse
    ],
    ids=str,
)
def test_dpm_adaptive_times_on_the_host_equal_the_0d_tensor_ops(monkeypatch, order, x_dtype, times_dtype, sigma_range):
    """Without noise dpm_adaptive does k-diffusion's 0-d time arithmetic on host
    scalars and a step's exps in one op; with the host path switched off it runs the
    0-d tensor ops k-diffusion runs. Both give the model and the callback the same
    sigmas and times bit for bit, take the same steps and return the same bits.
    (Against k-diffusion itself the times agree until the first error estimate, which
    diffaccel sums in float64: test_dpm_adaptive_matches_k_diffusion.)"""
    x = _x((1, 2, 8, 8), sigma_max=max(sigma_range)).to(x_dtype)
    sigma_min, sigma_max = (torch.tensor(v, dtype=times_dtype) if times_dtype else v for v in sigma_range)
    runs = []
    for host in (True, False):
        if not host:
            monkeypatch.setattr(dpm_solver, "_HOST_SCALARS", {})
        seen, calls = [], []

        def model(x, sigma):
            seen.append(sigma.clone())
            return denoiser(x, sigma)

        out = ours.sample_dpm_adaptive(model, x, sigma_min, sigma_max, order=order, disable=True, callback=calls.append)
        runs.append((out, seen, calls))
    (out, seen, calls), (want, want_seen, want_calls) = runs
    assert len(seen) == len(want_seen) > 3 * order
    for a, b in zip(seen, want_seen):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert len(calls) == len(want_calls)
    for a, b in zip(calls, want_calls):
        assert all(torch.equal(a[key], b[key]) for key in ("sigma", "sigma_hat", "t", "t_up"))
        assert (a["h"], a["error"], a["n_accept"]) == (b["h"], b["error"], b["n_accept"])
    assert torch.equal(out, want)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_host_times_equal_tensor_times(dtype, x_dtype, batch):
    """A step's times from host scalars (_HostTimes) against k-diffusion's 0-d tensor
    ops (_TensorTimes) on 500 random steps: every sigma and model sigma bit for bit.
    On the host: a GPU's exp and log may round otherwise than the host's."""
    g = torch.Generator().manual_seed(5)
    t = (torch.rand(500, generator=g, dtype=torch.float64, device="cpu") * 8 - 3).to(dtype)
    t_next = t + (torch.rand(500, generator=g, dtype=torch.float64, device="cpu") * 0.9 + 1e-4).to(dtype)
    x = torch.zeros(batch, 2, device="cpu").to(x_dtype)
    solver = dpm_solver._EpsSolver(denoiser, x, None, lambda: None)
    scalar = dpm_solver._HOST_SCALARS[dtype]
    for i in range(500):
        r1 = (1 / 2, 1 / 3)[i % 2]
        model_dtype = torch.result_type(t[i], solver.ones)
        host = dpm_solver._HostTimes(solver, scalar(float(t[i])), scalar(float(t_next[i])), r1, t.device, model_dtype)
        tensors = dpm_solver._TensorTimes(solver, t[i], t_next[i], r1)
        assert host.h == tensors.h
        for name in ("t", "next", "s1", "s2"):
            assert host.sigma(name) == tensors.sigma(name), (i, name)
        for name in ("t", "s1", "s2"):
            got, want = host.model_sigma(name), tensors.model_sigma(name)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


def test_dpm_fast_refuses_no_evaluations():
    with pytest.raises(ValueError, match="argument 'n' must be at least 1, got 0"):
        ours.sample_dpm_fast(denoiser, _x(), 0.03, 14.6, 0, disable=True)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("atol", [0.0078, 0.0], ids=["atol=0.0078", "atol=0"])
def test_dpm_adaptive_matches_k_diffusion(order, eta, atol):
    """Also with atol = 0, which ComfyUI's SamplerDPMAdaptative node allows."""
    x = _x()
    options = dict(disable=True, order=order, eta=eta, atol=atol, return_info=True)
    torch.manual_seed(4)
    got, info = ours.sample_dpm_adaptive(denoiser, x, 0.03, 14.6, **options)
    torch.manual_seed(4)
    want, want_info = K.sample_dpm_adaptive(denoiser, x, 0.03, 14.6, **options)
    assert info == want_info  # the same accepted and rejected steps
    assert _relative_error(got, want) < 1e-5


FIXED_STEP_SAMPLERS = [
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_lms",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
]


def _meta_noise(sigma, sigma_next):
    return torch.empty(2, 4, 8, 8, device="meta")


@pytest.mark.parametrize("name", FIXED_STEP_SAMPLERS)
def test_samplers_read_only_the_sigmas(name):
    """The sigmas are read on the host once (documented); the state and the
    denoiser's output never are: with them on the meta device, which has no
    data, any .item(), bool(), .cpu() or .tolist() of them would raise."""
    sigmas = ours.get_sigmas_karras(8, 0.03, 14.6)
    x = torch.empty(2, 4, 8, 8, device="meta")
    sampler = getattr(ours, name)
    takes_noise = "noise_sampler" in inspect.signature(sampler).parameters
    y = sampler(
        lambda x, s: torch.tanh(x) * s.view(-1, 1, 1, 1),
        x,
        sigmas,
        disable=True,
        **({"noise_sampler": _meta_noise} if takes_noise else {}),
    )
    assert y.device.type == "meta" and y.shape == x.shape


def test_the_meta_check_catches_a_read_of_the_state():
    with pytest.raises((RuntimeError, NotImplementedError)):
        ours.sample_dpmpp_2m(
            lambda x, s: x * float(x.mean()),
            torch.empty(2, 4, 8, 8, device="meta"),
            ours.get_sigmas_karras(4, 0.03, 14.6),
            disable=True,
        )


@pytest.mark.parametrize("name", ["sample_euler_ancestral", "sample_lms", "sample_dpmpp_2m", "sample_dpmpp_3m_sde"])
def test_the_same_sigmas_again_copy_no_coefficients(name, monkeypatch):
    """A sampler run again on the same sigmas (a deployment sampling with a
    fixed schedule) takes its coefficient tensors from the module's cache: no
    copy to the device, and, from the same seed, the same sample bit for bit."""
    from diffaccel import transfer
    from diffaccel.integrations.k_diffusion import common

    monkeypatch.setattr(common, "_COEFFICIENTS", transfer.ConstantCache())
    copies = []
    original = transfer.to_device
    monkeypatch.setattr(transfer, "to_device", lambda *args: copies.append(args) or original(*args))
    sigmas = ours.get_sigmas_karras(8, 0.03, 14.6, device=DEVICE)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(getattr(ours, name)(denoiser, _x(), sigmas, disable=True))
        if len(runs) == 1:
            made = len(copies)
    assert made >= 7 and len(copies) == made  # a copy per fused step (the 3M SDE's last step is the denoiser's output)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m"])
def test_the_step_below_autograd_gives_the_fronts_bits(name, monkeypatch):
    """Each fused step of a loop goes straight to the kernel (ops.loop_entry) where
    the compiled backend runs: the same sample bit for bit as through the op's
    front, which the loop takes where there is no entry."""
    from diffaccel import ops
    from diffaccel.integrations.k_diffusion import common

    sigmas, x = SCHEDULES["karras"](8), _x()
    run = lambda: getattr(ours, name)(denoiser, x, sigmas, disable=True)  # noqa: E731
    taken = []
    entry = ops.loop_entry
    monkeypatch.setattr(common.ops, "loop_entry", lambda *args: taken.append(entry(*args)) or taken[-1])
    direct = run()
    with torch.no_grad():
        compiled = ops.loop_entry("ei_step", x) is not None
    assert taken and all((t is not None) == compiled for t in taken)
    monkeypatch.setattr(common.ops, "loop_entry", lambda *args: None)
    assert torch.equal(direct, run())


@pytest.mark.parametrize("name", ["sample_euler", "sample_dpm_fast"])
def test_a_model_that_writes_to_its_sigma_gets_new_sigmas_next_run(name):
    """The model's sigma tensors of a schedule (dpm_fast's: of its times) are kept
    for its next run: a model that changes its sigma in place (k-diffusion hands
    it a new tensor every call) must not see the changed values in a later run."""

    def writing_denoiser(x, sigma):
        out = denoiser(x, sigma)
        sigma.mul_(0.5)
        return out

    sigmas, x = SCHEDULES["karras"](6), _x()
    args = (0.03, 14.6, 6) if name == "sample_dpm_fast" else (sigmas,)
    want = getattr(K, name)(writing_denoiser, x, *args, disable=True)
    for _ in range(2):
        assert _relative_error(getattr(ours, name)(writing_denoiser, x, *args, disable=True), want) < 1e-5


def test_runs_under_inference_mode_equal_the_others():
    """Under torch.inference_mode the kept tensors are inference tensors (no version
    counter): runs in and out of it, in any order, give the same sample."""
    sigmas, x = SCHEDULES["karras"](6), _x()
    want = ours.sample_heun(denoiser, x, sigmas, disable=True)
    with torch.inference_mode():
        runs = [ours.sample_heun(denoiser, x, sigmas, disable=True) for _ in range(2)]
    runs.append(ours.sample_heun(denoiser, x, sigmas, disable=True))
    assert all(torch.equal(run, want) for run in runs)


@pytest.mark.parametrize(
    "name, n",
    [
        ("sample_dpm_2_ancestral", 2),
        ("sample_dpm_2_ancestral", 3),
        ("sample_dpmpp_2s_ancestral", 3),
        ("sample_euler_ancestral", 3),
    ],
)
def test_few_steps_from_a_large_sigma_stay_near_the_float64_result(name, n):
    """From the VP schedule's sigma 152 in two or three steps, k-diffusion's
    float32 update cancels large terms (sample_dpm_2_ancestral: 1.4 relative
    error at 2 steps, 1e-2 at 3); the fused step, one expression with float64
    coefficients, stays near both packages' float64 result. The noise is the
    same float32 draws in every run."""
    sigmas = ours.get_sigmas_vp(n, device=DEVICE)
    results = {}
    for tag, module, dtype in (
        ("k-diffusion", K, torch.float32),
        ("diffaccel", ours, torch.float32),
        ("float64", K, torch.float64),
    ):
        g = torch.Generator(DEVICE).manual_seed(7)
        noises = iter([torch.randn(2, 3, 8, 8, generator=g, device=DEVICE) for _ in range(n + 1)])
        x = (_x((2, 3, 8, 8), sigma_max=1.0) * float(sigmas[0])).to(dtype)
        results[tag] = getattr(module, name)(
            denoiser, x, sigmas.to(dtype), disable=True, noise_sampler=lambda s, s_next: next(noises).to(dtype)
        ).double()
    exact = results["float64"]

    def error(tag):
        return float((results[tag] - exact).norm() / exact.norm())

    assert error("diffaccel") < 1e-4
    assert error("diffaccel") < error("k-diffusion") / 10


def _random_k_diffusion_runs(count, seed=0):
    """Seeded random (sampler, sigmas, options): schedules of 1 to 12 steps from
    small and large sigmas, with the samplers' own options."""
    rng = random.Random(seed)
    schedules = {
        "karras": ours.get_sigmas_karras,
        "exponential": ours.get_sigmas_exponential,
        "polyexponential": ours.get_sigmas_polyexponential,
    }
    for _ in range(count):
        name = rng.choice(FIXED_STEP_SAMPLERS)
        parameters = inspect.signature(getattr(K, name)).parameters
        n, (sigma_min, sigma_max) = (
            rng.choice([1, 2, 3, 4, 7, 12]),
            rng.choice([(0.03, 14.6), (0.002, 80.0), (0.1, 1.0)]),
        )
        sigmas = schedules[rng.choice(sorted(schedules))](n, sigma_min, sigma_max, device=DEVICE)
        choices = {
            "eta": [0.0, 0.5, 1.0],
            "s_noise": [0.9, 1.1],
            "s_churn": [0.5, 2.0],
            "order": [1, 2, 3, 4],
            "solver_type": ["midpoint", "heun"],
            "r": [0.3, 0.7],
        }
        options = {k: rng.choice(v) for k, v in choices.items() if k in parameters and rng.random() < 0.5}
        yield name, sigmas, options


@pytest.mark.filterwarnings("ignore")  # torchsde's notices at the tree's ends
def test_random_runs_are_finite_wherever_k_diffusion_runs():
    """150 seeded random runs per seed (RANDOM_SEEDS): wherever k-diffusion returns a finite sample the
    drop-in returns one too (never raising), from the same noise. (k-diffusion
    itself raises UnboundLocalError for its 2M / 3M SDE samplers on one-step
    schedules; the drop-ins run those.) Values are compared in the tests above;
    on few-step schedules from a large sigma they part because k-diffusion's
    float32 update cancels (previous test)."""
    compared = 0
    for name, sigmas, options in (run for seed in RANDOM_SEEDS for run in _random_k_diffusion_runs(150, seed)):
        results = []
        for module in (K, ours):
            torch.manual_seed(5)
            x = _x((1, 3, 8, 8), sigma_max=float(sigmas[0]))
            try:
                results.append(getattr(module, name)(denoiser, x, sigmas, disable=True, **options))
            except UnboundLocalError:
                results.append(None)
        theirs, mine = results
        if theirs is not None and torch.isfinite(theirs).all():
            assert mine is not None and torch.isfinite(mine).all(), (name, sigmas.tolist(), options)
            compared += 1
    assert compared >= 120 * len(RANDOM_SEEDS)


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize(
    "sigmas",
    [[14.6, 5.0, 5.0, 1.0, 0.0], [14.6, 14.6, 1.0, 0.0], [14.6, 5.0, 1.0, 1.0, 0.0]],
    ids=["repeat-in-the-middle", "repeat-first", "repeat-last-positive"],
)
@pytest.mark.parametrize("name", FIXED_STEP_SAMPLERS)
def test_a_repeated_sigma_steps_as_k_diffusion_does(name, sigmas):
    """A step between equal sigmas (h = 0) divides by zero on the host, where
    k-diffusion's tensor arithmetic gives inf or nan and goes on: the drop-in
    runs too (it raised ZeroDivisionError before its host math followed IEEE
    rules), finite exactly where k-diffusion's sample is, and equal to it there
    (Euler, Heun, DPM-2 and the ancestral ones; LMS, DPM++ SDE and the
    multistep ones turn the zero step into NaN in both)."""
    sigmas = torch.tensor(sigmas, device=DEVICE)
    results = []
    for module in (K, ours):
        torch.manual_seed(5)
        results.append(getattr(module, name)(denoiser, _x((1, 3, 8, 8), float(sigmas[0])), sigmas, disable=True))
    theirs, mine = results
    assert bool(torch.isfinite(mine).all()) == bool(torch.isfinite(theirs).all())
    if torch.isfinite(theirs).all():
        assert float((mine - theirs).norm() / theirs.norm()) < 1e-5


# (x, the denoiser's output, sigmas); None: the denoiser returns x's dtype.
DTYPE_CASES = [
    (torch.bfloat16, None, torch.float32),
    (torch.float32, torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.float16, None, torch.float32),
    (torch.float32, None, torch.float64),
    (torch.float64, torch.float32, torch.float32),
]


@pytest.mark.parametrize("x_dtype, out_dtype, sigma_dtype", DTYPE_CASES, ids=str)
@pytest.mark.parametrize("name", FIXED_STEP_SAMPLERS + ["sample_dpm_fast"])
def test_result_dtype_is_k_diffusions(name, x_dtype, out_dtype, sigma_dtype):
    """k-diffusion's tensor arithmetic promotes: with the denoiser's output, and
    with the sigmas where it divides by append_dims(sigma) (to_d); its 2M/3M SDE
    samplers end on the denoiser's output itself. The drop-ins give the same
    dtype, step by step (the model sees x in the dtype it would see there), and
    the same values to the rounding of the narrowest dtype."""
    sigmas = SCHEDULES["karras"](8).to(sigma_dtype)
    x = _x((2, 3, 8, 8)).to(x_dtype)
    seen = {}

    def model(x, sigma):
        seen.setdefault(tag, []).append(x.dtype)
        return denoiser(x.float(), sigma.float()).to(out_dtype or x.dtype)

    results = {}
    for tag, module in (("k-diffusion", K), ("diffaccel", ours)):
        parameters = inspect.signature(getattr(module, name)).parameters
        options = {"noise_sampler": lambda s, s_next: torch.randn_like(x)} if "noise_sampler" in parameters else {}
        torch.manual_seed(7)
        if name == "sample_dpm_fast":
            results[tag] = module.sample_dpm_fast(model, x, 0.03, 14.6, 8, disable=True, **options)
        else:
            results[tag] = getattr(module, name)(model, x, sigmas, disable=True, **options)
    got, want = results["diffaccel"], results["k-diffusion"]
    assert got.dtype == want.dtype
    assert seen["diffaccel"] == seen["k-diffusion"]
    narrow = {x_dtype, out_dtype or x_dtype} & {torch.float16, torch.bfloat16}
    assert _relative_error(got.double(), want.double()) < (3e-2 if narrow else 1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", [*FIXED_STEP_SAMPLERS, "sample_dpm_fast", "sample_dpm_adaptive"])
def test_non_finite_sigmas_are_refused_up_front(name, bad):
    """k-diffusion's sample_dpmpp_2m_sde hangs on a NaN sigma (inside the
    Brownian tree) and the others return NaN samples: the drop-ins say which
    sigma is bad before any model call."""
    sigmas = ours.get_sigmas_karras(6, 0.1, 10.0, device=DEVICE)
    sigmas[2] = bad
    calls = []
    sampler = getattr(ours, name)
    args = {"sample_dpm_adaptive": (bad, 10.0), "sample_dpm_fast": (0.1, bad, 6)}.get(name, (sigmas,))
    with pytest.raises(ValueError, match=r"sigma.* must be finite"):
        sampler(lambda x, s: calls.append(1) or x, torch.randn(1, 2, 4, 4, device=DEVICE), *args)
    assert not calls


def test_combine_terms_sums_any_number_of_tensors(monkeypatch):
    """The weighted sums of LMS's older derivatives and of SA-Solver's terms: each
    tensor once (a repeated one's weights added), in fused passes of up to 8 tensors
    (11 distinct here: two passes), against the sum in float64; a lone tensor of
    weight 1 is returned as it is."""
    from diffaccel.integrations.k_diffusion import common

    g = torch.Generator().manual_seed(5)
    tensors = [torch.randn(2, 3, 5, generator=g).to(DEVICE) for _ in range(11)]
    weights = torch.randn(12, generator=g, dtype=torch.float64).tolist()
    terms = list(zip(tensors + [tensors[3]], weights))
    want = sum(w * t.double() for t, w in terms)
    passes, real = [], common._combine
    monkeypatch.setattr(common, "_combine", lambda ts, ws: passes.append(len(ts)) or real(ts, ws))
    got = common.combine_terms(terms)
    assert passes == [8, 4]
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert common.combine_terms([(tensors[0], 1.0)]) is tensors[0]
