"""Thread safety: several Python threads running sampling loops at once give
bit-identical results to the same loops run one after another (the ops keep
no global state beyond caches keyed by value; a server may sample from
several threads)."""

import inspect
import threading

import pytest
import torch

import diffaccel
from diffaccel import ops

from conftest import DEVICE

SAMPLERS = ["dpmpp_2m", "ddim", "unipc_bh2", "euler_ancestral", "pc", "dpmpp_3m"]


def _model(x, t):
    return torch.tanh(x) * 0.5 + 0.1 * torch.sin(x * (1 + t.reshape(-1, *([1] * (x.dim() - 1))) / 1000))


def _loop(sampler, seed):
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(seed), device=DEVICE)
    threshold = ops.Threshold("dynamic", 0.95, 1.5) if seed % 2 else None
    generator = torch.Generator(DEVICE).manual_seed(seed + 100)
    return diffaccel.sample(
        _model, noise, sampler=sampler, steps=8, generator=generator, threshold=None if sampler == "pc" else threshold
    )


def _run_at_once(jobs):
    """Runs every job in its own thread, all started together; their results in order."""
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))

    def work(i, job):
        try:
            barrier.wait()
            for _ in range(3):  # several rounds, so the threads overlap
                results[i] = job()
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    return results


def test_concurrent_sampling_loops_equal_sequential_ones():
    jobs = [lambda s=s, i=i: _loop(s, i) for i, s in enumerate(SAMPLERS)]
    sequential = [job() for job in jobs]
    for got, expected in zip(_run_at_once(jobs), sequential):
        assert torch.equal(got, expected)


def test_concurrent_drop_in_loops_equal_sequential_ones():
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")
    from diffaccel import benchmarking
    from diffaccel.integrations import diffusers as accelerated

    names = [
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "EulerAncestralDiscreteScheduler",
        "DDIMScheduler",
    ]

    def loop(name, seed):
        with torch.device("cpu"):  # diffusers makes its tables on the default device
            scheduler = getattr(accelerated, name)(thresholding=True) if name == "DDIMScheduler" else None
            scheduler = scheduler or getattr(accelerated, name)()
        benchmarking.pipeline_set_timesteps(scheduler, 10, DEVICE)
        x = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(seed), device=DEVICE)
        generator = torch.Generator(DEVICE).manual_seed(seed + 1)
        for t in scheduler.timesteps:
            out = _model(scheduler.scale_model_input(x, t), t.reshape(1).to(DEVICE))
            options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
            x = scheduler.step(out, t, x, **options).prev_sample
        return x

    assert diffusers is not None
    jobs = [lambda n=n, i=i: loop(n, i) for i, n in enumerate(names)]
    sequential = [job() for job in jobs]
    for got, expected in zip(_run_at_once(jobs), sequential):
        assert torch.equal(got, expected)
