"""The package as a user meets it: info, backends, and the reference fallback."""

import subprocess
import sys

import torch

from diffaccel import _extension, ops
from diffaccel.info import backend_rows


def test_info_command_lists_backends():
    out = subprocess.run([sys.executable, "-m", "diffaccel", "info"], capture_output=True, text=True, check=True).stdout
    for name in ("reference", "cpu", "cuda", "triton"):
        assert f"  {name}" in out
    assert "torch" in out and "ISA level" in out
    graphs = "CUDA graphs on" if torch.cuda.is_available() else "eager fallback"
    assert f"whole-loop graphs (diffaccel.graph): {graphs}" in out


def test_cpu_backend_live_with_isa_level():
    rows = {name: (live, detail) for name, live, detail in backend_rows()}
    assert rows["cpu"][0]
    assert _extension._C.cpu_isa_level() in rows["cpu"][1]


def test_reference_backend_context_gives_the_same_results():
    x = torch.randn(2, 3, 10)
    with ops.backend("reference"):
        ref = ops.threshold(x * 3)
    torch.testing.assert_close(ops.threshold(x * 3), ref)


def test_unknown_backend_is_refused():
    import pytest

    with pytest.raises(ValueError, match="backend"):
        with ops.backend("fast"):
            pass


def test_imports_and_falls_back_without_the_extension(tmp_path):
    """With diffaccel._C unloadable the package imports, warns once, and runs
    every op on the reference."""
    code = """
import sys, warnings
sys.modules['diffaccel._C'] = None  # makes 'from diffaccel import _C' fail
import torch, diffaccel
from diffaccel import ops
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    x = torch.randn(2, 5)
    ops.threshold(x); ops.threshold(x)
    ops.ei_step(x, x, [], torch.ones(5))
assert sum('reference backend' in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
    info = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['diffaccel._C']=None; from diffaccel.info import report; print(report())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "compiled extension not loaded" in info
