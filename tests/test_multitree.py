"""Gossip on split (multi-tree) topologies: coordinate k of the flattened vector is mixed over tree k mod T with that
tree's own Metropolis–Hastings matrix, as the RelaySGD authors' ``MultiTopologyGossipMechanism`` does
(arXiv 2110.04175; github.com/epfml/relaysgd, utils/communication.py and topologies.py)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

import simdl
from simdl.algorithms import Algorithm, Context, dsgd
from simdl.algorithms.base import gossip_bytes
from simdl.faults import Faults, faulty_gossip
from simdl.mixing import make_mixer, split_gossip_bytes, split_map, split_offsets, split_sizes
from simdl.runtime import build_step

T = simdl.topologies


@pytest.fixture
def x64():
    """float64 arrays for the numerical comparisons (``simulate`` runs stay in the default float32 mode)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


# --------------------------------------------------------------------------- numpy transcriptions of the reference
def ref_binary_tree_neighbors(n, worker, reverse=False):
    """The authors' ``BinaryTreeTopology.neighbors`` (topologies.py)."""
    if n < 2:
        return []
    if worker == 0 and not reverse:
        return [1]
    if worker == n - 1 and reverse:
        return [n - 2]
    if not reverse:
        return [worker // 2] + [c for c in (2 * worker, 2 * worker + 1) if c < n]
    w = n - 1 - worker
    return [n - 1 - w // 2] + [n - 1 - c for c in (2 * w, 2 * w + 1) if c < n]


def ref_gossip_matrix(n, reverse=False):
    """The authors' ``Topology.gossip_matrix``: ``W[i, j] = 1 / (max(deg_i, deg_j) + 1)`` on edges, self = rest."""
    deg = [len(ref_binary_tree_neighbors(n, i, reverse)) for i in range(n)]
    m = np.zeros((n, n))
    for i in range(n):
        for j in ref_binary_tree_neighbors(n, i, reverse):
            m[i, j] = 1 / (max(deg[i], deg[j]) + 1)
        m[i, i] = 1 - m[i].sum()
    return m


def ref_multi_gossip(mats, tree):
    """The authors' ``pack`` + ``MultiTopologyGossipMechanism.gossip_update`` (no drops): one worker's leaves are
    flattened and concatenated, then ``buffer[t::T]`` is mixed with ``mats[t]``. Returns ``{leaf index: array}``."""
    leaves = jax.tree_util.tree_leaves(tree)
    n = leaves[0].shape[0]
    buf = np.concatenate([np.asarray(x, np.float64).reshape(n, -1) for x in leaves], axis=1)
    out = np.empty_like(buf)
    for t, w in enumerate(mats):
        out[:, t::len(mats)] = w @ buf[:, t::len(mats)]
    res, o = [], 0
    for x in leaves:
        m = int(np.prod(x.shape[1:]))
        res.append(out[:, o:o + m].reshape(x.shape))
        o += m
    return res


def _tree(n, seed=0):
    rng = np.random.default_rng(seed)  # odd leaf sizes, so leaves start at odd global offsets
    return {"a": rng.standard_normal((n, 3, 3)), "b": rng.standard_normal((n,)), "c": rng.standard_normal((n, 5)),
            "d": rng.standard_normal((n, 2, 1, 2))}


def _check(out, tree, mats, atol=1e-6):
    """Leaves of ``out`` against :func:`ref_multi_gossip` (float64 numpy); the mixers' weight tables are float32 by
    design, hence ~1e-7 relative error on unit-scale data."""
    for got, want in zip(jax.tree_util.tree_leaves(out), ref_multi_gossip(mats, tree), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=atol)


# --------------------------------------------------------------------------- topology
@pytest.mark.parametrize("n", [2, 3, 7, 8, 16, 17])
def test_tree_weights_are_the_authors_per_tree_gossip_matrices(n):
    topo = T.double_binary_trees(n)
    assert topo.is_split and len(topo.tree_weights) == 2 and topo.describe()["gossip_trees"] == 2
    np.testing.assert_allclose(topo.tree_weights[0], ref_gossip_matrix(n), atol=1e-15)
    np.testing.assert_allclose(topo.tree_weights[1], ref_gossip_matrix(n, reverse=True), atol=1e-15)
    for w in topo.tree_weights:
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(topo.weights, T.metropolis_hastings(topo.graph))  # the union's, not used to gossip
    assert not T.ring(8).is_split and not T.binary_tree(8).is_split and T.ring(8).describe()["gossip_trees"] == 1


@pytest.mark.usefixtures("x64")
def test_spectral_gap_is_the_slowest_trees_not_the_unions():
    topo = T.double_binary_trees(16)
    per_tree = [T.spectral_gap(w) for w in topo.tree_weights]
    union = T.spectral_gap(topo.weights)
    assert topo.spectral_gap == pytest.approx(min(per_tree), abs=1e-15)
    assert topo.spectral_gap == pytest.approx(0.0242, abs=5e-4) and union == pytest.approx(0.1528, abs=5e-4)
    assert topo.rho == pytest.approx(1 - topo.spectral_gap)
    assert topo.lambda_min == pytest.approx(min(T.lambda_min(w) for w in topo.tree_weights))
    # gossip contracts the disagreement at the trees' rate: after many rounds ||X_k - mean|| shrinks by rho per
    # round, ~6x slower in log than the union matrix would
    mixer = jax.jit(make_mixer(topo, "dense"))
    x = {"x": np.random.default_rng(0).standard_normal((16, 64))}
    dev = []
    for _ in range(400):
        x = mixer(x)
        xs = np.asarray(x["x"])
        dev.append(np.linalg.norm(xs - xs.mean(axis=0)))
    rate = (dev[-1] / dev[-101]) ** (1 / 100)
    assert rate == pytest.approx(topo.rho, abs=2e-3)
    assert rate > 1 - union / 2


def test_lazy_keeps_the_split():
    topo = T.lazy(T.double_binary_trees(8), 0.25)
    assert topo.is_split
    for lw, w in zip(topo.tree_weights, T.double_binary_trees(8).tree_weights, strict=True):
        np.testing.assert_allclose(lw, 0.25 * np.eye(8) + 0.75 * w)


def test_custom_per_tree_weights_and_bad_values():
    base = T.double_binary_trees(6)
    lazy_pair = [0.5 * np.eye(6) + 0.5 * w for w in base.tree_weights]
    topo = T.double_binary_trees(6, weights=lazy_pair)
    np.testing.assert_allclose(topo.tree_weights[1], lazy_pair[1])
    np.testing.assert_allclose(topo.weights, (lazy_pair[0] + lazy_pair[1]) / 2)
    uni = T.double_binary_trees(6, weights="uniform")
    np.testing.assert_allclose(uni.tree_weights[0], T.uniform_weights(uni.trees[0]))
    assert topo.is_doubly_stochastic and base.is_symmetric
    # row-stochastic per-tree matrices (each worker splits evenly over itself and its tree neighbours) are not
    # doubly stochastic: the property looks at the trees' matrices, not only at the union's
    lop = []
    for t in base.trees:
        a = nx.to_numpy_array(t, nodelist=range(6)) + np.eye(6)
        lop.append(a / a.sum(axis=1, keepdims=True))
    skew = T.double_binary_trees(6, weights=lop)
    assert not skew.is_doubly_stochastic and not skew.is_symmetric
    cases = [
        (lambda: T.double_binary_trees(6, weights=np.eye(6)), r"pair of \(6, 6\) arrays"),
        (lambda: T.double_binary_trees(6, weights="nope"), "unknown weights scheme"),
        (lambda: T.double_binary_trees(6, weights=[base.tree_weights[1], base.tree_weights[0]]),
         r"tree_weights\[0\].*non-zero"),
        (lambda: T.Topology("x", base.graph, base.weights, trees=base.trees, tree_weights=base.tree_weights[:1]),
         "one matrix per tree: got 1 matrices for 2 trees"),
        (lambda: T.Topology("x", base.graph, base.weights, tree_weights=base.tree_weights),
         "got 2 matrices for 0 trees"),
        (lambda: T.Topology("x", base.graph, base.weights, schedule=(base.weights, np.eye(6)), trees=base.trees,
                            tree_weights=base.tree_weights), "static topology"),
        (lambda: T.ring(4).tree_neighbor_slots(0), "split topology"),
        (lambda: base.tree_neighbor_slots(2), r"tree must be an index in 0\.\.1, got tree=2"),
        (lambda: make_mixer(base, "shift"), "gossips per tree"),
    ]
    for make, needle in cases:
        with pytest.raises(ValueError, match=needle) as err:
            make()
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- the stride split
@pytest.mark.usefixtures("x64")
def test_split_map_assigns_global_coordinate_k_to_part_k_mod_t():
    tree = _tree(4)
    assert split_offsets(tree) == [0, 9, 10, 15]  # leaves in tree_leaves order: a (9), b (1), c (5), d (4)
    for parts in (1, 2, 3):
        out = split_map([lambda y, t=t: jnp.full_like(y, t) for t in range(parts)], tree)
        flat = np.concatenate([np.asarray(v).reshape(4, -1) for v in jax.tree_util.tree_leaves(out)], axis=1)
        np.testing.assert_array_equal(flat, np.broadcast_to(np.arange(19) % parts, (4, 19)))
        np.testing.assert_array_equal(split_sizes(tree, parts), [8.0 * np.sum(np.arange(19) % parts == t)
                                                                 for t in range(parts)])
    # identity functions give the input back exactly (the padding never leaks)
    same = split_map([lambda y: y, lambda y: y], tree)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(tree), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n", [5, 8, 16])
@pytest.mark.parametrize("method", ["dense", "sparse", "auto"])
def test_mixer_paths_equal_per_tree_numpy(n, method):
    topo = T.double_binary_trees(n)
    mixer = make_mixer(topo, method)
    assert mixer.parts == 2 and mixer.method in ("dense", "sparse")
    tree = _tree(n, n)
    _check(jax.jit(mixer)(tree), tree, topo.tree_weights)
    _check(mixer(tree, 3), tree, topo.tree_weights)
    # not the union matrix
    union = np.einsum("ij,j...->i...", topo.weights, tree["c"])
    assert not np.allclose(np.asarray(mixer(tree)["c"]), union)


def test_mixer_float32_and_tiny_topologies():
    topo = T.double_binary_trees(9)
    tree = {k: v.astype(np.float32) for k, v in _tree(9, 1).items()}
    out = make_mixer(topo)(tree)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(out))
    _check(out, tree, topo.tree_weights, atol=1e-5)
    for n in (1, 2):  # one or two workers: every tree matrix is 11ᵀ/n
        assert make_mixer(T.double_binary_trees(n)).method == "mean"


def test_every_ctx_mix_algorithm_gossips_per_tree():
    """One runner step of a gossip-only algorithm (X ← ctx.mix(X)) equals the per-tree numpy mixing."""
    quad = simdl.tasks.random_quadratics(n_workers=8, dim=7, seed=0)
    topo = T.double_binary_trees(8)

    def step(state, grads, ctx):
        return ctx.mix(state), {"lr": jnp.float32(0.0), "bytes_sent": jnp.zeros((ctx.n,), jnp.float32)}

    alg = Algorithm("gossip_only", lambda p, ctx: p, step, lambda s: s, lambda s: s, {})
    run = jax.jit(build_step(quad, alg, topo, make_mixer(topo), 4))
    state = {"x": jnp.asarray(np.random.default_rng(3).standard_normal((8, 7)))}
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    new, _, _ = run(state, jnp.int32(0), quad.data, keys, jax.random.PRNGKey(1))
    _check(new, state, topo.tree_weights)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_d2_neighbour_difference_term_is_per_tree(scale):
    """D² / Exact Diffusion mix with their own neighbour-difference tables; on a split topology they are per tree too:
    ``scale · (W_t − I) Y`` on the coordinates of tree t."""
    from simdl.algorithms.d2 import laplacian

    topo = T.double_binary_trees(11)
    y = _tree(11, 2)
    mats = [scale * w + (1 - scale) * np.eye(11) for w in topo.tree_weights]
    want = [m - np.asarray(x) for m, x in zip(ref_multi_gossip(mats, y), jax.tree_util.tree_leaves(y), strict=True)]
    for got, w in zip(jax.tree_util.tree_leaves(laplacian(topo, y, scale)), want, strict=True):
        np.testing.assert_allclose(np.asarray(got), w, atol=1e-6)
    union = np.einsum("ij,j...->i...", topo.weights - np.eye(11), y["c"]) * scale
    assert not np.allclose(np.asarray(laplacian(topo, y, scale)["c"]), union, atol=1e-3)


def test_d2_and_exact_diffusion_run_on_double_binary_trees():
    quad = simdl.tasks.random_quadratics(n_workers=8, dim=6, seed=2)
    for alg in (simdl.algorithms.d2(0.05), simdl.algorithms.exact_diffusion(0.05)):
        res = simdl.simulate(quad, alg, T.double_binary_trees(8), steps=20, eval_every=10)
        assert res.diverged_at is None and np.isfinite(res.history["loss"][-1])


# --------------------------------------------------------------------------- bytes
def test_bytes_are_counted_per_tree():
    topo = T.double_binary_trees(16)
    params = {"w": np.zeros((16, 3, 3), np.float32), "b": np.zeros((16,), np.float32)}  # 10 coordinates, 5 per tree
    degs = topo.tree_out_degree()
    assert degs.shape == (2, 16)
    expected = (degs[0] * 5 + degs[1] * 5) * 4.0
    np.testing.assert_array_equal(split_gossip_bytes(topo, params), expected)
    ctx = Context(jnp.int32(0), jax.random.PRNGKey(0), topo, lambda t: t, np.full(16, 1 / 16))
    sent = gossip_bytes(ctx, params)
    np.testing.assert_array_equal(np.asarray(sent), expected.astype(np.float32))
    union = topo.out_degree() * 40.0
    # every tree has n - 1 edges, each used in both directions with half the model: 2 (n - 1) x 20 bytes per tree
    assert np.all(np.asarray(sent) <= union) and np.asarray(sent).sum() == 2 * (2 * 15 * 20)
    # odd coordinate count: tree 0 gets one more coordinate
    odd = {"w": np.zeros((16, 3), np.float32)}
    np.testing.assert_array_equal(split_gossip_bytes(topo, odd), (degs[0] * 2 + degs[1] * 1) * 4.0)
    # a D-SGD run reports the same per-step bytes
    quad = simdl.tasks.random_quadratics(n_workers=16, dim=10, seed=0)
    res = simdl.simulate(quad, dsgd(0.1), topo, steps=3, eval_every=3)
    assert res.history["bytes_per_worker"][-1] == pytest.approx(3 * float(np.mean(expected)), rel=1e-6)


# --------------------------------------------------------------------------- faults on split topologies
@pytest.mark.usefixtures("x64")
def test_message_drops_are_per_tree_and_renormalised_per_tree():
    from tests.test_faults import reference_gossip_update

    topo = T.double_binary_trees(10)
    g = faulty_gossip(topo, Faults(message_drop=0.4))
    assert g.parts == 2
    tree = _tree(10, 5)
    for step in range(4):
        u = jax.random.uniform(jax.random.PRNGKey(step), (g.n_uniforms,), dtype=jnp.float32)
        alive = np.asarray(g.alive(u, step))
        assert alive.shape == (2,) + topo.tree_neighbor_slots(0)[0].shape
        mats = []
        for t in range(2):
            index, weight = topo.tree_neighbor_slots(t)
            received = np.zeros((10, 10), bool)
            for i in range(10):
                for s in range(1, index.shape[1]):
                    received[i, index[i, s]] |= bool(alive[t, i, s]) and weight[i, s] != 0
            mats.append(reference_gossip_update(topo.tree_weights[t], np.eye(10), received))
        np.testing.assert_allclose(np.asarray(g.matrix(u, step)), np.stack(mats), atol=1e-6)
        _check(g(tree, step, u), tree, mats, atol=1e-6)
        lost = sum(((topo.tree_neighbor_slots(t)[1] != 0) & ~alive[t]).sum(axis=1) for t in range(2))
        np.testing.assert_array_equal(np.asarray(g.lost(u, step)), lost)
    # the two trees draw independently
    assert not np.array_equal(alive[0], alive[1])


def test_link_failures_hit_every_tree_using_the_link():
    topo = T.double_binary_trees(8)
    shared = {frozenset(e) for e in topo.trees[0].edges} & {frozenset(e) for e in topo.trees[1].edges}
    assert shared  # n = 8: some links belong to both trees
    g = faulty_gossip(topo, Faults(link_failure=0.5))
    assert g.n_edges == topo.graph.number_of_edges()
    for step in range(5):
        u = jax.random.uniform(jax.random.PRNGKey(10 + step), (g.n_uniforms,), dtype=jnp.float32)
        m = np.asarray(g.matrix(u, step))
        for t in range(2):
            np.testing.assert_allclose(m[t], m[t].T, atol=1e-7)
            np.testing.assert_allclose(m[t].sum(axis=0), 1.0, atol=1e-6)
        for e in shared:
            i, j = tuple(e)
            assert (m[0][i, j] == 0) == (m[1][i, j] == 0)


def test_faulty_dsgd_runs_on_double_binary_trees():
    quad = simdl.tasks.random_quadratics(n_workers=8, dim=5, seed=1)
    res = simdl.simulate(quad, dsgd(0.1), T.double_binary_trees(8), steps=6, eval_every=3,
                         faults=Faults(message_drop=0.3, link_failure=0.1))
    assert res.history["messages_lost"][-1] > 0 and res.diverged_at is None


# --------------------------------------------------------------------------- sharded worker axis
CHILD = textwrap.dedent("""
    import json, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import simdl
    from jax.sharding import Mesh
    from simdl.sharding import make_sharded_mixer
    topo = simdl.topologies.double_binary_trees(12)
    mesh = Mesh(np.array(jax.devices()), ("workers",))
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((12, 3, 3)), "b": rng.standard_normal((12,))}
    out = {}
    for m in ("dense", "sparse"):
        mixer = make_sharded_mixer(topo, mesh, m)
        y = jax.jit(mixer)(x)
        out[m] = {k: np.asarray(v).tolist() for k, v in y.items()}
        out[m + "_parts"] = mixer.parts
    print(json.dumps(out))
""")


def test_sharded_mixer_splits_per_tree():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((12, 3, 3)), "b": rng.standard_normal((12,))}
    mats = T.double_binary_trees(12).tree_weights
    for m in ("dense", "sparse"):
        assert rep[m + "_parts"] == 2
        _check({k: np.asarray(v) for k, v in rep[m].items()}, x, mats)


def test_relaysgd_still_uses_the_trees():
    """RelaySGD does not gossip through ctx.mix; its relay plans are built from ``Topology.trees`` as before."""
    topo = T.double_binary_trees(8)
    assert all(nx.is_tree(t) for t in topo.trees)
    quad = simdl.tasks.random_quadratics(n_workers=8, dim=4, seed=0)
    res = simdl.simulate(quad, simdl.algorithms.relaysgd(0.1), topo, steps=4, eval_every=4)
    assert res.diverged_at is None
