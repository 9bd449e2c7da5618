"""Mixing weights for gossip: Metropolis–Hastings, uniform, validation of custom matrices.

Convention everywhere in simdl: ``(W X)_i = sum_j W[i, j] x_j``, so row i of W holds the weights worker i
gives to what it receives. W must be row-stochastic (non-negative, rows sum to 1). For directed graphs
(``nx.DiGraph``) an edge ``j -> i`` means "j sends to i", i.e. W[i, j] may be non-zero.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

ROW_SUM_TOL = 1e-8
WEIGHT_SCHEMES = ("metropolis", "uniform")


def _check_nodes(graph: nx.Graph) -> int:
    n = graph.number_of_nodes()
    if n < 1:
        raise ValueError("graph has no nodes; a topology needs at least 1 worker")
    if set(graph.nodes) != set(range(n)):
        shown = sorted(graph.nodes, key=str)[:8]
        raise ValueError(f"graph nodes must be the integers 0..{n - 1}, got {shown}...")
    return n


def _in_neighbours(graph: nx.Graph, i: int) -> list[int]:
    preds = graph.predecessors(i) if graph.is_directed() else graph.neighbors(i)
    return [j for j in preds if j != i]


def metropolis_hastings(graph: nx.Graph) -> np.ndarray:
    """Metropolis–Hastings weights of an undirected graph (Xiao & Boyd 2004; as used in arXiv 2110.04175).

    ``W[i, j] = 1 / (1 + max(deg_i, deg_j))`` on each edge {i, j}, ``W[i, i] = 1 - sum_{j != i} W[i, j]``,
    zero elsewhere. The result is symmetric and doubly stochastic with a positive diagonal.

    Args:
        graph: undirected ``nx.Graph`` with nodes 0..n-1 (self-loops are ignored).

    Returns:
        (n, n) float64 array.

    Raises:
        ValueError: for a directed graph (MH weights need symmetric edges) or nodes not 0..n-1.
    """
    if graph.is_directed():
        raise ValueError("metropolis weights need an undirected graph, got a directed graph; "
                         "use weights='uniform' or a custom (n, n) array")
    n = _check_nodes(graph)
    deg = np.array([len(_in_neighbours(graph, i)) for i in range(n)])
    w = np.zeros((n, n), dtype=np.float64)
    for i, j in graph.edges:
        if i != j:
            w[i, j] = w[j, i] = 1.0 / (1.0 + max(deg[i], deg[j]))
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def uniform_weights(graph: nx.Graph) -> np.ndarray:
    """Uniform (maximum-degree) weights: ``1 / (1 + d_max)`` on each edge, the rest on the diagonal.

    ``d_max`` is the maximum degree (for a directed graph: the maximum in-degree). For an undirected graph
    the result is symmetric and doubly stochastic; for a directed graph it is row-stochastic.

    Args:
        graph: ``nx.Graph`` or ``nx.DiGraph`` with nodes 0..n-1 (self-loops are ignored).

    Returns:
        (n, n) float64 array.

    Raises:
        ValueError: nodes not 0..n-1.
    """
    n = _check_nodes(graph)
    nbrs = [_in_neighbours(graph, i) for i in range(n)]
    d_max = max(len(v) for v in nbrs)
    w = np.zeros((n, n), dtype=np.float64)
    for i, row in enumerate(nbrs):
        w[i, row] = 1.0 / (1.0 + d_max)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def validate_mixing_matrix(weights: np.ndarray, n: int) -> np.ndarray:
    """Check that ``weights`` is an (n, n) row-stochastic matrix and return it as a float64 copy.

    Args:
        weights: array-like of shape (n, n).
        n: number of workers.

    Returns:
        (n, n) float64 array (a new array).

    Raises:
        ValueError: wrong shape (message says expected and got), NaN or Inf entries, negative entries
            (position and value named), or a row whose sum differs from 1 by more than 1e-8 (the worst row
            and its sum are named).
    """
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        shown = f"{type(weights).__name__} {str(weights)[:80]}"
        raise ValueError(f"mixing matrix must be a numeric (n, n) array, got {shown}") from err
    if w.shape != (n, n):
        raise ValueError(f"mixing matrix has wrong shape: expected ({n}, {n}), got {w.shape}")
    if not np.all(np.isfinite(w)):
        i, j = np.argwhere(~np.isfinite(w))[0]
        raise ValueError(f"mixing matrix has non-finite entries (NaN or Inf), e.g. W[{i}, {j}] = {w[i, j]}")
    if np.any(w < 0):
        i, j = np.unravel_index(np.argmin(w), w.shape)
        raise ValueError(f"mixing matrix has negative entries (weights must be >= 0), "
                         f"e.g. W[{i}, {j}] = {float(w[i, j])!r}")
    err = np.abs(w.sum(axis=1) - 1.0)
    worst = int(np.argmax(err))
    if err[worst] > ROW_SUM_TOL:
        total = float(w[worst].sum())
        raise ValueError(f"mixing matrix is not row-stochastic: row {worst} sums to {total!r}, "
                         f"every row must sum to 1 (tolerance {ROW_SUM_TOL})")
    return w


def check_support(weights: np.ndarray, graph: nx.Graph) -> None:
    """Check that every non-zero off-diagonal ``W[i, j]`` is an edge of ``graph`` (``j -> i`` if directed).

    Raises:
        ValueError: naming the first entry that has no edge.
    """
    off = weights != 0
    np.fill_diagonal(off, False)
    for i, j in np.argwhere(off):
        ok = graph.has_edge(int(j), int(i))
        if not ok:
            arrow = f"{j} -> {i}" if graph.is_directed() else f"{{{i}, {j}}}"
            raise ValueError(f"mixing matrix entry W[{i}, {j}] = {float(weights[i, j])!r} is non-zero "
                             f"but the graph has no edge {arrow}")


def resolve_weights(graph: nx.Graph, weights: str | np.ndarray) -> np.ndarray:
    """Turn a weight specification into a validated (n, n) float64 matrix on ``graph``.

    Args:
        graph: graph with nodes 0..n-1.
        weights: ``"metropolis"``, ``"uniform"`` or a custom (n, n) array whose non-zero off-diagonal
            entries lie on edges of ``graph``.

    Raises:
        ValueError: unknown scheme name (valid ones listed), or an invalid custom matrix.
    """
    if isinstance(weights, str):
        if weights == "metropolis":
            return metropolis_hastings(graph)
        if weights == "uniform":
            return uniform_weights(graph)
        raise ValueError(f"unknown weights scheme {weights!r}; valid: {', '.join(WEIGHT_SCHEMES)} "
                         "or a numpy (n, n) array")
    n = _check_nodes(graph)
    w = validate_mixing_matrix(weights, n)
    check_support(w, graph)
    return w
