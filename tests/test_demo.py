"""`diffaccel demo --quick` runs end to end and writes its report."""

from diffaccel.__main__ import main
from diffaccel.demo import ODE_SAMPLERS, SDE_SAMPLERS

from conftest import DEVICE


def test_demo_quick_writes_its_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", DEVICE]) == 0
    index = (tmp_path / "index.md").read_text()
    for sampler in ODE_SAMPLERS + SDE_SAMPLERS:
        assert f"| {sampler} |" in index
    assert "wrote" in capsys.readouterr().out
    assert list(tmp_path.glob("digits_*.png")), "the digit grids (matplotlib is installed by make)"
    for name in ("ddpm_vs_ddim_trajectories.png", "ddim_inversion_interpolation.png"):
        assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in index
    assert "## Choosing a sampler" in index and "| balanced | dpmpp_2m" in index


def test_pretrained_digits_denoiser_predicts_the_noise():
    """The shipped weights load, and the model predicts the noise it is given far
    better than a zero guess (mean squared error 1)."""
    import torch

    from diffaccel.models import digits

    model = digits.load_pretrained(DEVICE)
    g = torch.Generator().manual_seed(0)
    # An all-background image (-1, the digits' background value): the test needs no scikit-learn.
    x0 = torch.full((256, 1, 8, 8), -1.0, device=DEVICE)
    t = torch.full((256,), 300.0, device=DEVICE)
    a = float(digits.schedule().alphas_cumprod[300])
    noise = torch.randn(x0.shape, generator=g, device="cpu").to(DEVICE)
    with torch.no_grad():
        predicted = model(a**0.5 * x0 + (1 - a) ** 0.5 * noise, t)
    assert float(((predicted - noise) ** 2).mean()) < 0.5


def test_higher_order_samplers_are_more_accurate_at_equal_steps():
    """The demo's table on the exact oracle: DPM-Solver++(2M) beats DDIM at 10 steps."""
    from diffaccel.demo import ode_table

    rows = {r["sampler"]: r for r in ode_table(DEVICE, [10], (2, 8, 8), repeats=1)}
    assert rows["dpmpp_2m"]["error"] < rows["ddim"]["error"] / 3


def test_ddim_inversion_reconstructs_better_with_more_steps(tmp_path):
    """Generate, invert (plan(reverse=True)), decode: the round trip closes as the step count grows."""
    from diffaccel.demo import inversion_interpolation

    coarse = inversion_interpolation(str(tmp_path / "a.png"), DEVICE, steps=10)
    fine = inversion_interpolation(str(tmp_path / "b.png"), DEVICE, steps=40)
    assert fine["reconstruction_error"] < coarse["reconstruction_error"] / 1.5
    assert fine["reconstruction_error"] < 0.1
