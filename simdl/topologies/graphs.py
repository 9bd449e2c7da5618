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


# --------------------------------------------------------------------------- Base-(k+1) graph (arXiv 2305.11420)
# A round is a list of operations on disjoint node sets; a node no operation touches keeps its value.
#   ("clique", nodes):      the nodes average uniformly (weight 1/|nodes| each);
#   ("star", i, targets, c): node i keeps 1 − c and takes c/|targets| from each target; each target keeps
#                            1 − c/|targets| and takes c/|targets| from i (symmetric, doubly stochastic).


def _fewest_factors(n: int, cap: int) -> list[int] | None:
    """Fewest integers in 2..cap whose product is n (ascending), [] for n = 1, None if n has a prime factor > cap."""
    best: dict[int, list[int] | None] = {1: []}

    def solve(m: int) -> list[int] | None:
        if m not in best:
            options = [[f, *rest] for f in range(2, min(cap, m) + 1) if m % f == 0
                       for rest in [solve(m // f)] if rest is not None]
            best[m] = min(options, key=len) if options else None
        return best[m]

    out = solve(n)
    return None if out is None else sorted(out)


def _smooth_part(n: int, cap: int) -> int:
    """Largest divisor of n whose prime factors are all <= cap."""
    part, rest = 1, n
    for p in range(2, cap + 1):
        while rest % p == 0:
            part, rest = part * p, rest // p
    return part


def _hyper_hypercube(nodes: list[int], factors: list[int]) -> list[list[tuple]]:
    """k-peer hyper-hypercube on ``nodes`` (|nodes| = Π factors): in round l the nodes whose mixed-radix positions
    (digits in base factors[0], factors[1], ...) differ only in digit l form a clique. The product of the rounds
    averages ``nodes`` exactly."""
    rounds, stride = [], 1
    for f in factors:
        ops = []
        for pos in range(len(nodes)):
            if (pos // stride) % f == 0:  # the clique's member with digit l = 0 lists it
                ops.append(("clique", [nodes[pos + s * stride] for s in range(f)]))
        rounds.append(ops)
        stride *= f
    return rounds


def _in_parallel(*schedules: list[list[tuple]]) -> list[list[tuple]]:
    """Run schedules on disjoint node sets side by side (a shorter one idles at the end)."""
    length = max((len(s) for s in schedules), default=0)
    return [[op for s in schedules if t < len(s) for op in s[t]] for t in range(length)]


def _cyclic(schedule: list[list[tuple]], length: int) -> list[list[tuple]]:
    """``schedule`` repeated cyclically to ``length`` rounds (rounds after the first period keep an average)."""
    return [schedule[t % len(schedule)] for t in range(length)] if schedule else [[] for _ in range(length)]


def _simple_base(nodes: list[int], k: int) -> list[list[tuple]]:
    """Simple Base-(k+1) graph on ``nodes``: exact average of ``nodes`` after the returned rounds ([] for one node).

    If |nodes| has no prime factor > k+1: the hyper-hypercube. Otherwise write |nodes| = Σ_l a_l (k+1)^{p_l}
    (p_0 > p_1 > ..., 1 <= a_l <= k) and cut the nodes into consecutive blocks V_l of a_l (k+1)^{p_l} nodes, each
    cut into a_l sub-blocks of (k+1)^{p_l}. Rounds 0..M-1: every block runs its hyper-hypercube (M the longest,
    block 0's), so each holds its own mean. Round M + r (r = 0..L-2): every node of the later blocks U = V_{r+1}
    ∪ ... is joined to one node of each sub-block of V_r with c = |V_r| / (|V_r| + |U|), which gives U the mean of
    V_r ∪ U and leaves the mass U owes V_r spread evenly over V_r's sub-blocks; V_r's unpaired nodes average in
    groups of up to k+1. From round M + r + 1 on, V_r's sub-blocks run their hyper-hypercubes (p_r rounds), which
    gives V_r the mean of V_r ∪ U. Length M + 1 + p_0 <= 2 p_0 + 2."""
    n = len(nodes)
    if n == 1:
        return []
    factors = _fewest_factors(n, k + 1)
    if factors is not None:
        return _hyper_hypercube(nodes, factors)
    base = k + 1
    p = 0
    while base ** (p + 1) <= n:
        p += 1
    blocks, powers, start = [], [], 0  # (block nodes, its sub-blocks), power p_l
    for q in range(p, -1, -1):
        a = (n - start) // base ** q
        if a:
            size = base ** q
            block = nodes[start:start + a * size]
            blocks.append((block, [block[s * size:(s + 1) * size] for s in range(a)]))
            powers.append(q)
            start += a * size
    first = [_hyper_hypercube(block, _fewest_factors(len(block), base)) for block, _ in blocks]
    m_rounds = max(len(s) for s in first)
    total = m_rounds + 1 + powers[0]
    rounds = _in_parallel(*[_cyclic(s, m_rounds) for s in first]) + [[] for _ in range(total - m_rounds)]
    for r in range(len(blocks) - 1):
        block, subs = blocks[r]
        later = [i for b, _ in blocks[r + 1:] for i in b]
        c = len(block) / (len(block) + len(later))
        ops = [("star", i, [sub[t] for sub in subs], c) for t, i in enumerate(later)]
        paired = {sub[t] for sub in subs for t in range(len(later))}
        unpaired = [j for j in block if j not in paired]
        ops += [("clique", unpaired[s:s + base]) for s in range(0, len(unpaired), base)
                if len(unpaired[s:s + base]) > 1]
        rounds[m_rounds + r] += ops
        # afterwards V_r's sub-blocks average (cyclically to the end); every later block is busy until M + r + 1
        sub_cubes = _in_parallel(*[_hyper_hypercube(sub, [base] * powers[r]) for sub in subs])
        for t, ops_t in enumerate(_cyclic(sub_cubes, total - (m_rounds + r + 1))):
            rounds[m_rounds + r + 1 + t] += ops_t
    last, _ = blocks[-1]  # already at the mean after round M + L - 2: it keeps averaging (no effect) as block l
    tail = _hyper_hypercube(last, _fewest_factors(len(last), base)) if len(last) <= base else \
        _in_parallel(*[_hyper_hypercube(sub, [base] * powers[-1]) for sub in blocks[-1][1]])
    start_last = m_rounds + len(blocks) - 1
    for t, ops_t in enumerate(_cyclic(tail, total - start_last)):
        rounds[start_last + t] += ops_t
    return rounds


def _round_matrix(n: int, ops: list[tuple]) -> np.ndarray:
    w = np.zeros((n, n), dtype=np.float64)
    for op in ops:
        if op[0] == "clique":
            idx = np.asarray(op[1])
            w[np.ix_(idx, idx)] = 1.0 / len(idx)
        else:
            _, i, targets, c = op
            w[i, i] = 1.0 - c
            for j in targets:
                w[i, j] = w[j, i] = c / len(targets)
                w[j, j] = 1.0 - c / len(targets)
    idle = ~w.any(axis=1)
    w[idle, idle] = 1.0
    return w


def base_graph(n: int, k: int = 1) -> Topology:
    """Time-varying Base-(k+1) graph (Takezawa, Sato, Bao, Niwa, Yamada 2023, arXiv 2305.11420, "Beyond Exponential
    Graph"): the paper's Base-(k+1) graph (not its Simple Base-(k+1) graph, which it uses as a building block).

    Every worker talks to at most k peers per step, and the product of the matrices of one period is exactly
    ``11ᵀ/n`` for every n (finite-time convergence), unlike the one-peer exponential graph (powers of 2 only).
    Construction: let s be the largest divisor of n with all prime factors <= k+1 and r = n/s. Candidate A is the
    Simple Base-(k+1) graph on all n workers. Candidate B runs the Simple Base-(k+1) graph on each of the s groups
    of r consecutive workers in parallel, then the k-peer hyper-hypercube on each of the r groups
    ``{j, j + r, ..., j + (s−1) r}`` in parallel. The schedule is the shorter (B on a tie). The k-peer
    hyper-hypercube of m workers (m's prime factors <= k+1) writes m as a product of the fewest factors
    f_1 <= f_2 <= ... in 2..k+1 and, in round l, averages uniformly over the f_l workers whose mixed-radix indices
    differ only in digit l; the Simple Base-(k+1) graph is documented in ``_simple_base`` (base-(k+1) digits of n,
    hyper-hypercubes per digit block, then one merge round per block). For k = 1 and n = 2^τ the schedule is the
    1-peer hypercube: τ matrices. Every matrix is symmetric and doubly stochastic; the period holds at most
    ``2 ⌊log_{k+1} n⌋ + 2`` matrices (tested for n <= 64, k <= 4). The order of the steps was checked against
    the authors' reference implementation (yukiTakezawa/BaseGraph, ``base_graph.py``, ``simple_base_graph.py``);
    the pairing of nodes in a merge round and the factor order are free choices that do not change the product.

    Args:
        n: number of workers, >= 1.
        k: maximum number of peers per worker and step, >= 1 (k >= n − 1: one step of exact averaging).

    Returns:
        A :class:`Topology` whose ``schedule`` is the period (n = 1: the single matrix [[1]]); ``graph`` is the
        undirected union graph; ``spectral_gap`` refers to the first matrix only.

    Raises:
        ValueError: n or k not an integer >= 1.
    """
    n = check_count(n)
    k = check_count(k, "k")
    nodes = list(range(n))
    s = _smooth_part(n, k + 1)
    r = n // s
    simple = _simple_base(nodes, k)
    split = _in_parallel(*[_simple_base(nodes[q * r:(q + 1) * r], k) for q in range(s)]) + _in_parallel(
        *[_hyper_hypercube(nodes[j::r], _fewest_factors(s, k + 1)) for j in range(r)])
    rounds = simple if len(simple) < len(split) else split
    mats = [_round_matrix(n, ops) for ops in rounds] or [np.ones((1, 1))]
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for w in mats:
        g.add_edges_from((int(i), int(j)) for i, j in np.argwhere(w != 0) if i < j)
    return Topology(name=f"base_graph({n},k={k})", graph=g, weights=mats[0], schedule=tuple(mats))
