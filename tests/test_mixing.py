"""Every mixing path equals dense numpy ``W @ X``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.mixing import dense_mix, make_mixer, mean_mix, shift_mix, sparse_mix

T = simdl.topologies

STATIC = [
    ("ring", lambda: T.ring(9)),
    ("ring2", lambda: T.ring(2)),
    ("chain", lambda: T.chain(7)),
    ("torus", lambda: T.torus(3, 4)),
    ("complete", lambda: T.complete(6)),
    ("star", lambda: T.star(8)),
    ("hypercube", lambda: T.hypercube(8)),
    ("exponential", lambda: T.exponential(12)),
    ("erdos_renyi", lambda: T.erdos_renyi(10, 0.4, seed=3)),
    ("social", lambda: T.social_network()),
    ("binary_tree", lambda: T.binary_tree(11)),
    # double_binary_trees gossips per tree (split topology): tests/test_multitree.py
]


def _tree(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((n, 3, 2)).astype(np.float32), "b": rng.standard_normal((n,)).astype(np.float32)}


def _ref(W, tree):
    return {k: np.einsum("ij,j...->i...", W, v.astype(np.float64)) for k, v in tree.items()}


def _close(out, ref):
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k], np.float64), ref[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,make", STATIC, ids=[s[0] for s in STATIC])
@pytest.mark.parametrize("method", ["dense", "sparse", "auto"])
def test_static_paths_equal_dense_numpy(name, make, method):
    topo = make()
    x = _tree(topo.n)
    mixer = make_mixer(topo, method)
    _close(jax.jit(mixer)(x), _ref(topo.weights, x))


@pytest.mark.parametrize("make", [lambda: T.ring(10), lambda: T.exponential(16), lambda: T.complete(5)])
def test_shift_path_equals_dense_numpy(make):
    topo = make()
    x = _tree(topo.n, 1)
    _close(make_mixer(topo, "shift")(x), _ref(topo.weights, x))
    offs = topo.circulant_offsets()
    _close(shift_mix(tuple(o for o, _ in offs), np.array([c for _, c in offs]), x), _ref(topo.weights, x))


def test_sparse_and_dense_functions_directly():
    topo = T.erdos_renyi(12, 0.3, seed=1)
    x = _tree(12, 2)
    idx, w = topo.neighbor_slots()
    _close(sparse_mix(jnp.asarray(idx), jnp.asarray(w), x), _ref(topo.weights, x))
    _close(dense_mix(jnp.asarray(topo.weights), x), _ref(topo.weights, x))


def test_mean_path_is_exact_average_and_weighted():
    topo = T.complete(7)
    x = _tree(7, 3)
    assert make_mixer(topo).method == "mean"
    _close(make_mixer(topo)(x), _ref(np.full((7, 7), 1 / 7), x))
    p = np.arange(1, 8) / 28.0
    _close(mean_mix(x, p), _ref(np.tile(p, (7, 1)), x))


@pytest.mark.parametrize("method", ["dense", "sparse", "shift", "auto"])
def test_time_varying_one_peer_matches_weights_at(method):
    topo = T.one_peer_exponential(8)
    x = _tree(8, 4)
    mixer = make_mixer(topo, method)
    f = jax.jit(lambda tree, s: mixer(tree, s))
    for step in range(7):
        _close(f(x, jnp.int32(step)), _ref(topo.weights_at(step), x))


def test_one_peer_exponential_averages_exactly_after_log2n_steps():
    topo = T.one_peer_exponential(16)
    mixer = make_mixer(topo)
    x = _tree(16, 5)
    y = x
    for s in range(4):
        y = mixer(y, jnp.int32(s))
    for k in x:
        np.testing.assert_allclose(np.asarray(y[k]), np.broadcast_to(x[k].mean(0), x[k].shape), atol=1e-6)


def test_bad_method_and_incompatible_method_raise():
    with pytest.raises(ValueError, match="'bogus'"):
        make_mixer(T.ring(4), "bogus")
    with pytest.raises(ValueError, match="circulant"):
        make_mixer(T.star(5), "shift")
    with pytest.raises(ValueError, match="11ᵀ/n"):
        make_mixer(T.ring(5), "mean")


def test_auto_chooses_shift_for_ring_and_sparse_for_star():
    assert make_mixer(T.ring(64)).method == "shift"
    assert make_mixer(T.torus(8, 8)).method in ("sparse", "shift")
    assert make_mixer(T.binary_tree(64)).method == "sparse"
