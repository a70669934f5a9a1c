"""`diffaccel bench` runs at a small size and reports every column (no speed is
asserted: speed is measured in bench/, never in a test)."""

import json
import math

from diffaccel.__main__ import main
from diffaccel.benchmarking import LOOP_SAMPLERS, SCHEDULER_CASES

from conftest import DEVICE


def test_bench_reports_ops_loops_and_schedulers(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--device",
                DEVICE,
                "--shapes",
                "small",
                "--cases",
                "multistep_combine3",
                "ei_step_2m",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    result = json.loads(path.read_text())
    assert [r["case"] for r in result["ops"]] == ["multistep_combine3", "ei_step_2m"]
    for row in result["ops"]:
        for key in ("fused_us", "eager_us", "compiled_us", "gb_per_s", "copy_gb_per_s", "percent_of_copy"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert [r["sampler"] for r in result["loops"]] == LOOP_SAMPLERS
    assert [r["case"] for r in result["schedulers"]] == list(SCHEDULER_CASES)
    assert all(r["stock_us_per_step"] > 0 and r["diffaccel_us_per_step"] > 0 for r in result["schedulers"])
    assert all(r["stock_faults_per_step"] >= 0 and r["diffaccel_faults_per_step"] >= 0 for r in result["schedulers"])
    out = capsys.readouterr().out
    assert "% copy" in out and "stock us/step" in out and f"wrote {path}" in out


def test_bench_without_compile_or_loops(capsys):
    assert (
        main(
            [
                "bench",
                "--device",
                DEVICE,
                "--shapes",
                "small",
                "--cases",
                "threshold_dynamic",
                "--no-compile",
                "--no-loops",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "threshold_dynamic" in out and "Whole 20-step loops" not in out


def test_page_faults_are_counted():
    """A call that maps fresh memory and touches it faults; one that reuses a buffer does not."""
    import mmap

    from diffaccel.benchmarking import page_faults_per_call

    def touch_fresh_pages():
        with mmap.mmap(-1, 64 * mmap.PAGESIZE) as m:
            for i in range(0, len(m), mmap.PAGESIZE):
                m[i] = 1

    buffer = bytearray(64 * mmap.PAGESIZE)

    def touch_kept_pages():
        for i in range(0, len(buffer), mmap.PAGESIZE):
            buffer[i] = 1

    assert page_faults_per_call(touch_fresh_pages) >= 64
    assert page_faults_per_call(touch_kept_pages) < 8


def test_every_host_time_case_runs():
    """bench/test_bench_diffusers.py's host-time loop of every drop-in class
    (stock and accelerated) runs: a class whose step takes more (RePaint's
    known image and mask) gets it from scheduler_loop."""
    import pytest

    pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")
    from diffaccel.benchmarking import host_time_cases, scheduler_loop

    for case in host_time_cases():
        for impl in ("stock_diffusers", "diffaccel"):
            loop, reset = scheduler_loop(case, impl, DEVICE, (1, 4, 4, 4), steps=25)
            reset()
            assert loop().shape == (1, 4, 4, 4), case
