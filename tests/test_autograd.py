"""Gradients through the fused ops (diffaccel.ops.autograd): gradcheck in
float64 for every op and option on every backend, the fused backward against
the reference's autograd in float32, out= refused where autograd would record,
and gradients through diffaccel.sample and the diffusers drop-ins equal to the
reference loop's and stock diffusers'."""

import pytest
import torch
from torch.autograd import gradcheck

import diffaccel
from diffaccel import ops
from diffaccel.ops import backends

from conftest import DEVICE, TEST_BACKENDS, make

F64 = dict(dtype=torch.float64, device=DEVICE)
THRESHOLDS = [
    None,
    ops.Threshold("clip", max_value=0.8),
    ops.Threshold("dynamic", 0.9, 1.5),
    ops.Threshold("dynamic", 0.7, 0.5, "dpm-solver"),
]


def _gradcheck(fn, inputs, backend):
    """gradcheck on the backend; on the Triton interpreter (each kernel launch
    costs milliseconds on CPU) in fast mode: a random projection of the
    Jacobian instead of every column."""
    interpreted = backend == "triton" and DEVICE == "cpu"
    with ops.backend(backend):
        return gradcheck(fn, inputs, fast_mode=interpreted)


def _leaf(shape, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, **F64) * scale).requires_grad_()


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared-row", "row-per-sample"])
@pytest.mark.parametrize("threshold", THRESHOLDS, ids=lambda t: "none" if t is None else f"{t.kind}-{t.style}")
@pytest.mark.parametrize("history", [0, 2])
def test_ei_step_gradcheck(backend, per_sample, threshold, history, gen):
    x, m, z = (_leaf((2, 3, 5), gen) for _ in range(3))
    hist = [_leaf((2, 3, 5), gen) for _ in range(history)]
    coeffs = _leaf((2, 5 + history) if per_sample else (5 + history,), gen)

    def step(x, m, coeffs, z, *hist):
        return ops.ei_step(x, m, list(hist), coeffs, threshold=threshold, noise=z)

    assert _gradcheck(step, (x, m, coeffs, z, *hist), backend)


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared-row", "row-per-sample"])
def test_multistep_combine_gradcheck(backend, per_sample, gen):
    tensors = [_leaf((2, 3, 5), gen) for _ in range(3)]
    coeffs = _leaf((2, 3) if per_sample else (3,), gen)
    assert _gradcheck(lambda c, *t: ops.multistep_combine(list(t), c), (coeffs, *tensors), backend)


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared-row", "row-per-sample"])
def test_multistep_combine_pair_gradcheck(backend, per_sample, gen):
    tensors = [_leaf((2, 3, 5), gen) for _ in range(3)]
    coeffs = _leaf((2, 2, 3) if per_sample else (2, 3), gen)
    assert _gradcheck(lambda c, *t: ops.multistep_combine_pair(list(t), c), (coeffs, *tensors), backend)


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("used", [0, 1])
def test_multistep_combine_pair_one_output_used(backend, used, gen):
    """Where the loss uses one output, the other's gradient is None: the
    backward pass takes the used one alone (coefficient rows of the other get 0)."""
    tensors = [_leaf((2, 3, 5), gen) for _ in range(2)]
    coeffs = _leaf((2, 2), gen)
    with ops.backend(backend):
        y = ops.multistep_combine_pair(tensors, coeffs)[used]
        got = torch.autograd.grad(y.sum(), [coeffs, *tensors])
    y = sum(coeffs[used, j] * t for j, t in enumerate(tensors))
    want = torch.autograd.grad(y.sum(), [coeffs, *tensors])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize(
    "options",
    [
        dict(kind="clip", max_value=0.7),
        dict(kind="dynamic", ratio=0.8, max_value=1.2),
        dict(kind="dynamic", ratio=0.995, max_value=1.0),
        dict(kind="dynamic", ratio=0.6, max_value=0.4, style="dpm-solver"),
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_threshold_gradcheck(backend, options, gen):
    x = _leaf((2, 3, 5), gen, scale=2.0)
    assert _gradcheck(lambda x: ops.threshold(x, **options), (x,), backend)


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("reduction", ["batch", "sample"])
@pytest.mark.parametrize("alpha", ["number", "scalar-tensor", "per-sample"])
def test_langevin_correct_gradcheck(backend, reduction, alpha, gen):
    x, score, z = (_leaf((2, 3, 5), gen) for _ in range(3))
    alpha_value = {"number": 0.7, "scalar-tensor": _leaf((), gen).abs(), "per-sample": _leaf((2,), gen).abs()}[alpha]
    inputs = (x, score, z) + ((alpha_value,) if isinstance(alpha_value, torch.Tensor) else ())

    def corrector(x, score, z, *alpha_arg):
        a = alpha_arg[0] if alpha_arg else alpha_value
        return ops.langevin_correct(x, score, 0.16, alpha=a, noise=z, reduction=reduction)

    assert _gradcheck(corrector, inputs, backend)


@pytest.mark.cpu_only  # the CPU kernels draw noise=None as torch.randn does, so the reference can redraw it
@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_langevin_correct_gradient_with_noise_drawn_in_the_op(reduction, gen):
    x, score = _leaf((2, 3, 5), gen), _leaf((2, 3, 5), gen)
    seeded = torch.Generator(device=DEVICE)

    def corrector(x, score):
        seeded.manual_seed(7)
        return ops.langevin_correct(x, score, 0.16, generator=seeded, reduction=reduction)

    assert gradcheck(corrector, (x, score))


@pytest.mark.parametrize("backend", TEST_BACKENDS)
def test_error_norm_gradcheck(backend, gen):
    high, low, prev = (_leaf((2, 3, 5), gen) for _ in range(3))
    assert _gradcheck(lambda h, lo, p: ops.error_norm(h, lo, p, atol=0.05, rtol=0.1), (high, low, prev), backend)


@pytest.mark.parametrize("threshold", THRESHOLDS, ids=lambda t: "none" if t is None else f"{t.kind}-{t.style}")
def test_fused_backward_equals_the_references_autograd(threshold, gen):
    """float32, with a bf16 model output: the fused backward gives the
    reference's gradients (to float32 rounding) in each input's dtype."""
    x = torch.randn(3, 4, 8, 8, generator=gen, device=DEVICE).requires_grad_()
    m = torch.randn(3, 4, 8, 8, generator=gen, device=DEVICE).to(torch.bfloat16).requires_grad_()
    h = torch.randn(3, 4, 8, 8, generator=gen, device=DEVICE).requires_grad_()
    coeffs = torch.randn(3, 6, generator=gen, device=DEVICE, dtype=torch.float64)
    weights = [torch.randn(3, 4, 8, 8, generator=gen, device=DEVICE) for _ in range(2)]
    grads = {}
    for backend in TEST_BACKENDS:
        with ops.backend(backend):
            x_next, d = ops.ei_step(x, m, [h], coeffs, threshold=threshold)
            grads[backend] = torch.autograd.grad((x_next * weights[0]).sum() + (d * weights[1]).sum(), [x, m, h])
    for backend, got in grads.items():
        for g, expected, leaf in zip(got, grads["reference"], [x, m, h]):
            assert g.dtype == leaf.dtype, backend
            tolerance = 1e-2 if leaf.dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(g, expected, rtol=tolerance, atol=tolerance)


def test_out_is_refused_where_autograd_would_record(gen):
    x = torch.randn(2, 3, generator=gen, device=DEVICE).requires_grad_()
    m, c = torch.randn(2, 3, generator=gen, device=DEVICE), torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0], device=DEVICE)
    buffers = (torch.empty(2, 3, device=DEVICE), torch.empty(2, 3, device=DEVICE))
    with pytest.raises(RuntimeError, match="ei_step: out= .* does not support automatic differentiation"):
        ops.ei_step(x, m, [], c, out=buffers)
    with pytest.raises(RuntimeError, match="multistep_combine: out="):
        ops.multistep_combine([x, m], c[:2], out=buffers[0])
    with pytest.raises(RuntimeError, match="multistep_combine_pair: out="):
        ops.multistep_combine_pair([x, m], torch.ones(2, 2, device=DEVICE), out=buffers)
    with pytest.raises(RuntimeError, match="threshold: out="):
        ops.threshold(x, out=buffers[0])
    with torch.no_grad():  # nothing is recorded: out= works as always
        ops.ei_step(x, m, [], c, out=buffers)
        torch.testing.assert_close(buffers[0], 0.5 * x + 0.5 * (x + m))


@pytest.mark.parametrize("backend", TEST_BACKENDS)
def test_out_bumps_version_counters(backend, gen):
    """Writing into out= buffers counts as an in-place change for autograd, as
    for torch's own out= ops: a buffer that a recorded computation saved, then
    overwritten by an op under no_grad, makes backward() refuse instead of
    using the new values; inference tensors (no version counter) still work."""
    x, m, z = (torch.randn(2, 3, 4, generator=gen, device=DEVICE) for _ in range(3))
    c = torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0], device=DEVICE)
    buffers = [torch.zeros(2, 3, 4, device=DEVICE) for _ in range(2)]
    calls = {
        "ei_step": lambda: ops.ei_step(x, m, [], c, out=tuple(buffers)),
        "multistep_combine": lambda: ops.multistep_combine([x, m], c[:2], out=buffers[0]),
        "multistep_combine_pair": lambda: ops.multistep_combine_pair([x, m], c[:4].reshape(2, 2), out=tuple(buffers)),
        "threshold": lambda: ops.threshold(x, out=buffers[0]),
        "langevin_correct": lambda: ops.langevin_correct(x, m, 0.16, noise=z, out=tuple(buffers)),
    }
    with ops.backend(backend):
        for name, call in calls.items():
            before = [b._version for b in buffers]
            with torch.no_grad():
                call()
            assert buffers[0]._version > before[0], name
            if name in ("ei_step", "multistep_combine_pair", "langevin_correct"):
                assert buffers[1]._version > before[1], name

        w = torch.randn(2, 3, 4, generator=gen, device=DEVICE).requires_grad_()
        y = (w * buffers[0]).sum()  # saves buffers[0] for the backward pass
        with torch.no_grad():
            ops.threshold(x, out=buffers[0])
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()

        with torch.inference_mode():
            xi = x.clone()
            out = torch.empty_like(xi)
            ops.threshold(xi, out=out)
            ops.ei_step(xi, m, [], c, out=(xi, out))


def test_every_compiled_op_has_an_entry_below_autograd():
    """Each op form of torch.ops.diffaccel has its unboxed C++ entry point in
    diffaccel._C.below_autograd, which the fronts take when nothing records
    (the boxed redispatch from Python costs about 1 us a call more)."""
    from diffaccel import _extension
    from diffaccel.ops import _BELOW_AUTOGRAD, _GUARDED

    forms = {
        name
        for op in backends.OPS
        for name in (op, f"{op}_out")
        if _extension.available() and hasattr(torch.ops.diffaccel, name)
    }
    assert set(_BELOW_AUTOGRAD) == forms
    assert set(_GUARDED) == forms


def _guarded_ei_step_args(requires_grad=None):
    """The arguments of diffaccel._C.guarded.ei_step (the schema's, in order):
    a 2M row with noise, one history tensor, the named tensor requiring grad."""
    tensors = {name: torch.randn(2, 3, device=DEVICE) for name in ("x", "model_out", "history", "noise")}
    tensors["coeffs"] = torch.tensor([0.0, 1.0, 0.9, 0.15, -0.05, 0.3], dtype=torch.float64, device=DEVICE)
    if requires_grad is not None:
        tensors[requires_grad].requires_grad_()
    t = tensors
    return (t["x"], t["model_out"], [t["history"]], t["coeffs"], t["noise"], None, 0.995, 1.0, "diffusers")


@pytest.mark.skipif(not diffaccel._extension.available(), reason="the compiled extension did not load")
def test_the_guarded_entries_decline_where_the_dispatcher_has_work():
    """_call takes diffaccel._C.guarded.<op>, the entry below autograd behind
    the checks it made in Python: it runs the kernel where nothing records,
    and returns NotImplemented (the front then calls the op through the
    dispatcher) where grad mode is on and any tensor argument requires grad,
    under a dispatch mode, or inside a functorch transform."""
    from diffaccel.ops import _GUARDED

    guarded = _GUARDED["ei_step"]
    first = _guarded_ei_step_args()
    got = guarded(*first)
    want = diffaccel._C.below_autograd.ei_step(*first)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    for name in ("x", "model_out", "history", "noise", "coeffs"):
        args = _guarded_ei_step_args(requires_grad=name)
        assert guarded(*args) is NotImplemented, name
        with torch.no_grad():
            assert guarded(*args) is not NotImplemented, name
    out = (torch.empty(2, 3, device=DEVICE), torch.empty(2, 3, device=DEVICE).requires_grad_())
    assert _GUARDED["ei_step_out"](*_guarded_ei_step_args(), *out) is NotImplemented
    version = out[0]._version
    assert _GUARDED["ei_step_out"](*_guarded_ei_step_args(), out[0], out[1].detach()) is None
    assert out[0]._version > version  # bumped, as the dispatcher would

    class Mode(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Mode():
        assert guarded(*_guarded_ei_step_args()) is NotImplemented

    seen, rest = [], _guarded_ei_step_args()[1:]

    def per_sample(x):
        seen.append(guarded(x, *rest))
        return x

    torch.func.vmap(per_sample)(torch.randn(4, 2, 3, device=DEVICE))
    assert seen == [NotImplemented]
    # Through the fronts, each of those gives the dispatcher's result.
    x, m, h, c, z = (a[0] if isinstance(a, list) else a for a in first[:5])
    leaf = x.clone().requires_grad_()
    x_next, _ = ops.ei_step(leaf, m, [h], c, noise=z)
    assert x_next.grad_fn is not None and torch.equal(x_next.detach(), got[0])


def test_a_loop_gets_the_entry_below_autograd_only_where_nothing_sits_between():
    """ops.loop_entry: the kernel's entry for a sampler loop under no_grad with the
    compiled backend, and None wherever the dispatcher has work to do for the
    loop (grad mode, a dispatch mode, a tensor subclass, another backend or a
    device without a compiled kernel)."""
    from diffaccel import _extension
    from diffaccel.ops import _BELOW_AUTOGRAD

    x = torch.randn(2, 3, device=DEVICE)
    assert ops.loop_entry("ei_step", x) is None  # grad mode on
    with torch.no_grad():
        compiled = _extension.available() and backends.resolve("ei_step", x.device.type) == "compiled"
        entry = ops.loop_entry("ei_step", x)
        assert (entry is _BELOW_AUTOGRAD["ei_step"]) if compiled else entry is None
        assert ops.loop_entry("ei_step", torch.empty(2, 3, device="meta")) is None
        with ops.backend("reference"):
            assert ops.loop_entry("ei_step", x) is None

        class Subclass(torch.Tensor):
            pass

        assert ops.loop_entry("ei_step", x.as_subclass(Subclass)) is None

        class Mode(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Mode():
            assert ops.loop_entry("ei_step", x) is None


def _mlp(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 16)).to(DEVICE)


# pc's Langevin noise is drawn inside the op: torch.randn's stream on the CPU, in-kernel
# Philox on a GPU (tests/test_cuda.py checks that stream), where the reference's differs.
PC_ON_THE_HOST = pytest.param("pc", marks=pytest.mark.cpu_only)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "euler_ancestral", PC_ON_THE_HOST])
def test_gradients_through_diffaccel_sample_equal_the_reference_loops(sampler, gen):
    """Backpropagation through a few sampling steps, to the initial noise and
    the network's weights: the fused ops' gradients are the reference ops'."""
    net = _mlp(gen)

    def model(x, t):
        return net(x.reshape(x.shape[0], 16)).reshape(x.shape) * (t.reshape(-1, 1, 1) / 1000)

    noise = torch.randn(3, 4, 4, generator=gen, device=DEVICE)
    results = {}
    for backend in ("auto", "reference"):
        x = noise.clone().requires_grad_()
        with ops.backend(backend):
            out = diffaccel.sample(model, x, sampler=sampler, steps=4, generator=torch.Generator(DEVICE).manual_seed(1))
        loss = (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).reshape(out.shape)).sum()
        grads = torch.autograd.grad(loss, [x, *net.parameters()])
        results[backend] = (out.detach(), grads)
    torch.testing.assert_close(results["auto"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    for got, expected in zip(results["auto"][1], results["reference"][1]):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_no_grad_sampling_is_unchanged(gen):
    """Without anything requiring grad the loop writes its buffers in place as
    before, and the result carries no graph."""
    noise = torch.randn(2, 4, 4, generator=gen, device=DEVICE)
    backend = backends.current()
    out = diffaccel.sample(lambda x, t: 0.1 * x, noise, sampler="dpmpp_2m", steps=5)
    assert out.grad_fn is None and backends.current() == backend


# --- the closed-form backward passes against the reference's autograd ---------
# (dynamic thresholding, langevin_correct and error_norm depend on their data
# through per-sample numbers; their gradients are written out in
# diffaccel.ops.autograd, and must give what autograd through the reference
# twin gives, non-finite pattern included.)


def _gradients_by_backend(fn, inputs, weights):
    """{backend: gradients of sum_k <fn(*inputs)_k, weights_k> to every input}."""
    found = {}
    for backend in TEST_BACKENDS:
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        with ops.backend(backend):
            outputs = fn(*leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        loss = sum((o.float() * w).sum() for o, w in zip(outputs, weights))
        found[backend] = torch.autograd.grad(loss, leaves)
    return found


def _assert_gradients_match(found, tolerance):
    for backend, got in found.items():
        for g, expected in zip(got, found["reference"]):
            assert g.dtype == expected.dtype and g.shape == expected.shape, backend
            assert torch.equal(g.isnan(), expected.isnan()), (backend, "NaN pattern")
            assert torch.equal(g.isinf(), expected.isinf()), (backend, "Inf pattern")
            torch.testing.assert_close(g, expected, rtol=tolerance, atol=tolerance, equal_nan=True)


_TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}
DYNAMIC = [
    dict(ratio=0.995, max_value=10.0),  # the quantile is the scale: its gradient reaches two elements
    dict(ratio=0.9, max_value=1.5),  # the scale is the bound: no gradient through the quantile
    dict(ratio=0.5, max_value=10.0),
    dict(ratio=1.0, max_value=10.0),
    dict(ratio=0.7, max_value=0.5, style="dpm-solver"),
    dict(ratio=0.7, max_value=50.0, style="dpm-solver"),
]


@pytest.mark.parametrize("options", DYNAMIC, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("special", ["finite", "nan", "inf"])
def test_dynamic_threshold_backward_equals_the_references(options, dtype, layout, special, gen):
    x = make((3, 4, 16, 12), dtype, layout, gen, scale=2.0)
    if special != "finite":
        x = x.clone()
        x[1, 2, 3, 4] = float(special)
    weights = [torch.randn(3, 4, 16, 12, generator=gen, device=DEVICE)]
    found = _gradients_by_backend(lambda v: ops.threshold(v, kind="dynamic", **options), [x], weights)
    if dtype != torch.bfloat16:
        _assert_gradients_match(found, _TOLERANCE[dtype])
    else:  # bfloat16 has few values: ties at the order statistics are the rule
        _assert_gradients_match_but_at_ties(found, x, options["ratio"], _TOLERANCE[dtype])


def _assert_gradients_match_but_at_ties(found, x, ratio, tolerance):
    """As _assert_gradients_match, except that the elements whose magnitude
    equals one of the quantile's two order statistics only agree in their
    per-sample total with respect to |x| (which of a tie gets the gradient is
    the selection's pick)."""
    flat = x.float().reshape(x.shape[0], -1).abs()
    values = flat.sort(dim=1).values
    below, above, _ = ops.reference.quantile_rank(flat.shape[1], ratio, torch.float32)
    at_stat = (flat == values[:, below : below + 1]) | (flat == values[:, above : above + 1])
    for backend, (got,) in found.items():
        (expected,) = found["reference"]
        got, expected = got.reshape(at_stat.shape), expected.reshape(at_stat.shape)
        assert torch.equal(got.isnan(), expected.isnan()), backend
        torch.testing.assert_close(got[~at_stat], expected[~at_stat], rtol=tolerance, atol=tolerance, equal_nan=True)
        signs = x.reshape(at_stat.shape).sgn().to(got.dtype)  # (a tie in |x| may pair x with -x)
        totals = [torch.where(at_stat, g * signs, 0).sum(dim=1) for g in (got, expected)]
        torch.testing.assert_close(*totals, rtol=tolerance, atol=tolerance, equal_nan=True)


def test_dynamic_threshold_backward_at_ties(gen):
    """Integers: many magnitudes equal the order statistics. The quantile's
    gradient goes to one element of each tie (topk's pick, where the reference
    follows its stable sort); everywhere else, and in total, they agree."""
    x = torch.randint(-4, 5, (2, 3, 8, 8), generator=gen, device=DEVICE).to(torch.float64)
    weights = [torch.randn(2, 3, 8, 8, generator=gen, device=DEVICE, dtype=torch.float64)]
    options = dict(kind="dynamic", ratio=0.9, max_value=10.0)
    found = _gradients_by_backend(lambda v: ops.threshold(v, **options), [x], weights)
    assert (found["auto"][0] != found["reference"][0]).any()  # (the picks differ: the check below is needed)
    _assert_gradients_match_but_at_ties(found, x, 0.9, 1e-10)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0), (1,), (5, 1)], ids=str)
def test_dynamic_threshold_backward_of_degenerate_shapes(shape, gen):
    x = torch.randn(shape, generator=gen, device=DEVICE) * 3
    weights = [torch.randn(shape, generator=gen, device=DEVICE)]
    found = _gradients_by_backend(lambda v: ops.threshold(v, kind="dynamic", ratio=0.8, max_value=5.0), [x], weights)
    _assert_gradients_match(found, 1e-5)


@pytest.mark.parametrize("reduction", ["batch", "sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("alpha", ["number", "per-sample"])
@pytest.mark.parametrize("special", ["finite", "zero-score"])
def test_langevin_correct_backward_equals_the_references(reduction, dtype, layout, alpha, special, gen):
    x, score, z = (make((3, 4, 8, 6), dtype, layout, gen) for _ in range(3))
    if special == "zero-score":  # a zero norm: torch.linalg.vector_norm's backward takes it as inf
        score = score.clone()
        score[1] = 0
    alpha_value = 0.7 if alpha == "number" else torch.rand(3, generator=gen, device=DEVICE, dtype=torch.float64)
    weights = [torch.randn(3, 4, 8, 6, generator=gen, device=DEVICE) for _ in range(2)]

    def corrector(x, score, z):
        return ops.langevin_correct(x, score, 0.16, alpha=alpha_value, noise=z, reduction=reduction)

    found = _gradients_by_backend(corrector, [x, score, z], weights)
    _assert_gradients_match(found, _TOLERANCE[dtype])


@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_langevin_correct_backward_of_one_output(reduction, gen):
    """Only x_new or only x_mean used: the other output's gradient is None."""
    x, score, z = (torch.randn(2, 3, 5, generator=gen, device=DEVICE) for _ in range(3))
    w = torch.randn(2, 3, 5, generator=gen, device=DEVICE)
    for which in (0, 1):
        found = _gradients_by_backend(
            lambda x, s, z: ops.langevin_correct(x, s, 0.3, noise=z, reduction=reduction)[which], [x, score, z], [w]
        )
        _assert_gradients_match(found, 2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("special", ["finite", "ties", "inf-low", "nan-prev", "zero-error", "all-atol"])
def test_error_norm_backward_equals_the_references(dtype, layout, special, gen):
    high, low, prev = (make((3, 4, 8, 6), dtype, layout, gen) for _ in range(3))
    atol, rtol = 0.05, 0.1
    if special == "ties":  # |low| == |prev|: torch.maximum splits the gradient in half
        prev = torch.where(torch.rand(low.shape, generator=gen, device=DEVICE) < 0.5, -low, low)
    elif special == "inf-low":
        low = low.clone()
        low[0, 1, 2, 3] = float("inf")
    elif special == "nan-prev":
        prev = prev.clone()
        prev[2, 0, 0, 0] = float("nan")
    elif special == "zero-error":  # E = 0: sqrt's gradient is inf, and 0 * inf = NaN
        high = high.clone()
        high[1] = low[1]
    elif special == "all-atol":  # the clamp at atol everywhere: no gradient through delta
        atol = 100.0
    weights = [torch.randn(3, generator=gen, device=DEVICE)]
    found = _gradients_by_backend(
        lambda h, lo, p: ops.error_norm(h, lo, p, atol=atol, rtol=rtol), [high, low, prev], weights
    )
    _assert_gradients_match(found, _TOLERANCE[dtype])
