"""Odd inputs, side by side with stock: every accelerated diffusers class and
every k-diffusion sampler given inputs the fused ops do not take as they are
(a model output that broadcasts against the sample, or that the sample would
have to broadcast up to; integer model outputs and samples; Inf and NaN;
stepping past the end of the schedule; an odd call in the middle of a loop)
does what stock does: the same result, dtype and shape and the same
finite / non-finite pattern, or the same exception type."""

import inspect
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel import benchmarking  # noqa: E402
from diffaccel.integrations import diffusers as accelerated  # noqa: E402
from diffaccel.integrations import k_diffusion as ours  # noqa: E402

from diffusers_helpers import MARKS, _step, base_config, model  # noqa: E402
from test_k_diffusion import FIXED_STEP_SAMPLERS  # noqa: E402

pytestmark = MARKS

CASES = ["broadcast", "batch-up", "int-output", "int-sample", "inf", "nan", "past-end", "odd-call-1", "odd-call-4"]


def _odd(output, case, i):
    if case == "broadcast" or (case.startswith("odd-call") and i == int(case[-1])):
        return output[:1, :1]  # [1, 1, H, W] against [2, 4, H, W]
    if case == "batch-up":
        return torch.cat([output, output * 0.9])  # batch 2 against a sample of batch 1
    if case in ("int-output", "int-sample"):
        return (output * 4).round().to(torch.int64)
    if case in ("inf", "nan") and i == 1:
        output = output.clone()
        output[0, 0, 0, 0] = float(case)
    return output


def _diffusers_loop(cls, case, steps=6):
    scheduler = cls(**base_config(cls.__name__))
    benchmarking.pipeline_set_timesteps(scheduler, steps, "cpu")
    x = torch.randn((1 if case == "batch-up" else 2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    if case == "int-sample":
        x = (x * 3).round().to(torch.int64)
    options = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        options["generator"] = torch.Generator().manual_seed(1)
    previous, timesteps = None, benchmarking.pipeline_timesteps(scheduler)
    for i, t in enumerate(timesteps):
        scaled = (
            scheduler.scale_model_input(x, t)
            if x.is_floating_point() and hasattr(scheduler, "scale_model_input")
            else x
        )
        x, previous = _step(scheduler, _odd(model(scaled.float(), t), case, i), t, x, previous, **options)
    if case == "past-end":
        x, previous = _step(scheduler, model(x, timesteps[-1]), timesteps[-1], x, previous, **options)
    return x


def _outcome(run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return run()
        except Exception as error:  # noqa: BLE001  (the exception is what is compared)
            return error


def _assert_same(got, expected):
    if isinstance(expected, Exception):
        assert isinstance(got, type(expected)), f"stock raised {expected!r}, the drop-in gave {got!r}"
        return
    assert not isinstance(got, Exception), f"stock ran, the drop-in raised {got!r}"
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    assert torch.equal(got.isfinite(), expected.isfinite())
    finite = expected.isfinite()
    if finite.any():
        torch.testing.assert_close(got[finite].double(), expected[finite].double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_drop_in_handles_odd_inputs_as_stock(name, case):
    expected = _outcome(lambda: _diffusers_loop(getattr(diffusers, name), case))
    got = _outcome(lambda: _diffusers_loop(getattr(accelerated, name), case))
    _assert_same(got, expected)


def _k_denoiser(case):
    def denoiser(x, sigma):
        out = torch.tanh(x.float()) * 0.5 / (1 + sigma.float()[:, None, None, None])
        return _odd(out, case, 1 if case in ("inf", "nan") else 0)

    return denoiser


def _k_loop(module, name, case):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8) * 10
    if case == "int-sample":
        x = x.round().to(torch.int64)
    sigmas = ours.get_sigmas_karras(6, 0.1, 10.0)
    return getattr(module, name)(_k_denoiser(case), x, sigmas, disable=True)


@pytest.mark.parametrize("case", ["broadcast", "int-output", "int-sample", "inf", "nan"])
@pytest.mark.parametrize("name", FIXED_STEP_SAMPLERS)
def test_k_diffusion_drop_in_handles_odd_inputs_as_k_diffusion(name, case):
    import test_k_diffusion

    expected = _outcome(lambda: _k_loop(test_k_diffusion.K, name, case))
    got = _outcome(lambda: _k_loop(ours, name, case))
    _assert_same(got, expected)


def test_stepping_past_the_end_names_the_index_as_stock_does():
    """The message stock gives (an index and a size), not a bare 'list index out of range'."""
    stock = _outcome(lambda: _diffusers_loop(diffusers.EulerDiscreteScheduler, "past-end"))
    got = _outcome(lambda: _diffusers_loop(accelerated.EulerDiscreteScheduler, "past-end"))
    assert isinstance(got, IndexError) and str(got) == str(stock)


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_step_signatures_are_stocks():
    """Every stepping method has diffusers' exact parameters (names, kinds,
    defaults): pipelines inspect them, and a keyword stock does not take is a
    TypeError, as in stock (DEIS and UniPC took a generator stock does not)."""
    for name, cls in accelerated.ACCELERATED.items():
        for method in ("step", "step_prk", "step_plms"):
            stock = getattr(getattr(diffusers, name), method, None)
            if stock is not None:
                assert _parameters(getattr(cls, method)) == _parameters(stock), f"{name}.{method}"
    with pytest.raises(TypeError, match="generator"):
        accelerated.DEISMultistepScheduler().step(torch.zeros(1), 0, torch.zeros(1), generator=None)
