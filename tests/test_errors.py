"""Bad input gets a clear error naming the argument, raised before any kernel
runs: through the Python front on both backends, and straight through
torch.ops.diffaccel (the C++ checks)."""

import pytest
import torch

from diffaccel import ops

from conftest import TEST_BACKENDS as BACKENDS

X = lambda: torch.randn(2, 3, 4)  # noqa: E731
COEFFS = lambda k=1: torch.randn(5 + k)  # noqa: E731


def _expect(error, *fragments):
    """pytest.raises that also checks every fragment is in the message."""
    return pytest.raises(error, match=".*".join(fragments))


@pytest.mark.parametrize("backend", BACKENDS)
class TestFrontErrors:
    def test_shape(self, backend):
        with ops.backend(backend), _expect(ValueError, "'model_out'", r"shape \[2, 3, 4\]"):
            ops.ei_step(X(), torch.randn(2, 3, 5), [torch.randn(2, 3, 4)], COEFFS())
        with ops.backend(backend), _expect(ValueError, "'history'", "shape"):
            ops.ei_step(X(), X(), [torch.randn(2, 3)], COEFFS())
        with ops.backend(backend), _expect(ValueError, "'score'", "shape"):
            ops.langevin_correct(X(), torch.randn(3, 3, 4), 0.1)
        with ops.backend(backend), _expect(ValueError, "'tensors'", "shape"):
            ops.multistep_combine([X(), torch.randn(2, 3, 1)], torch.randn(2))
        with ops.backend(backend), _expect(ValueError, "'x'", "batch dimension"):
            ops.threshold(torch.tensor(1.0))

    def test_device(self, backend):
        meta = torch.randn(2, 3, 4, device="meta")
        with ops.backend(backend), _expect(ValueError, "'model_out'", "meta"):
            ops.ei_step(X(), meta, [], COEFFS(0))
        with ops.backend(backend), _expect(ValueError, "'coeffs'", "meta"):
            ops.ei_step(X(), X(), [], torch.randn(5, device="meta"))
        with ops.backend(backend), _expect(ValueError, "'alpha'", "meta"):
            ops.langevin_correct(X(), X(), 0.1, alpha=torch.ones((), device="meta"))

    def test_dtype(self, backend):
        with ops.backend(backend), _expect(TypeError, "'model_out'", "int64"):
            ops.ei_step(X(), torch.ones(2, 3, 4, dtype=torch.int64), [], COEFFS(0))
        with ops.backend(backend), _expect(TypeError, "'history'", "float64 cannot be mixed"):
            ops.ei_step(X(), X(), [X().double()], COEFFS())
        with ops.backend(backend), _expect(TypeError, "'coeffs'", "floating"):
            ops.ei_step(X(), X(), [], torch.ones(5, dtype=torch.int32))
        with ops.backend(backend), _expect(TypeError, "'x'", "float16, bfloat16"):
            ops.threshold(torch.ones(2, 3, dtype=torch.int32))

    def test_coefficient_count(self, backend):
        with ops.backend(backend), _expect(ValueError, "'coeffs'", r"\[6\] or \[2, 6\]", r"\[5\]"):
            ops.ei_step(X(), X(), [X()], COEFFS(0))
        with ops.backend(backend), _expect(ValueError, "'coeffs'", r"\[2\] or \[2, 2\]", r"\[3, 2\]"):
            ops.multistep_combine([X(), X()], torch.randn(3, 2))
        with ops.backend(backend), _expect(ValueError, "'coeffs'", r"\[2, 2\] or \[2, 2, 2\]", r"got \[2\]"):
            ops.multistep_combine_pair([X(), X()], torch.randn(2))
        with ops.backend(backend), _expect(ValueError, "'coeffs'", r"\[2, 3\] or \[2, 2, 3\]", r"\[3, 2, 3\]"):
            ops.multistep_combine_pair([X(), X(), X()], torch.randn(3, 2, 3))
        with ops.backend(backend), _expect(TypeError, "'coeffs'", "floating"):
            ops.multistep_combine_pair([X()], torch.ones(2, 1, dtype=torch.int64))

    def test_history_length(self, backend):
        with ops.backend(backend), _expect(ValueError, "'history'", "holds 5", "at most 4"):
            ops.ei_step(X(), X(), [X() for _ in range(5)], COEFFS(5))
        with ops.backend(backend), _expect(ValueError, "'tensors'", "1 to 8", "got 9"):
            ops.multistep_combine([X() for _ in range(9)], torch.randn(9))
        with ops.backend(backend), _expect(ValueError, "'tensors'", "got 0"):
            ops.multistep_combine([], torch.randn(0))

    @pytest.mark.parametrize("ratio", [-0.1, -1e-300, 1.5, float("nan")])
    def test_ratio(self, backend, ratio):
        with ops.backend(backend), _expect(ValueError, "'ratio'", r"\[0, 1\]"):
            ops.threshold(X(), ratio=ratio)
        with _expect(ValueError, "'ratio'", r"\[0, 1\]"):
            ops.Threshold("dynamic", ratio=ratio)

    @pytest.mark.parametrize("max_value", [-1e-300, -1.0, float("nan")])
    def test_max_value(self, backend, max_value):
        with ops.backend(backend), _expect(ValueError, "'max_value'", ">= 0"):
            ops.threshold(X(), max_value=max_value)
        with _expect(ValueError, "'max_value'", ">= 0"):
            ops.Threshold("clip", max_value=max_value)

    def test_kind_and_style(self, backend):
        with ops.backend(backend), _expect(ValueError, "'kind'", "clip"):
            ops.threshold(X(), kind="quantile")
        with ops.backend(backend), _expect(ValueError, "'style'", "dpm-solver"):
            ops.threshold(X(), style="imagen")
        with ops.backend(backend), _expect(TypeError, "'threshold'", "Threshold"):
            ops.ei_step(X(), X(), [], COEFFS(0), threshold="dynamic")

    def test_snr_alpha_reduction(self, backend):
        with ops.backend(backend), _expect(ValueError, "'snr'", ">= 0"):
            ops.langevin_correct(X(), X(), -0.1)
        with ops.backend(backend), _expect(ValueError, "'alpha'", r"shape \[2\]"):
            ops.langevin_correct(X(), X(), 0.1, alpha=torch.ones(3))
        with ops.backend(backend), _expect(ValueError, "'reduction'", "batch"):
            ops.langevin_correct(X(), X(), 0.1, reduction="mean")

    def test_out_shape_dtype_and_overlap(self, backend):
        x = X()
        with ops.backend(backend), _expect(ValueError, r"'out\[0\] \(x_next\)'", "shape"):
            ops.ei_step(x, X(), [], COEFFS(0), out=(torch.empty(2, 3), torch.empty(2, 3, 4)))
        with ops.backend(backend), _expect(TypeError, r"'out\[1\] \(d\)'", "dtype"):
            ops.ei_step(x, X(), [], COEFFS(0), out=(torch.empty(2, 3, 4), torch.empty(2, 3, 4).double()))
        with ops.backend(backend), _expect(ValueError, "must not share memory"):
            ops.ei_step(x, X(), [], COEFFS(0), out=(x, x))
        with ops.backend(backend), _expect(ValueError, "'out'", r"shape \[2, 3, 4\]"):
            ops.threshold(x, out=torch.empty(4, 3, 2))
        with ops.backend(backend), _expect(TypeError, "'out'", "float32"):
            ops.multistep_combine([x], torch.ones(1), out=torch.empty(2, 3, 4).half())
        with ops.backend(backend), _expect(TypeError, r"'out\[1\] \(y1\)'", "float32"):
            ops.multistep_combine_pair([x], torch.ones(2, 1), out=(torch.empty(2, 3, 4), torch.empty(2, 3, 4).half()))
        with ops.backend(backend), _expect(ValueError, r"'out\[0\] \(y0\)'", "shape"):
            ops.multistep_combine_pair([x], torch.ones(2, 1), out=(torch.empty(2, 3), torch.empty(2, 3, 4)))
        with ops.backend(backend), _expect(ValueError, "must not share memory"):
            ops.multistep_combine_pair([x], torch.ones(2, 1), out=(x, x))
        with ops.backend(backend), _expect(TypeError, "'out' must be a pair of tensors"):
            ops.multistep_combine_pair([x], torch.ones(2, 1), out=x)
        with ops.backend(backend), _expect(ValueError, r"'out\[1\] \(x_mean\)'", "shape"):
            ops.langevin_correct(x, X(), 0.1, out=(torch.empty(2, 3, 4), torch.empty(1)))
        big = torch.randn(3, 3, 4)
        with ops.backend(backend), _expect(ValueError, "'out'", "partially overlaps 'x'"):
            ops.threshold(big[:2], out=big[1:])


class TestDirectOpErrors:
    """The C++ layer checks too, for callers that skip the Python front."""

    def test_ei_step(self):
        with _expect(ValueError, "'coeffs'", r"\[6\]"):
            torch.ops.diffaccel.ei_step(X(), X(), [X()], COEFFS(0), None, None, 0.995, 1.0, "diffusers")
        with _expect(ValueError, "'model_out'", "shape"):
            torch.ops.diffaccel.ei_step(X(), torch.randn(2, 3), [], COEFFS(0), None, None, 0.995, 1.0, "diffusers")
        with _expect(ValueError, "'history'", "at most 4"):
            torch.ops.diffaccel.ei_step(X(), X(), [X()] * 5, COEFFS(5), None, None, 0.995, 1.0, "diffusers")
        with _expect(ValueError, "'ratio'"):
            torch.ops.diffaccel.ei_step(X(), X(), [], COEFFS(0), None, "dynamic", 2.0, 1.0, "diffusers")

    def test_others(self):
        with _expect(ValueError, "'max_value'"):
            torch.ops.diffaccel.threshold(X(), "dynamic", 0.9, -1.0, "diffusers")
        with _expect(ValueError, "'snr'"):
            torch.ops.diffaccel.langevin_correct(X(), X(), -1.0, torch.ones(()), None, None, "batch")
        with _expect(ValueError, "'tensors'", "1 to 8"):
            torch.ops.diffaccel.multistep_combine([X()] * 9, torch.ones(9))
        with _expect(ValueError, "'coeffs'", r"\[2, 1\] or \[2, 2, 1\]"):
            torch.ops.diffaccel.multistep_combine_pair([X()], torch.ones(1))
        with _expect(ValueError, "must not share memory"):
            x = X()
            torch.ops.diffaccel.multistep_combine_pair_out([X()], torch.ones(2, 1), x, x[:])
        x = X()
        with _expect(ValueError, "must not share memory"):
            torch.ops.diffaccel.ei_step_out(x, X(), [], COEFFS(0), None, None, 0.995, 1.0, "diffusers", x, x)
        big = torch.randn(3, 3, 4)
        with _expect(ValueError, "partially overlaps"):
            torch.ops.diffaccel.threshold_out(big[:2], "clip", 0.9, 1.0, "diffusers", big[1:])


REAL_SCALARS = [
    pytest.param(lambda v: v, id="python"),
    pytest.param(lambda v: __import__("numpy").float32(v), id="numpy-float32"),
    pytest.param(lambda v: __import__("numpy").float64(v), id="numpy-float64"),
    pytest.param(lambda v: torch.tensor(v), id="0-d-tensor"),
    pytest.param(lambda v: torch.tensor(v, dtype=torch.float64), id="0-d-float64-tensor"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_scalar", REAL_SCALARS)
def test_any_real_scalar_is_a_float_on_every_backend(backend, as_scalar):
    """ratio, max_value, snr, alpha, atol and rtol take any real scalar, with
    the result of the same Python float (an in-range numpy float32 was refused
    as out of range before; a 0-d tensor passed one backend and not another)."""
    x, noise = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    with ops.backend(backend):
        expected = ops.threshold(x, ratio=float(as_scalar(0.9)), max_value=1.5)
        torch.testing.assert_close(ops.threshold(x, ratio=as_scalar(0.9), max_value=as_scalar(1.5)), expected)
        threshold = ops.Threshold("dynamic", as_scalar(0.9), as_scalar(1.5))
        assert isinstance(threshold.ratio, float) and threshold.ratio == float(as_scalar(0.9))
        expected = ops.langevin_correct(x, x, float(as_scalar(0.16)), alpha=float(as_scalar(0.5)), noise=noise)
        got = ops.langevin_correct(x, x, as_scalar(0.16), alpha=as_scalar(0.5), noise=noise)
        torch.testing.assert_close(got, expected)
        expected = ops.error_norm(x, noise, x, atol=float(as_scalar(0.01)), rtol=float(as_scalar(0.05)))
        torch.testing.assert_close(ops.error_norm(x, noise, x, atol=as_scalar(0.01), rtol=as_scalar(0.05)), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_containers_get_diffaccels_message_on_every_backend(backend):
    x, c = X(), COEFFS()
    with ops.backend(backend):
        # A stacked tensor is refused (its first dimension may be the batch: slicing it was silently wrong).
        with _expect(TypeError, "'history' must be a list or tuple of tensors", r"shape \[1, 2, 3, 4\]"):
            ops.ei_step(x, x, torch.stack([x]), c)
        with _expect(TypeError, "'history\\[0\\]' must be a torch.Tensor, got NoneType"):
            ops.ei_step(x, x, [None], c)
        with _expect(TypeError, "'coeffs' must be a torch.Tensor, got list"):
            ops.ei_step(x, x, [x], c.tolist())
        with _expect(TypeError, "'tensors\\[1\\]' must be a torch.Tensor, got NoneType"):
            ops.multistep_combine([x, None], torch.ones(2))
        with _expect(TypeError, "'coeffs' must be a torch.Tensor, got list"):
            ops.multistep_combine([x, x], [1.0, 2.0])
        with _expect(TypeError, r"'tensors\[0\]' must be a torch.Tensor, got float"):
            ops.multistep_combine_pair([1.0], torch.ones(2, 1))
        with _expect(TypeError, "'ratio' must be a real number", r"shape \[1\]"):
            ops.threshold(x, ratio=torch.tensor([0.9]))
        with _expect(TypeError, "'snr' must be a real number", "str"):
            ops.langevin_correct(x, x, "0.16")
        with _expect(ValueError, "'ratio' must be in \\[0, 1\\], got 1.5"):
            ops.Threshold(ratio=torch.tensor(1.5))
