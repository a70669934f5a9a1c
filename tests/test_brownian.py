"""diffaccel.brownian.BrownianTree against torchsde.BrownianTree: the same
increments bit for bit (torch.equal) for the same seed and queries, the same
warnings and errors, and fewer normal draws; and the noise samplers built on it
(k-diffusion's, ComfyUI's, diffusers') against the samplers they replace."""

import math
import random
import warnings

import numpy as np
import pytest
import torch

import diffaccel.brownian as brownian
from diffaccel.brownian import BrownianTree

torchsde = pytest.importorskip("torchsde")
sdeint = pytest.importorskip("torchsde._brownian.brownian_interval")


def _both(t0, w0, t1, **kwargs):
    return torchsde.BrownianTree(t0, w0, t1, **kwargs), BrownianTree(t0, w0, t1, **kwargs)


def _answers(tree, queries):
    """Each query's result or exception type, with the warnings it raised."""
    out = []
    for query in queries:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = tree(*query)
            except (RuntimeError, RecursionError) as error:
                result = (type(error), str(error) if isinstance(error, RuntimeError) else "")
        out.append((result, [str(w.message) for w in caught]))
    return out


def _assert_same(want, got):
    assert len(want) == len(got)
    for (w, w_warn), (g, g_warn) in zip(want, got):
        assert g_warn == w_warn
        if isinstance(w, torch.Tensor):
            assert isinstance(g, torch.Tensor) and g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(g, w)
        else:
            assert type(g) is tuple and g[0] is w[0]
            if w[0] is RuntimeError:
                assert g[1] == w[1]


def _sampler_queries(sigmas, transform=lambda v: v):
    """The queries of a k-diffusion SDE loop: (t_next, t) sorted, one a step."""
    out = []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        a, b = transform(torch.as_tensor(s)), transform(torch.as_tensor(s_next))
        out.append((a, b) if a < b else (b, a))
    return out


def _karras(n, sigma_min=0.0292, sigma_max=14.6146, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("steps", [1, 2, 10, 30])
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**62 + 7])
@pytest.mark.parametrize("space", ["sigma", "log"])
def test_sampler_queries_give_torchsdes_increments(steps, seed, space):
    """dpmpp_2m_sde's queries (sigma space) and dpmpp_sde's (t = -log sigma)."""
    sigmas = _karras(steps + 1)
    transform = (lambda v: v) if space == "sigma" else (lambda v: v.log().neg())
    t0, t1 = sorted([transform(sigmas.min()), transform(sigmas.max())])
    want, got = _both(t0, torch.zeros(2, 3, 5), t1, entropy=seed)
    queries = _sampler_queries(sigmas.tolist(), transform)
    _assert_same(_answers(want, queries), _answers(got, queries))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 4, 8, 8), (3, 5, 7, 11)])
def test_shapes_and_dtypes(shape, dtype):
    want, got = _both(0.0, torch.zeros(shape, dtype=dtype), 1.0, entropy=3)
    queries = [(0.9, 1.0), (0.5, 0.9), (0.1234567, 0.5), (0.0, 0.1234567)]
    _assert_same(_answers(want, queries), _answers(got, queries))


@pytest.mark.parametrize("seed", range(6))
def test_random_queries_in_any_order(seed):
    """Overlapping, repeated, increasing, whole-range and short queries, in random
    order, so that nodes are split in every order and the cache is reused. (Times
    closer than the tolerance are the next test's: after torchsde's RecursionError
    its tree is left half split and later queries fail.)"""
    rng = random.Random(seed)
    t0, t1 = rng.uniform(-3, 1), rng.uniform(1.5, 20)
    want, got = _both(t0, torch.zeros(4, 6), t1, entropy=seed)
    queries = [(t0, t1)]
    for _ in range(60):
        a, b = sorted(rng.uniform(t0, t1) for _ in range(2))
        kind = rng.random()
        if kind < 0.2:
            b = min(t1, a + rng.choice([3e-6, 1e-5, 1e-4]))
        elif kind < 0.3 and len(queries) > 1:
            a, b = queries[rng.randrange(len(queries))]
        queries.append((a, b))
    _assert_same(_answers(want, queries), _answers(got, queries))


def test_queries_outside_the_interval_are_clamped_with_torchsdes_warnings():
    t0 = torch.tensor(0.03)  # float32: 0.029999999329447746 < round(t0) = 0.03, as k-diffusion's trees see it
    t1 = torch.tensor(14.6)
    want, got = _both(t0, torch.zeros(3), t1, entropy=5)
    queries = [(t0, t1), (-1.0, 0.5), (0.5, 20.0), (15.0, 16.0), (-2.0, -1.0), (0.0, 0.03), (2.0, 2.0)]
    answers = _answers(got, queries)
    _assert_same(_answers(want, queries), answers)
    assert any(warn for _, warn in answers)


def test_refusals_as_torchsde():
    want, got = _both(0.0, torch.zeros(3), 1.0, entropy=5)
    _assert_same(_answers(want, [(0.7, 0.2)]), _answers(got, [(0.7, 0.2)]))
    for kwargs in ({"t0": 2.0, "t1": 1.0}, {"t0": 0.0, "t1": 1.0, "tol": 0.0}, {"t0": torch.zeros(2), "t1": 1.0}):
        errors = []
        for cls in (torchsde.BrownianTree, BrownianTree):
            with pytest.raises(ValueError) as error:
                cls(w0=torch.zeros(3), **kwargs)
            errors.append(str(error.value))
        assert errors[0] == errors[1]
    with pytest.raises(ValueError, match="Lévy area"):
        got(0.1, 0.2, return_U=True)


def test_times_the_tolerance_cannot_tell_apart_as_torchsde():
    """Two times that round to one at 1e-6: torchsde sometimes finds an empty
    interval (zeros), sometimes recurses to Python's limit (RecursionError here
    too, raised sooner)."""
    want, got = _both(0.0291675, torch.zeros(3), 14.6146, entropy=3)
    queries = [(0.1000001, 0.1000002), (0.0291675, 0.02916751), (1.0, 1.0000004), (2.0, 3.0), (5.0, 5.0)]
    answers = _answers(got, queries)
    _assert_same(_answers(want, queries), answers)
    assert answers[2][0][0] is RecursionError and isinstance(answers[0][0], torch.Tensor)


def test_a_nan_time_raises_instead_of_hanging():
    """torchsde's tree hangs on a NaN query (k-diffusion's SDE samplers with a NaN
    sigma); this one gives up after a bounded descent."""
    tree = BrownianTree(0.0, torch.zeros(3), 1.0, entropy=1)
    for query in ((float("nan"), 0.5), (0.25, float("nan"))):
        with pytest.raises(RecursionError, match="does not resolve"):
            tree(*query)
    assert torch.isfinite(tree(0.25, 0.5)).all()  # and the tree still answers


def test_point_queries_end_values_and_default_times():
    w0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), device="cpu")
    w1 = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), device="cpu")
    for kwargs in ({"t1": 2.5, "w1": w1}, {"t1": None}):
        want, got = _both(0.5, w0, entropy=11, **kwargs)
        queries = [(1.0,), (0.7, 1.2), (1.5,), (0.5, 1.5)]
        _assert_same(_answers(want, queries), _answers(got, queries))


def test_without_entropy_it_draws_from_numpys_generator_as_torchsde():
    ends = []
    for cls in (torchsde.BrownianTree, BrownianTree):
        np.random.seed(17)
        tree = cls(0.0, torch.zeros(4), 1.0)
        ends.append((tree(0.25, 0.5), np.random.get_state()[1].copy()))
    (want, want_state), (got, state) = ends
    assert torch.equal(got, want) and np.array_equal(state, want_state)


def _count_draws(monkeypatch):
    counts = {"torchsde": 0, "diffaccel": 0}
    draw = sdeint._randn

    def counted_torchsde(*args):
        counts["torchsde"] += 1
        return draw(*args)

    ours = BrownianTree._randn

    def counted_ours(self, seed):
        counts["diffaccel"] += 1
        return ours(self, seed)

    monkeypatch.setattr(sdeint, "_randn", counted_torchsde)
    monkeypatch.setattr(BrownianTree, "_randn", counted_ours)
    return counts


def test_a_third_of_torchsdes_draws_on_a_sampling_loop(monkeypatch):
    """What makes it faster: each node's bridge noise drawn once (torchsde draws
    it for each child) and the nodes of the shared end kept. Measured on this
    30-step loop: 17.2 draws a step against torchsde's 54.2."""
    counts = _count_draws(monkeypatch)
    queries = _sampler_queries(_karras(31).tolist())
    want, got = _both(0.0292, torch.zeros(4), 14.6146, entropy=1)
    _assert_same(_answers(want, queries), _answers(got, queries))
    assert counts["diffaccel"] <= 0.4 * counts["torchsde"]


def test_a_small_cache_still_gives_the_same_numbers(monkeypatch):
    """Nodes evicted and computed again from their ancestors' seeds."""
    monkeypatch.setattr(brownian, "_CACHED_PAIRS", 2)
    monkeypatch.setattr(brownian, "_TORCHSDE_CACHED_PAIRS", 2)
    queries = _sampler_queries(_karras(21).tolist()) + [(0.0292, 14.6146), (1.0, 2.0)]
    want, got = _both(0.0292, torch.zeros(5), 14.6146, entropy=9)
    _assert_same(_answers(want, queries), _answers(got, queries))


def test_the_cache_is_held_to_its_byte_budget_for_large_latents(monkeypatch):
    """A latent whose 64 pairs would pass the budget keeps fewer (never fewer than
    torchsde's 45 tensors' worth), and gives the same numbers."""
    monkeypatch.setattr(brownian, "_CACHE_BYTES", 30 * 2 * 4 * 1000)  # 30 pairs of 1000 float32
    counts = _count_draws(monkeypatch)
    queries = _sampler_queries(_karras(31).tolist())
    want, got = _both(0.0292, torch.zeros(1000), 14.6146, entropy=2)
    _assert_same(_answers(want, queries), _answers(got, queries))
    assert got._cache_pairs == 30 and len(got._cache) <= 30
    assert counts["diffaccel"] < counts["torchsde"]
    monkeypatch.setattr(brownian, "_CACHE_BYTES", 1)
    assert BrownianTree(0.0, torch.zeros(1000), 1.0, entropy=2)._cache_pairs == brownian._TORCHSDE_CACHED_PAIRS


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("seed", [3, [3, 4, 5]])
@pytest.mark.parametrize("transform", [None, "log"])
def test_k_diffusion_noise_sampler_equals_k_diffusions(seed, transform):
    from k_diffusion_loader import load_k_diffusion_sampling

    k_sampling = load_k_diffusion_sampling()

    from diffaccel.integrations.k_diffusion import BrownianTreeNoiseSampler

    fn = (lambda v: v) if transform is None else (lambda v: v.log().neg())
    x = torch.zeros(3, 4, 6, 6)
    sigmas = _karras(11).tolist()
    theirs = k_sampling.BrownianTreeNoiseSampler(x, sigmas[-1], sigmas[0], seed=seed, transform=fn)
    ours = BrownianTreeNoiseSampler(x, sigmas[-1], sigmas[0], seed=seed, transform=fn)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        assert torch.equal(ours(s, s_next), theirs(s, s_next))


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("seed", [None, 8, [8, 9]])
def test_diffusers_noise_sampler_equals_diffusers(seed):
    pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    from diffaccel.integrations.diffusers.common import brownian_tree_noise_sampler

    x = torch.zeros(2, 4, 6, 6)
    sigmas = _karras(9).tolist()
    made = []
    for build in (BrownianTreeNoiseSampler, brownian_tree_noise_sampler):
        torch.manual_seed(0)  # the seed diffusers draws when None
        made.append((build(x, sigmas[-1], sigmas[0], seed), torch.get_rng_state()))
    (theirs, their_state), (ours, state) = made
    assert torch.equal(state, their_state)
    assert all(isinstance(tree, BrownianTree) for tree in ours.tree.trees)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        assert torch.equal(ours(s, s_next), theirs(s, s_next))


@pytest.mark.cuda
def test_on_cuda_as_torchsde():
    """The trees of ComfyUI's *_gpu samplers: generators and draws on the GPU."""
    w0 = torch.zeros(2, 4, 16, 16, device="cuda")
    want, got = _both(0.0292, w0, 14.6146, entropy=4)
    queries = _sampler_queries(_karras(16).tolist())
    _assert_same(_answers(want, queries), _answers(got, queries))
    assert math.isfinite(float(got(0.5, 1.0).abs().sum()))
