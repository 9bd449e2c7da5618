"""Tests for simdl.topologies: graphs, weights, spectral quantities, trees, layouts for mixing kernels."""

from __future__ import annotations

import json
import math
import re

import networkx as nx
import numpy as np
import pytest

from simdl import topologies as T


def _static_factories():
    return [
        ("ring1", lambda: T.ring(1)),
        ("ring2", lambda: T.ring(2)),
        ("ring9", lambda: T.ring(9)),
        ("chain7", lambda: T.chain(7)),
        ("torus3x5", lambda: T.torus(3, 5)),
        ("torus2x2", lambda: T.torus(2, 2)),
        ("torus1x4", lambda: T.torus(1, 4)),
        ("complete6", lambda: T.complete(6)),
        ("star7", lambda: T.star(7)),
        ("hypercube16", lambda: T.hypercube(16)),
        ("erdos_renyi", lambda: T.erdos_renyi(15, 0.3, seed=3)),
        ("social", T.social_network),
        ("binary_tree11", lambda: T.binary_tree(11)),
        ("double_binary_trees10", lambda: T.double_binary_trees(10)),
        ("spanning_tree", lambda: T.spanning_tree(T.torus(3, 4), root=5)),
        ("from_networkx", lambda: T.from_networkx(nx.petersen_graph())),
    ]


STATIC = _static_factories()
ALL = [*STATIC, ("exponential12", lambda: T.exponential(12)), ("exponential16", lambda: T.exponential(16)),
       ("one_peer12", lambda: T.one_peer_exponential(12)), ("one_peer16", lambda: T.one_peer_exponential(16))]


@pytest.mark.parametrize(("label", "make"), STATIC, ids=[s[0] for s in STATIC])
def test_mh_weights_doubly_stochastic_symmetric(label, make):
    topo = make()
    w = topo.weights
    assert w.shape == (topo.n, topo.n) and w.dtype == np.float64
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(w, w.T)
    assert np.all(w >= 0)
    assert topo.is_symmetric and topo.is_doubly_stochastic and topo.is_connected
    assert not topo.is_time_varying and topo.period == 1
    # support of W is exactly the graph's edges plus the diagonal
    adj = nx.to_numpy_array(topo.graph, nodelist=range(topo.n)) != 0
    off = w != 0
    np.fill_diagonal(off, False)
    np.testing.assert_array_equal(off, adj)
    json.dumps(topo.describe())


def test_mh_formula_on_star():
    w = T.star(5).weights
    # centre degree 4, leaves degree 1: edge weight 1/(1+4); leaves keep 4/5
    np.testing.assert_allclose(w[0, 1:], 0.2)
    np.testing.assert_allclose(np.diag(w)[1:], 0.8)
    np.testing.assert_allclose(w[0, 0], 0.2)
    np.testing.assert_allclose(T.ring(8).weights[3, [2, 3, 4]], 1 / 3)


def test_uniform_weights():
    topo = T.star(5, weights="uniform")
    w = topo.weights
    np.testing.assert_allclose(w[0, 1:], 0.2)
    np.testing.assert_allclose(w[1, 0], 0.2)
    np.testing.assert_allclose(w[1, 1], 0.8)
    assert topo.is_doubly_stochastic and topo.is_symmetric
    w = T.uniform_weights(nx.path_graph(4))
    np.testing.assert_allclose(np.diag(w), [2 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_custom_weights_accepted_and_checked():
    w = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])
    topo = T.chain(3, weights=w)
    np.testing.assert_array_equal(topo.weights, w)
    with pytest.raises(ValueError, match="no edge"):
        T.chain(3, weights=np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="unknown weights scheme 'bogus'"):
        T.ring(4, weights="bogus")


@pytest.mark.parametrize(("n", "gap"), [(8, 0.195), (16, 0.0508), (32, 0.0128)])
def test_ring_spectral_gap(n, gap):
    topo = T.ring(n)
    assert topo.spectral_gap == pytest.approx(gap, rel=1e-2)
    assert topo.rho == pytest.approx(1 - gap, rel=1e-2)
    assert topo.lambda_min == pytest.approx(-1 / 3)  # even ring: 1/3 (1 + 2 cos(pi))


def test_small_rings():
    assert T.ring(1).weights.tolist() == [[1.0]]
    assert T.ring(1).spectral_gap == 1.0 and T.ring(1).diameter == 0
    two = T.ring(2)
    assert two.graph.number_of_edges() == 1
    np.testing.assert_allclose(two.weights, 0.5)
    assert T.ring(3).graph.number_of_edges() == 3


def test_complete_and_known_gaps():
    assert T.complete(8).spectral_gap == pytest.approx(1.0)
    np.testing.assert_allclose(T.complete(8).weights, 1 / 8)
    # hypercube 2^k with MH (all degrees k): eigenvalues 1 - 2j/(k+1); gap 2/(k+1)
    assert T.hypercube(16).spectral_gap == pytest.approx(2 / 5)
    assert T.chain(5).diameter == 4 and T.star(6).diameter == 2 and T.hypercube(16).diameter == 4


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_exponential_gap_formula(n):
    topo = T.exponential(n)
    assert topo.spectral_gap == pytest.approx(2 / (1 + math.ceil(math.log2(n))), rel=1e-9)


@pytest.mark.parametrize("n", [5, 12, 16])
def test_exponential_structure(n):
    topo = T.exponential(n)
    tau = math.floor(math.log2(n - 1)) + 1
    w = topo.weights
    assert topo.is_doubly_stochastic
    assert topo.graph.is_directed()
    np.testing.assert_allclose(np.diag(w), 1 / (tau + 1))
    for i in range(n):
        for k in range(tau):
            assert w[(i + 2**k) % n, i] == pytest.approx(1 / (tau + 1))  # i sends to i + 2^k
            assert topo.graph.has_edge(i, (i + 2**k) % n)
    assert np.count_nonzero(w) == n * (tau + 1)
    assert list(topo.out_degree()) == [tau] * n


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_one_peer_exact_averaging(n):
    topo = T.one_peer_exponential(n)
    tau = int(math.log2(n))
    assert topo.period == tau and topo.is_time_varying == (tau > 1)
    for start in range(tau):  # any tau consecutive rounds
        prod = np.eye(n)
        for step in range(start, start + tau):
            prod = topo.weights_at(step) @ prod
        np.testing.assert_allclose(prod, np.full((n, n), 1 / n), atol=1e-14)
    if tau > 1:  # fewer rounds are not exact
        prod = np.eye(n)
        for step in range(tau - 1):
            prod = topo.weights_at(step) @ prod
        assert np.max(np.abs(prod - 1 / n)) > 1e-3


def test_one_peer_structure():
    topo = T.one_peer_exponential(12)
    assert topo.period == 4
    for k in range(8):
        w = topo.weights_at(k)
        off = 2 ** (k % 4)
        for i in range(12):
            assert w[(i + off) % 12, i] == 0.5 and w[i, i] == 0.5
        assert list(topo.out_degree(k)) == [1] * 12
    np.testing.assert_array_equal(topo.weights, topo.weights_at(0))
    assert topo.weights_at(5) is topo.weights_at(1)
    assert topo.is_doubly_stochastic and not topo.is_symmetric
    assert T.one_peer_exponential(1).weights.tolist() == [[1.0]]


@pytest.mark.parametrize(("label", "make"), ALL, ids=[s[0] for s in ALL])
def test_neighbor_slots_reproduce_matmul(label, make):
    topo = make()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((topo.n, 3))
    ks = set()
    for step in range(topo.period + 1):
        index, weight = topo.neighbor_slots(step)
        assert index.dtype == np.int32 and weight.dtype == np.float64
        assert index.shape == weight.shape and index.shape[0] == topo.n
        ks.add(index.shape[1])
        np.testing.assert_array_equal(index[:, 0], np.arange(topo.n))
        np.testing.assert_array_equal(weight[:, 0], np.diag(topo.weights_at(step)))
        mixed = np.einsum("ik,ikd->id", weight, x[index])
        np.testing.assert_allclose(mixed, topo.weights_at(step) @ x, rtol=1e-12, atol=1e-12)
    assert len(ks) == 1
    assert ks.pop() == 1 + max(int((np.count_nonzero(w, axis=1) - (np.diag(w) != 0)).max())
                               for w in topo.period_weights)


def test_neighbor_slots_padding():
    index, weight = T.star(4).neighbor_slots()
    assert index.shape == (4, 4)
    # a leaf has one neighbour (0) then two padding slots pointing at itself with weight 0
    assert list(index[2]) == [2, 0, 2, 2]
    assert list(weight[2, 2:]) == [0.0, 0.0]


def _roll_mix(offsets, x):
    return sum(c * np.roll(x, -o, axis=0) for o, c in offsets)


@pytest.mark.parametrize("make", [lambda: T.ring(7), lambda: T.ring(2), lambda: T.complete(5),
                                  lambda: T.exponential(12), lambda: T.one_peer_exponential(8),
                                  lambda: T.ring(1)])
def test_circulant_offsets_reproduce_matmul(make):
    topo = make()
    x = np.random.default_rng(1).standard_normal((topo.n, 4))
    for step in range(topo.period):
        offsets = topo.circulant_offsets(step)
        assert offsets is not None
        assert all(0 <= o < topo.n and c != 0 for o, c in offsets)
        np.testing.assert_allclose(_roll_mix(offsets, x), topo.weights_at(step) @ x, atol=1e-13)


def test_circulant_offsets_values():
    offsets = T.ring(5).circulant_offsets()
    assert [o for o, _ in offsets] == [0, 1, 4]
    np.testing.assert_allclose([c for _, c in offsets], 1 / 3)
    # one-peer at step 1 on 8 workers: receive from i - 2, i.e. offset 6
    assert T.one_peer_exponential(8).circulant_offsets(1) == ((0, 0.5), (6, 0.5))


@pytest.mark.parametrize("make", [lambda: T.star(5), lambda: T.chain(5), lambda: T.binary_tree(6)])
def test_circulant_offsets_none(make):
    assert make().circulant_offsets() is None


def test_out_degree():
    np.testing.assert_array_equal(T.star(5).out_degree(), [4, 1, 1, 1, 1])
    np.testing.assert_array_equal(T.chain(4).out_degree(), [1, 2, 2, 1])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 16])
def test_binary_tree_structure(n):
    topo = T.binary_tree(n)
    g = topo.graph
    assert topo.is_tree and topo.trees is not None and len(topo.trees) == 1
    assert {frozenset(e) for e in topo.trees[0].edges} == {frozenset(e) for e in g.edges}
    if n > 1:
        assert set(g.neighbors(0)) == {1}
    for w in range(1, n):
        expected = {w // 2} | {c for c in (2 * w, 2 * w + 1) if c < n}
        assert set(g.neighbors(w)) == expected, w
    assert g.number_of_edges() == n - 1


def test_chain_trees():
    topo = T.chain(6)
    assert topo.is_tree and len(topo.trees) == 1
    assert sorted(topo.trees[0].edges) == [(i, i + 1) for i in range(5)]
    assert T.ring(6).trees is None and not T.ring(6).is_tree


@pytest.mark.parametrize("n", [1, 2, 5, 10, 16])
def test_double_binary_trees_mirror(n):
    topo = T.double_binary_trees(n)
    tree, mirror = topo.trees
    assert nx.is_tree(tree) and nx.is_tree(mirror)
    assert {frozenset((n - 1 - a, n - 1 - b)) for a, b in tree.edges} == {frozenset(e) for e in mirror.edges}
    union = {frozenset(e) for e in tree.edges} | {frozenset(e) for e in mirror.edges}
    assert {frozenset(e) for e in topo.graph.edges} == union
    np.testing.assert_allclose(topo.weights, T.metropolis_hastings(topo.graph))
    if n > 2:
        assert set(mirror.neighbors(n - 1)) == {n - 2}


@pytest.mark.parametrize(("graph", "root"), [(nx.petersen_graph(), 0), (nx.grid_2d_graph(3, 4), 5),
                                             (nx.complete_graph(6), 3), (nx.cycle_graph(9), 4)])
def test_spanning_tree_is_bfs(graph, root):
    topo = T.spanning_tree(graph, root=root)
    g = T.from_networkx(graph).graph  # relabelled like spanning_tree does
    tree = topo.trees[0]
    n = g.number_of_nodes()
    assert nx.is_tree(tree) and tree.number_of_edges() == n - 1 and topo.is_tree
    assert all(g.has_edge(a, b) for a, b in tree.edges)
    d_graph = nx.single_source_shortest_path_length(g, root)
    d_tree = nx.single_source_shortest_path_length(tree, root)
    assert d_graph == d_tree


def test_spanning_tree_of_topology_and_directed():
    topo = T.spanning_tree(T.ring(8), root=0)
    assert topo.trees[0].number_of_edges() == 7 and "ring(8)" in topo.name
    # star's BFS tree from 0 is the star itself
    star_tree = T.spanning_tree(T.star(5)).graph
    assert {frozenset(e) for e in star_tree.edges} == {frozenset((0, i)) for i in range(1, 5)}
    assert nx.is_tree(T.spanning_tree(T.exponential(8), root=2).graph)
    with pytest.raises(ValueError, match="root=9"):
        T.spanning_tree(nx.path_graph(4), root=9)
    with pytest.raises(ValueError, match="disconnected"):
        T.spanning_tree(nx.empty_graph(3))


def test_torus_labels():
    topo = T.torus(3, 4)
    g = topo.graph
    assert topo.n == 12 and all(d == 4 for _, d in g.degree)
    assert set(g.neighbors(5)) == {1, 9, 4, 6}  # (1,1): up (0,1), down (2,1), left (1,0), right (1,2)
    assert set(g.neighbors(0)) == {1, 3, 4, 8}  # wrap-around
    assert T.torus(1, 1).n == 1


def test_erdos_renyi_seeded_connected():
    a = T.erdos_renyi(20, 0.2, seed=1)
    b = T.erdos_renyi(20, 0.2, seed=1)
    c = T.erdos_renyi(20, 0.2, seed=2)
    assert a.is_connected
    np.testing.assert_array_equal(a.weights, b.weights)
    assert not np.array_equal(a.weights, c.weights)
    with pytest.raises(ValueError, match="p=1.5"):
        T.erdos_renyi(10, 1.5)
    with pytest.raises(ValueError, match="1000 tries"):
        T.erdos_renyi(30, 0.001)


def test_social_network():
    topo = T.social_network()
    assert topo.n == 32 and topo.is_connected
    assert topo.graph.nodes[0]["label"] == "Evelyn Jefferson"
    assert topo.graph.nodes[18]["label"] == "E1"
    assert topo.graph.number_of_edges() == nx.davis_southern_women_graph().number_of_edges()


def test_from_networkx_relabel_and_disconnected():
    g = nx.Graph([("b", "c"), ("a", "b")])
    topo = T.from_networkx(g)
    assert topo.n == 3 and topo.graph.nodes[0]["label"] == "a"
    assert set(topo.graph.edges) == {(0, 1), (1, 2)}
    with pytest.raises(ValueError, match="graph is disconnected: 2 components"):
        T.from_networkx(nx.Graph([(0, 1), (2, 3)]))
    topo = T.from_networkx(nx.Graph([(0, 1), (2, 3)]), allow_disconnected=True)
    assert not topo.is_connected and topo.spectral_gap == pytest.approx(0.0, abs=1e-12)
    assert topo.describe()["diameter"] is None
    with pytest.raises(ValueError, match="disconnected"):
        _ = topo.diameter
    # self-loops are dropped
    assert T.from_networkx(nx.Graph([(0, 0), (0, 1)])).graph.number_of_edges() == 1
    with pytest.raises(ValueError, match="undirected"):
        T.from_networkx(nx.DiGraph([(0, 1), (1, 0)]))


def test_from_weights():
    w = T.exponential(8).weights
    topo = T.from_weights(w, name="exp8")
    assert topo.graph.is_directed() and topo.name == "exp8"
    np.testing.assert_array_equal(topo.weights, w)
    sym = T.from_weights(T.ring(6).weights)
    assert not sym.graph.is_directed() and sym.graph.number_of_edges() == 6
    with pytest.raises(ValueError, match="disconnected"):
        T.from_weights(np.eye(3))


def test_validate_mixing_matrix_errors():
    with pytest.raises(ValueError, match=r"expected \(3, 3\), got \(2, 3\)"):
        T.validate_mixing_matrix(np.ones((2, 3)) / 3, 3)
    bad = np.full((3, 3), 1 / 3)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        T.validate_mixing_matrix(bad, 3)
    neg = np.array([[1.5, -0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"W\[0, 1\] = -0.5"):
        T.validate_mixing_matrix(neg, 2)
    rows = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.2], [0.0, 0.5, 0.5]])
    with pytest.raises(ValueError, match="row 1 sums to 0.6"):
        T.validate_mixing_matrix(rows, 3)
    ok = T.validate_mixing_matrix(np.eye(2) + 1e-10 * np.array([[-1, 1], [0, 0]]), 2)
    assert ok.dtype == np.float64


@pytest.mark.parametrize(("call", "needle"), [
    (lambda: T.hypercube(6), "n=6"),
    (lambda: T.ring(0), "n=0"),
    (lambda: T.chain(-3), "n=-3"),
    (lambda: T.complete(2.5), "n=2.5"),
    (lambda: T.star(True), "n=True"),
    (lambda: T.torus(0, 4), "rows=0"),
    (lambda: T.torus(3, "x"), "cols='x'"),
    (lambda: T.binary_tree(0), "n=0"),
    (lambda: T.exponential(0), "n=0"),
    (lambda: T.one_peer_exponential(-1), "n=-1"),
])
def test_bad_sizes_name_value(call, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        call()


def test_hypercube_message_lists_neighbours():
    with pytest.raises(ValueError, match="4, 8"):
        T.hypercube(6)
    assert T.hypercube(1).n == 1


def test_registry_get():
    assert set(T.TOPOLOGIES) >= {"ring", "chain", "torus", "complete", "star", "hypercube", "exponential",
                                 "one_peer_exponential", "erdos_renyi", "social_network", "binary_tree",
                                 "double_binary_trees"}
    assert T.get("ring", 8).name == "ring(8)"
    assert T.get("torus", 16).name == "torus(4,4)"
    assert T.get("torus", 12, rows=2).name == "torus(2,6)"
    assert T.get("erdos_renyi", 10, p=0.5, seed=1).n == 10
    assert T.get("social_network", 32).n == 32
    with pytest.raises(ValueError, match="n=16"):
        T.get("social_network", 16)
    with pytest.raises(ValueError, match="valid names: .*ring"):
        T.get("rng", 8)
    with pytest.raises(ValueError, match="keywords allowed"):
        T.get("ring", 8, p=0.3)
    with pytest.raises(ValueError, match="rows=5"):
        T.get("torus", 16, rows=5, cols=3)


def test_topology_is_immutable_and_validated():
    topo = T.ring(4)
    with pytest.raises(ValueError):
        topo.weights[0, 0] = 0.0
    with pytest.raises(AttributeError):
        topo.name = "x"
    with pytest.raises(ValueError, match="schedule"):
        T.Topology(name="bad", graph=nx.complete_graph(2), weights=np.full((2, 2), 0.5),
                   schedule=(np.full((2, 2), 0.5), np.array([[1.0, 0.5], [0.0, 1.0]])))
    with pytest.raises(ValueError, match="spanning tree"):
        T.Topology(name="bad", graph=nx.complete_graph(3), weights=np.full((3, 3), 1 / 3),
                   trees=(nx.complete_graph(3),))


def test_describe_json():
    d = T.one_peer_exponential(8).describe()
    keys = {"name", "n", "spectral_gap", "rho", "lambda_min", "diameter", "max_degree", "time_varying"}
    assert set(d) >= keys
    assert d["time_varying"] is True and d["n"] == 8
    assert d["spectral_gap"] == pytest.approx(1 - math.cos(math.pi / 8))
    json.dumps(d)
