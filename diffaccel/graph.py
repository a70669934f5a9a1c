"""Whole-loop CUDA-graph capture: fixed-step deployment.

    sampler = diffaccel.graph.capture(model, x_example, sampler="dpmpp_2m", steps=20)
    image = sampler(torch.randn_like(x_example), seed=0)

A plan depends on no data, so the whole loop (every model call and every
fused update) is captured once as one ``torch.cuda.CUDAGraph`` and replayed
with no host work per step. What the graph reads lives at fixed addresses: a
static state buffer (the input is copied in), the plan's history buffers, and
the coefficient and time tables on the device (:class:`~diffaccel.solvers.plan.PlanTables`).
Noise comes from a private CUDA generator registered with the graph, so each
replay draws fresh noise and a seed reproduces it.

Capture runs the loop ``warmup`` times eagerly on a side stream first, with
synchronizing CUDA calls made errors (torch.cuda.set_sync_debug_mode), so a
model that cannot be captured (one that calls ``.item()``, say) is named
together with the model call that synchronized, before any capture starts.

On a CPU tensor the same API runs the eager loop (it says so once), so code
written for deployment also runs on a laptop.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, List, Optional

import torch

from diffaccel import ops
from diffaccel.sampling import ClassifierFreeGuidance, run_rows, time_dtype
from diffaccel.solvers import ADAPTIVE_SAMPLERS
from diffaccel.solvers import plan as make_plan
from diffaccel.solvers.plan import Plan
from diffaccel.transfer import DeviceConstants

_eager_notice_given = False


class NotCapturableError(RuntimeError):
    """The loop synchronized with the host, which a CUDA graph cannot hold."""


# Substrings of the errors a synchronization raises: under sync-debug mode
# "error", and inside a capture (cudaErrorStreamCaptureUnsupported / Invalidated).
_SYNC_ERRORS = ("synchroniz", "operation not permitted when stream is capturing", "streamcapture", "stream capture")


def _is_sync_error(error: BaseException) -> bool:
    while error is not None:
        text = str(error).lower()
        if any(s in text for s in _SYNC_ERRORS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _eager_notice(device: torch.device) -> None:
    global _eager_notice_given
    if not _eager_notice_given:
        _eager_notice_given = True
        warnings.warn(
            f"diffaccel.graph: CUDA graphs need CUDA tensors; on {device} the same API runs the eager "
            "loop at every call (said once per process)",
            stacklevel=4,
        )


class Progress:
    """Where a loop run is, for the error that names the call that synchronized."""

    def __init__(self):
        self.where = "before the first model call"
        self.blame = "model"

    def model_call(self, description: str) -> None:
        self.where, self.blame = description, "model"

    def update(self, description: str) -> None:
        self.where, self.blame = description, "sampler"


class CapturedLoop:
    """``body()``, a loop over static buffers, as one CUDA graph: ``warmup``
    eager runs on a side stream (synchronizations made errors), then one
    capture into a graph that may share ``pool``; run() replays it. On another
    device run() calls body() eagerly. ``generator`` (a CUDA generator the body
    draws noise from) is registered with the graph, so replays advance it.
    ``constants``, if given, hands the capture the coefficient tensors its
    warm-up computed on the host (diffaccel.transfer.DeviceConstants).
    ``compiles``: the body's first run compiles (torch.compile'd modules) and
    may synchronize while it does, so it runs once before the checked warm-ups."""

    def __init__(
        self,
        body: Callable[[], None],
        device: torch.device,
        *,
        warmup: int,
        pool=None,
        generator: Optional[torch.Generator] = None,
        progress: Progress,
        constants: Optional[DeviceConstants] = None,
        what: str = "the model",
        compiles: bool = False,
    ):
        self.body, self.device, self.progress, self.what = body, device, progress, what
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        if device.type != "cuda":
            _eager_notice(device)
            return
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (eager runs before the capture), got {warmup!r}")
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            if compiles:  # (inductor synchronized with the host while compiling on the H200, 2026-12-04)
                self._guarded("compilation", body, constants, sync_errors=False)
            for _ in range(warmup):
                self._guarded("warm-up", body, constants, sync_errors=True)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            graph.register_generator_state(generator)

        def capture_body():
            with torch.cuda.graph(graph, pool=pool):
                body()

        self._guarded("capture", capture_body, constants, sync_errors=False)
        self.graph = graph

    @property
    def pool(self):
        """The graph's memory pool (None on CPU): pass it as ``pool=`` to
        another capture to share memory; graphs sharing a pool must not be replayed concurrently."""
        return self.graph.pool() if self.graph is not None else None

    def run(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.no_grad():
                self.body()

    def _guarded(self, phase: str, fn: Callable[[], None], constants: Optional[DeviceConstants], sync_errors: bool):
        previous = torch.cuda.get_sync_debug_mode()
        try:
            if sync_errors:
                torch.cuda.set_sync_debug_mode("error")
            with constants.reuse() if constants is not None else contextlib.nullcontext(), torch.no_grad():
                fn()
        except Exception as error:
            if not _is_sync_error(error):
                raise
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if self.progress.blame == "model":
                message = (
                    f"{self.what} is not capturable in a CUDA graph: {self.progress.where} synchronized with "
                    f"the host during the {phase} ({first_line}). Common causes: .item(), .cpu(), .tolist(), "
                    "printing a tensor, torch.nonzero or boolean-mask indexing, Python branches on tensor "
                    "values. Remove the synchronization, or run the loop eagerly (diffaccel.sample)."
                )
            else:
                message = (
                    f"the loop is not capturable in a CUDA graph: {self.progress.where} synchronized with the "
                    f"host during the {phase} ({first_line}); this is a diffaccel bug, please report it"
                )
            raise NotCapturableError(message) from error
        finally:
            torch.cuda.set_sync_debug_mode(previous)


def check_static(name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """value must match the static buffer it is copied into: shape, dtype and device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(like.shape) or value.dtype != like.dtype or value.device != like.device:
        raise ValueError(
            f"{name} must have shape {tuple(like.shape)}, dtype {like.dtype} and device {like.device} "
            f"(fixed at capture), got shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
        )


def fresh_generator(device: torch.device) -> torch.Generator:
    """A private generator seeded from the global CPU RNG, so torch.manual_seed
    makes seed=None runs reproducible too."""
    # (The meta device, where the loops are checked for host reads, has no
    # generators; a host one draws nothing there.)
    generator = torch.Generator(device if device.type != "meta" else "cpu")
    generator.manual_seed(int(torch.randint(0, 2**62, (), dtype=torch.int64, device="cpu")))
    return generator


class Replayable:
    """What runs its loop through a CapturedLoop (``self._loop``) with a
    private noise generator (``self.generator``): whether it is a CUDA graph,
    the graph's memory pool, and one call's replay."""

    _loop: CapturedLoop
    generator: torch.Generator

    @property
    def graphed(self) -> bool:
        """False where the loop runs eagerly (CPU)."""
        return self._loop.graph is not None

    @property
    def pool(self):
        """The graph's memory pool, for ``pool=`` of another capture (None on CPU)."""
        return self._loop.pool

    def _replay(
        self,
        source: torch.Tensor,
        static_input: torch.Tensor,
        result: torch.Tensor,
        seed: Optional[int],
        out: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Reseeds (if asked), copies the input into its static buffer, runs the
        loop, and returns its static result copied out (into ``out``, or new)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        static_input.copy_(source)
        self._loop.run()
        return out.copy_(result) if out is not None else result.clone()


class GraphedSampler(Replayable):
    """A fixed-step sampling loop captured as one CUDA graph (or, on CPU, run
    eagerly); made by :func:`capture`. Attributes: ``plan``, ``shape``,
    ``dtype``, ``device``, ``generator`` (the private noise generator),
    ``pool`` (the graph's memory pool, to share with another capture) and
    ``graphed`` (False on CPU)."""

    def __init__(
        self,
        model: Callable,
        x_example: torch.Tensor,
        plan: Plan,
        plan_args: dict,
        *,
        warmup: int,
        pool,
        threshold: Optional[ops.Threshold],
        cond: Optional[torch.Tensor],
        uncond: Optional[torch.Tensor],
        guidance_scale: Optional[float],
    ):
        self.plan, self._plan_args, self.threshold = plan, plan_args, threshold
        self.shape, self.dtype, self.device = tuple(x_example.shape), x_example.dtype, x_example.device
        self.buffers = [x_example.detach().clone()] + [torch.empty_like(x_example) for _ in range(plan.num_buffers - 1)]
        self.tables = plan.device_tables(self.device, self.shape[0], time_dtype(self.dtype))
        self.generator = fresh_generator(self.device)
        self.cond = cond.detach().clone() if cond is not None else None
        self.uncond = uncond.detach().clone() if uncond is not None else None
        self.guidance: Optional[ClassifierFreeGuidance] = None
        if guidance_scale is not None:
            self.guidance = ClassifierFreeGuidance(model, self.cond, self.uncond, guidance_scale)
            network = self.guidance
        elif self.cond is not None:

            def network(x, t):
                return model(x, t, self.cond)
        else:
            network = model
        self._network = network
        self._progress = Progress()
        self._calls = 0
        self._loop = CapturedLoop(
            self._run_loop, self.device, warmup=warmup, pool=pool, generator=self.generator, progress=self._progress
        )

    def _tracked_network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = self._calls
        self._progress.model_call(f"model call {i + 1} of {len(self.plan.rows)} (t={self.plan.rows[i].t:.6g})")
        out = self._network(x, t)
        self._progress.update(f"the fused update after model call {i + 1}")
        self._calls += 1
        return out

    def _run_loop(self) -> None:
        self._calls = 0
        run_rows(
            self.plan,
            self._tracked_network,
            self.buffers,
            self.tables,
            generator=self.generator,
            threshold=self.threshold,
        )

    def __call__(
        self,
        x_T: torch.Tensor,
        *,
        seed: Optional[int] = None,
        cond: Optional[torch.Tensor] = None,
        uncond: Optional[torch.Tensor] = None,
        guidance_scale: Optional[float] = None,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Samples from the noise x_T (shape, dtype and device as at capture).
        ``seed`` reseeds the noise generator (same seed, same result); without
        it every call draws fresh noise. ``cond`` / ``uncond`` /
        ``guidance_scale`` replace the captured conditioning. The result is a
        new tensor, or ``out`` (the static state buffer is reused by the next call)."""
        check_static("x_T", x_T, self.buffers[0])
        if out is not None:
            check_static("out", out, self.buffers[0])
        for name, value, static in (("cond", cond, self.cond), ("uncond", uncond, self.uncond)):
            if value is None:
                continue
            if static is None:
                raise ValueError(f"{name} was not given at capture, so the captured model takes no {name}")
            check_static(name, value, static)
        if guidance_scale is not None and self.guidance is None:
            raise ValueError("guidance_scale: this sampler was captured without classifier-free guidance")
        if cond is not None:
            self.cond.copy_(cond)
        if uncond is not None:
            self.uncond.copy_(uncond)
        if guidance_scale is not None:
            self.guidance.set_scale(guidance_scale)
        return self._replay(x_T, self.buffers[0], self.buffers[0], seed, out)

    def update_plan(self, plan: Optional[Plan] = None, *, schedule=None, **options) -> Plan:
        """Switches to another plan of the same structure (same sampler, step
        count and options that shape the loop; another schedule, time range or
        spacing) by refilling the device tables, without recapture. Give a
        Plan, or the :func:`diffaccel.solvers.plan` arguments that change."""
        if plan is None:
            if options.get("sampler", self._plan_args["sampler"]) != self._plan_args["sampler"]:
                raise ValueError("update_plan: another sampler needs a new capture")
            if options.get("steps", self._plan_args["steps"]) != self._plan_args["steps"]:
                raise ValueError(f"update_plan: the step count is fixed at {self._plan_args['steps']} by the capture")
            args = dict(self._plan_args, **options)
            if schedule is not None:
                args["schedule"] = schedule
            plan = make_plan(**args)
            self._plan_args = args
        elif schedule is not None or options:
            raise ValueError("update_plan: give either a plan or plan arguments, not both")
        if plan.structure() != self.plan.structure():
            raise ValueError(
                f"update_plan: the new plan ({plan.sampler}, {len(plan.rows)} model calls) differs from "
                f"the captured one ({self.plan.sampler}, {len(self.plan.rows)} model calls) in more than "
                "its numbers (rows, buffers, history or noise); capture it anew"
            )
        self.tables.fill(plan)
        self.plan = plan
        return plan


def capture(
    model: Callable,
    x_example: torch.Tensor,
    *,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    schedule=None,
    warmup: int = 3,
    pool=None,
    cond: Optional[torch.Tensor] = None,
    uncond: Optional[torch.Tensor] = None,
    guidance_scale: Optional[float] = None,
    threshold: Optional[ops.Threshold] = None,
    **options,
) -> GraphedSampler:
    """Captures the whole sampling loop of ``model(x, t)`` for inputs shaped
    like ``x_example`` as one CUDA graph (on CPU: the eager loop).

    ``sampler``, ``steps``, ``schedule`` and ``options`` (spacing, t_start,
    t_end, prediction_type, eta, denoise_to_zero, ...) are those of
    :func:`diffaccel.solvers.plan`; ``threshold`` as in :func:`diffaccel.sample`.
    With ``cond`` the model is called as ``model(x, t, cond)``; with ``uncond``
    and ``guidance_scale`` too, as one batched classifier-free-guidance call
    on [uncond, cond] (ClassifierFreeGuidance). ``warmup`` eager runs precede
    the capture; ``pool`` is another GraphedSampler's ``pool`` (or
    torch.cuda.graph_pool_handle()) to share memory between shapes. The model
    runs under torch.no_grad()."""
    if not isinstance(x_example, torch.Tensor) or not x_example.is_floating_point() or x_example.dim() < 1:
        raise TypeError("x_example must be a floating-point tensor [batch, ...] shaped like the noise to sample from")
    if sampler in ADAPTIVE_SAMPLERS:
        raise ValueError(f"{sampler} chooses its steps from the data and cannot be captured; use diffaccel.sample")
    if guidance_scale is not None and (cond is None or uncond is None):
        raise ValueError("guidance_scale needs both cond and uncond (the conditional and unconditional inputs)")
    if uncond is not None and guidance_scale is None:
        raise ValueError("uncond is only used with guidance_scale (classifier-free guidance)")
    for name, value in (("cond", cond), ("uncond", uncond)):
        if value is not None and (not isinstance(value, torch.Tensor) or value.device != x_example.device):
            raise ValueError(f"{name} must be a tensor on {x_example.device} (the device of x_example)")
    if cond is not None and uncond is not None and (cond.shape != uncond.shape or cond.dtype != uncond.dtype):
        raise ValueError(
            f"uncond must be shaped like cond {tuple(cond.shape)} {cond.dtype}, "
            f"got {tuple(uncond.shape)} {uncond.dtype}"
        )
    plan_args = dict(sampler=sampler, steps=steps, schedule=schedule, **options)
    plan = make_plan(**plan_args)
    return GraphedSampler(
        model,
        x_example,
        plan,
        plan_args,
        warmup=warmup,
        pool=pool,
        threshold=threshold,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
    )


def capture_for_timing(model: Callable, x_example: torch.Tensor, **options) -> Optional[GraphedSampler]:
    """capture(), for the tools that time a graphed loop next to the eager one
    (diffaccel demo and bench): a capture that fails is reported and skipped,
    so the rest of their tables still come out."""
    try:
        return capture(model, x_example, **options)
    except Exception as error:  # noqa: BLE001  (reported, then the column stays empty)
        warnings.warn(
            f"diffaccel: CUDA-graph capture failed, no graphed timing: {type(error).__name__}: {error}", stacklevel=2
        )
        return None


__all__: List[str] = [
    "capture_for_timing",
    "capture",
    "GraphedSampler",
    "CapturedLoop",
    "Replayable",
    "NotCapturableError",
    "check_static",
    "fresh_generator",
]
