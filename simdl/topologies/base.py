"""The :class:`Topology` value: a communication graph plus its (possibly time-varying) mixing matrices.

Conventions: workers are nodes 0..n-1; ``(W X)_i = sum_j W[i, j] x_j``; W is row-stochastic. For a directed
graph an edge ``j -> i`` means worker j sends to worker i (W[i, j] may be non-zero).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from simdl.topologies import spectral
from simdl.topologies.weights import check_support, resolve_weights, validate_mixing_matrix

DOUBLY_STOCHASTIC_TOL = 1e-8


def check_count(value: object, what: str = "n") -> int:
    """Return ``value`` as a Python int >= 1, else raise ValueError naming it (``what`` = its name)."""
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or v < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {what}={value!r}")
    return int(v)


def _check_step(step: object) -> int:
    try:
        s = operator.index(step)
    except TypeError:
        raise ValueError(f"step must be a non-negative integer, got step={step!r}") from None
    if s < 0:
        raise ValueError(f"step must be a non-negative integer, got step={s}")
    return int(s)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def slot_layout(mats) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Padded in-neighbour slots ``(index (n, k) int32, weight (n, k) float64)`` of each (n, n) matrix in ``mats``,
    with one k = 1 + the largest in-degree over all of them (layout of :meth:`Topology.neighbor_slots`)."""
    n = mats[0].shape[0]
    nbrs_per_step = []
    for w in mats:
        off = w != 0
        np.fill_diagonal(off, False)
        nbrs_per_step.append([np.flatnonzero(off[i]) for i in range(n)])
    k = 1 + max(len(v) for nbrs in nbrs_per_step for v in nbrs)
    out = []
    for w, nbrs in zip(mats, nbrs_per_step, strict=True):
        index = np.repeat(np.arange(n, dtype=np.int32)[:, None], k, axis=1)
        weight = np.zeros((n, k), dtype=np.float64)
        weight[:, 0] = np.diag(w)
        for i, v in enumerate(nbrs):
            index[i, 1:1 + len(v)] = v
            weight[i, 1:1 + len(v)] = w[i, v]
        index.setflags(write=False)
        weight.setflags(write=False)
        out.append((index, weight))
    return tuple(out)


def components_message(graph: nx.Graph) -> str | None:
    """None if ``graph`` is connected (strongly, if directed), else a message naming the components."""
    if graph.is_directed():
        comps = list(nx.strongly_connected_components(graph))
        kind = "graph is not strongly connected"
    else:
        comps = list(nx.connected_components(graph))
        kind = "graph is disconnected"
    if len(comps) <= 1:
        return None
    sizes = sorted((len(c) for c in comps), reverse=True)
    return (f"{kind}: {len(comps)} components (sizes {sizes[:10]}); "
            "consensus needs a connected graph (pass allow_disconnected=True to accept it)")


@dataclass(frozen=True, eq=False)
class Topology:
    """A communication topology of n workers with its mixing matrix (or a periodic schedule of them).

    Attributes:
        name: human-readable name, e.g. ``"ring(16)"``.
        graph: ``nx.Graph`` (or ``nx.DiGraph``, edge j -> i = "j sends to i") with nodes 0..n-1 and no
            self-loops; for a time-varying topology the union over the schedule.
        weights: (n, n) float64 row-stochastic mixing matrix, ``(W X)_i = sum_j W[i, j] x_j``; for a
            time-varying topology ``weights_at(0)``. Stored read-only.
        schedule: ``None`` (static) or the period's matrices; ``weights_at(step) = schedule[step % period]``.
        trees: spanning trees for RelaySum (arXiv 2110.04175), each an undirected ``nx.Graph`` on 0..n-1
            whose edges are graph edges; ``None`` for non-tree topologies.
        tree_weights: ``None`` (gossip uses ``weights``) or one (n, n) float64 row-stochastic matrix per entry of
            ``trees``, each on its tree's edges (read-only). When set the topology is *split*
            (:attr:`is_split`): gossip (``ctx.mix``) sends coordinate k of the flattened vector it mixes over tree
            ``k mod T`` only, with ``tree_weights[k mod T]`` (T = ``len(trees)``), as the RelaySGD authors'
            ``MultiTopologyGossipMechanism`` does on double binary trees; ``weights`` is then the matrix of the
            union graph (kept for reference and for algorithms with their own tables) and the spectral
            quantities refer to the trees. Static topologies only.

    Raises:
        ValueError: (at construction) invalid matrices, nodes not 0..n-1, weights off the graph's edges,
            ``weights`` != ``schedule[0]``, a ``trees`` entry that is not a spanning tree of the graph, or
            ``tree_weights`` that do not match ``trees`` (count, row-stochasticity, support) or come with a
            schedule.
    """

    name: str
    graph: nx.Graph
    weights: np.ndarray
    schedule: tuple[np.ndarray, ...] | None = None
    trees: tuple[nx.Graph, ...] | None = None
    tree_weights: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        n = self.graph.number_of_nodes()
        if n < 1 or set(self.graph.nodes) != set(range(n)):
            raise ValueError(f"topology graph nodes must be 0..n-1 with n >= 1, got {n} nodes")
        if nx.number_of_selfloops(self.graph):
            raise ValueError("topology graph must not have self-loops (self weights are implicit)")
        w = validate_mixing_matrix(self.weights, n)
        check_support(w, self.graph)
        object.__setattr__(self, "weights", _readonly(w))
        if self.schedule is not None:
            sched = tuple(self.schedule)
            if not sched:
                raise ValueError("schedule must hold at least one matrix, got an empty schedule")
            checked = []
            for k, m in enumerate(sched):
                try:
                    m = validate_mixing_matrix(m, n)
                    check_support(m, self.graph)
                except ValueError as err:
                    raise ValueError(f"schedule[{k}]: {err}") from None
                checked.append(_readonly(m))
            if not np.array_equal(checked[0], self.weights):
                raise ValueError("weights must equal schedule[0] for a time-varying topology")
            object.__setattr__(self, "schedule", tuple(checked))
        if self.trees is not None:
            trees = tuple(self.trees)
            for k, t in enumerate(trees):
                if t.is_directed() or set(t.nodes) != set(range(n)) or not nx.is_tree(t):
                    raise ValueError(f"trees[{k}] must be an undirected spanning tree on nodes 0..{n - 1}")
                for a, b in t.edges:
                    if not (self.graph.has_edge(a, b) or self.graph.has_edge(b, a)):
                        raise ValueError(f"trees[{k}] edge {{{a}, {b}}} is not an edge of the graph")
            object.__setattr__(self, "trees", trees)
        if self.tree_weights is not None:
            object.__setattr__(self, "tree_weights", self._checked_tree_weights(n))

    def _checked_tree_weights(self, n: int) -> tuple[np.ndarray, ...]:
        tw = tuple(self.tree_weights)
        if self.trees is None or len(tw) != len(self.trees):
            have = 0 if self.trees is None else len(self.trees)
            raise ValueError(f"tree_weights needs one matrix per tree: got {len(tw)} matrices for {have} trees")
        if self.schedule is not None and len(self.schedule) > 1:
            raise ValueError("tree_weights (per-tree gossip) needs a static topology, got a schedule of "
                             f"{len(self.schedule)} matrices")
        out = []
        for k, (m, t) in enumerate(zip(tw, self.trees, strict=True)):
            try:
                m = validate_mixing_matrix(m, n)
                check_support(m, t)
            except ValueError as err:
                raise ValueError(f"tree_weights[{k}]: {err}") from None
            out.append(_readonly(m))
        return tuple(out)

    # ----------------------------------------------------------------- basic structure
    @property
    def n(self) -> int:
        """Number of workers."""
        return int(self.weights.shape[0])

    @property
    def is_time_varying(self) -> bool:
        """Whether the mixing matrix changes with the step (``schedule`` is set and has period > 1)."""
        return self.schedule is not None and len(self.schedule) > 1

    @property
    def period(self) -> int:
        """Length of the schedule (1 for a static topology)."""
        return 1 if self.schedule is None else len(self.schedule)

    @property
    def period_weights(self) -> tuple[np.ndarray, ...]:
        """All mixing matrices of one period, ``(weights_at(0), ..., weights_at(period - 1))``."""
        return (self.weights,) if self.schedule is None else self.schedule

    @property
    def is_split(self) -> bool:
        """Whether gossip is split over the trees by coordinate (``tree_weights`` is set)."""
        return self.tree_weights is not None

    @property
    def gossip_weights(self) -> tuple[np.ndarray, ...]:
        """The matrices ``ctx.mix`` applies: ``tree_weights`` of a split topology, else ``period_weights``."""
        return self.tree_weights if self.is_split else self.period_weights

    def weights_at(self, step: int = 0) -> np.ndarray:
        """(n, n) float64 read-only mixing matrix used at ``step`` (``schedule[step % period]``).

        Raises:
            ValueError: negative or non-integer step.
        """
        return self.period_weights[_check_step(step) % self.period]

    # ----------------------------------------------------------------- spectral quantities
    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of ``weights`` (computed once per topology; float64, complex for non-symmetric W)."""
        return spectral.eigenvalues(self.weights)

    @cached_property
    def rho(self) -> float:
        """``max(|λ_2|, |λ_n|)`` of ``weights`` (time-varying: of the static ``weights_at(0)`` only).

        Split topologies (:attr:`is_split`): ``max_t rho(tree_weights[t])``, the slowest tree, since every
        coordinate is gossiped over one tree only (not the union graph's ``weights``).
        """
        if self.is_split:
            return max(spectral.rho(w) for w in self.tree_weights)
        return spectral.rho(self.weights, self.eigenvalues)

    @property
    def spectral_gap(self) -> float:
        """``1 - rho`` of ``weights`` (time-varying: of ``weights_at(0)`` only, not of the schedule; split
        topologies: of the slowest tree, see :attr:`rho`)."""
        return 1.0 - self.rho

    @cached_property
    def lambda_min(self) -> float:
        """Smallest eigenvalue of ``weights`` (real part if non-symmetric; time-varying: weights_at(0); split
        topologies: the smallest over ``tree_weights``)."""
        if self.is_split:
            return min(spectral.lambda_min(w) for w in self.tree_weights)
        return spectral.lambda_min(self.weights, self.eigenvalues)

    # ----------------------------------------------------------------- graph quantities
    @cached_property
    def is_connected(self) -> bool:
        """Whether the graph is connected (strongly connected if directed)."""
        return components_message(self.graph) is None

    @cached_property
    def diameter(self) -> int:
        """Graph diameter in hops (directed: longest shortest sender-to-receiver path).

        Raises:
            ValueError: the graph is disconnected.
        """
        if not self.is_connected:
            raise ValueError(f"diameter of {self.name} is undefined: {components_message(self.graph)}")
        return 0 if self.n == 1 else int(nx.diameter(self.graph))

    @cached_property
    def max_degree(self) -> int:
        """Maximum number of neighbours of a worker in the graph (directed: maximum in-degree)."""
        degs = self.graph.in_degree() if self.graph.is_directed() else self.graph.degree()
        return max((int(d) for _, d in degs), default=0)

    @cached_property
    def is_tree(self) -> bool:
        """Whether the graph is an undirected tree (a single worker counts as a tree)."""
        return (not self.graph.is_directed()) and nx.is_tree(self.graph)

    @cached_property
    def is_symmetric(self) -> bool:
        """Whether every matrix of the period (and every ``tree_weights`` matrix) is symmetric (to 1e-12)."""
        return all(spectral.is_symmetric(w) for w in self.period_weights + (self.tree_weights or ()))

    @cached_property
    def is_doubly_stochastic(self) -> bool:
        """Whether every matrix of the period (and every ``tree_weights`` matrix) also has columns summing to 1
        (to 1e-8)."""
        return all(np.max(np.abs(w.sum(axis=0) - 1.0)) <= DOUBLY_STOCHASTIC_TOL
                   for w in self.period_weights + (self.tree_weights or ()))

    # ----------------------------------------------------------------- layouts for mixing kernels
    @cached_property
    def _slots(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return slot_layout(self.period_weights)

    @cached_property
    def _tree_slots(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return slot_layout(self.tree_weights) if self.is_split else self._slots

    def tree_neighbor_slots(self, tree: int) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour slots (layout of :meth:`neighbor_slots`) of ``tree_weights[tree]``, padded to k = 1 + the
        largest in-degree over all trees.

        Raises:
            ValueError: the topology is not split, or ``tree`` is not in 0..T-1.
        """
        if not self.is_split:
            raise ValueError(f"tree_neighbor_slots needs a split topology (tree_weights set); {self.name} is not")
        t = len(self.tree_weights)
        if isinstance(tree, bool) or not isinstance(tree, (int, np.integer)) or not 0 <= tree < t:
            raise ValueError(f"tree must be an index in 0..{t - 1}, got tree={tree!r}")
        return self._tree_slots[int(tree)]

    def neighbor_slots(self, step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Padded in-neighbour lists of ``weights_at(step)``.

        Returns:
            ``(index, weight)``: (n, k) int32 and (n, k) float64, read-only, with k = 1 + max in-degree over
            the whole period. Slot 0 is the worker itself (weight ``W[i, i]``), then its in-neighbours j
            (``W[i, j] != 0``) ascending, then padding (index i, weight 0.0). So
            ``(W X)_i = sum_s weight[i, s] * X[index[i, s]]``.
        """
        return self._slots[_check_step(step) % self.period]

    @cached_property
    def _circulant(self) -> tuple[tuple[tuple[int, float], ...] | None, ...]:
        return tuple(spectral.circulant_offsets(w) for w in self.period_weights)

    def circulant_offsets(self, step: int = 0) -> tuple[tuple[int, float], ...] | None:
        """``((o, c_o), ...)`` if ``weights_at(step)`` is circulant (``W[i, (i+o) % n] == c_o``), else None.

        Offsets are ascending in 0..n-1 with non-zero ``c_o``; ``(W X)_i = sum_o c_o X[(i + o) % n]``,
        i.e. ``sum_o c_o * jnp.roll(X, -o, axis=0)``.
        """
        return self._circulant[_check_step(step) % self.period]

    def out_degree(self, step: int = 0) -> np.ndarray:
        """(n,) int64: messages worker i sends at ``step`` = number of j != i with ``W[j, i] != 0``."""
        off = self.weights_at(step) != 0
        np.fill_diagonal(off, False)
        return off.sum(axis=0).astype(np.int64)

    def tree_out_degree(self) -> np.ndarray:
        """(T, n) int64: messages worker i sends per gossip round on tree t (number of j != i with
        ``tree_weights[t][j, i] != 0``); ``(1, n)`` = ``out_degree(0)`` for a topology that is not split."""
        mats = self.tree_weights if self.is_split else (self.weights,)
        out = []
        for w in mats:
            off = w != 0
            np.fill_diagonal(off, False)
            out.append(off.sum(axis=0))
        return np.stack(out).astype(np.int64)

    def describe(self) -> dict:
        """JSON-serialisable summary: name, n, spectral_gap, rho, lambda_min, diameter (None if
        disconnected), max_degree, time_varying, period, gossip_trees (T of a split topology, else 1)."""
        return {
            "name": self.name,
            "n": self.n,
            "spectral_gap": float(self.spectral_gap),
            "rho": float(self.rho),
            "lambda_min": float(self.lambda_min),
            "diameter": self.diameter if self.is_connected else None,
            "max_degree": int(self.max_degree),
            "time_varying": bool(self.is_time_varying),
            "period": int(self.period),
            "gossip_trees": len(self.tree_weights) if self.is_split else 1,
        }

    def __repr__(self) -> str:
        return f"Topology({self.name}, n={self.n}, period={self.period})"


def build(name: str, graph: nx.Graph, weights: str | np.ndarray = "metropolis",
          trees: tuple[nx.Graph, ...] | None = None, allow_disconnected: bool = False,
          tree_weights: tuple[np.ndarray, ...] | None = None) -> Topology:
    """Make a static :class:`Topology` from a graph on 0..n-1 and a weight spec.

    Args:
        name: topology name.
        graph: graph with nodes 0..n-1 (self-loops are dropped).
        weights: ``"metropolis"``, ``"uniform"`` or a custom (n, n) array on the graph's edges.
        trees: optional spanning trees (RelaySum).
        allow_disconnected: accept a disconnected graph.
        tree_weights: optional per-tree gossip matrices (one per tree), see :class:`Topology`.

    Raises:
        ValueError: disconnected graph (unless allowed), invalid weights.
    """
    graph = graph.copy()
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    if not allow_disconnected:
        msg = components_message(graph)
        if msg is not None:
            raise ValueError(msg)
    return Topology(name=name, graph=graph, weights=resolve_weights(graph, weights), trees=trees,
                    tree_weights=tree_weights)
