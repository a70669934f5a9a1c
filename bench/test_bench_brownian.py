"""torchsde's BrownianTree against diffaccel.brownian.BrownianTree (its exact
twin): the queries of a 10-step SDE loop (dpmpp_2m_sde's, in sigma space, a
Karras schedule), float32, per step. This is the noise of every Brownian-tree
SDE sampler of k-diffusion, ComfyUI and diffusers; both give the same bits.
On the CPU by default; DIFFACCEL_BENCH_DEVICE=cuda (the GPU check) puts the
trees on the GPU, as ComfyUI's *_gpu samplers do; each timed loop then ends
with a synchronization."""

import os

import pytest
import torch

from diffaccel.brownian import BrownianTree

torchsde = pytest.importorskip("torchsde")

STEPS = 10
SHAPES = {"tiny": (1, 4, 8, 8), "latent": (1, 4, 128, 128), "latent16": (1, 16, 128, 128)}
DEVICE = os.environ.get("DIFFACCEL_BENCH_DEVICE", "cpu")
TREES = {"torchsde": lambda *args, **kw: torchsde.BrownianTree(*args, **kw), "fused": BrownianTree}


def _queries():
    ramp = torch.linspace(0, 1, STEPS + 1)
    low, high = 0.0292 ** (1 / 7), 14.6146 ** (1 / 7)
    sigmas = ((high + ramp * (low - high)) ** 7).tolist()
    return sigmas[-1], sigmas[0], [(b, a) for a, b in zip(sigmas[:-1], sigmas[1:])]


@pytest.mark.parametrize("impl", list(TREES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_brownian_tree(benchmark, shape_name, impl):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("DIFFACCEL_BENCH_DEVICE=cuda without a GPU")
    t0, t1, queries = _queries()
    w0 = torch.zeros(SHAPES[shape_name], device=DEVICE)
    benchmark.group = f"brownian_tree {shape_name}"
    benchmark.extra_info.update(case="brownian_tree", shape=shape_name, impl=impl, bytes=0, reps=STEPS, device=DEVICE)

    def run():  # a new tree per loop, as each sampling run makes one
        tree = TREES[impl](t0, w0, t1, entropy=5)
        increments = [tree(a, b) for a, b in queries]
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return increments

    benchmark(run)


def _k_diffusion():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from k_diffusion_loader import load_k_diffusion_sampling

    return load_k_diffusion_sampling()


@pytest.mark.parametrize("impl", ["k_diffusion", "fused"])
@pytest.mark.parametrize("shape_name", ["tiny", "medium"])
@pytest.mark.parametrize("sampler", ["sample_dpmpp_2m_sde", "sample_dpmpp_sde"])
def test_k_diffusion_sde_sampler(benchmark, sampler, shape_name, impl):
    """k-diffusion's SDE sampler (torchsde's tree) against diffaccel's drop-in (its
    twin): 25 Karras steps, a zero-cost denoiser, the seed drawn from the global
    generator as k-diffusion draws it (reset before every loop: the same noise)."""
    from diffaccel.integrations import k_diffusion as ours

    if DEVICE != "cpu":
        pytest.skip("the CPU comparison (the GPU check times the tree itself)")
    shape = {"tiny": (1, 4, 8, 8), "medium": (4, 4, 128, 128)}[shape_name]
    module = _k_diffusion() if impl == "k_diffusion" else ours
    steps = 25
    sigmas = ours.get_sigmas_karras(steps, 0.0292, 14.6146)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 14.6146
    denoised = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.5
    benchmark.group = f"k_diffusion_sde {sampler} {shape_name}"
    benchmark.extra_info.update(case=f"kd_{sampler}", shape=shape_name, impl=impl, bytes=0, reps=steps)

    def run():
        torch.manual_seed(0)
        return getattr(module, sampler)(lambda x, s, **kw: denoised, x, sigmas, disable=True)

    benchmark(run)
