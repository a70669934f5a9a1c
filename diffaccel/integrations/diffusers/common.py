"""The step machinery every accelerated diffusers scheduler shares: the fused
calls in diffusers' dtypes (_ei_step, _combine), the coefficient helpers in
float64 with IEEE division, the kept step values and device coefficients
(_FusedStep), the first step index found on the host (_StepIndexWithoutSync),
and the host timesteps of the discrete-timestep schedulers (_HostTimesteps)."""

from __future__ import annotations

import inspect
import math
import numbers
import types
from array import array
from typing import List, Optional, Tuple

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffaccel import ops
from diffaccel.ops import autograd
from diffaccel.integrations import float64_if_any
from diffaccel.transfer import ConstantCache


def _alpha_sigma(sigma: float, flow: bool) -> Tuple[float, float]:
    """(alpha_t, sigma_t) of diffusers' _sigma_to_alpha_sigma_t for a VP sigma (or a flow sigma)."""
    if flow:
        return 1.0 - sigma, sigma
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def _conversion(
    prediction_type: str, alpha: float, sigma: float, to_data: bool, schedule_sigma: float
) -> Tuple[float, float]:
    """(c_x, c_m) of convert_model_output: the data prediction (to_data) or the
    noise prediction, as c_x * sample + c_m * model_output, at a step whose
    schedule sigma (scheduler.sigmas[i]) gives (alpha, sigma). A flow prediction
    takes the schedule sigma as it is (x0 = x - sigmas[i] v), also where the
    sigmas are not flow sigmas."""
    if to_data:
        table = {
            "epsilon": (_ratio(1.0, alpha), _ratio(-sigma, alpha)),  # (alpha is 0 at a flow sigma of 1)
            "sample": (0.0, 1.0),
            "v_prediction": (alpha, -sigma),
            "flow_prediction": (1.0, -schedule_sigma),
        }
    else:
        table = {
            "epsilon": (0.0, 1.0),
            "sample": (_ratio(1.0, sigma), _ratio(-alpha, sigma)),
            "v_prediction": (sigma, alpha),
        }
    if prediction_type not in table:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported here")
    return table[prediction_type]


def _as_torch_computes(tensors: List[Optional[torch.Tensor]]) -> Optional[List[Optional[torch.Tensor]]]:
    """The tensors as diffusers' arithmetic would combine them, where the ops
    refused them: all float64 when any is (the ops do not mix float64 with
    16/32-bit tensors), and broadcast to one shape when their shapes differ (a
    state tensor left by a stock step on a broadcast model output; torch's
    RuntimeError where they do not broadcast, as in stock). None when neither
    applies (the op's refusal stands)."""
    adapted = float64_if_any(tensors)
    present = [t for t in adapted if t is not None]
    if len({t.shape for t in present}) > 1:
        broadcast = iter(torch.broadcast_tensors(*present))
        adapted = [None if t is None else next(broadcast) for t in adapted]
    return None if all(a is t for a, t in zip(adapted, tensors)) else adapted


def _ei_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    history: List[torch.Tensor],
    coeffs: torch.Tensor,
    *,
    threshold: Optional[ops.Threshold] = None,
    noise: Optional[torch.Tensor] = None,
    out=None,
):
    """ops.ei_step on the tensors as diffusers' arithmetic takes them: where the
    op refuses them (float64 mixed with 16/32-bit tensors, shapes that differ
    but broadcast), they go in as _as_torch_computes makes them, and ``out`` is
    left unused. (The op checks before any kernel runs; asking first would cost
    every step a microsecond, about 7% of its host time.)"""
    if out is not None and autograd.records((x, model_output, noise, *history)):
        out = None  # backpropagation through the step: autograd cannot record writes into buffers
    try:
        return ops.ei_step(x, model_output, history, coeffs, threshold=threshold, noise=noise, out=out)
    except (TypeError, ValueError):
        adapted = _as_torch_computes([x, model_output, noise, *history])
        if adapted is None:
            raise
        x, model_output, noise, *history = adapted
        return ops.ei_step(x, model_output, history, coeffs, threshold=threshold, noise=noise)


def _combine(tensors: List[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
    """ops.multistep_combine on the tensors as diffusers' arithmetic takes them (see _ei_step)."""
    try:
        return ops.multistep_combine(tensors, coeffs)
    except (TypeError, ValueError):
        adapted = _as_torch_computes(tensors)
        if adapted is None:
            raise
        return ops.multistep_combine(adapted, coeffs)


def _lambda(alpha: float, sigma: float) -> float:
    """Half log-SNR; +inf at sigma = 0 (the final step to the data), -inf at
    alpha = 0 (a flow sigma of 1: pure noise), as torch.log gives them."""
    return _log(alpha) - _log(sigma) if sigma > 0 else math.inf


def _position_in(schedule: torch.Tensor, timestep: torch.Tensor) -> Optional[int]:
    """Where a 0-d view of the 1-d ``schedule`` sits in it (from the views'
    storage and offsets: nothing is read from the device), or None."""
    if timestep.dim() != 0 or schedule.dim() != 1 or timestep.device != schedule.device:
        return None
    if timestep.untyped_storage().data_ptr() != schedule.untyped_storage().data_ptr() or schedule.stride(0) <= 0:
        return None
    position, rest = divmod(timestep.storage_offset() - schedule.storage_offset(), schedule.stride(0))
    return position if rest == 0 and 0 <= position < len(schedule) else None


# The stepping methods a drop-in may replace.
_STEP_METHODS = ("step", "step_prk", "step_plms", "batch_step_no_noise")


def _with_stock_signature(name: str, fused, stock):
    """The fused method behind diffusers' exact signature (parameter names,
    kinds and defaults: a pipeline inspects them, and a keyword stock does not
    take is stock's TypeError), handing diffusers' own method the calls the
    fused ops do not take: a step before set_timesteps (on the schedule stock's
    __init__ makes, or stock's error) or with a config option not fused, a
    model output that broadcasts against the sample or does not, integer
    tensors (which stock promotes), and a step past the end of the schedule
    (stock's IndexError, or its result). Stock then gives exactly its
    results, dtypes and exceptions; the state it updates is the state the
    fused steps keep (_before_stock_step puts any other form into stock's
    first), so a loop may mix the two. Made from source, with the
    arguments passed on by position where the two signatures agree: the
    wrapper costs about a microsecond a call, where binding a signature would
    cost several."""
    parameters = list(inspect.signature(stock).parameters.values())[1:]
    fused_parameters = list(inspect.signature(fused).parameters)[1:]
    missing = [p.name for p in parameters if p.name not in fused_parameters]
    if missing:
        raise TypeError(f"{fused.__qualname__} lacks stock's parameter(s) {missing}")
    names = [p.name for p in parameters]
    model_output, sample = names[0], "sample" if "sample" in names else names[2]
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    signature = ", ".join(n + (f"=_defaults[{n!r}]" if n in defaults else "") for n in names)
    same_order = next((i for i, (a, b) in enumerate(zip(names, fused_parameters)) if a != b), len(names))
    to_fused = ", ".join(names[:same_order] + [f"{n}={n}" for n in names[same_order:]])
    to_stock = ", ".join(names)
    source = (
        f"def {name}(self, {signature}):\n"
        f"    if not self._fused_ready or not (isinstance({model_output}, _Tensor) and isinstance({sample}, _Tensor)\n"
        f"            and ({model_output}.shape == {sample}.shape or self._OWN_SHAPE_CHECK)\n"
        f"            and {model_output}.dtype.is_floating_point and {sample}.dtype.is_floating_point\n"
        f"            ) or (self._step_index is not None\n"
        f"                  and self._step_index + self._END_OFFSET >= self.timesteps.shape[0]):\n"
        f"        self._before_stock_step()\n"
        f"        return _stock(self, {to_stock})\n"
        f"    return _fused(self, {to_fused})\n"
    )
    namespace = {"_defaults": defaults, "_Tensor": torch.Tensor, "_stock": stock, "_fused": fused}
    exec(compile(source, f"<diffaccel {fused.__qualname__}>", "exec"), namespace)
    method = namespace[name]
    method.__doc__, method.__qualname__, method.__module__ = fused.__doc__, fused.__qualname__, fused.__module__
    method.stock_method, method.fused_method = stock, fused
    method.__signature__ = inspect.signature(stock)  # annotations and return type too
    return method


def _public_functions(cls):
    """(name, function) of the public methods of a class, inherited ones included
    (not classmethods, staticmethods or properties: the drop-ins keep stock's)."""
    for name in dir(cls):
        if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(cls, name)):
            yield name, getattr(cls, name)


def _under_stock_signature(ours, stock):
    """A copy of the drop-in's method ``ours`` (same code, so super() still
    works) that reports stock's signature, for a method that passes its
    arguments on to stock's (``*args, **kwargs``) or takes the same parameters.
    A copy: the mixins' methods serve classes whose stock signatures differ."""
    mine = inspect.signature(ours)
    passes_on = [p.kind for p in mine.parameters.values()][1:] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    theirs = inspect.signature(stock)
    if not passes_on and [(p.name, p.kind, p.default) for p in mine.parameters.values()] != [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]:
        raise TypeError(f"{ours.__qualname__}{mine} differs from stock's {stock.__qualname__}{theirs}")
    copy = types.FunctionType(ours.__code__, ours.__globals__, ours.__name__, ours.__defaults__, ours.__closure__)
    copy.__kwdefaults__, copy.__qualname__, copy.__module__ = ours.__kwdefaults__, ours.__qualname__, ours.__module__
    copy.__doc__ = ours.__doc__ or stock.__doc__
    copy.__signature__, copy.stock_method = theirs, stock
    return copy


class _FusedStep:
    """What every accelerated scheduler has: the config options it cannot fuse
    (none by default), and its steps' coefficient tensors, kept on the device
    and reused while the schedule repeats (a pipeline called again with the
    same number of steps copies nothing to the device). Its step() hands the
    inputs the fused ops do not take to diffusers' own step (_with_stock_signature)."""

    # Why a CUDA graph cannot hold this scheduler's loop (None: it can).
    NOT_CAPTURABLE: Optional[str] = None
    # Whether the step checks the model output's shape itself (a widened output,
    # pi-Flow's), instead of handing diffusers every output shaped unlike the sample.
    _OWN_SHAPE_CHECK = False

    def __init_subclass__(cls, **kwargs):
        """Every public method the class overrides gets stock's signature (a
        pipeline inspects them: retrieve_timesteps passes custom sigmas, timesteps
        or mu only where set_timesteps names them)."""
        super().__init_subclass__(**kwargs)
        stock = next((base for base in cls.__mro__[1:] if base.__module__.startswith("diffusers.")), None)
        if stock is None:
            return
        for name, stock_method in _public_functions(stock):
            ours = getattr(cls, name)
            if ours is stock_method or getattr(ours, "stock_method", None) is stock_method:
                continue
            if name in _STEP_METHODS:
                setattr(cls, name, _with_stock_signature(name, ours, stock_method))
            elif ours.__module__.startswith("diffaccel."):  # (a user's subclass keeps its own)
                setattr(cls, name, _under_stock_signature(ours, stock_method))

    # Whether the fused steps run: set_timesteps has run (through the drop-in: it
    # makes the host state they read) and the config has no option they do not
    # fuse. Otherwise every step is stock's: before set_timesteps stock Euler, Heun
    # and others step on the schedule their __init__ makes, the rest raise stock's
    # error; an option not fused (a scheduler built directly, not by accelerate())
    # gets stock's step with exactly its arguments.
    _fused_ready = False
    # diffusers' step counter, for the classes that have one (their __init__ sets it).
    _step_index: Optional[int] = None
    # A step is past the end of the schedule (stock's business) when
    # step_index + _END_OFFSET >= len(timesteps).
    _END_OFFSET = 0

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._fused_ready = not self.unsupported_options()

    def _before_stock_step(self) -> None:
        """Puts state the fused steps keep in another form into diffusers' form,
        before diffusers' own step runs (a class with such state overrides it)."""

    def unsupported_options(self) -> List[str]:
        return []

    def _config_threshold(self, dynamic: bool = True, clip: bool = True) -> Optional[ops.Threshold]:
        """What diffusers' step does to its data prediction, as a Threshold:
        dynamic thresholding (``thresholding``, where the scheduler has it),
        else clipping (``clip_sample``, likewise), else nothing. A config keeps
        keys its class does not take (a DDPM config loaded into DPM-Solver), so
        the caller says which its step reads. Made once per config (building one
        validates it: a microsecond a step otherwise)."""
        config = self.config
        cached = vars(self).get("_threshold_of_config")
        if cached is None or cached[:3] != (config, dynamic, clip):  # register_to_config makes a new config
            threshold = None
            if dynamic and config.thresholding:
                threshold = ops.Threshold(
                    "dynamic", config.dynamic_thresholding_ratio, config.sample_max_value, "diffusers"
                )
            elif clip and config.clip_sample:
                threshold = ops.Threshold("clip", max_value=config.clip_sample_range)
            cached = self._threshold_of_config = (config, dynamic, clip, threshold)
        return cached[3]

    def _read_host_sigmas(self) -> None:
        """set_timesteps' part: host copies of the sigmas every step reads (no
        tensor indexing on the hot path), from which the step values derive."""
        self._host_sigmas = [float(v) for v in self.sigmas.tolist()]
        self._keep_step_values_while(self._host_sigmas)

    def _keep_step_values_while(self, schedule: List[float]) -> None:
        """The values _step_value computes derive from ``schedule`` (and the
        frozen config): they are kept while it repeats bit for bit (a pipeline
        called again), else dropped."""
        bits = array("d", schedule).tobytes()
        if vars(self).get("_step_values_schedule") != bits:
            self._step_values, self._step_values_schedule = {}, bits

    def _step_value(self, key, compute):
        """compute() (a step's coefficient values, from host floats only) the
        first time key is asked for under this schedule, then the kept result:
        the step's Python is then a lookup."""
        value = self._step_values.get(key)
        if value is None:
            value = self._step_values[key] = compute()
        return value

    def _velocity_step(self, sample: torch.Tensor, model_output: torch.Tensor, dt: float) -> torch.Tensor:
        """A flow-matching Euler step, x + dt v: one multistep_combine, returned
        in the model output's dtype as the flow schedulers of diffusers return it."""
        return _cast(_combine([sample, model_output], self._coefficients([1.0, dt], sample.device)), model_output.dtype)

    def _coefficients(self, values, device) -> torch.Tensor:
        cache = vars(self).get("_coefficient_cache")
        if cache is None:
            cache = self._coefficient_cache = ConstantCache()
        return cache.get(values, device)


class _StepIndexWithoutSync(_FusedStep):
    """The first step's index without a host synchronization. diffusers finds
    it by comparing the timestep with the schedule on the device (nonzero,
    .item()). Here the timestep's value is known on the host when it is a
    number or a CPU tensor, or when it is an element of ``self.timesteps`` (a
    pipeline's ``for t in scheduler.timesteps`` hands out views, whose position
    the storage offset gives); diffusers' own index_for_timestep then runs on a
    host copy of the schedule, so the index is exactly diffusers'. Any other
    timestep takes diffusers' path."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_schedule = self.timesteps.cpu()

    def _init_step_index(self, timestep) -> None:
        host = getattr(self, "_host_schedule", None)
        if getattr(self, "begin_index", None) is None and host is not None and len(host) == len(self.timesteps):
            if not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu":
                self._step_index = self._index_on_host(timestep, host)
                return
            position = _position_in(self.timesteps, timestep)
            if position is not None:
                self._step_index = self._index_on_host(host[position], host)
                return
        super()._init_step_index(timestep)

    def _index_on_host(self, timestep, host: torch.Tensor) -> int:
        """diffusers' index of the first step's timestep, found in the host copy of the schedule."""
        return self.index_for_timestep(timestep, host)


# Why the schedulers with diffusers' Brownian-tree noise sampler cannot be captured.
_TORCHSDE_NOISE = (
    "its Brownian-tree noise is built on the host at each step with generators of its own "
    "(torchsde's tree, or diffaccel's exact twin of it): a graph would replay the same noise"
)


def brownian_tree_noise_sampler(x: torch.Tensor, sigma_min, sigma_max, seed=None):
    """diffusers' BrownianTreeNoiseSampler, built as diffusers builds it (the seed
    drawn from the global generator when None), with its torchsde trees replaced
    by diffaccel's BrownianTree on the same times, seeds, shape, dtype and device:
    the same noise bit for bit, with a third of torchsde's normal draws."""
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    from diffaccel.brownian import BrownianTree

    sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed)
    # The times as diffusers' BatchedBrownianTree hands them to torchsde: transformed, sorted.
    t0, t1 = sampler.transform(torch.as_tensor(sigma_min)), sampler.transform(torch.as_tensor(sigma_max))
    t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
    sampler.tree.trees = [
        BrownianTree(t0, torch.zeros(tree.shape, dtype=tree.dtype, device=tree.device), t1, entropy=tree.entropy)
        for tree in sampler.tree.trees
    ]
    return sampler


def _promoted(sample: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """The sample in the dtype diffusers' step arithmetic leaves its result in:
    torch's promotion of the sample's and the model output's dtypes (a bf16
    sample with a float32 model output steps, and returns, in float32)."""
    return _cast(sample, torch.promote_types(sample.dtype, model_output.dtype))


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tensor.to(dtype), skipped when it has nothing to do (it costs about a
    microsecond anyway: a tenth of a fused step's Python)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _ratio(a: float, b: float) -> float:
    """a / b with IEEE semantics (inf or nan for b = 0), as the tensor arithmetic it replaces."""
    return a / b if b != 0 else (math.copysign(math.inf, a) if a != 0 else math.nan)


def _sqrt(x: float) -> float:
    """sqrt with IEEE semantics (nan below 0), as torch.sqrt."""
    return math.sqrt(x) if x >= 0 else math.nan


def _log(x: float) -> float:
    """log with IEEE semantics (-inf at 0, nan below), as torch.log."""
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def _an_index(timestep) -> bool:
    """Whether a timestep is an integer (an index from ``enumerate(timesteps)``),
    which diffusers' sigma-indexed schedulers refuse."""
    return isinstance(timestep, (int, torch.IntTensor, torch.LongTensor))


def _host_timestep(scheduler, timestep, counter: int, cast=int):
    """The timestep's value without a device synchronization: read from a
    number or a CPU tensor; a device tensor is not read: when it is an element
    of scheduler.timesteps (a pipeline's loop hands out views of it, also when
    it starts part-way, as img2img does), its position gives the value, else
    the step is taken to be the counter-th of scheduler.timesteps (diffusers'
    own multistep schedulers keep such a counter too). An integer timestep
    (cast=int) indexes diffusers' tables, which refuse a float one (IndexError)."""
    if cast is int and (
        timestep.is_floating_point()
        if isinstance(timestep, torch.Tensor)
        else not isinstance(timestep, numbers.Integral)
    ):
        raise IndexError(f"timestep {timestep!r} is not an integer: it indexes diffusers' alphas_cumprod")
    if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
        position = _position_in(scheduler.timesteps, timestep)
        return scheduler._host_timesteps[counter if position is None else position]
    return cast(timestep)


class _HostTimesteps(_FusedStep):
    """What the discrete-timestep schedulers share: host copies of the
    timesteps and of alphas_cumprod, and the step counter of _host_timestep."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._host_timesteps = [int(t) for t in self.timesteps.tolist()]
        self._host_alphas_cumprod = self.alphas_cumprod.tolist()
        # The alphas_cumprod beyond either end of the table (a tensor each, where the class has it).
        self._host_final_alpha_cumprod = float(getattr(self, "final_alpha_cumprod", math.nan))
        self._host_initial_alpha_cumprod = float(getattr(self, "initial_alpha_cumprod", math.nan))
        self._step_counter = 0

    def _ddim_alphas(self, timestep) -> Tuple[float, float]:
        """(alpha_t, alpha_prev) of a DDIM-style step from ``timestep`` down one
        stride (final_alpha_cumprod below 0), the step counted."""
        t = _host_timestep(self, timestep, self._step_counter)
        self._step_counter += 1
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else self._host_final_alpha_cumprod
        return self._host_alphas_cumprod[t], alpha_prev

    def _posterior_step(
        self,
        model_output,
        sample,
        generator,
        t: int,
        prev_t: int,
        beta: float,
        threshold: Optional[ops.Threshold],
        large_variance: bool = False,
    ):
        """DDPM's ancestral step from t to prev_t, as DDPM's and UnCLIP's steps
        take it: the data prediction (thresholded), the posterior mean
        b0 x0 + a x with alpha = 1 - beta, and where t > 0 the noise, its
        variance beta (fixed_large) or (1 - a_prev) / (1 - a_t) beta; one ei_step.
        Returns (prev_sample, pred_original_sample)."""
        alpha_t = self._host_alphas_cumprod[t]
        alpha_prev = self._host_alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
        beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
        row = _posterior_mean_row(self.config.prediction_type, alpha_t, alpha_prev, beta)
        noise, std = None, 0.0
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            std = math.sqrt(beta if large_variance else max(beta_prev / beta_t * beta, 1e-20))
        coeffs = self._coefficients([*row, std], sample.device)
        return _ei_step(sample, model_output, [], coeffs, threshold=threshold, noise=noise)


def _posterior_mean_row(prediction_type: str, alpha_t: float, alpha_prev: float, beta: float) -> List[float]:
    """DDPM's posterior mean b0 x0 + a x (x0 = c_x x + c_m m) from alphas_cumprod
    alpha_t to alpha_prev with the step's beta, as [c_x, c_m, a, b0]."""
    beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
    c_x, c_m = _data_and_noise_terms(prediction_type, alpha_t)[0]
    return [c_x, c_m, math.sqrt(1.0 - beta) * beta_prev / beta_t, math.sqrt(alpha_prev) * beta / beta_t]


# In place of 1 / sqrt(alpha) at alpha = 0; see _data_and_noise_terms.
_HUGE_SCALE = 1e30


def _data_and_noise_terms(
    prediction_type: str, alpha_cumprod: float
) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """((c_x, c_m), (e_x, e_m)) with the data prediction x0 = c_x x + c_m m and
    the noise prediction eps = e_x x + e_m m of a model output m at a timestep
    with this alphas_cumprod (the DDIM-family steps). With a zero terminal SNR,
    alpha = 0 at the first step: only v_prediction is finite there. An epsilon
    model's x0 = (x - m) / 0 is then infinite with the sign of x - m, which
    diffusers' clip_sample or dynamic thresholding turns into +-limit; 1 / 0 in
    both coefficients would make inf - inf = NaN instead, so a huge finite scale
    stands in for it (where nothing clips, diffusers' result is inf or NaN anyway)."""
    sqrt_a, sqrt_b = math.sqrt(alpha_cumprod), math.sqrt(1.0 - alpha_cumprod)
    if prediction_type == "epsilon":
        inverse = 1.0 / sqrt_a if sqrt_a > 0 else _HUGE_SCALE
        return (inverse, -sqrt_b * inverse), (0.0, 1.0)
    if prediction_type == "sample":
        return (0.0, 1.0), (_ratio(1.0, sqrt_b), _ratio(-sqrt_a, sqrt_b))
    if prediction_type == "v_prediction":
        return (sqrt_a, -sqrt_b), (sqrt_b, sqrt_a)
    raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon`, `sample` or `v_prediction`")
