"""Base-(k+1) graph (Takezawa et al. 2023, arXiv 2305.11420): exact consensus after one period for every n, at most
k peers per worker and step, doubly stochastic matrices on the graph's edges, the length bound, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.mixing import make_mixer

T = simdl.topologies
CASES = [(n, k) for k in range(1, 5) for n in range(1, 65)]


def _floor_log(n, base):
    p = 0
    while base ** (p + 1) <= n:
        p += 1
    return p


def _bound(n, k):
    """The length the construction guarantees: 2 ⌊log_{k+1} n⌋ + 2 (hyper-hypercubes of at most ⌊log_{k+1} n⌋ + 1
    rounds, one merge round, ⌊log_{k+1} n⌋ rounds to spread it; the paper's length is O(log_{k+1} n))."""
    return 2 * _floor_log(n, k + 1) + 2


@pytest.mark.parametrize("n,k", CASES)
def test_one_period_averages_exactly_within_the_bound(n, k):
    topo = T.base_graph(n, k)
    assert topo.n == n and 1 <= topo.period <= _bound(n, k)
    prod = np.eye(n)
    for w in topo.period_weights:
        prod = w @ prod  # X ← W_t X, t = 0, 1, ...
    np.testing.assert_allclose(prod, np.full((n, n), 1.0 / n), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n,k", CASES)
def test_every_matrix_doubly_stochastic_on_the_graph_with_at_most_k_peers(n, k):
    topo = T.base_graph(n, k)
    assert not topo.graph.is_directed() and topo.is_doubly_stochastic and topo.is_symmetric
    edges = np.zeros((n, n), bool)
    for a, b in topo.graph.edges:
        edges[a, b] = edges[b, a] = True
    for w in topo.period_weights:
        assert (w >= 0).all()
        np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-12)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
        off = w != 0
        np.fill_diagonal(off, False)
        assert not (off & ~edges).any()  # every weight sits on an edge of the graph
        assert off.sum(1).max(initial=0) <= k  # the paper's maximum degree k, per step
    assert topo.is_connected


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64])
def test_base2_on_powers_of_two_is_the_one_peer_hypercube(n):
    topo = T.base_graph(n, 1)
    assert topo.period == max(1, n.bit_length() - 1)
    for w in topo.period_weights:
        assert set(np.round(w[w != 0], 12)) <= {0.5} or n == 1


@pytest.mark.parametrize("n,k", [(2, 1), (3, 2), (5, 4), (4, 7)])
def test_at_most_k_plus_one_workers_average_in_one_step(n, k):
    topo = T.base_graph(n, k)
    assert topo.period == 1
    np.testing.assert_allclose(topo.weights, np.full((n, n), 1.0 / n), atol=1e-15)


def test_smooth_n_uses_fewest_rounds():
    # n = 12 = 3 · 4 with k = 3: two rounds; n = 10 = 2 · 5 with k = 4: two rounds; n = 27 with k = 2: three
    assert T.base_graph(12, 3).period == 2 and T.base_graph(10, 4).period == 2 and T.base_graph(27, 2).period == 3


def test_not_a_power_of_two_still_exact_where_one_peer_exponential_is_not():
    n = 6
    prod = np.eye(n)
    one_peer = T.one_peer_exponential(n)
    for w in one_peer.period_weights:
        prod = w @ prod
    assert np.abs(prod - 1.0 / n).max() > 1e-3  # the one-peer exponential graph does not average 6 exactly
    topo = T.base_graph(n, 1)
    prod = np.eye(n)
    for w in topo.period_weights:
        prod = w @ prod
    np.testing.assert_allclose(prod, 1.0 / n, atol=1e-12)
    assert topo.period == 4  # 3-worker Simple Base-2 graph (3 rounds), then pairs {j, j + 3} (1 round)


@pytest.mark.parametrize("n,k", [(7, 1), (23, 2), (50, 3)])
def test_runner_mixer_reaches_consensus_after_one_period(n, k):
    topo = T.base_graph(n, k)
    mixer = make_mixer(topo)
    x = {"x": jnp.asarray(np.random.default_rng(n).standard_normal((n, 3)), jnp.float32)}
    y = x
    for s in range(topo.period):
        y = mixer(y, jnp.int32(s))
    np.testing.assert_allclose(np.asarray(y["x"]), np.broadcast_to(np.asarray(x["x"]).mean(0), (n, 3)),
                               atol=1e-5)


@pytest.mark.parametrize("n,k,what", [(0, 1, "n"), (-3, 1, "n"), (4, 0, "k"), (4, -1, "k"), (2.5, 1, "n"),
                                      (4, 1.5, "k"), (True, 1, "n"), (4, None, "k")])
def test_bad_input_raises_one_line(n, k, what):
    with pytest.raises(ValueError, match=f"^{what} must be an integer >= 1") as err:
        T.base_graph(n, k)
    assert "\n" not in str(err.value)


def test_available_by_name():
    a, b = T.get("base", 12, k=2), T.base_graph(12, 2)
    assert a.name == b.name == "base_graph(12,k=2)" and a.period == b.period
    for x, y in zip(a.period_weights, b.period_weights, strict=True):
        np.testing.assert_array_equal(x, y)
    assert T.get("base", 6).name == "base_graph(6,k=1)"
    with pytest.raises(ValueError, match="keywords allowed"):
        T.get("base", 6, degree=2)
