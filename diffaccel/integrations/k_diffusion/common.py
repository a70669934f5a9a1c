"""What every k-diffusion drop-in shares: the fused step in k-diffusion's
dtypes (_step), the sigma schedules and noise samplers, the sampler decorator
(no autograd, IEEE host math), the loop (_Loop: sigmas read once, the model
call, the callback dict) and s_churn."""

from __future__ import annotations

import functools
import math
import operator
from typing import Callable, List, Optional

import numpy as np
import torch

from diffaccel import ops
from diffaccel.brownian import BrownianTree
from diffaccel.integrations import float64_if_any
from diffaccel.ops.validation import MAX_COMBINE, MAX_HISTORY
from diffaccel.solvers.lms import lagrange_weights
from diffaccel.transfer import ConstantCache, to_device

# The samplers' coefficient tensors, handed out again when a sampler runs the same
# sigmas again (read-only; see ConstantCache).
_COEFFICIENTS = ConstantCache()
# The model's sigma tensors of a schedule (its steps', a sampler's midpoints), handed
# out again likewise while no one has written to them (_Loop.kept_model_sigmas); one
# a sampler makes within a step (a raised sigma, an adaptive step's) is new every time.
_MODEL_SIGMAS = ConstantCache(capacity=64)


def kept_unwritten(values, device, key, make: Callable, tensors_of: Callable = lambda made: made):
    """make()'s result, kept in _MODEL_SIGMAS per (values, device, key) and handed out
    again while no one has written to the tensors ``tensors_of(result)`` (views of one
    table: their shared version counter has not moved); made again otherwise, and
    for inference tensors, which have no version counter."""
    made = _MODEL_SIGMAS.kept(values, device, key, make)
    first = tensors_of(made)[0]
    if first.is_inference() or first._version:
        _MODEL_SIGMAS.clear()
        made = _MODEL_SIGMAS.kept(values, device, key, make)
    return made


# ei_step's threshold arguments for no threshold (the schema's order; see ops.loop_entry).
_NO_THRESHOLD_ARGS = (None, ops.Threshold.ratio, ops.Threshold.max_value, ops.Threshold.style)


def _step(x, denoised, history, coeffs, noise=None, sigma_dtype: Optional[torch.dtype] = None, direct=None):
    """ops.ei_step with the result dtype k-diffusion's tensor arithmetic gives the
    same update: the promotion of every tensor in it (x, the denoiser outputs,
    earlier terms, noise), and of the sigmas where k-diffusion divides by
    ``append_dims(sigma)`` (to_d: pass their dtype), which has x's rank and so
    promotes, where its 0-d sigma and t tensors do not. So bf16 latents become
    float32 after an Euler step with float32 sigmas, as in k-diffusion, and the
    model sees what it would see there.

    direct: the loop's ops.loop_entry("ei_step"), taken where every tensor is a
    plain tensor of x's dtype and the sigmas do not promote it (the common case:
    nothing to convert), which saves the op front's per-call checks."""
    dtype = x.dtype
    if direct is not None and _all_plain(dtype, denoised, noise, history) and _keeps(dtype, sigma_dtype):
        return direct(x, denoised, history, coeffs, noise, *_NO_THRESHOLD_ARGS)
    for t in (denoised, noise, *history):
        if t is not None and t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    if sigma_dtype is not None and sigma_dtype != dtype:
        dtype = torch.promote_types(dtype, sigma_dtype)
    if dtype == torch.float64:
        x, denoised, noise, *history = float64_if_any([x.to(dtype), denoised, noise, *history])
    elif x.dtype != dtype:
        x = x.to(dtype)
    return ops.ei_step(x, denoised, history, coeffs, noise=noise)


def combine_pair(tensors, rows, direct=None):
    """ops.multistep_combine_pair of tensors with two rows of host coefficients (kept on
    the device per values): two states from the same reads. direct: the loop's
    ops.loop_entry("multistep_combine_pair"), taken where every tensor is a plain
    tensor of one dtype; otherwise the front, float64 for all where any is."""
    coeffs = _COEFFICIENTS.table(rows, tensors[0].device)
    if direct is not None and _all_plain(tensors[0].dtype, tensors[0], None, tensors[1:]):
        return direct(tensors, coeffs)
    return ops.multistep_combine_pair(float64_if_any(tensors), coeffs)


def combine_terms(terms):
    """sum_j w_j t_j over terms [(tensor, host weight)], each tensor taken once (its
    weights added), in fused passes of up to MAX_COMBINE tensors (the first pass's sum
    enters the next as one tensor); a lone tensor of weight 1 is itself."""
    tensors, weights = _merged(terms)
    if len(tensors) == 1 and weights[0] == 1.0:
        return tensors[0]
    while len(tensors) > MAX_COMBINE:
        head = _combine(tensors[:MAX_COMBINE], weights[:MAX_COMBINE])
        tensors, weights = [head, *tensors[MAX_COMBINE:]], [1.0, *weights[MAX_COMBINE:]]
    return _combine(tensors, weights)


def _merged(terms):
    """(tensors, weights) of sum_j w_j t_j with each tensor once (its weights added)."""
    tensors, weights = [], []
    for tensor, weight in terms:
        for k, seen in enumerate(tensors):
            if seen is tensor:
                weights[k] += weight
                break
        else:
            tensors.append(tensor)
            weights.append(weight)
    return tensors, weights


def _combine(tensors, weights):
    """One fused pass: sum_j weights[j] tensors[j]."""
    return ops.multistep_combine(tensors, _COEFFICIENTS.get([float(w) for w in weights], tensors[0].device))


def lms_order(order) -> int:
    """LMS's `order` as an int (k-diffusion and ComfyUI take any: below 1 their sum is
    empty), or a TypeError naming it (theirs is range()'s, from inside the loop)."""
    try:
        return operator.index(order)
    except TypeError:
        raise TypeError(f"sample_lms: argument 'order' must be an integer, got {type(order).__name__}") from None


def lms_step(x, denoised, earlier, weights, sigma: float, sigma_dtype=None, direct=None):
    """Linear multistep in sigma: x + sum_j weights[j] d_j, with d_0 = (x - denoised) /
    sigma (returned, for later steps) and d_1, d_2, ... the earlier derivatives
    ``earlier``, newest first (len(weights) - 1 of them). One fused ei_step for up to
    four earlier derivatives; beyond them (k-diffusion's and ComfyUI's LMS take any
    order) the older ones are summed first (combine_terms) and enter the step as its
    noise term with weight 1. Returns (x_next, d_0)."""
    fused, older = earlier[:MAX_HISTORY], earlier[MAX_HISTORY:]
    noise, s = None, 0.0
    if older:
        noise, s = combine_terms(list(zip(older, weights[1 + MAX_HISTORY :]))), 1.0
    # ei_step's data term is the derivative itself: c_x = 1/sigma, c_m = -1/sigma.
    w = weights[: 1 + MAX_HISTORY]
    coeffs = _COEFFICIENTS.get([1.0 / sigma, -1.0 / sigma, 1.0, *w, s], x.device)
    return _step(x, denoised, fused, coeffs, noise=noise, sigma_dtype=sigma_dtype, direct=direct)


def lms_loop(loop, x, order, denoised_last: bool = False):
    """The LMS sampler's loop over ``loop`` (a _Loop), shared by the k-diffusion and
    ComfyUI drop-ins: each step combines the last ``order`` derivatives
    (lms_step), with weights that integrate the Lagrange polynomials over the sigmas
    exactly; an order below 1 leaves x where it is (their empty sum). With
    denoised_last (ComfyUI's), the step onto sigma = 0 returns the denoised sample,
    where k-diffusion steps."""
    ds = []  # earlier derivatives (x - denoised) / sigma, newest last
    for i in loop.steps():
        sigma = loop.values[i]
        denoised = loop.evaluate(x, i)
        if denoised_last and loop.values[i + 1] == 0:
            x = denoised
            continue
        cur = min(i + 1, order)
        if cur < 1:
            continue
        w = lagrange_weights([loop.values[i - j] for j in range(cur)], sigma, loop.values[i + 1])
        earlier = list(reversed(ds[len(ds) - (cur - 1) :])) if cur > 1 else []
        x, d = lms_step(x, denoised, earlier, w, sigma, sigma_dtype=loop.sigmas.dtype, direct=loop.direct)
        ds = (ds + [d])[-(order - 1) :] if order > 1 else []
    return x


def _all_plain(dtype: torch.dtype, denoised, noise, history) -> bool:
    """Whether the step's tensors are all plain torch.Tensors of ``dtype`` (noise may be None)."""
    if denoised.__class__ is not torch.Tensor or denoised.dtype != dtype:
        return False
    if noise is not None and (noise.__class__ is not torch.Tensor or noise.dtype != dtype):
        return False
    for h in history:
        if h.__class__ is not torch.Tensor or h.dtype != dtype:
            return False
    return True


@functools.lru_cache(maxsize=None)
def _keeps(dtype: torch.dtype, sigma_dtype: Optional[torch.dtype]) -> bool:
    """Whether a step in ``dtype`` that divides by sigmas of ``sigma_dtype`` keeps ``dtype``."""
    return sigma_dtype is None or torch.promote_types(dtype, sigma_dtype) == dtype


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """Karras et al. (2022): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho).to(device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu"):
    """Evenly spaced in log sigma, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp())


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.0, device="cpu"):
    """log sigma a polynomial of degree rho in the step, then 0."""
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    log_min = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device="cpu"):
    """The continuous VP schedule's sigma at evenly spaced t from 1 to eps_s, then 0."""
    t = torch.linspace(1, eps_s, n, device=device)
    return _append_zero(torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1))


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up) of an ancestral step, as k-diffusion computes them."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def default_noise_sampler(x):
    return lambda sigma, sigma_next: torch.randn_like(x)


class BrownianTreeNoiseSampler:
    """k-diffusion's Brownian-tree noise: increments over [sigma_next, sigma],
    normalised to unit variance, consistent across step counts for one seed.
    ``seed`` may be a list (one tree per sample); None draws one from the global
    generator, as k-diffusion does. The trees are diffaccel's BrownianTree, which
    gives torchsde.BrownianTree's numbers bit for bit with a third of its normal
    draws (diffaccel/brownian.py)."""

    # The tree class; tests/comfyui_reference.py's twin of ComfyUI puts torchsde's back.
    tree_class = BrownianTree

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda v: v):
        self.transform = transform
        t0, t1 = transform(torch.as_tensor(sigma_min)), transform(torch.as_tensor(sigma_max))
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = isinstance(seed, (list, tuple))
        if self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError(f"BrownianTreeNoiseSampler: {len(seed)} seeds for a batch of {x.shape[0]}")
            w0 = w0[0]
        seeds = list(seed) if self.batched else [seed]
        t0, w0, t1 = self._tree_inputs(t0, w0, t1)
        self.trees = [self.tree_class(t0, w0, t1, entropy=s) for s in seeds]

    def _tree_inputs(self, t0, w0, t1):
        """Where the trees are built (ComfyUI's variant moves them to the CPU)."""
        return t0, w0, t1

    def _increments(self, lo, hi):
        """Each tree's increment over [lo, hi], stacked."""
        return torch.stack([tree(lo, hi) for tree in self.trees])

    def __call__(self, sigma, sigma_next):
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = self._increments(lo, hi) * (self.sign * sign)
        w = w if self.batched else w[0]
        return w / (t1 - t0).abs().sqrt()


def _sampler(fn):
    """A fixed-step sampler: no autograd, and its host scalar math (on the numpy
    float64 sigmas of _Loop) under IEEE rules without warnings: x / 0 = inf,
    log(0) = -inf, sqrt(-1) = nan, as k-diffusion's tensor arithmetic computes
    them. A schedule that repeats a sigma (a step of h = 0) then gives what
    k-diffusion gives, not a ZeroDivisionError."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        # Grad mode switched by hand: torch.no_grad() costs 1.5 us more a sampler call.
        grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return fn(*args, **kwargs)
        finally:
            torch.set_grad_enabled(grad)

    return run


def _check_sigma_range(sigma_min, sigma_max) -> None:
    """k-diffusion's refusal of a zero sigma_min / sigma_max, and of a non-finite
    one (NaN would run its step control on NaN times)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not math.isfinite(float(value)):
            raise ValueError(f"argument '{name}' must be finite, got {float(value)}")


def _as_k_diffusion_computes(denoised: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A denoiser output the fused ops do not take, as k-diffusion's arithmetic
    with x uses it: an integer one promoted (with x, or to the default dtype),
    one that broadcasts to x's shape expanded to it (a view). An output x
    would have to broadcast up to is left for the op to refuse."""
    if not denoised.is_floating_point():
        dtype = torch.promote_types(denoised.dtype, x.dtype)
        denoised = denoised.to(dtype if dtype.is_floating_point else torch.get_default_dtype())
    if denoised.shape != x.shape and torch.broadcast_shapes(denoised.shape, x.shape) == x.shape:
        denoised = denoised.expand(x.shape)
    return denoised


class _Loop:
    """What every sampler shares: the sigmas read once, the model call with
    k-diffusion's arguments, the callback dict, the progress bar, and one fused
    step from a coefficient row."""

    def __init__(self, model, x, sigmas, extra_args, callback, disable):
        self.model, self.callback = model, callback
        self.extra_args = {} if extra_args is None else extra_args
        self.x_like = x
        self._s_in = None
        self.device = x.device
        self.use_sigmas(sigmas)
        # The one host read of the sigmas, as numpy float64 scalars: the samplers'
        # scalar math then follows IEEE rules (see _sampler).
        raw = sigmas.tolist()
        self.values: List[float] = list(np.array(raw, dtype=np.float64))
        # k-diffusion hangs on a NaN sigma in its SDE samplers (inside the Brownian
        # tree) and turns any non-finite one into NaN samples: refused up front.
        bad = next((j for j, v in enumerate(raw) if not math.isfinite(v)), None)
        if bad is not None:
            raise ValueError(f"argument 'sigmas' must be finite, got sigmas[{bad}] = {self.values[bad]}")
        self.disable = disable
        # The fused step's entry below autograd, where the whole loop may take it.
        self.direct = ops.loop_entry("ei_step", x)

    def use_sigmas(self, sigmas: torch.Tensor) -> None:
        """The sigmas tensor the loop indexes (again where a sampler changes it). Its
        views ``at`` and the model's sigma tensors are made on first use (a sampler
        without a callback or noise may need neither: each costs microseconds)."""
        self.sigmas = sigmas
        self._at = None
        self._model_sigmas = None
        self._versioned = False

    @property
    def at(self):
        """``at[i]`` is sigmas[i] as a view, all made in one op (indexing a tensor costs
        a microsecond or two a call)."""
        if self._at is None:
            self._at = self.sigmas.unbind(0)
        return self._at

    @property
    def s_in(self) -> torch.Tensor:
        """k-diffusion's ``x.new_ones([x.shape[0]])``, which the model's sigmas are multiplied by."""
        if self._s_in is None:
            self._s_in = self.x_like.new_ones([self.x_like.shape[0]])
        return self._s_in

    def steps(self):
        n = len(self.values) - 1
        if self.disable:  # no bar to show: tqdm's set-up alone is 20 us a sampler call
            return range(n)
        try:
            from tqdm.auto import trange
        except ImportError:
            return range(n)
        return trange(n, disable=self.disable)

    def denoise(self, x, sigma):
        """The model at a sigma (a 0-d tensor, or a host number): given sigma * s_in, as k-diffusion gives it."""
        return self.call_model(x, sigma * self.s_in)

    def denoise_at(self, x, i):
        """The model at sigmas[i]; its sigma tensor (sigmas[i] * s_in, the same values and
        dtype as k-diffusion's) is a row of one table made for all the steps. A sampler
        may ask for a row twice (Heun's second evaluation is at the next step's sigma):
        a row someone wrote to is not handed out again (the table is made again)."""
        table = self._model_sigmas
        if table is None or (self._versioned and table[i]._version):
            table = self._model_sigmas = self.kept_model_sigmas("steps", lambda sigmas: sigmas)
            # (Inference tensors, made under torch.inference_mode, have no version counter.)
            self._versioned = not table[0].is_inference()
        return self.call_model(x, table[i])

    def kept_model_sigmas(self, tag: str, sigmas_of: Callable):
        """model_sigmas(sigmas_of(the sigmas tensor)), kept for a run of the same schedule
        again (~10-20 us a sampler call: every view costs 0.5 us to make, every op more).
        tag names sigmas_of, a chain of elementwise tensor ops: the same sigmas in give
        the same bits out. A table someone wrote to (a model that changed its sigma in
        place: the version counter moved) is made again."""
        key = (tag, self.sigmas.dtype, self._model_sigma_dtype(), self.x_like.shape[0])
        return kept_unwritten(self.values, self.device, key, lambda: self.model_sigmas(sigmas_of(self.sigmas)))

    def model_sigmas(self, sigmas: torch.Tensor):
        """sigmas[j] * s_in for every j of a 1-d tensor of sigmas (the steps', or a sampler's
        own such as its midpoints), each a view of one table made by one op: as the model
        would get them step by step (the same values and dtype)."""
        return (sigmas.to(device=self.device, dtype=self._model_sigma_dtype())[:, None] * self.s_in).unbind(0)

    def _model_sigma_dtype(self) -> torch.dtype:
        """The dtype a 0-d sigma times s_in has: x's for floating latents (bf16 for bf16
        ones), and the promotion's for others (float for integer ones)."""
        if self.x_like.is_floating_point():
            return self.x_like.dtype
        return torch.result_type(self.sigmas[0], self.s_in)

    def call_model(self, x, sigma):
        denoised = self.model_output = self.model(x, sigma, **self.extra_args)
        if isinstance(denoised, torch.Tensor) and (denoised.shape != x.shape or not denoised.is_floating_point()):
            denoised = _as_k_diffusion_computes(denoised, x)
        return denoised

    def sigma_tensor(self, value: float) -> torch.Tensor:
        """A host sigma as a 0-d tensor like the sigmas (copied without a synchronization)."""
        return to_device([value], self.sigmas.device, self.sigmas.dtype)[0]

    def evaluate(self, x, i):
        """The model at sigma_i, reported to the callback as k-diffusion reports it."""
        denoised = self.denoise_at(x, i)
        self.report(x, i, denoised)
        return denoised

    def evaluate_churned(self, x, i, sigma_hat):
        """The model at a step's sigma_hat (None: sigma_i, where no churn raised it),
        reported with it."""
        denoised = self.denoise_at(x, i) if sigma_hat is None else self.denoise(x, sigma_hat)
        self.report(x, i, denoised, sigma_hat)
        return denoised

    def report(self, x, i, denoised, sigma_hat=None):
        """The callback's dict for step i; sigma_hat: the step's raised sigma, where churn raised it."""
        if self.callback is not None:
            sigma = self.at[i]
            sigma_hat = sigma if sigma_hat is None else sigma_hat
            self.callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})

    def positive_range(self):
        """The smallest positive and the largest sigma, as elements of the sigmas tensor."""
        positive = [j for j, v in enumerate(self.values) if v > 0]
        low = min(positive, key=lambda j: self.values[j])
        high = max(range(len(self.values)), key=lambda j: self.values[j])
        return self.at[low], self.at[high]

    def steps_from_rows(self, x, rows_of: Callable, tag, to_d: bool):
        """The whole loop of a sampler whose step i is one model call at sigma_i, reported,
        and one fused step ``rows[i][0] x + rows[i][1] denoised`` (no history, no noise),
        with every row known before the first step: (a, b) = rows_of(the host sigmas),
        kept per schedule (kept_rows; tag names rows_of), so a step's host time is the
        model call and the kernel's (Euler's loop)."""
        # While the state keeps its dtype and the denoiser returns plain tensors of it, a
        # step is multistep_combine's kernel entry on [x, denoised], called here: the same
        # sum as ei_step's with the data term the denoiser output, without ei_step's
        # second output to allocate (about a microsecond of a step's host time).
        sigma_dtype = self.sigmas.dtype if to_d else None
        direct = ops.loop_entry("multistep_combine", x) if _keeps(x.dtype, sigma_dtype) else None
        pairs = self.kept_rows(tag, rows_of) if direct is not None else None
        rows = None  # ei_step's rows, for a step that takes the front
        for i in self.steps():
            denoised = self.denoise_at(x, i)
            if self.callback is not None:
                self.report(x, i, denoised)
            if direct is not None and denoised.__class__ is torch.Tensor and denoised.dtype == x.dtype:
                x = direct([x, denoised], pairs[i])
            else:
                if rows is None:
                    rows = self.kept_rows((tag, "ei_step"), lambda s: [[0.0, 1.0, a, b, 0.0] for a, b in rows_of(s)])
                x = self.step_from_row(x, denoised, (), rows[i], to_d=to_d)
        return x

    def kept_rows(self, tag, rows_of: Callable):
        """Every step's coefficient row, rows_of(the host sigmas) (rows may differ in
        length), as views of one tensor kept per schedule (tag names rows_of): a step
        then spends nothing on its coefficients, and a run of the same schedule again
        nothing on them at all."""

        def make():
            rows = rows_of(self.values)
            flat = _COEFFICIENTS.get([v for row in rows for v in row], self.device)
            return flat.split([len(row) for row in rows])

        return _COEFFICIENTS.kept(self.values, self.device, ("rows", tag), make)

    def step_from_row(self, x, denoised, history, row, to_d: bool):
        """The state of one fused step from a coefficient row of the cache (rows of
        [c_x, c_m, a, b_0, .., b_k, s], no noise); to_d as in step()."""
        return _step(x, denoised, history, row, None, self.sigmas.dtype if to_d else None, self.direct)[0]

    def step(self, x, denoised, history, a, b, noise=None, s=0.0, to_d=False):
        """x_next = a x + b[0] denoised + sum_j b[j+1] history[j] (+ s noise): one ei_step
        whose data term is the denoiser output itself (c_x = 0, c_m = 1). to_d: the
        step k-diffusion computes with to_d (its result dtype promotes with the sigmas')."""
        coeffs = _COEFFICIENTS.get([0.0, 1.0, a, *b, s], self.device)
        return _step(x, denoised, history, coeffs, noise, self.sigmas.dtype if to_d else None, self.direct)


def _churn(loop: _Loop, x, i, s_churn, s_tmin, s_tmax, s_noise, every_step: bool = True):
    """Karras et al.'s stochastic churn: (x, sigma_hat tensor, sigma_hat value); the tensor
    is None where gamma is 0 (sigma_hat is sigma_i, the value k-diffusion's product has).
    every_step: the noise is drawn every step, as k-diffusion draws it, even when unused;
    without it (ComfyUI's euler, heun and dpm_2) only on a step that adds it, and only a
    positive s_churn churns."""
    sigma = loop.values[i]
    gamma = 0.0
    if every_step or s_churn > 0:
        gamma = min(s_churn / (len(loop.values) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = torch.randn_like(x) if every_step or gamma > 0 else None
    sigma_hat = loop.at[i] * (gamma + 1) if gamma > 0 else None
    if gamma > 0:
        scale = s_noise * ((sigma * (gamma + 1)) ** 2 - sigma**2) ** 0.5
        x = ops.multistep_combine([x, eps], _COEFFICIENTS.get([1.0, scale], x.device))
    return x, sigma_hat, sigma * (gamma + 1)
