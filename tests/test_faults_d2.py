"""Gossip faults reach D² and exact diffusion through the runtime's channel (``Context.mix_delta``).

Reference: the RelaySGD authors' D² baseline under simulated drops (github.com/epfml/relaysgd, ``algorithms.py``,
``d2``: parameters ← x + u + c; one ``MultiTopologyGossipMechanism.gossip_update`` with drops; c ← mixed − x − u),
transcribed in numpy float64 with the faulty matrices W'_t of the run's fault stream.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.algorithms import Context, d2, exact_diffusion
from simdl.faults import Faults, faulty_gossip, injector
from simdl.mixing import make_mixer, neighbor_difference
from simdl.runtime import build_step

T = simdl.topologies


@pytest.fixture(scope="module")
def quad():
    return simdl.tasks.random_quadratics(n_workers=8, dim=6, zeta2=1.0, r0=10.0, noise=0.1, seed=3)


def _ref_d2_faulty(ws, lr, x0, grads, half):
    """D² / exact diffusion in the authors' order with a per-step W'_t (float64): y = x − η g + c; x⁺ = W̃'_t y;
    c⁺ = x⁺ − x + η g, where W̃' = W' (D²) or (I + W')/2 (exact diffusion)."""
    x, c, out = x0.astype(np.float64), np.zeros_like(x0, np.float64), []
    for w, g in zip(ws, grads, strict=True):
        wt = 0.5 * (np.eye(len(w)) + w) if half else w
        u = -lr * g
        new = wt @ (x + u + c)
        c = new - x - u
        x = new
        out.append(x)
    return out


@pytest.mark.parametrize("name,topo,faults", [
    ("d2", T.ring(8), Faults(message_drop=0.3)),
    ("d2", T.erdos_renyi(8, 0.5, seed=1), Faults(message_drop=0.3, link_failure=0.2)),
    ("exact_diffusion", T.ring(8), Faults(message_drop=0.3, lost="self")),
    ("exact_diffusion", T.complete(8), Faults(message_drop=0.3)),  # dense W'_t path
    ("d2", T.double_binary_trees(8), Faults(message_drop=0.3)),  # split: one W'_t per tree
], ids=["d2-ring", "d2-er-links", "ed-ring-self", "ed-complete-dense", "d2-double-trees"])
def test_d2_family_under_faults_matches_reference(quad, name, topo, faults):
    """The runner's faulty step equals the numpy transcription with the W'_t rebuilt from the run's fault stream."""
    lr, n, steps = 0.05, 8, 6
    factory = d2 if name == "d2" else exact_diffusion
    alg = factory(lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the even MH ring sits at D²'s boundary λ_min = −1/3
        simdl.faults.check_algorithm(faults, alg, topo, quad)  # accepted: it communicates through ctx
        x0 = np.random.default_rng(0).standard_normal((n, 6)).astype(np.float32)
        ctx0 = Context(jnp.int32(0), jax.random.PRNGKey(0), topo, lambda tr: tr, np.asarray(quad.worker_weights))
        state = alg.init({"x": jnp.asarray(x0)}, ctx0)
    inj = injector(faults, topo)
    gossip = inj.gossip
    matrix_f = jax.jit(lambda k, t: gossip.matrix(inj.uniforms(k, t)[1], t))
    grads = [np.random.default_rng(10 + t).standard_normal(x0.shape).astype(np.float32) for t in range(steps)]
    alg_key = jax.random.PRNGKey(7)
    ws, got = [], []
    for t, g in enumerate(grads):
        u = inj.uniforms(alg_key, t)[1]
        ctx = Context(jnp.int32(t), jax.random.fold_in(alg_key, t), topo, lambda tr, u=u, t=t: gossip(tr, t, u),
                      np.asarray(quad.worker_weights),
                      lambda tr, scale=1.0, u=u, t=t: gossip.difference(tr, t, u, scale))
        state, _ = alg.step(state, {"x": jnp.asarray(g)}, ctx)
        got.append(np.asarray(alg.params(state)["x"]))
        ws.append(np.asarray(matrix_f(alg_key, t), np.float64))
    lost = sum(float(np.sum(np.asarray(gossip.lost(inj.uniforms(alg_key, t)[1], t)))) for t in range(steps))
    assert lost > 0
    if topo.is_split:  # coordinate k over tree k mod T: check per coordinate with that tree's W'_t
        for k in range(x0.shape[1]):
            ref = _ref_d2_faulty([w[k % len(w)] for w in ws], lr, x0[:, k:k + 1], [g[:, k:k + 1] for g in grads],
                                 name != "d2")
            for a, b in zip(got, ref, strict=True):
                np.testing.assert_allclose(a[:, k:k + 1], b, rtol=1e-5, atol=1e-5)
        return
    ref = _ref_d2_faulty(ws, lr, x0, grads, name != "d2")
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_faulty_difference_equals_w_minus_identity():
    """``FaultyGossip.difference`` = scale · (W'_t − I) X (dense numpy), on slot, dense and split paths."""
    x = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    for topo in (T.ring(8), T.complete(8), T.torus(2, 4), T.double_binary_trees(8)):
        g = faulty_gossip(topo, Faults(message_drop=0.4, link_failure=0.1))
        u = jax.random.uniform(jax.random.PRNGKey(1), (g.n_uniforms,))
        m = np.asarray(g.matrix(u, 0), np.float64)
        for scale in (1.0, 0.5):
            got = np.asarray(g.difference({"x": jnp.asarray(x)}, 0, u, scale)["x"])
            if topo.is_split:
                for k in range(x.shape[1]):
                    want = scale * (m[k % len(m)] - np.eye(8)) @ x[:, k]
                    np.testing.assert_allclose(got[:, k], want, atol=2e-6)
            else:
                np.testing.assert_allclose(got, scale * (m - np.eye(8)) @ x, atol=2e-6)


def test_context_mix_delta_default_is_the_static_topology():
    """Without an override ``ctx.mix_delta`` is ``neighbor_difference`` of the static W, = (W − I) X."""
    x = np.random.default_rng(4).standard_normal((8, 3)).astype(np.float32)
    for topo in (T.ring(8), T.erdos_renyi(8, 0.5, seed=1)):
        mixer = make_mixer(topo)
        ctx = Context(jnp.int32(0), jax.random.PRNGKey(0), topo, lambda tr, m=mixer: m(tr, step=0), np.full(8, 1 / 8))
        got = np.asarray(ctx.mix_delta({"x": jnp.asarray(x)}, 0.5)["x"])
        np.testing.assert_allclose(got, 0.5 * (topo.weights - np.eye(8)) @ x, atol=2e-6)
        np.testing.assert_array_equal(got, np.asarray(neighbor_difference(topo, {"x": jnp.asarray(x)}, 0.5)["x"]))


def test_d2_link_failures_keep_the_worker_mean(quad):
    """Link failures on a symmetric W keep W'_t doubly stochastic, so D²'s correction still sums to zero over workers
    and the worker mean follows the mean gradient step exactly; message drops (row-stochastic only) do not."""
    topo = T.lazy(T.ring(8), 0.2)

    def run(faults):
        alg = d2(0.05)
        step = jax.jit(build_step(quad, alg, topo, make_mixer(topo), 4, faults=faults))
        x0 = jnp.asarray(np.random.default_rng(5).standard_normal((8, 6)), jnp.float32)
        ctx0 = Context(jnp.int32(0), jax.random.PRNGKey(0), topo, lambda tr: tr, np.asarray(quad.worker_weights))
        state = alg.init({"x": x0}, ctx0)
        keys = jax.random.split(jax.random.PRNGKey(1), 8)
        for t in range(10):
            state, _, aux = step(state, jnp.int32(t), quad.data, keys, jax.random.PRNGKey(2))
        return np.asarray(state.correction["x"]), float(np.sum(aux["messages_lost"]))

    corr, lost = run(Faults(link_failure=0.4))
    assert lost > 0
    np.testing.assert_allclose(corr.sum(axis=0), 0.0, atol=1e-5)
    corr_drop, _ = run(Faults(message_drop=0.4))
    assert not np.allclose(corr_drop.sum(axis=0), 0.0, atol=1e-3)


def test_simulate_d2_with_drops_runs_and_counts(quad):
    res = simdl.simulate(quad, exact_diffusion(0.05), T.ring(8), steps=20, eval_every=10,
                         faults={"message_drop": 0.1})
    assert res.history["messages_lost"][-1] > 0 and res.diverged_at is None


def test_doubly_stochastic_check_looks_at_each_tree():
    """D²/ED/gradient tracking need every gossip matrix doubly stochastic: on a split topology each tree's matrix is
    checked (row-stochastic per-tree weights can average to a doubly stochastic union)."""
    import networkx as nx

    from simdl.algorithms.d2 import check_doubly_stochastic

    base = T.double_binary_trees(6)
    check_doubly_stochastic(base, "d2")  # MH weights per tree: fine
    lop = []
    for t in base.trees:
        a = nx.to_numpy_array(t, nodelist=range(6)) + np.eye(6)
        lop.append(a / a.sum(axis=1, keepdims=True))
    skew = T.double_binary_trees(6, weights=lop)
    with pytest.raises(ValueError, match=r"tree \d"):
        check_doubly_stochastic(skew, "d2")
