"""A seeded differential fuzzer of all five ops, and the two ops of their
backward passes (error_norm_backward, threshold_backward), against the reference.

Each case draws an op and its arguments at random: shapes with odd, tiny and
empty dimensions; contiguous, sliced, transposed, expanded (stride 0) and
channels_last layouts; dtype mixes; shared or per-sample coefficients; 0-4
history tensors; clip and dynamic thresholds; NaN / Inf in the data; outputs
aliasing inputs. It runs the op on a kernel backend and on the reference
(on clones of the inputs) and compares. A failing case prints a one-line
reproducer.

    DIFFACCEL_FUZZ_CASES=20000 pytest tests/test_fuzz.py     # more cases (CI: 2000)
    DIFFACCEL_FUZZ_SEED=3 pytest tests/test_fuzz.py          # another stream of cases
    DIFFACCEL_FUZZ_CASE=1234 pytest tests/test_fuzz.py       # just that case, with its description

The sanitizer job (make sanitize) runs this file under AddressSanitizer and
UndefinedBehaviorSanitizer too.
"""

import os
import random

import pytest
import torch

from diffaccel import check, ops
from diffaccel.ops import autograd

from conftest import DEVICE, TEST_BACKENDS

CASES = int(os.environ.get("DIFFACCEL_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("DIFFACCEL_FUZZ_SEED", "0"))
ONLY = os.environ.get("DIFFACCEL_FUZZ_CASE")
KERNEL_BACKENDS = [b for b in TEST_BACKENDS if b != "reference"]
LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)


class Case:
    """One random call: draws everything from its own seeded RNG."""

    def __init__(self, index: int):
        self.index = index
        self.rng = random.Random(SEED * 1_000_003 + index)
        self.gen = torch.Generator().manual_seed(SEED * 1_000_003 + index)
        self.notes = []

    def note(self, text):
        self.notes.append(text)

    def randn(self, *shape, dtype=None):
        """A draw from the case's (host) generator, on DEVICE: the layouts are made
        there, since moving a sliced or expanded tensor to a GPU makes it contiguous."""
        return torch.randn(*shape, generator=self.gen, dtype=dtype, device="cpu").to(DEVICE)

    def rand(self, *shape):
        return torch.rand(*shape, generator=self.gen, device="cpu").to(DEVICE)

    def shape(self):
        dims = self.rng.choice([1, 2, 3, 4, 4])
        sizes = [self.rng.choice([1, 2, 3, 5, 7, 16, 17]) for _ in range(dims)]
        if self.rng.random() < 0.03:
            sizes[-1] = 0  # empty
        return tuple(sizes)

    def tensor(self, name, shape, dtype, *, output_ok=False):
        """Fresh data in a random layout (expanded layouts only for inputs)."""
        layouts = ["contiguous", "sliced", "transposed"] + ([] if output_ok else ["expanded"])
        layouts += ["channels_last"] if len(shape) == 4 else []
        layout = self.rng.choice(layouts)
        scale = self.rng.choice([1.0, 1.0, 1e-3, 1e3])
        if layout == "expanded":
            dim = self.rng.randrange(len(shape))
            small = list(shape)
            small[dim] = 1
            t = (self.randn(small) * scale).to(dtype).expand(shape)
        elif layout == "sliced":
            wide = (self.randn(*shape[:-1], 2 * shape[-1] + 1) * scale).to(dtype)
            t = wide[..., 1::2]
        elif layout == "transposed":
            t = (self.randn(tuple(reversed(shape))) * scale).to(dtype)
            t = t.permute(*reversed(range(len(shape))))
        else:
            t = (self.randn(shape) * scale).to(dtype)
            if layout == "channels_last":
                t = t.contiguous(memory_format=torch.channels_last)
        if layout != "expanded" and t.numel() and self.rng.random() < 0.08:
            flat = t.view(-1) if t.is_contiguous() else None
            if flat is not None:
                flat[self.rng.randrange(t.numel())] = self.rng.choice([float("nan"), float("inf"), -float("inf")])
                layout += "+nonfinite"
        self.note(f"{name}={list(shape)}:{str(dtype)[6:]}:{layout}")
        return t

    def dtype(self, state):
        return torch.float64 if state == torch.float64 else self.rng.choice(LOW_PRECISION)

    def coeffs(self, batch, n, rows=()):
        """A coefficient table: [n] or [batch, n]; rows=(2,): [2, n] or [batch, 2, n]."""
        per_sample = self.rng.random() < 0.4
        dtype = self.rng.choice([torch.float32, torch.float64])
        self.note(f"coeffs={'per-sample' if per_sample else 'shared'}:{str(dtype)[6:]}")
        shape = (batch, *rows, n) if per_sample else (*rows, n)
        return self.randn(shape, dtype=torch.float64).to(dtype)

    def threshold(self):
        kind = self.rng.choice([None, None, "clip", "dynamic"])
        if kind is None:
            return None
        t = ops.Threshold(
            kind,
            self.rng.choice([0.5, 0.9, 0.995, 1.0, self.rng.uniform(0.01, 1.0)]),
            self.rng.choice([0.5, 1.0, 1.5, 3.0]),
            self.rng.choice(["diffusers", "dpm-solver"]),
        )
        self.note(f"threshold={t.kind}/{t.ratio:.4g}/{t.max_value}/{t.style}")
        return t

    def build(self):
        """(op name, call(fn module), inputs to clone)."""
        op = self.rng.choice(check.OPS)
        self.note(op)
        shape = self.shape()
        state = self.rng.choice([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64])
        batch = shape[0]
        if op == "ei_step":
            x = self.tensor("x", shape, state)
            m = self.tensor("model_out", shape, self.dtype(state))
            history = [self.tensor(f"h{j}", shape, self.dtype(state)) for j in range(self.rng.randrange(5))]
            coeffs = self.coeffs(batch, 5 + len(history))
            threshold = self.threshold()
            noise = self.tensor("noise", shape, self.dtype(state)) if self.rng.random() < 0.4 else None
            alias = self.rng.random() < 0.25
            if alias:  # in place, as a multistep loop runs: out=(x, the history slot of x's dtype)
                x = x.contiguous().clone()
                slot = self.randn(shape).to(state)
                history.append(slot) if len(history) < 4 else history.__setitem__(-1, slot)
                coeffs = self.coeffs(batch, 5 + len(history))
                self.note("out=(x, history[-1])")
            inputs = [x, m, coeffs, noise, *history]

            def call(fn, x, m, coeffs, noise, *history):
                out = (x, history[-1]) if alias else None
                return fn.ei_step(x, m, list(history), coeffs, threshold=threshold, noise=noise, out=out)

        elif op in ("multistep_combine", "multistep_combine_pair"):
            pair = op == "multistep_combine_pair"
            dtypes = [self.dtype(state) for _ in range(self.rng.randint(1, 8))]
            tensors = [self.tensor(f"t{j}", shape, d) for j, d in enumerate(dtypes)]
            coeffs = self.coeffs(batch, len(tensors), rows=(2,) if pair else ())
            result = tensors[0].dtype
            for t in tensors:
                result = torch.promote_types(result, t.dtype)
            # In place, as a multistep loop runs: out= a tensor of the result dtype (the
            # pair's second output a new buffer).
            alias = next((j for j, t in enumerate(tensors) if t.dtype == result and t.is_contiguous()), None)
            alias = alias if self.rng.random() < 0.25 else None
            if alias is not None:
                tensors[alias] = tensors[alias].clone()
                self.note(f"out=tensors[{alias}]")
            inputs = [coeffs, *tensors]

            def call(fn, coeffs, *tensors):
                if not pair:
                    return fn.multistep_combine(list(tensors), coeffs, out=None if alias is None else tensors[alias])
                out = None if alias is None else (tensors[alias], torch.empty_like(tensors[alias]))
                return fn.multistep_combine_pair(list(tensors), coeffs, out=out)

        elif op == "threshold":
            x = self.tensor("x", shape, state)
            t = self.threshold() or ops.Threshold("dynamic")
            in_place = self.rng.random() < 0.25
            if in_place:
                x = x.contiguous().clone()
                self.note("out=x")
            inputs = [x]

            def call(fn, x):
                options = dict(kind=t.kind, ratio=t.ratio, max_value=t.max_value, style=t.style)
                return fn.threshold(x, **options, out=x if in_place else None)

        elif op == "langevin_correct":
            x = self.tensor("x", shape, state)
            score = self.tensor("score", shape, state)
            noise = self.tensor("noise", shape, state)
            snr = self.rng.choice([0.0, 0.16, 1.0])
            alpha = self.rng.choice(["number", "0-d", "per-sample"])
            alpha = {
                "number": 0.7,
                "0-d": torch.tensor(0.3, device=DEVICE),
                "per-sample": self.rand(batch),
            }[alpha]
            reduction = self.rng.choice(["batch", "sample"])
            self.note(f"snr={snr} reduction={reduction}")
            inputs = [x, score, noise]

            def call(fn, x, score, noise):
                return fn.langevin_correct(x, score, snr, alpha=alpha, noise=noise, reduction=reduction)

        elif op == "error_norm":
            tensors = [self.tensor(n, shape, state) for n in ("x_high", "x_low", "x_prev")]
            atol, rtol = self.rng.choice([1e-4, 0.0078, 1.0]), self.rng.choice([0.0, 0.05, 1.0])
            self.note(f"atol={atol} rtol={rtol}")
            inputs = tensors

            def call(fn, high, low, prev):
                return fn.error_norm(high, low, prev, atol=atol, rtol=rtol)

        elif op == "error_norm_backward":
            tensors = [self.tensor(n, shape, self.dtype(state)) for n in ("x_high", "x_low", "x_prev")]
            atol, rtol = self.rng.choice([1e-4, 0.0078, 1.0]), self.rng.choice([0.0, 0.05, 1.0])
            grad = self.randn(batch)
            error = self.rng.choice([lambda: self.rand(batch) + 0.1, lambda: torch.zeros(batch, device=DEVICE)])()
            self.note(f"atol={atol} rtol={rtol} error={'zero' if not error.any() else 'positive'}")
            inputs = [grad, error.to(DEVICE), *tensors]

            def call(fn, grad, error, high, low, prev):
                implementation = ops.reference if fn is ops.reference else autograd
                return implementation.error_norm_backward(grad, error, high, low, prev, atol=atol, rtol=rtol)

        else:
            x = self.tensor("x", shape, state)
            grad = self.tensor("grad", shape, self.dtype(state))
            scale = (self.rand(batch) * 3).to(self.rng.choice([torch.float32, torch.float64]))
            if batch and self.rng.random() < 0.1:
                scale[0] = float("nan")
                self.note("scale[0]=nan")
            inputs = [grad, x, scale.to(DEVICE)]

            def call(fn, grad, x, scale):
                implementation = ops.reference if fn is ops.reference else autograd
                return implementation.threshold_backward(grad, x, scale)

        return op, call, inputs

    def describe(self):
        return f"case {self.index}: " + " ".join(self.notes)

    def reproducer(self):
        return f"DIFFACCEL_FUZZ_SEED={SEED} DIFFACCEL_FUZZ_CASE={self.index} pytest tests/test_fuzz.py"


def _clone(t):
    if t is None:
        return None
    c = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device) if t.stride() else t.clone()
    return c.copy_(t) if t.numel() else c


def run_case(index: int, backend: str):
    """None if the kernel agrees with the reference, else the failure's description."""
    case = Case(index)
    op, call, inputs = case.build()
    expected_inputs = [_clone(t) if isinstance(t, torch.Tensor) and 0 not in t.stride() else t for t in inputs]
    expected = call(ops.reference, *expected_inputs)
    try:
        with ops.backend(backend):
            got = call(ops, *inputs)
    except Exception as error:  # noqa: BLE001  (any exception is a finding)
        return f"{case.describe()} -> raised {type(error).__name__}: {error}\n  reproduce: {case.reproducer()}"
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected):
        try:
            assert g.dtype == e.dtype and g.shape == e.shape, f"{g.dtype}{list(g.shape)} vs {e.dtype}{list(e.shape)}"
            tolerance = dict(check.tolerance(e.dtype))
            if op == "langevin_correct" and e.dtype == torch.float64 and e.numel():
                # The step comes from norms summed in another order (fixed chunks
                # against torch.linalg's): in float64 that is all the precision
                # there is, so results agree relative to the update's magnitude.
                finite = e[e.isfinite()]
                scale = float(finite.abs().max()) if finite.numel() else 0.0
                tolerance["atol"] = max(tolerance["atol"], 1e-10 * scale)
            torch.testing.assert_close(g, e, equal_nan=True, **tolerance)
        except AssertionError as error:
            first = str(error).strip().splitlines()[0]
            return f"{case.describe()} -> {first}\n  reproduce: {case.reproducer()}"
    return None


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fuzzed_calls_agree_with_the_reference(backend):
    if ONLY is not None:
        indices = [int(ONLY)]
    else:
        # The Triton interpreter costs milliseconds a launch on CPU: a twentieth of the cases there.
        interpreted = backend == "triton" and DEVICE == "cpu"
        indices = range(CASES // 20 if interpreted else CASES)
    failures = [f for f in (run_case(i, backend) for i in indices) if f is not None]
    assert not failures, f"{len(failures)} of {len(indices)} fuzzed cases failed on {backend}:\n" + "\n".join(
        failures[:10]
    )


def test_the_fuzzer_finds_a_wrong_kernel(monkeypatch):
    """Control: a kernel off by a little is caught, with a reproducer."""
    real = ops.multistep_combine

    def off_by_a_little(tensors, coeffs, *, out=None):
        y = real(tensors, coeffs, out=out)
        return y.add_(1e-3) if y.numel() else y

    monkeypatch.setattr(ops, "multistep_combine", off_by_a_little)
    failures = [f for f in (run_case(i, "auto") for i in range(200)) if f is not None]
    assert failures and all("reproduce: DIFFACCEL_FUZZ_SEED=" in f for f in failures)
    assert all("multistep_combine" in f for f in failures)
