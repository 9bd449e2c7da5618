"""Topology factories for standard graphs, exponential graphs and user-given graphs or matrices.

Every factory returns a :class:`~simdl.topologies.base.Topology`. Unless the construction fixes the weights,
``weights`` is ``"metropolis"`` (default), ``"uniform"`` or a custom (n, n) numpy array on the graph's edges.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from simdl.topologies.base import Topology, build, check_count, components_message
from simdl.topologies.weights import validate_mixing_matrix

ER_MAX_TRIES = 1000
SOCIAL_NETWORK_N = 32


def ring(n: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """Ring (cycle) of n workers: i ~ i ± 1 mod n. n = 1: one worker; n = 2: a single edge.

    MH weights give 1/3 on each edge and the diagonal (n >= 3); gap ≈ 0.195 (n=8), 0.0508 (n=16).

    Raises:
        ValueError: n not an integer >= 1; invalid weights.
    """
    n = check_count(n)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, (i + 1) % n) for i in range(n) if (i + 1) % n != i)
    return build(f"ring({n})", g, weights)


def torus(rows: int, cols: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """2-D torus (wrap-around grid) of rows × cols workers; node (r, c) is worker ``r * cols + c``.

    Built with ``nx.grid_2d_graph(rows, cols, periodic=True)``; a side of length 1 or 2 has no duplicate
    or self edges.

    Raises:
        ValueError: rows or cols not an integer >= 1; invalid weights.
    """
    rows = check_count(rows, "rows")
    cols = check_count(cols, "cols")
    g = nx.grid_2d_graph(rows, cols, periodic=True)
    g = nx.relabel_nodes(g, {(r, c): r * cols + c for r, c in g.nodes})
    h = nx.Graph()
    h.add_nodes_from(range(rows * cols))
    h.add_edges_from((a, b) for a, b in g.edges if a != b)
    return build(f"torus({rows},{cols})", h, weights)


def complete(n: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """Complete graph: every worker talks to all others; MH and uniform weights are all 1/n (exact average).

    Raises:
        ValueError: n not an integer >= 1; invalid weights.
    """
    n = check_count(n)
    return build(f"complete({n})", nx.complete_graph(n), weights)


def star(n: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """Star with centre worker 0 and leaves 1..n-1.

    Raises:
        ValueError: n not an integer >= 1; invalid weights.
    """
    n = check_count(n)
    return build(f"star({n})", nx.star_graph(n - 1), weights)


def hypercube(n: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """Hypercube of n = 2^k workers: i ~ i XOR 2^b for b < k.

    Raises:
        ValueError: n not a power of 2 (the message names n and the nearest allowed values); invalid weights.
    """
    n = check_count(n)
    if n & (n - 1):
        lo = 1 << (n.bit_length() - 1)
        raise ValueError(f"hypercube needs n to be a power of 2, got n={n}; nearest allowed: {lo}, {2 * lo}")
    k = n.bit_length() - 1
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, i ^ (1 << b)) for i in range(n) for b in range(k) if i < i ^ (1 << b))
    return build(f"hypercube({n})", g, weights)


def _circulant_from_sends(n: int, offsets: list[int], weight: float) -> np.ndarray:
    """W with W[(i + o) % n, i] = weight for each offset o (i sends to i + o), rest on the diagonal."""
    w = np.zeros((n, n), dtype=np.float64)
    idx = np.arange(n)
    for o in offsets:
        w[(idx + o) % n, idx] += weight
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def _digraph_from(mats: list[np.ndarray]) -> nx.DiGraph:
    """Union directed graph: edge j -> i whenever some W[i, j] != 0, i != j."""
    n = mats[0].shape[0]
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for w in mats:
        off = w != 0
        np.fill_diagonal(off, False)
        g.add_edges_from((int(j), int(i)) for i, j in np.argwhere(off))
    return g


def exponential(n: int) -> Topology:
    """Static exponential graph (arXiv 2110.13363; Assran et al. arXiv 1811.10792).

    Worker i sends to ``(i + 2^k) mod n`` for every 2^k < n, so ``W[(i + 2^k) % n, i] = 1/(τ+1)`` and
    ``W[i, i] = 1/(τ+1)`` with τ = ⌊log2(n−1)⌋ + 1 (the number of such k). W is circulant and doubly
    stochastic but not symmetric (n > 2); the graph is a DiGraph (edge j -> i: j sends to i).
    For n = 2^τ the spectral gap is 2/(1 + log2 n).

    Raises:
        ValueError: n not an integer >= 1.
    """
    n = check_count(n)
    tau = 0 if n == 1 else (n - 1).bit_length()
    offsets = [1 << k for k in range(tau)]
    w = _circulant_from_sends(n, offsets, 1.0 / (tau + 1))
    return Topology(name=f"exponential({n})", graph=_digraph_from([w]), weights=w)


def one_peer_exponential(n: int) -> Topology:
    """Time-varying one-peer exponential graph (arXiv 2110.13363; SGP, arXiv 1811.10792).

    At step k worker i sends to ``(i + 2^(k mod τ)) mod n`` and averages ½ own + ½ received, with
    τ = ⌈log2 n⌉: ``W_k[(i + 2^k) % n, i] = ½``, ``W_k[i, i] = ½``. The schedule holds the τ matrices
    W_0..W_{τ-1} (n = 1: the single matrix [[1]]). Every W_k is circulant and doubly
    stochastic. For n = 2^τ any τ consecutive rounds average exactly: ``W_{τ-1} ... W_0 = 11ᵀ/n``.
    ``graph`` is the union DiGraph; ``spectral_gap`` refers to W_0 only.

    Raises:
        ValueError: n not an integer >= 1.
    """
    n = check_count(n)
    tau = (n - 1).bit_length()
    if tau == 0:
        mats = [np.ones((1, 1))]
    else:
        mats = [_circulant_from_sends(n, [1 << k], 0.5) for k in range(tau)]
    return Topology(name=f"one_peer_exponential({n})", graph=_digraph_from(mats), weights=mats[0],
                    schedule=tuple(mats))


def erdos_renyi(n: int, p: float, seed: int = 0, weights: str | np.ndarray = "metropolis") -> Topology:
    """Connected Erdős–Rényi G(n, p) graph.

    Draws ``nx.gnp_random_graph(n, p, seed=s_t)`` with seeds ``s_t`` derived from ``(seed, t)`` by
    ``np.random.SeedSequence`` for t = 0, 1, ... until the graph is connected (at most 1000 tries).

    Raises:
        ValueError: n not an integer >= 1; p not in (0, 1]; seed not an integer >= 0; no connected graph
            after 1000 tries (p too small for n); invalid weights.
    """
    n = check_count(n)
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a probability in (0, 1], got p={p!r}") from None
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be a probability in (0, 1], got p={p}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got seed={seed!r}")
    for t in range(ER_MAX_TRIES):
        s = int(np.random.SeedSequence([int(seed), t]).generate_state(1)[0])
        g = nx.gnp_random_graph(n, p, seed=s)
        if components_message(g) is None:
            return build(f"erdos_renyi({n},p={p:g},seed={seed})", g, weights)
    raise ValueError(f"no connected Erdős–Rényi graph with n={n}, p={p} in {ER_MAX_TRIES} tries; "
                     f"use p well above ln(n)/n = {math.log(n) / n:.3g}")


def social_network(weights: str | np.ndarray = "metropolis") -> Topology:
    """Davis Southern Women bipartite graph (``nx.davis_southern_women_graph``): 32 workers, connected.

    Workers 0..17 are the 18 women, 18..31 the 14 events, both in networkx's listing order (E1..E14); the
    original names are kept as node attribute ``"label"``.

    Raises:
        ValueError: invalid weights.
    """
    src = nx.davis_southern_women_graph()
    order = sorted(src.nodes, key=lambda v: src.nodes[v]["bipartite"])  # stable: keeps listing order
    mapping = {v: i for i, v in enumerate(order)}
    g = nx.Graph()
    g.add_nodes_from((i, {"label": v}) for v, i in mapping.items())
    g.add_edges_from((mapping[a], mapping[b]) for a, b in src.edges)
    return build("social_network", g, weights)


def relabel_sorted(graph: nx.Graph) -> nx.Graph:
    """Copy of ``graph`` as a simple graph (no multi-edges or self-loops) on nodes 0..n-1.

    If the nodes are not already 0..n-1 they are relabelled in sorted order (insertion order if they are
    not mutually comparable) and the original node is kept as attribute ``"label"``.

    Raises:
        ValueError: not a networkx graph, or no nodes.
    """
    n = graph.number_of_nodes() if isinstance(graph, nx.Graph) else 0
    if n == 0:
        shown = f"{type(graph).__name__} {str(graph)[:80]}"
        raise ValueError(f"expected a networkx graph with at least 1 node, got {shown}")
    simple = nx.DiGraph(graph) if graph.is_directed() else nx.Graph(graph)
    simple.remove_edges_from(list(nx.selfloop_edges(simple)))
    if set(simple.nodes) == set(range(n)):
        out = simple.__class__()
        out.add_nodes_from(sorted(simple.nodes(data=True)))
        out.add_edges_from(simple.edges)
        return out
    try:
        order = sorted(simple.nodes)
    except TypeError:
        order = list(simple.nodes)
    mapping = {v: i for i, v in enumerate(order)}
    out = simple.__class__()
    out.add_nodes_from((mapping[v], {**simple.nodes[v], "label": v}) for v in order)
    out.add_edges_from((mapping[a], mapping[b]) for a, b in simple.edges)
    return out


def from_networkx(graph: nx.Graph, weights: str | np.ndarray = "metropolis", name: str | None = None,
                  allow_disconnected: bool = False) -> Topology:
    """Topology from any networkx graph (nodes relabelled 0..n-1 in sorted order if needed).

    Args:
        graph: ``nx.Graph`` or ``nx.DiGraph`` (edge j -> i: j sends to i); multi-edges and self-loops dropped.
        weights: ``"metropolis"`` (undirected only), ``"uniform"`` or an (n, n) array in the relabelled order.
        name: topology name; default ``"graph(n)"``.
        allow_disconnected: accept a disconnected graph (consensus is then impossible).

    Raises:
        ValueError: ``"graph is disconnected: k components ..."`` (unless allowed), no nodes, invalid weights.
    """
    g = relabel_sorted(graph)
    return build(name or f"graph({g.number_of_nodes()})", g, weights, allow_disconnected=allow_disconnected)


def from_weights(weights: np.ndarray, name: str = "custom", allow_disconnected: bool = False) -> Topology:
    """Topology from a mixing matrix alone; the graph is W's off-diagonal support.

    The graph is an ``nx.Graph`` if the support is symmetric, else an ``nx.DiGraph`` with edge j -> i for
    each ``W[i, j] != 0``.

    Args:
        weights: (n, n) row-stochastic array.
        name: topology name.
        allow_disconnected: accept a disconnected support graph.

    Raises:
        ValueError: not a square 2-D array, invalid matrix (shape, NaN/Inf, negative, row sums), or a
            disconnected support (unless allowed).
    """
    arr = np.asarray(weights)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ValueError(f"mixing matrix must be a square (n, n) array with n >= 1, got shape {arr.shape}")
    w = validate_mixing_matrix(arr, arr.shape[0])
    off = w != 0
    np.fill_diagonal(off, False)
    if np.array_equal(off, off.T):
        g = nx.Graph()
        g.add_nodes_from(range(w.shape[0]))
        g.add_edges_from((int(i), int(j)) for i, j in np.argwhere(off) if i < j)
    else:
        g = _digraph_from([w])
    return build(name, g, w, allow_disconnected=allow_disconnected)
