"""RelaySum on spanning trees (Vogels et al. 2021, arXiv 2110.04175; docs/algorithms.md#relaysum-mechanism).

Every directed tree edge ``e = (i → j)`` carries a message ``m_e`` (same trailing shape as a worker's value) and an
integer count ``c_e``, both 0 at the start. At step t, with local values ``v_i^t``::

    m_{i→j}^t = v_i^t + Σ_{k ∈ N(i)\\{j}} r_{k→i}^{t−1}        c_{i→j}^t = 1 + Σ_{k ∈ N(i)\\{j}} q_{k→i}^{t−1}
    S_i^t     = v_i^t + Σ_{j ∈ N(i)} r_{j→i}^t                  C_i^t     = 1 + Σ_{j ∈ N(i)} q_{j→i}^t

where ``(r, q)`` is what the receiver actually got: ``(m, c)`` itself, or ``(0, 0)`` when the pair was dropped
(a dropped pair is neither used nor relayed). Without drops, worker k's value of step s reaches worker i at step
``s + dist(i, k) − 1`` and is counted exactly once, so ``S_i^t = Σ_k v_k^{t − max(dist(i,k) − 1, 0)}`` over the
``C_i^t = #{k : dist(i, k) ≤ t + 1}`` workers delivered so far.

Layout: the directed edges are numbered ``0..E−1`` (E = 2(n − 1), sorted by ``(src, dst)``); all index tables are
static numpy arrays built once from the tree (:func:`relay_plan`). Messages are stacked ``(E, ...)`` arrays. Two
static implementations of the sums, both ``O(E·d)`` for bounded degree:

* ``"gather"``: padded gathers ``(E, K)`` of the incoming edges ``k → i, k ≠ j`` (K = max degree − 1) and
  ``(n, K + 1)`` of the edges into each worker; each message is summed directly (no cancellation). Cost
  ``O(E·K·d)``.
* ``"subtract"``: ``R_i = Σ_{k} r_{k→i}`` by one ``segment_sum`` and ``m_{i→j} = v_i + R_i − r_{j→i}``. Cost
  ``O(E·d)`` for any degree (a star tree too), at the price of one float subtraction per message (rounding of
  order ``eps · |R_i|``; counts are integers and exact).

``"auto"`` picks ``gather`` when the maximum degree is at most :data:`GATHER_MAX_DEGREE`, else ``subtract``.

Several trees (double binary trees): coordinate ``c`` of the flattened model goes over tree ``c mod T``
(:func:`split_coordinates` / :func:`merge_coordinates`), so each coordinate travels over exactly one tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

METHODS = ("auto", "gather", "subtract")
GATHER_MAX_DEGREE = 8
COUNT_DTYPE = jnp.int32
COUNT_BYTES = 4


@dataclass(frozen=True, eq=False)
class RelayPlan:
    """Static index tables of one spanning tree on workers ``0..n−1``.

    Attributes:
      n: number of workers.
      src, dst: ``(E,)`` int32; directed edge ``e`` goes ``src[e] → dst[e]``; sorted by ``(src, dst)``.
      reverse: ``(E,)`` int32; ``reverse[e]`` is the edge ``dst[e] → src[e]``.
      relay_index: ``(E, K)`` int32 (K = max(max degree − 1, 0)); the edges ``k → src[e]`` with ``k ≠ dst[e]``,
        padded with ``E`` (a zero row appended to the messages).
      recv_index: ``(n, K + 1)`` int32; the edges ``j → i`` into worker i, padded with ``E``.
      out_degree: ``(n,)`` int64; tree degree of each worker (messages it sends per step).
      tree: the ``nx.Graph`` the plan was built from.
      method: ``"gather"`` or ``"subtract"`` (see the module docstring).
    """

    n: int
    src: np.ndarray
    dst: np.ndarray
    reverse: np.ndarray
    relay_index: np.ndarray
    recv_index: np.ndarray
    out_degree: np.ndarray
    tree: nx.Graph
    method: str

    @property
    def n_edges(self) -> int:
        """E, the number of directed edges (``2 (n − 1)``)."""
        return int(self.src.shape[0])

    @cached_property
    def hops(self) -> np.ndarray:
        """``(n, n)`` int64 tree distances (computed on first use, O(n²))."""
        hops = np.zeros((self.n, self.n), np.int64)
        for i, dists in nx.all_pairs_shortest_path_length(self.tree):
            for j, h in dists.items():
                hops[i, j] = h
        return _readonly(hops)

    @property
    def diameter(self) -> int:
        """Longest tree distance τ_max (a value needs τ_max − 1 steps to cross the tree)."""
        return int(self.hops.max()) if self.n > 1 else 0


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def relay_plan(tree: nx.Graph, method: str = "auto") -> RelayPlan:
    """Build the static :class:`RelayPlan` of an undirected spanning tree with nodes ``0..n−1``.

    Args:
      tree: ``nx.Graph`` tree (e.g. an entry of ``Topology.trees``).
      method: ``"auto"``, ``"gather"`` or ``"subtract"``.

    Raises:
      ValueError: ``tree`` is not an undirected tree on ``0..n−1``, or an unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown relay method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(tree, nx.Graph) or tree.is_directed():
        raise ValueError(f"RelaySum needs an undirected networkx tree, got {type(tree).__name__}")
    n = tree.number_of_nodes()
    if n < 1 or set(tree.nodes) != set(range(n)) or not nx.is_tree(tree):
        raise ValueError(f"RelaySum needs a spanning tree on nodes 0..n-1; got a graph with {n} nodes and "
                         f"{tree.number_of_edges()} edges that is not one")
    edges = sorted({(int(a), int(b)) for a, b in tree.edges} | {(int(b), int(a)) for a, b in tree.edges})
    n_edges = len(edges)
    eid = {e: k for k, e in enumerate(edges)}
    src = np.array([a for a, _ in edges], np.int32).reshape(n_edges)
    dst = np.array([b for _, b in edges], np.int32).reshape(n_edges)
    reverse = np.array([eid[(b, a)] for a, b in edges], np.int32).reshape(n_edges)
    incoming = [[eid[(k, i)] for k in sorted(tree.neighbors(i))] for i in range(n)]
    deg = np.array([len(v) for v in incoming], np.int64)
    max_deg = int(deg.max()) if n_edges else 0
    k_relay = max(max_deg - 1, 0)
    relay_index = np.full((n_edges, k_relay), n_edges, np.int32)
    for e, (i, j) in enumerate(edges):
        others = [k for k in incoming[i] if src[k] != j]
        relay_index[e, :len(others)] = others
    recv_index = np.full((n, max_deg), n_edges, np.int32)
    for i, v in enumerate(incoming):
        recv_index[i, :len(v)] = v
    if method == "auto":
        method = "gather" if max_deg <= GATHER_MAX_DEGREE else "subtract"
    return RelayPlan(n, _readonly(src), _readonly(dst), _readonly(reverse), _readonly(relay_index),
                     _readonly(recv_index), _readonly(deg), tree.copy(), method)


class RelayBuffers(NamedTuple):
    """The relay state of one tree: what each receiver got on each directed edge at the previous step.

    Attributes:
      messages: ``(E, ...)`` float array (trailing shape = one worker's value), zeros at the start.
      counts: ``(E,)`` int32, zeros at the start.
    """

    messages: jax.Array
    counts: jax.Array


class RelayOutput(NamedTuple):
    """Result of :func:`relay_step`.

    Attributes:
      sums: ``(n, ...)`` ``S_i^t``, own value plus everything received this step.
      counts: ``(n,)`` int32 ``C_i^t``, how many workers' values ``sums`` contains.
      buffers: the new :class:`RelayBuffers` (received this step, after drops).
    """

    sums: jax.Array
    counts: jax.Array
    buffers: RelayBuffers


def relay_init(plan: RelayPlan, value_shape: tuple[int, ...], dtype=jnp.float32) -> RelayBuffers:
    """Zero messages ``(E,) + value_shape`` of ``dtype`` and zero counts ``(E,)`` int32."""
    return RelayBuffers(jnp.zeros((plan.n_edges,) + tuple(value_shape), dtype),
                        jnp.zeros((plan.n_edges,), COUNT_DTYPE))


def drop_mask(key: jax.Array, n_edges: int, drop_prob: float) -> jax.Array:
    """Which of ``n_edges`` received (message, count) pairs survive: ``(E,)`` bool, each dropped independently with
    probability ``drop_prob`` (``uniform(key, (E,)) >= drop_prob``)."""
    return jax.random.uniform(key, (n_edges,)) >= drop_prob


def _pad(x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)], axis=0)


def _slot_sum(padded: jax.Array, index: np.ndarray, rows: int) -> jax.Array:
    """``Σ_s padded[index[:, s]]`` with a static loop over the slots (zeros when there are none)."""
    if index.shape[1] == 0:
        return jnp.zeros((rows,) + padded.shape[1:], padded.dtype)
    out = jnp.take(padded, index[:, 0], axis=0)
    for s in range(1, index.shape[1]):
        out = out + jnp.take(padded, index[:, s], axis=0)
    return out


def _bcast(mask: jax.Array, x: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def relay_step(plan: RelayPlan, values: jax.Array, buffers: RelayBuffers, keep: jax.Array | None = None,
               with_counts: bool = True) -> RelayOutput:
    """One RelaySum round on one tree (the module docstring gives the recursion).

    Args:
      plan: the tree's :class:`RelayPlan`.
      values: ``(n, ...)`` this step's local values ``v_i^t``.
      buffers: :class:`RelayBuffers` from the previous step (or :func:`relay_init`).
      keep: optional ``(E,)`` bool; ``False`` drops the (message, count) pair received on that edge this step.
      with_counts: also relay the counts (``False``: counts stay zero and ``RelayOutput.counts`` is all ones).

    Returns:
      :class:`RelayOutput` with ``sums`` of the dtype of ``values``.
    """
    n = plan.n
    messages = buffers.messages.astype(values.dtype)
    src = plan.src
    if plan.method == "gather":
        relayed = _slot_sum(_pad(messages), plan.relay_index, plan.n_edges)
    else:
        total = jax.ops.segment_sum(messages, plan.dst, num_segments=n)
        relayed = jnp.take(total, src, axis=0) - jnp.take(messages, plan.reverse, axis=0)
    new_m = jnp.take(values, src, axis=0) + relayed
    if keep is not None:
        new_m = jnp.where(_bcast(keep, new_m), new_m, jnp.zeros((), new_m.dtype))
    if plan.method == "gather":
        sums = values + _slot_sum(_pad(new_m), plan.recv_index, n)
    else:
        sums = values + jax.ops.segment_sum(new_m, plan.dst, num_segments=n)

    if with_counts:
        counts = buffers.counts
        if plan.method == "gather":
            relayed_c = _slot_sum(_pad(counts), plan.relay_index, plan.n_edges)
        else:
            tot_c = jax.ops.segment_sum(counts, plan.dst, num_segments=n)
            relayed_c = jnp.take(tot_c, src) - jnp.take(counts, plan.reverse)
        new_c = (1 + relayed_c).astype(COUNT_DTYPE)
        if keep is not None:
            new_c = jnp.where(keep, new_c, 0).astype(COUNT_DTYPE)
        if plan.method == "gather":
            totals = 1 + _slot_sum(_pad(new_c), plan.recv_index, n)
        else:
            totals = 1 + jax.ops.segment_sum(new_c, plan.dst, num_segments=n)
        totals = totals.astype(COUNT_DTYPE)
    else:
        new_c = buffers.counts
        totals = jnp.ones((n,), COUNT_DTYPE)
    return RelayOutput(sums, totals, RelayBuffers(new_m, new_c))


def split_coordinates(flat: jax.Array, n_trees: int) -> tuple[jax.Array, ...]:
    """Split ``(n, D)`` flattened models into ``n_trees`` parts by stride: part t = coordinates ``t, t+T, ...``."""
    if n_trees == 1:
        return (flat,)
    return tuple(flat[:, t::n_trees] for t in range(n_trees))


def part_sizes(dim: int, n_trees: int) -> tuple[int, ...]:
    """Number of coordinates of a length-``dim`` vector that go over each of ``n_trees`` trees."""
    return tuple(len(range(t, dim, n_trees)) for t in range(n_trees))


def merge_coordinates(parts: tuple[jax.Array, ...], dim: int) -> jax.Array:
    """Inverse of :func:`split_coordinates`: interleave the parts back into ``(n, dim)``."""
    n_trees = len(parts)
    if n_trees == 1:
        return parts[0]
    width = -(-dim // n_trees)
    padded = [jnp.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts]
    return jnp.stack(padded, axis=2).reshape(parts[0].shape[0], width * n_trees)[:, :dim]


def relay_bytes(plans: tuple[RelayPlan, ...], part_bytes: tuple[int, ...], count: bool = True) -> np.ndarray:
    """Bytes each worker sends per step: ``Σ_t deg_t(i) · (part_bytes[t] + 4·count)``. ``(n,)`` float64 numpy."""
    total = np.zeros(plans[0].n, np.float64)
    for plan, b in zip(plans, part_bytes, strict=True):
        total += plan.out_degree * (b + (COUNT_BYTES if count else 0))
    return total
