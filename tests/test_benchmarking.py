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


def test_every_host_time_case_runs(host_default_device):
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


def _benchmark_json(path, rows):
    """A pytest-benchmark JSON of (case, impl, median seconds) rows at one shape."""
    benchmarks = [
        {
            "fullname": f"{case}-{impl}",
            "stats": {"median": seconds},
            "extra_info": {"case": case, "shape": "medium", "impl": impl, "bytes": 8 << 20},
        }
        for case, impl, seconds in rows
    ]
    data = {
        "machine_info": {"python_version": "3.11", "cpu": {"brand_raw": "test CPU", "count": 2}},
        "commit_info": {"id": "0123456789abcdef"},
        "datetime": "2026-12-03T00:00:00",
        "benchmarks": benchmarks,
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_report_columns_follow_what_was_timed(tmp_path, capsys):
    """bench/report.py: a run of the fused ops and the floors alone (what
    bench/compare.sh times) gets no reference columns rather than NaN ones; a
    run with the references gets them; --before adds the earlier build's time."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "bench_report", pathlib.Path(__file__).parent.parent / "bench" / "report.py"
    )
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    floors = [("copy", "copy", 1e-4), ("triad", "triad", 1e-4)]
    fused_only = _benchmark_json(tmp_path / "fused.json", floors + [("error_norm", "fused", 2e-4)])
    before = _benchmark_json(tmp_path / "before.json", floors + [("error_norm", "fused", 4e-4)])
    report.main(fused_only, "--before", before)
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert "eager ref" not in header and "before us" in header
    row = next(line for line in text.splitlines() if line.startswith("| error_norm"))
    assert "nan" not in row and "| 200.0 |" in row and "| 400.0 |" in row
    with_reference = _benchmark_json(
        tmp_path / "full.json", floors + [("error_norm", "fused", 2e-4), ("error_norm", "eager_reference", 1e-3)]
    )
    report.main(with_reference)
    text = capsys.readouterr().out
    assert "| eager ref us | best vs eager |" in text
    assert "| 1000.0 | 5.00x |" in next(line for line in text.splitlines() if line.startswith("| error_norm"))
    # Alternated runs: each build's time is the median of its runs' medians.
    runs = [
        _benchmark_json(tmp_path / f"run{i}.json", floors + [("error_norm", "fused", t)])
        for i, t in enumerate((2e-4, 9e-4, 3e-4))
    ]
    earlier = [
        _benchmark_json(tmp_path / f"before{i}.json", floors + [("error_norm", "fused", t)])
        for i, t in enumerate((5e-4, 4e-4, 1e-3))
    ]
    report.main(*runs, "--before", earlier[0], "--before", earlier[1], "--before", earlier[2])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| error_norm"))
    assert "| 300.0 |" in row and "| 500.0 |" in row
    # ... and a second table gives each run's share of its own copy, medianed:
    # a run whose memory is slow as a whole (copy and op both 2x) counts as it
    # is, where the first table's median of times mixes the runs.
    runs = [
        _benchmark_json(tmp_path / f"share{i}.json", [("copy", "copy", c), ("error_norm", "fused", t)])
        for i, (c, t) in enumerate(((1e-4, 2e-4), (2e-4, 4e-4), (1e-4, 3e-4)))
    ]
    earlier = [
        _benchmark_json(tmp_path / f"share_before{i}.json", [("copy", "copy", c), ("error_norm", "fused", t)])
        for i, (c, t) in enumerate(((1e-4, 4e-4), (2e-4, 8e-4)))
    ]
    report.main(*runs, "--before", earlier[0], "--before", earlier[1])
    text = capsys.readouterr().out
    assert "the median over the 3 runs (and over the 2 runs before)" in text
    first, second = [line for line in text.splitlines() if line.startswith("| error_norm")]
    assert "| 33% |" in first  # 300 us against a 100 us copy
    assert second == "| error_norm | medium | fp32 | 50% | 25% |"
    # A copy of as many bytes as the op moves is a third floor (error_norm moves three
    # tensors); for an op that moves two (threshold) it is the copy itself.
    same_bytes = _benchmark_json(
        tmp_path / "same_bytes.json",
        floors
        + [
            ("copy_same_bytes_3", "copy", 4e-4),
            ("error_norm", "fused", 2e-4),
            ("threshold_dynamic_selected", "fused", 4e-4),
        ],
    )
    report.main(same_bytes)
    lines = capsys.readouterr().out.splitlines()
    assert "| same-bytes copy GB/s | fused % same-bytes copy |" in next(
        line for line in lines if line.startswith("| case")
    )
    assert not any(line.startswith("| copy_same_bytes") for line in lines)
    assert next(line for line in lines if line.startswith("| error_norm")).endswith("| 200% |")
    assert next(line for line in lines if line.startswith("| threshold_dynamic_selected")).endswith("| 25% |")
