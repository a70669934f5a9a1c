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


def test_higher_order_samplers_are_more_accurate_at_equal_steps():
    """The demo's table on the exact oracle: DPM-Solver++(2M) beats DDIM at 10 steps."""
    from diffaccel.demo import ode_table

    rows = {r["sampler"]: r for r in ode_table(DEVICE, [10], (2, 8, 8), repeats=1)}
    assert rows["dpmpp_2m"]["error"] < rows["ddim"]["error"] / 3
