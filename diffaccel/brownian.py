"""Brownian-tree noise: an exact, faster twin of ``torchsde.BrownianTree``.

The SDE samplers of k-diffusion, ComfyUI and diffusers (DPM++ SDE, DPM++ 2M/3M
SDE, Cosine DPM-Solver) take their noise from torchsde's Brownian tree, so that
one seed gives the same Brownian path at any step count. That tree is most of
their time: every query descends a dyadic tree (about 24 levels at torchsde's
tolerance of 1e-6) and draws one normal tensor of the latent's size per node.

This class gives the same increments, bit for bit, for the same seed and
queries: the same nodes (torchsde's halfway tree, times rounded to the
tolerance's digits), the same per-node seeds (numpy's ``SeedSequence`` on the
node's spawn key and depth), the same ``torch.randn`` draws and the same
Brownian-bridge arithmetic, written as the same tensor expressions. What it
does not repeat is torchsde's redundant work: torchsde draws a node's bridge
noise once for its left child and again for its right one, and recomputes
nodes that fall out of its 45-entry cache on the way down; here one draw
gives both children, which are cached together, and nodes are found by a
loop instead of generator trampolines. On a k-diffusion loop that is about a
third of torchsde's normal draws per step (see docs/k-diffusion.md).

Only what the samplers use is here: interval queries (and point queries, as
torchsde answers them) without Lévy area.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Optional

import torch

# Cached increments, in entries of a node's two children. A sampler's query
# touches the nodes on the paths to its two ends, about 24 levels each, and the
# next query shares one end: 64 entries keep them all. For large latents the
# cache is held to _CACHE_BYTES, but never below torchsde's own 45 tensors.
_CACHED_PAIRS = 64
_CACHE_BYTES = 256 << 20
_TORCHSDE_CACHED_PAIRS = 23

# Splits toward one time before giving up (torchsde: Python's recursion limit);
# a halfway tree reaches 1e-6 of a unit interval in 20.
_MAX_DEPTH = 500


class _Node:
    """One interval of the tree; split nodes also carry their children and the
    seed of their bridge noise."""

    __slots__ = ("start", "end", "parent", "is_left", "key", "depth", "midway", "left", "right", "seed")

    def __init__(self, start: float, end: float, parent: Optional["_Node"], is_left: bool):
        self.start, self.end, self.parent, self.is_left = start, end, parent, is_left
        self.midway = None


class BrownianTree:
    """A Brownian motion on [t0, t1] fixed by ``entropy``: ``tree(ta, tb)`` is its
    increment W(tb) - W(ta), ``tree(t)`` its value W(t) + w0. Same constructor and
    results as ``torchsde.BrownianTree`` (``cache_depth`` and ``safety`` are unused
    there too)."""

    def __init__(
        self,
        t0,
        w0: torch.Tensor,
        t1=None,
        w1: Optional[torch.Tensor] = None,
        entropy: Optional[int] = None,
        tol: float = 1e-6,
        pool_size: int = 24,
        cache_depth: int = 9,
        safety: Optional[float] = None,
    ):
        import numpy as np

        for name, value in (("Initial time t0", t0), ("Terminal time t1", t1)):
            if value is not None and not _is_scalar(value):
                raise ValueError(f"{name} should be a float or 0-d torch.Tensor.")
        if t1 is None:
            t1 = t0 + 1
        if t0 > t1:
            raise ValueError(f"Initial time {t0} should be less than terminal time {t1}.")
        t0, t1 = float(t0), float(t1)
        if tol <= 0.0:
            raise ValueError("`tol` should be positive.")
        if entropy is None:  # from numpy's global generator, as torchsde draws it
            entropy = np.random.randint(0, 2**31 - 1)
        self._w0 = w0
        self._size, self._dtype, self._device = tuple(w0.shape), w0.dtype, w0.device
        self._entropy, self._pool_size = entropy, pool_size
        self._digits = -int(math.log10(tol))
        self._seed_sequence = np.random.SeedSequence
        self._generator = torch.Generator(self._device)
        self._root = _Node(self._round(t0), self._round(t1), None, True)
        self._root.key, self._root.depth = 0, 0
        self._last = self._root
        if w1 is None:
            w_seed = self._seed_sequence(entropy=entropy, pool_size=pool_size).generate_state(3)[0]
            self._root_increment = self._randn(w_seed) * math.sqrt(t1 - t0)
        else:
            self._root_increment = w1 - w0
        self._cache: "OrderedDict[_Node, tuple]" = OrderedDict()
        pair_bytes = 2 * math.prod(self._size) * self._root_increment.element_size()
        self._cache_pairs = max(_TORCHSDE_CACHED_PAIRS, min(_CACHED_PAIRS, _CACHE_BYTES // max(pair_bytes, 1)))

    @property
    def shape(self):
        return self._size

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    def __call__(self, t, tb=None, return_U: bool = False, return_A: bool = False) -> torch.Tensor:
        if return_U or return_A:
            raise ValueError(
                "diffaccel's BrownianTree has no Lévy area: use torchsde.BrownianTree for return_U/return_A"
            )
        point = tb is None
        if point:
            warnings.warn(
                "BrownianInterval is optimised for interval-based queries, not point evaluation.", stacklevel=2
            )
            ta, tb, tb_name = self._root.start, t, "ta"
        else:
            ta, tb_name = t, "tb"
        w = self._increment(float(ta), float(tb), tb_name)
        return w + self._w0 if point else w

    # --- queries ------------------------------------------------------------------

    def _round(self, t: float) -> float:
        return round(t, self._digits)

    def _increment(self, ta: float, tb: float, tb_name: str) -> torch.Tensor:
        # torchsde's clamping to [t0, t1], warnings and refusal, word for word.
        start, end = self._root.start, self._root.end
        if ta < start:
            warnings.warn(f"Should have ta>=t0 but got ta={ta} and t0={start}.", stacklevel=3)
            ta = start
        if tb < start:
            warnings.warn(f"Should have {tb_name}>=t0 but got {tb_name}={tb} and t0={start}.", stacklevel=3)
            tb = start
        if ta > end:
            warnings.warn(f"Should have ta<=t1 but got ta={ta} and t1={end}.", stacklevel=3)
            ta = end
        if tb > end:
            warnings.warn(f"Should have {tb_name}<=t1 but got {tb_name}={tb} and t1={end}.", stacklevel=3)
            tb = end
        if ta > tb:
            raise RuntimeError(f"Query times ta={ta:.3f} and tb={tb:.3f} must respect ta <= tb.")
        if ta == tb:
            return torch.zeros(self._size, dtype=self._dtype, device=self._device)
        pieces = self._pieces(self._round(ta), self._round(tb))
        w = self._node_increment(pieces[0])
        for piece in pieces[1:]:
            w = w + self._node_increment(piece)
        return w

    def _pieces(self, ta: float, tb: float) -> list:
        """The tree's intervals that tile [ta, tb], left to right: torchsde's _loc,
        step for step (from the last interval found, up to one that holds the
        query, then down; a node met unsplit is split on the way to the query's
        end, at halfway points), so that even where the tolerance's rounding
        makes intervals empty it finds what torchsde finds."""
        out, pending = [], [(self._last, ta, tb)]
        while pending:
            node, a, b = pending.pop()
            while True:
                if a < node.start or b > node.end:
                    node = node.parent
                elif a == node.start and b == node.end:
                    out.append(node)
                    break
                elif node.midway is None:
                    toward_end = a == node.start
                    self._split_toward(node, b if toward_end else a)
                    node = node.left if toward_end else node.right
                elif b <= node.midway:
                    node = node.left
                elif a >= node.midway:
                    node = node.right
                else:
                    pending.append((node.right, node.midway, b))
                    node, b = node.left, node.midway
        self._last = out[-1]
        return out

    def _split_toward(self, node: _Node, t: float) -> None:
        """Splits node at its halfway point, then the child holding t, and so on
        until a midpoint is t (torchsde's _split on a halfway tree)."""
        for _ in range(_MAX_DEPTH):
            self._split(node)
            if t == node.midway:
                return
            node = node.right if t > node.midway else node.left
        # torchsde recurses here until Python's limit: the same error, sooner.
        raise RecursionError(f"BrownianTree: the time {t} does not resolve at the tolerance's digits")

    def _split(self, node: _Node) -> None:
        node.midway = self._round(0.5 * (node.end + node.start))
        if node.parent is not None:
            node.key = 2 * node.parent.key + (0 if node.is_left else 1)
            node.depth = node.parent.depth + 1
        state = self._seed_sequence(
            entropy=self._entropy, spawn_key=(node.key, node.depth), pool_size=self._pool_size
        ).generate_state(4)
        node.seed = state[0]
        node.left = _Node(node.start, node.midway, node, True)
        node.right = _Node(node.midway, node.end, node, False)

    # --- increments ---------------------------------------------------------------

    def _node_increment(self, node: _Node) -> torch.Tensor:
        """W over one node: from the nearest ancestor whose increment is known, one
        Brownian bridge per level, each giving (and caching) both children."""
        chain = []
        while node is not self._root and node.parent not in self._cache:
            chain.append(node)
            node = node.parent
        if node is self._root:
            w = self._root_increment
        else:
            self._cache.move_to_end(node.parent)
            w = self._cache[node.parent][0 if node.is_left else 1]
        for child in reversed(chain):  # w is the increment over child.parent
            pair = self._bridge(child.parent, w)
            self._cache[child.parent] = pair
            if len(self._cache) > self._cache_pairs:
                self._cache.popitem(last=False)
            w = pair[0 if child.is_left else 1]
        return w

    def _bridge(self, parent: _Node, w: torch.Tensor) -> tuple:
        """torchsde's Brownian bridge over a split node, the same expressions in
        the same order (so the same roundings), its noise drawn once."""
        h_reciprocal = 1 / (parent.end - parent.start)
        left_diff = parent.midway - parent.start
        right_diff = parent.end - parent.midway
        var = left_diff * right_diff * h_reciprocal
        # torchsde: left_w = left_diff * w * h_reciprocal + math.sqrt(var) * noise, the
        # same ops in place where a temporary is ours (one allocation instead of four).
        left_w = w.mul(left_diff).mul_(h_reciprocal)
        left_w.add_(self._randn(parent.seed).mul_(math.sqrt(var)))
        return left_w, w - left_w

    def _randn(self, seed) -> torch.Tensor:
        self._generator.manual_seed(int(seed))
        return torch.randn(self._size, dtype=self._dtype, device=self._device, generator=self._generator)


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)
