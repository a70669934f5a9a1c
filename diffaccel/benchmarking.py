"""Benchmark cases shared by ``python -m diffaccel bench`` (the quick table of
``make demo``) and the pytest-benchmark suites in bench/: what each op is fed,
its reference, and how many bytes it must move, so GB/s means the same in both.

These ops are memory-bound: the floor of their time is the bytes they must
read and write over the machine's copy bandwidth, measured in the same run.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

from diffaccel import ops
from diffaccel.noise import standard_normal

# Latent-sized float32 tensors: 64 KiB, 1 MiB and 1 MiB per tensor (these stay
# in the last-level cache, as they do between the steps of a sampling loop),
# and 16 MiB per tensor, beyond the cache.
SHAPES = {
    "small": (1, 4, 64, 64),
    "medium": (4, 4, 128, 128),
    "batch16": (16, 4, 64, 64),
    "large": (16, 16, 128, 128),
}


@dataclass(frozen=True)
class Case:
    """One op configuration. make(shape, dtype, device, generator) returns the
    positional args and kwargs that both fused and reference take."""

    name: str
    description: str
    fused: Callable
    reference: Callable
    make: Callable
    tensors_moved: int  # full tensors the op must read plus write, at the data dtype


def _randn(shape, dtype, device, g):
    return standard_normal(shape, generator=g, device=device).to(dtype)


def _make_ei_2m(shape, dtype, device, g):
    x, m, h = (_randn(shape, dtype, device, g) for _ in range(3))
    # A DPM-Solver++(2M) row: c_x=0, c_m=1 (sample prediction), one history d.
    coeffs = torch.tensor([0.0, 1.0, 0.9, 0.15, -0.05, 0.0], dtype=torch.float64, device=device)
    return (x, m, [h], coeffs), {}


def _make_ei_sde(shape, dtype, device, g):
    (x, m, hist, coeffs), _ = _make_ei_2m(shape, dtype, device, g)
    coeffs = coeffs.clone()
    coeffs[-1] = 0.3
    return (x, m, hist, coeffs), {"noise": _randn(shape, dtype, device, g)}


# Dynamic thresholding's scale is clamp(q, 1, max_value): with q beyond
# max_value (as here: d is standard normal, q about 2.8) a counting pass
# proves the clamp holds and the selection is skipped; with 1 < q < max_value
# (the "_selected" cases) the selection runs.
def _make_ei_dynamic(shape, dtype, device, g, max_value=1.5):
    args, _ = _make_ei_2m(shape, dtype, device, g)
    return args, {"threshold": ops.Threshold("dynamic", 0.995, max_value)}


def _make_ei_dynamic_selected(shape, dtype, device, g):
    return _make_ei_dynamic(shape, dtype, device, g, max_value=4.0)


def _make_combine3(shape, dtype, device, g):
    tensors = [_randn(shape, dtype, device, g) for _ in range(3)]
    return (tensors, torch.tensor([1.5, -0.75, 0.25], dtype=torch.float64, device=device)), {}


def _make_combine_pair3(shape, dtype, device, g):
    tensors = [_randn(shape, dtype, device, g) for _ in range(3)]
    rows = [[1.5, -0.75, 0.25], [0.6, 0.3, -0.2]]
    return (tensors, torch.tensor(rows, dtype=torch.float64, device=device)), {}


def _two_combines(tensors, coeffs):
    """multistep_combine_pair's two sums as two multistep_combine passes (what it replaces)."""
    return ops.multistep_combine(tensors, coeffs[0]), ops.multistep_combine(tensors, coeffs[1])


def _make_threshold(shape, dtype, device, g, max_value=1.5):
    # q is about 5.6: beyond max_value 1.5, within max_value 8.
    return (_randn(shape, dtype, device, g) * 2,), {"kind": "dynamic", "ratio": 0.995, "max_value": max_value}


def _make_threshold_selected(shape, dtype, device, g):
    return _make_threshold(shape, dtype, device, g, max_value=8.0)


def _make_langevin(shape, dtype, device, g):
    x, score, z = (_randn(shape, dtype, device, g) for _ in range(3))
    return (x, score, 0.16), {"noise": z}


def _make_error_norm(shape, dtype, device, g):
    x_high, x_low, x_prev = (_randn(shape, dtype, device, g) for _ in range(3))
    return (x_high, x_low, x_prev), {"atol": 0.0078, "rtol": 0.05}


CASES: Dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "ei_step_2m",
            "ei_step, DPM-Solver++(2M) row (1 history)",
            ops.ei_step,
            ops.reference.ei_step,
            _make_ei_2m,
            5,
        ),
        Case(
            "ei_step_sde", "ei_step, SDE row (1 history + noise)", ops.ei_step, ops.reference.ei_step, _make_ei_sde, 6
        ),
        Case(
            "ei_step_dynamic",
            "ei_step, 2M row + dynamic threshold, the scale clamped at max_value (counted, not selected)",
            ops.ei_step,
            ops.reference.ei_step,
            _make_ei_dynamic,
            5,
        ),
        Case(
            "ei_step_dynamic_selected",
            "ei_step, 2M row + dynamic threshold, the scale the quantile itself (selected)",
            ops.ei_step,
            ops.reference.ei_step,
            _make_ei_dynamic_selected,
            5,
        ),
        Case(
            "multistep_combine3",
            "multistep_combine, 3 tensors",
            ops.multistep_combine,
            ops.reference.multistep_combine,
            _make_combine3,
            4,
        ),
        Case(
            "multistep_combine_pair3",
            "multistep_combine_pair, 3 tensors in, 2 out",
            ops.multistep_combine_pair,
            ops.reference.multistep_combine_pair,
            _make_combine_pair3,
            5,
        ),
        Case(
            "multistep_combine_pair3_as_two",
            "the same two sums as two multistep_combine calls (bytes counted as for the pair: the time it replaces)",
            _two_combines,
            ops.reference.multistep_combine_pair,
            _make_combine_pair3,
            5,
        ),
        Case(
            "threshold_dynamic",
            "threshold, dynamic (quantile 0.995), the scale clamped at max_value (counted, not selected)",
            ops.threshold,
            ops.reference.threshold,
            _make_threshold,
            2,
        ),
        Case(
            "threshold_dynamic_selected",
            "threshold, dynamic (quantile 0.995), the scale the quantile itself (selected)",
            ops.threshold,
            ops.reference.threshold,
            _make_threshold_selected,
            2,
        ),
        Case(
            "langevin_correct",
            "langevin_correct (noise given)",
            ops.langevin_correct,
            ops.reference.langevin_correct,
            _make_langevin,
            5,
        ),
        Case(
            "error_norm",
            "error_norm (adaptive step control)",
            ops.error_norm,
            ops.reference.error_norm,
            _make_error_norm,
            3,
        ),
    )
}


def bytes_moved(case: Case, shape: Tuple[int, ...], dtype: torch.dtype) -> int:
    numel = 1
    for s in shape:
        numel *= s
    return case.tensors_moved * numel * torch.empty((), dtype=dtype).element_size()


def quantile_threshold(x, *, kind="dynamic", ratio=0.995, max_value=1.0, style="diffusers"):
    """Dynamic thresholding written the way diffusers writes it (torch.quantile
    on the flattened |x|), the baseline the selection kernel is measured against."""
    flat = x.float().reshape(x.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x.shape).to(x.dtype)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device="cpu", min_time: float = 0.2, repeats: int = 5) -> float:
    """Median over `repeats` runs of the mean time of one call, each run lasting
    about min_time / repeats seconds (after a warm-up call)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def copy_bandwidth(shape, dtype=torch.float32, device="cpu") -> float:
    """Bytes per second of dst.copy_(src) at this size: read plus write."""
    src = torch.randn(shape, device=device).to(dtype)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds


_compiled: Dict[Tuple[str, bool], Callable] = {}


def compiled_reference(case: Case, dynamic: bool = False) -> Callable:
    """torch.compile of the case's reference, built once per case (the baseline
    a user would otherwise reach for)."""
    key = (case.name, dynamic)
    if key not in _compiled:
        _compiled[key] = torch.compile(case.reference, dynamic=dynamic)
    return _compiled[key]


# Stock diffusers schedulers against the drop-ins: (class name, config).
SCHEDULER_CASES = {
    "diffusers_dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "diffusers_dpmpp_2m_thresholding": ("DPMSolverMultistepScheduler", {"thresholding": True}),
    "diffusers_ddim": ("DDIMScheduler", {}),
    "diffusers_euler": ("EulerDiscreteScheduler", {}),
    # Stable Diffusion 1.x's default scheduler config: PLMS steps.
    "diffusers_pndm_plms": (
        "PNDMScheduler",
        {
            "skip_prk_steps": True,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "steps_offset": 1,
        },
    ),
}


# What a drop-in class needs beyond its defaults: for two runs to draw the same
# noise (DPM-Solver SDE's Brownian tree), or because its __init__ has no
# defaults (RFD4-Proteína: its backbone scheduler's config, the tail shortened
# so that 4 steps or more are a schedule).
BASE_CONFIG = {
    "DPMSolverSDEScheduler": {"noise_sampler_seed": 0},
    "RFD4ProteinaScheduler": {
        "schedule_mode": "log",
        "noise_mode": "1/t",
        "tsr_k": 1.0,
        "tsr_sigma": 1.0,
        "tail_steps": 2,
    },
}


def host_time_cases() -> Dict[str, Tuple[str, dict]]:
    """Every drop-in class whose step() has diffusers' usual signature, at its
    default config, as scheduler cases named step_host_<class>: timed at a
    tiny latent, where the data costs nothing, they measure a step's host time
    (its Python, the op call and, on CUDA, the launch), which is what an eager
    loop pays per step with a small latent on a GPU. Needs diffusers."""
    from diffaccel.integrations import diffusers as accelerated

    own_signature = {"ScoreSdeVeScheduler", "CogVideoXDPMScheduler"}  # step_pred / step_correct; the pipeline's state
    return {
        f"step_host_{name}": (name, dict(BASE_CONFIG.get(name, {})))
        for name in sorted(accelerated.ACCELERATED)
        if name not in own_signature
    }


def _is_wuerstchen(scheduler) -> bool:
    import diffusers

    return isinstance(scheduler, diffusers.DDPMWuerstchenScheduler)


def pipeline_set_timesteps(scheduler, steps: int, device) -> None:
    """``scheduler.set_timesteps(steps, device=device)`` as a pipeline calls it;
    SCMScheduler's default intermediate timestep is only allowed with 2 steps,
    so other step counts pass ``intermediate_timesteps=None`` (as Sana Sprint's
    callers do). Needs diffusers."""
    import diffusers

    if isinstance(scheduler, diffusers.SCMScheduler) and steps != 2:
        scheduler.set_timesteps(steps, device=device, intermediate_timesteps=None)
    elif isinstance(scheduler, (diffusers.HeliosScheduler, diffusers.HeliosDMDScheduler)):
        # (a staged schedule: the first stage's, as the pyramid pipeline sets it; one stage: HeliosPipeline's call)
        scheduler.set_timesteps(steps, 0 if scheduler.config.stages > 1 else None, device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


def helios_dmd_inputs(scheduler, step: int, start: torch.Tensor) -> dict:
    """The keyword arguments the Helios pyramid pipeline hands
    HeliosDMDScheduler.step at step ``step`` of a stage that started from
    ``start``: the scheduler's own sigmas and timesteps as its tables."""
    return {
        "cur_sampling_step": step,
        "dmd_noisy_tensor": start,
        "dmd_sigmas": scheduler.sigmas,
        "dmd_timesteps": scheduler.timesteps,
        "all_timesteps": scheduler.timesteps,
    }


def pipeline_timesteps(scheduler) -> torch.Tensor:
    """The timesteps a diffusers pipeline calls ``scheduler.step`` at: all of
    ``scheduler.timesteps``, but for DDPMWuerstchenScheduler and SCMScheduler,
    whose schedules end on the last step's target (the Wuerstchen, Stable
    Cascade and Sana Sprint pipelines loop over ``timesteps[:-1]``). Needs diffusers."""
    import diffusers

    ends_on_target = _is_wuerstchen(scheduler) or isinstance(scheduler, diffusers.SCMScheduler)
    return scheduler.timesteps[:-1] if ends_on_target else scheduler.timesteps


def pipeline_timestep(scheduler, t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` (an element of the schedule) as a pipeline hands it to
    ``scheduler.step``: as it is, but for DDPMWuerstchenScheduler a (batch,)
    tensor, ``t.expand(batch)``. (Sana Sprint hands SCMScheduler a (batch,)
    tensor too, after set_begin_index(0); without a begin index diffusers'
    step cannot look such a timestep up, so loops without one hand it ``t``.)
    Needs diffusers."""
    return t.expand(batch) if _is_wuerstchen(scheduler) else t


def scheduler_loop(case: str, impl: str, device, shape, steps: int = 25):
    """(loop, reset) for a scheduler case (SCHEDULER_CASES or host_time_cases()):
    loop() runs ``steps`` steps with a zero-cost model (the same output every
    step) and synchronizes on CUDA; reset() is set_timesteps, diffusers' own
    code in both, kept out of timings; it also sets loop.step_calls, the
    number of step() calls a loop makes (twice the steps, less one, for the
    Heun-style schedulers). impl is "stock_diffusers" or "diffaccel". Needs diffusers."""
    import diffusers

    from diffaccel.integrations import diffusers as accelerated

    name, config = SCHEDULER_CASES[case] if case in SCHEDULER_CASES else host_time_cases()[case]
    with torch.device("cpu"):  # diffusers' tables on the host, as in a pipeline, whatever the default device
        scheduler = getattr(accelerated if impl == "diffaccel" else diffusers, name)(**config)
    x0 = standard_normal(shape, generator=torch.Generator().manual_seed(0), device=device)
    eps = standard_normal(shape, generator=torch.Generator().manual_seed(1), device=device)
    # RePaint's step also takes the known image and its mask (every other column
    # known); pi-Flow's takes n_grid predictions side by side in the last dimension.
    # Helios DMD's its step number, tables and start point, the sample as
    # video latents of one frame; RFD4-Proteína's an emit mask (all tokens),
    # the sample as (batch, tokens, width).
    extra, dmd = (), isinstance(scheduler, diffusers.HeliosDMDScheduler)
    if isinstance(scheduler, diffusers.RFD4ProteinaScheduler):
        x0, eps = x0.flatten(1, -2), eps.flatten(1, -2)
        extra = (torch.ones(x0.shape[:-1], dtype=torch.bool, device=device),)
    if isinstance(scheduler, diffusers.PiflowScheduler):
        eps = eps.repeat(*([1] * (eps.dim() - 1)), scheduler.n_grid)
    if isinstance(scheduler, diffusers.RePaintScheduler):
        columns = torch.arange(shape[-1], device=device) % 2 == 0
        extra = (torch.full_like(x0, 0.25), columns.to(x0.dtype).expand_as(x0).contiguous())
    if dmd:
        x0, eps = x0.unsqueeze(2), eps.unsqueeze(2)

    def loop():
        x = x0
        for i, t in enumerate(loop.timesteps):
            options = helios_dmd_inputs(scheduler, i, x0) if dmd else {}
            x = scheduler.step(eps, t, x, *extra, **options).prev_sample
        _sync(device)
        return x.view(shape)  # (the shape asked for, where the step took another view)

    def reset() -> None:
        pipeline_set_timesteps(scheduler, steps, device)
        # Only the step is timed: Euler's scale_model_input (diffusers' code in both) is taken as done.
        scheduler.is_scale_input_called = True
        # The timesteps as the pipeline hands them to step(), made outside the timing.
        loop.timesteps = [pipeline_timestep(scheduler, t, len(x0)) for t in pipeline_timesteps(scheduler)]
        loop.step_calls = len(loop.timesteps)

    return loop, reset


def small_unet(device) -> torch.nn.Module:
    """The benchmarks' network: a small diffusers UNet2DModel for (B, 4, 32, 32)
    latents, randomly initialised from a config with seed 0 (nothing is
    downloaded), in eval mode on ``device``. Needs diffusers."""
    import diffusers

    torch.manual_seed(0)
    return (
        diffusers.UNet2DModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )
        .to(device)
        .eval()
    )


def page_faults_per_call(fn: Callable[[], object], calls: int = 3) -> float:
    """Minor page faults of this process per call of fn (after one warm-up call).

    torch's CPU allocator asks malloc for every tensor, and glibc may hand a
    MiB-sized block back to the kernel when it is freed; the next one is then
    mapped fresh and each 4 KiB page faulted in on first touch (about 1.2 us a
    page on the dev VM, ~300 us per MiB). Benchmarks run with malloc settings
    that keep freed memory (DESIGN.md; ``make bench``), and report this count
    so a run where that did not hold shows it."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


LOOP_SAMPLERS = ["ddim", "dpmpp_2m", "euler_ancestral"]


def _op_rows(device, shapes, cases, compile_reference: bool, print_fn) -> List[Dict]:
    rows = []
    header = (
        f"{'case':<20} {'shape':<18} {'fused us':>9} {'eager us':>9} {'compiled us':>12} {'vs eager':>9} "
        f"{'vs compiled':>12} {'GB/s':>7} {'copy GB/s':>10} {'% copy':>7}"
    )
    print_fn(header)
    print_fn("-" * len(header))
    for shape in shapes:
        copy = copy_bandwidth(shape, torch.float32, device)
        for case in cases:
            call_args, kwargs = case.make(shape, torch.float32, device, torch.Generator().manual_seed(0))
            fused = median_seconds(lambda: case.fused(*call_args, **kwargs), device)
            eager = median_seconds(lambda: case.reference(*call_args, **kwargs), device)
            compiled = float("nan")
            if compile_reference:
                fn = compiled_reference(case)
                compiled = median_seconds(lambda: fn(*call_args, **kwargs), device)
            gbs = bytes_moved(case, shape, torch.float32) / fused / 1e9
            row = dict(
                case=case.name,
                shape=list(shape),
                dtype="float32",
                fused_us=fused * 1e6,
                eager_us=eager * 1e6,
                compiled_us=compiled * 1e6,
                gb_per_s=gbs,
                copy_gb_per_s=copy / 1e9,
                percent_of_copy=100 * gbs / (copy / 1e9),
            )
            rows.append(row)
            print_fn(
                f"{case.name:<20} {str(tuple(shape)):<18} {fused * 1e6:>9.1f} {eager * 1e6:>9.1f} "
                f"{compiled * 1e6:>12.1f} {eager / fused:>8.1f}x {compiled / fused:>11.1f}x {gbs:>7.1f} "
                f"{copy / 1e9:>10.1f} {row['percent_of_copy']:>6.0f}%".replace("nanx", "   -").replace(" nan", "   -")
            )
    return rows


def _loop_rows(device, shape, print_fn) -> List[Dict]:
    from diffaccel import ops as ops_module
    from diffaccel import schedules
    from diffaccel.graph import capture_for_timing
    from diffaccel.sampling import run_plan
    from diffaccel.solvers import plan

    x = torch.randn(shape, device=device)
    eps = torch.randn_like(x)

    def zero_cost(x, t):  # the loop's own time: what a user pays per step beyond the network
        return eps

    schedule = schedules.VPDiscrete.from_diffusers("linear")
    cuda = torch.device(device).type == "cuda"
    print_fn(
        f"{'sampler':<18} {'steps':>5} {'fused us/step':>14} {'reference us/step':>18} {'speedup':>8}"
        + (f" {'graphed us/step':>16}" if cuda else "")
    )
    rows = []
    for sampler in LOOP_SAMPLERS:
        p = plan(sampler, steps=20, schedule=schedule)
        generator = torch.Generator(device).manual_seed(0)
        fused = median_seconds(lambda: run_plan(p, zero_cost, x, generator=generator), device) / len(p.rows)
        with ops_module.backend("reference"):
            reference = median_seconds(lambda: run_plan(p, zero_cost, x, generator=generator), device) / len(p.rows)
        row = dict(
            sampler=sampler,
            shape=list(shape),
            steps=20,
            fused_us_per_step=fused * 1e6,
            reference_us_per_step=reference * 1e6,
        )
        line = f"{sampler:<18} {20:>5} {fused * 1e6:>14.1f} {reference * 1e6:>18.1f} {reference / fused:>7.1f}x"
        if cuda:
            graphed_sampler = capture_for_timing(zero_cost, x, sampler=sampler, steps=20, schedule=schedule)
            out = torch.empty_like(x)
            graphed = (
                median_seconds(lambda: graphed_sampler(x, out=out), device) / len(p.rows)
                if graphed_sampler
                else float("nan")
            )
            row["graphed_us_per_step"] = graphed * 1e6
            line += f" {graphed * 1e6:>16.1f}"
        rows.append(row)
        print_fn(line)
    return rows


def _scheduler_rows(device, shape, print_fn) -> List[Dict]:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print_fn("(diffusers is not installed: no comparison with stock diffusers)")
        return []
    print_fn(
        f"{'scheduler loop':<34} {'stock us/step':>14} {'diffaccel us/step':>18} {'speedup':>8} "
        f"{'page faults/step':>17}"
    )
    rows = []
    for case in SCHEDULER_CASES:
        times, faults = {}, {}
        for impl in ("stock_diffusers", "diffaccel"):
            loop, reset = scheduler_loop(case, impl, device, shape)
            reset()

            def timed():
                reset()  # set_timesteps is diffusers' code in both: timed alike in both
                loop()

            times[impl] = median_seconds(timed, device, min_time=0.5 if "threshold" in case else 0.2) / 25
            faults[impl] = page_faults_per_call(timed, calls=2) / 25
        rows.append(
            dict(
                case=case,
                shape=list(shape),
                stock_us_per_step=times["stock_diffusers"] * 1e6,
                diffaccel_us_per_step=times["diffaccel"] * 1e6,
                stock_faults_per_step=faults["stock_diffusers"],
                diffaccel_faults_per_step=faults["diffaccel"],
            )
        )
        print_fn(
            f"{case:<34} {times['stock_diffusers'] * 1e6:>14.1f} {times['diffaccel'] * 1e6:>18.1f} "
            f"{times['stock_diffusers'] / times['diffaccel']:>7.1f}x "
            f"{faults['stock_diffusers']:>8.0f} /{faults['diffaccel']:>6.0f}"
        )
    return rows


def run(
    device="cpu",
    shapes=("small", "medium"),
    case_names=None,
    compile_reference: bool = True,
    loops: bool = True,
    json_path=None,
    print_fn=print,
) -> Dict:
    """``diffaccel bench``: the op matrix (fused against the eager and
    torch.compile'd reference, GB/s against the copy bandwidth measured in the
    same run), the 20-step loops with a zero-cost model (and, on CUDA, as one
    graph), and stock diffusers' scheduler steps against the drop-ins."""
    import json
    import platform

    import logging

    # torch.compile of the threshold reference breaks its graph at the quantile's rank; dynamo logs each break.
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    cases = [CASES[name] for name in (case_names or CASES)]
    header = (
        f"diffaccel bench on {device}, float32, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.device(device).type == 'cuda' else platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print_fn(header)
    print_fn(
        "median of 5 runs; GB/s = bytes the op must read + write / time; copy = dst.copy_(src) at the same size; "
        "compiled = torch.compile of the reference\n"
    )
    result = dict(
        device=str(device),
        torch=torch.__version__,
        header=header,
        ops=_op_rows(device, [SHAPES[s] for s in shapes], cases, compile_reference, print_fn),
    )
    if loops:
        print_fn(f"\nWhole 20-step loops at {SHAPES['medium']} with a zero-cost model (the sampler's own time):")
        result["loops"] = _loop_rows(device, SHAPES["medium"], print_fn)
        print_fn(
            f"\nStock diffusers against diffaccel's drop-in, 25 steps at {SHAPES['medium']}, zero-cost model "
            "(page faults per step: stock / diffaccel):"
        )
        result["schedulers"] = _scheduler_rows(device, SHAPES["medium"], print_fn)
    print_fn("")
    for case in cases:
        print_fn(f"{case.name:<20} {case.description}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        print_fn(f"\nwrote {json_path}")
    return result
