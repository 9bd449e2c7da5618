"""Tree topologies for RelaySum / RelaySGD (Vogels et al. 2021, arXiv 2110.04175).

Each factory sets ``Topology.trees``: the spanning tree(s) messages are relayed on. The gossip ``weights``
(Metropolis–Hastings by default) live on ``graph``; with several trees (:func:`double_binary_trees`) gossip is
split by coordinate over the trees, each with its own ``Topology.tree_weights``.
"""

from __future__ import annotations

from collections import deque

import networkx as nx
import numpy as np

from simdl.topologies.base import Topology, build, check_count, components_message
from simdl.topologies.graphs import relabel_sorted
from simdl.topologies.weights import resolve_weights


def _tree(n: int, edges) -> nx.Graph:
    t = nx.Graph()
    t.add_nodes_from(range(n))
    t.add_edges_from(edges)
    return t


def chain(n: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """Chain (path, a ring minus one edge) 0 - 1 - ... - n-1; ``trees = (graph,)``.

    Raises:
        ValueError: n not an integer >= 1; invalid weights.
    """
    n = check_count(n)
    t = _tree(n, ((i, i + 1) for i in range(n - 1)))
    return build(f"chain({n})", t, weights, trees=(t,))


def binary_tree_graph(n: int) -> nx.Graph:
    """The binary tree of arXiv 2110.04175: worker w > 0 has parent w // 2 (so worker 0's only neighbour
    is 1, and w's children are 2w, 2w + 1 when < n).

    Raises:
        ValueError: n not an integer >= 1.
    """
    n = check_count(n)
    return _tree(n, ((w // 2, w) for w in range(1, n)))


def binary_tree(n: int, weights: str | np.ndarray = "metropolis") -> Topology:
    """Binary tree topology (see :func:`binary_tree_graph`); ``trees = (graph,)``.

    Raises:
        ValueError: n not an integer >= 1; invalid weights.
    """
    t = binary_tree_graph(n)
    return build(f"binary_tree({t.number_of_nodes()})", t, weights, trees=(t,))


def double_binary_trees(n: int, weights="metropolis") -> Topology:
    """Double binary trees (arXiv 2110.04175): the binary tree and its mirror ``w -> n - 1 - w``.

    ``trees = (tree, mirror)``; ``graph`` is their union. The topology is split (``Topology.is_split``): gossip
    (``ctx.mix``) sends even coordinates of the flattened vector it mixes over ``trees[0]`` and odd ones over
    ``trees[1]``, each tree with its own matrix ``tree_weights[t]`` (Metropolis–Hastings on that tree by
    default), as the authors' ``MultiTopologyGossipMechanism`` does; RelaySum splits the coordinates the same
    way. ``weights`` is the matrix of the union graph (same scheme), which gossip does not use;
    ``spectral_gap`` is the trees' (0.024 at n = 16, vs 0.153 for the union).

    Args:
        n: workers.
        weights: ``"metropolis"`` or ``"uniform"`` (applied to each tree and to the union), or a pair of
            (n, n) arrays, one per tree (``weights`` is then their mean).

    Raises:
        ValueError: n not an integer >= 1; invalid weights (an unknown scheme, a single array instead of one
            per tree, or matrices off their tree's edges).
    """
    t = binary_tree_graph(n)
    n = t.number_of_nodes()
    mirror = _tree(n, ((n - 1 - a, n - 1 - b) for a, b in t.edges))
    union = nx.compose(t, mirror)
    if isinstance(weights, str):
        per_tree = (resolve_weights(t, weights), resolve_weights(mirror, weights))
        return build(f"double_binary_trees({n})", union, weights, trees=(t, mirror), tree_weights=per_tree)
    try:
        pair = [np.asarray(w, dtype=np.float64) for w in weights]
    except (TypeError, ValueError):
        pair = None
    if pair is None or len(pair) != 2 or any(w.shape != (n, n) for w in pair):
        shapes = None if pair is None else [w.shape for w in pair]
        raise ValueError(f"double_binary_trees weights must be 'metropolis', 'uniform' or a pair of ({n}, {n}) "
                         f"arrays (one per tree), got a {type(weights).__name__} of parts shaped {shapes}")
    return build(f"double_binary_trees({n})", union, (pair[0] + pair[1]) / 2, trees=(t, mirror),
                 tree_weights=tuple(pair))


def bfs_tree(graph: nx.Graph, root: int = 0) -> nx.Graph:
    """Breadth-first spanning tree of a connected undirected graph on 0..n-1.

    Neighbours are visited in ascending order, so each node's parent is its smallest-numbered neighbour
    among the nodes one hop closer to ``root``; the tree depth of every node equals its graph distance
    from ``root``.

    Raises:
        ValueError: root not a node; graph disconnected.
    """
    n = graph.number_of_nodes()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < n:
        raise ValueError(f"root must be a worker index in 0..{n - 1}, got root={root!r}")
    msg = components_message(graph)
    if msg is not None:
        raise ValueError(f"spanning tree needs a connected graph: {msg}")
    root = int(root)
    seen = {root}
    edges = []
    queue = deque([root])
    while queue:
        u = queue.popleft()
        for v in sorted(graph.neighbors(u)):
            if v not in seen:
                seen.add(v)
                edges.append((u, v))
                queue.append(v)
    return _tree(n, edges)


def spanning_tree(graph_or_topology: nx.Graph | Topology, root: int = 0,
                  weights: str | np.ndarray = "metropolis") -> Topology:
    """BFS spanning tree of a connected graph (or of a topology's graph), as a tree topology.

    Directed graphs are made undirected first. Nodes not 0..n-1 are relabelled in sorted order (``root``
    refers to the relabelled index). ``graph = tree``, ``trees = (tree,)``.

    Args:
        graph_or_topology: ``nx.Graph``/``nx.DiGraph`` or :class:`Topology`.
        root: worker index the BFS starts from.
        weights: weights on the tree (``"metropolis"``, ``"uniform"`` or an (n, n) array).

    Raises:
        ValueError: not a graph or topology; root out of range; graph disconnected; invalid weights.
    """
    if isinstance(graph_or_topology, Topology):
        g, base_name = graph_or_topology.graph, graph_or_topology.name
    else:
        g = graph_or_topology
        base_name = f"graph({g.number_of_nodes()})" if isinstance(g, nx.Graph) else "graph"
    g = relabel_sorted(g)  # raises ValueError for anything but a non-empty networkx graph
    if g.is_directed():
        g = g.to_undirected()
    t = bfs_tree(g, root)
    return build(f"spanning_tree({base_name},root={int(root)})", t, weights, trees=(t,))
