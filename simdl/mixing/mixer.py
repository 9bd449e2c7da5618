"""Choose how to apply a topology's mixing matrix to stacked parameters, and build the function that does it.

Split topologies (``Topology.is_split``, e.g. double binary trees) gossip coordinate k of the flattened vector
over tree ``k mod T`` with that tree's own matrix (the RelaySGD authors' ``MultiTopologyGossipMechanism``,
arXiv 2110.04175): :func:`split_map` lays every leaf out as ``(n, M, T)`` so that column t holds tree t's
coordinates, and applies tree t's dense or sparse mixing to that column only (one pass of mixing work in all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simdl.mixing.dense import dense_mix, mean_mix
from simdl.mixing.shift import shift_mix
from simdl.mixing.sparse import sparse_mix

METHODS = ("auto", "dense", "sparse", "shift", "mean")


def _is_uniform_average(w: np.ndarray) -> bool:
    n = w.shape[0]
    return bool(np.allclose(w, 1.0 / n, rtol=0, atol=1e-12))


def split_offsets(tree) -> list[int]:
    """Global index of the first coordinate of each leaf (``jax.tree_util.tree_leaves`` order) when one worker's
    leaves are flattened (C order) and concatenated, as the authors' ``pack`` does before ``tensor[t::T]``."""
    offs, total = [], 0
    for x in jax.tree_util.tree_leaves(tree):
        offs.append(total)
        total += int(np.prod(x.shape[1:], dtype=np.int64))
    return offs


def split_map(fns, tree):
    """Apply ``fns[t]`` to the coordinates of part t of every leaf of a stacked pytree: coordinate k of one
    worker's flattened, concatenated leaves (see :func:`split_offsets`) belongs to part ``k mod T``, T = len(fns).

    Args:
      fns: T callables, each mapping an ``(n, m)`` array to an ``(n, m)`` array of the same dtype (acting along the
        worker axis only, e.g. ``lambda y: dense_mix(W_t, y)``).
      tree: pytree with leading worker axis n.

    Returns:
      Pytree of the same structure, shapes and dtypes. Each leaf is padded (zeros) to whole rows of T and viewed as
      ``(n, M, T)``; ``fns[t]`` sees column t, ``(n, M)``. With T = 1 this is ``fns[0]`` on each leaf.
    """
    parts = len(fns)

    def one(x, offset):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        m = flat.shape[1]
        r = offset % parts
        rows = -(-(r + m) // parts)
        pad = rows * parts - r - m
        if r or pad:
            flat = jnp.pad(flat, ((0, 0), (r, pad)))
        cube = flat.reshape(n, rows, parts)
        out = jnp.stack([fns[t](cube[:, :, t]) for t in range(parts)], axis=-1)
        return out.reshape(n, rows * parts)[:, r:r + m].reshape(x.shape)

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [one(x, o) for x, o in zip(leaves, split_offsets(tree),
                                                                           strict=True)])


def split_sizes(tree, parts: int) -> np.ndarray:
    """float64 ``(parts,)``: bytes of ONE worker's coordinates that fall in each part of :func:`split_map`."""
    out = np.zeros(parts, np.float64)
    for x, o in zip(jax.tree_util.tree_leaves(tree), split_offsets(tree), strict=True):
        m = int(np.prod(x.shape[1:], dtype=np.int64))
        first = (np.arange(parts) - o) % parts  # local index of the first coordinate of part t
        out += np.maximum(0, -(-(m - first) // parts)) * x.dtype.itemsize
    return out


def split_gossip_bytes(topology, tree) -> np.ndarray:
    """float64 ``(n,)``: bytes each worker sends in one gossip round of a split topology, ``Σ_t`` (out-degree of
    worker i on tree t) × (bytes of its coordinates on tree t); ``out_degree × model bytes`` if not split."""
    degs = topology.tree_out_degree()
    return (degs * split_sizes(tree, degs.shape[0])[:, None]).sum(axis=0)


def choose_method(topology, method: str = "auto") -> str:
    """Pick the mixing path for ``topology``.

    ``auto`` rules (measured in ``benchmarks/mixing.py``): exact average ``11ᵀ/n`` → ``mean``; circulant with at most
    8 offsets at every step → ``shift``; otherwise neighbour slots (``sparse``) unless the slot count exceeds n/4,
    where one dense matmul is cheaper. Split topologies (per-tree gossip) use ``mean`` (n ≤ 2), ``sparse`` or
    ``dense`` by the same rules applied to the trees' matrices; ``shift`` is refused for them.

    Raises:
      ValueError: unknown ``method`` or a ``method`` the topology cannot use (``shift`` on a non-circulant graph or
        a split topology, ``mean`` on a W that is not 11ᵀ/n).
    """
    if method not in METHODS:
        raise ValueError(f"unknown mixing method {method!r}; valid: {', '.join(METHODS)}")
    mats = list(topology.gossip_weights)
    if method == "mean":
        if not all(_is_uniform_average(w) for w in mats):
            raise ValueError(f"mixing method 'mean' needs W = 11ᵀ/n, but {topology.name} has other weights")
        return method
    if topology.is_split:
        if method == "shift":
            raise ValueError(f"mixing method 'shift' needs a circulant W; {topology.name} gossips per tree (split "
                             "topology); use 'auto', 'sparse' or 'dense'")
        if method != "auto":
            return method
        if all(_is_uniform_average(w) for w in mats):
            return "mean"
        index, _ = topology.tree_neighbor_slots(0)
        return "sparse" if index.shape[1] <= max(4, topology.n // 4) else "dense"
    circ = [topology.circulant_offsets(s) for s in range(topology.period)]
    if method == "shift":
        if any(c is None for c in circ):
            raise ValueError(f"mixing method 'shift' needs a circulant W; {topology.name} is not circulant")
        return method
    if method != "auto":
        return method
    if all(_is_uniform_average(w) for w in mats):
        return "mean"
    if all(c is not None for c in circ) and max(len(c) for c in circ) <= 8:
        return "shift"
    index, _ = topology.neighbor_slots(0)
    return "sparse" if index.shape[1] <= max(4, topology.n // 4) else "dense"


@dataclass(frozen=True, eq=False)
class Mixer:
    """Applies ``W_t`` to a stacked pytree: ``mixer(tree, step) == W_{step} @ X`` along the worker axis.

    Attributes:
      method: one of ``dense``, ``sparse``, ``shift``, ``mean``.
      n: number of workers.
      period: number of distinct mixing matrices (1 for static topologies).
      tables: static numpy arrays used by the chosen method (stacked over the period, or over the trees of a split
        topology).
      parts: T, the number of trees of a split topology (coordinate k mixed by tree ``k mod T``, see
        :func:`split_map`); 1 otherwise.
    """

    method: str
    n: int
    period: int
    tables: Any
    parts: int = 1

    def __call__(self, tree, step=0):
        t = self.tables
        if self.method == "mean":
            return mean_mix(tree)
        if self.parts > 1:
            if self.method == "dense":
                fns = [lambda y, w=w: dense_mix(jnp.asarray(w), y) for w in t["weights"]]
            else:
                fns = [lambda y, i=i, w=w: sparse_mix(jnp.asarray(i), jnp.asarray(w), y)
                       for i, w in zip(t["index"], t["weight"], strict=True)]
            return split_map(fns, tree)
        if self.method == "dense":
            w = t["weights"][0] if self.period == 1 else jnp.asarray(t["weights"])[step % self.period]
            return dense_mix(jnp.asarray(w), tree)
        if self.method == "sparse":
            if self.period == 1:
                return sparse_mix(jnp.asarray(t["index"][0]), jnp.asarray(t["weight"][0]), tree)
            p = step % self.period
            return sparse_mix(jnp.asarray(t["index"])[p], jnp.asarray(t["weight"])[p], tree)
        # shift
        if self.period == 1:
            return shift_mix(tuple(int(o) for o in t["offsets"][0]), t["coeffs"][0], tree)
        p = step % self.period
        offs = jnp.asarray(t["offsets"])[p]
        return shift_mix([offs[s] for s in range(t["offsets"].shape[1])], jnp.asarray(t["coeffs"])[p], tree)


def make_mixer(topology, method: str = "auto") -> Mixer:
    """Build the :class:`Mixer` for ``topology`` (static or time-varying).

    Args:
      topology: a :class:`simdl.topologies.Topology`.
      method: ``auto`` (default), ``dense``, ``sparse``, ``shift`` or ``mean``; see :func:`choose_method`.

    Returns:
      A :class:`Mixer`; all tables are float32 / int32 numpy arrays stacked over the topology's period (over its
      trees for a split topology: ``parts = T``, ``dense`` ``(T, n, n)``, ``sparse`` ``(T, n, k)``).
    """
    method = choose_method(topology, method)
    period = topology.period
    if topology.is_split and method != "mean":
        parts = len(topology.tree_weights)
        if method == "dense":
            tables = {"weights": np.stack(topology.tree_weights).astype(np.float32)}
        else:
            slots = [topology.tree_neighbor_slots(t) for t in range(parts)]
            tables = {"index": np.stack([i for i, _ in slots]).astype(np.int32),
                      "weight": np.stack([w for _, w in slots]).astype(np.float32)}
        return Mixer(method=method, n=topology.n, period=1, tables=tables, parts=parts)
    if method == "mean":
        tables = {}
    elif method == "dense":
        tables = {"weights": np.stack([topology.weights_at(s) for s in range(period)]).astype(np.float32)}
    elif method == "sparse":
        slots = [topology.neighbor_slots(s) for s in range(period)]
        k = max(i.shape[1] for i, _ in slots)
        idx = np.zeros((period, topology.n, k), np.int32)
        wgt = np.zeros((period, topology.n, k), np.float32)
        for p, (i, w) in enumerate(slots):
            idx[p, :, : i.shape[1]] = i
            idx[p, :, i.shape[1]:] = np.arange(topology.n)[:, None]
            wgt[p, :, : w.shape[1]] = w
        tables = {"index": idx, "weight": wgt}
    else:
        circ = [topology.circulant_offsets(s) for s in range(period)]
        k = max(len(c) for c in circ)
        offs = np.zeros((period, k), np.int32)
        coef = np.zeros((period, k), np.float32)
        for p, c in enumerate(circ):
            for s, (o, w) in enumerate(c):
                offs[p, s], coef[p, s] = o, w
        tables = {"offsets": offs, "coeffs": coef}
    return Mixer(method=method, n=topology.n, period=period, tables=tables)
