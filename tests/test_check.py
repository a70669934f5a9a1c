"""`diffaccel check`: passes on the live backends, and fails (exit 1) when a
backend computes something else than the reference."""

import torch

from diffaccel import check, ops
from diffaccel.__main__ import main

from conftest import DEVICE

COMPILED = "cuda" if DEVICE == "cuda" else "cpu"  # the compiled backend's name on this device


def test_live_backends_pass():
    lines = []
    assert check.run(DEVICE, seed=1, out=lines.append) == 0
    assert lines[-1] == "all passed"
    assert any(line.startswith("ei_step") and "pass" in line for line in lines)


def test_a_wrong_backend_fails(monkeypatch):
    real = ops.ei_step

    def off_by_a_little(*args, **kwargs):
        x_next, d = real(*args, **kwargs)
        if torch.is_floating_point(x_next) and x_next.numel():
            x_next = x_next + 1e-3 * x_next.abs().max()  # well beyond every tolerance
        return x_next, d

    monkeypatch.setattr(ops, "ei_step", off_by_a_little)
    lines = []
    assert check.run(DEVICE, [COMPILED], seed=2, out=lines.append) >= 1
    assert any(line.startswith("ei_step") and "FAIL" in line for line in lines)
    assert main(["check", "--device", DEVICE, "--backends", COMPILED, "--seed", "2"]) == 1


def test_command_line_exit_status():
    assert main(["check", "--device", DEVICE, "--backends", COMPILED, "--seed", "3"]) == 0
