"""SGP / push-sum (arXiv 1811.10792), CHOCO-SGD (arXiv 1902.00340) and the compressors of simdl.compression."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import optax
import pytest

import simdl
from simdl import compression as C
from simdl.algorithms.base import Context
from simdl.algorithms.choco import choco_sgd
from simdl.algorithms.gossip import dsgd
from simdl.algorithms.sgp import out_degree_push_matrix, sgp
from simdl.metrics import consensus_distance
from simdl.mixing import make_mixer

N = 8
D = 6


def _ctx(topo, t, key=0):
    mixer = make_mixer(topo)
    return Context(jnp.int32(t), jax.random.fold_in(jax.random.PRNGKey(key), t), topo,
                   lambda tree: mixer(tree, step=t), np.full(topo.n, 1.0 / topo.n))


def _run(alg, topo, x0, grads):
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    out = []
    for t, g in enumerate(grads):
        state, aux = alg.step(state, {"x": jnp.asarray(g, jnp.float32)}, _ctx(topo, t))
        out.append((state, aux))
    return out


def _data(seed, steps=6, n=N, d=D):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), [rng.standard_normal((n, d)) for _ in range(steps)]


def _directed_graph_topology(n=N):
    """Strongly connected digraph with unequal out-degrees; uniform (row-stochastic, not column-stochastic) W."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, (i + 1) % n) for i in range(n))
    g.add_edges_from([(0, 3), (0, 5), (2, 6), (4, 1)])
    return simdl.topologies.from_networkx(g, weights="uniform", name="digraph")


# ----------------------------------------------------------------------------------------------------- SGP
def _ref_sgp(P_at, lr, beta, x0, grads, step_on="numerator"):
    """float64 push-sum with local Nesterov momentum (PyTorch convention), gradients fed as given (taken at z)."""
    x, w, buf = x0.copy(), np.ones(x0.shape[0]), np.zeros_like(x0)
    out = []
    for t, g in enumerate(grads):
        z = x / w[:, None]
        buf = beta * buf + g
        upd = -lr * (g + beta * buf)
        half = x + upd if step_on == "numerator" else w[:, None] * (z + upd)
        P = P_at(t)
        x, w = P @ half, P @ w
        out.append((x / w[:, None], w.copy()))
    return out


def test_sgp_one_peer_exponential_matches_reference_and_dsgd():
    topo = simdl.topologies.one_peer_exponential(N)
    x0, grads = _data(0)
    got = _run(sgp(0.1), topo, x0, grads)
    ref = _ref_sgp(topo.weights_at, 0.1, 0.9, x0, grads)
    base = _run(dsgd(0.1, momentum=0.9, nesterov=True), topo, x0, grads)
    for (state, aux), (z, w), (sb, _) in zip(got, ref, base, strict=True):
        np.testing.assert_array_equal(w, 1.0)
        np.testing.assert_allclose(np.asarray(sgp(0.1).params(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(state.weight), 1.0)  # symmetric one-peer graph: w stays 1
        np.testing.assert_allclose(np.asarray(state.params["x"]), np.asarray(sb.params["x"]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), D * 4 + 4)  # one peer: model + weight


@pytest.mark.parametrize("step_on", ["numerator", "debiased"])
def test_sgp_directed_graph_matches_push_sum_reference(step_on):
    topo = _directed_graph_topology()
    P = out_degree_push_matrix(topo.weights)
    np.testing.assert_allclose(P.sum(axis=0), 1.0)
    assert not np.allclose(P.sum(axis=1), 1.0)
    x0, grads = _data(1)
    alg = sgp(0.05, push_weights="out_degree", step_on=step_on)
    got = _run(alg, topo, x0, grads)
    ref = _ref_sgp(lambda t: P, 0.05, 0.9, x0, grads, step_on)
    for (state, aux), (z, w) in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(alg.query(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.weight), w, rtol=1e-6)
        out_deg = (P != 0).sum(axis=0) - 1
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), out_deg * (D * 4 + 4))
    assert np.abs(ref[-1][1] - 1).max() > 0.05  # the weights really moved away from 1


def test_sgp_averages_exactly_on_one_peer_exponential():
    """n = 2^τ: τ = 3 consecutive one-peer rounds average exactly (zero gradients = pure push-sum gossip)."""
    topo = simdl.topologies.one_peer_exponential(8)
    x0, _ = _data(2)
    zeros = [np.zeros_like(x0)] * 3
    got = _run(sgp(0.1), topo, x0, zeros)
    z2 = np.asarray(got[1][0].params["x"])
    assert np.abs(z2 - x0.mean(axis=0)).max() > 1e-2  # not yet after 2 rounds
    np.testing.assert_allclose(np.asarray(got[2][0].params["x"]), np.broadcast_to(x0.mean(axis=0), x0.shape),
                               rtol=0, atol=1e-6)


def test_push_sum_debiasing_recovers_the_average_on_a_directed_graph():
    topo = _directed_graph_topology()
    x0, _ = _data(3)
    alg = sgp(0.1, push_weights="out_degree")
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    step = jax.jit(lambda s, t: alg.step(s, {"x": jnp.zeros((N, D))}, _ctx(topo, 0)._replace(step=t))[0])
    for t in range(200):
        state = step(state, jnp.int32(t))
    z = np.asarray(alg.params(state)["x"])
    np.testing.assert_allclose(z, np.broadcast_to(x0.mean(axis=0), z.shape), rtol=0, atol=1e-5)
    numer = np.asarray(state.params["x"])
    assert np.abs(numer - x0.mean(axis=0)).max() > 1e-2  # the numerators alone are biased
    np.testing.assert_allclose(np.asarray(state.weight).sum(), N, rtol=1e-5)  # push-sum conserves mass


def test_sgp_custom_time_varying_push_matrices():
    topo = _directed_graph_topology()
    P0 = out_degree_push_matrix(topo.weights)
    P1 = np.eye(N)
    x0, grads = _data(4, steps=4)
    got = _run(sgp(0.1, momentum=0.0, nesterov=False, push_weights=[P0, P1]), topo, x0, grads)
    ref = _ref_sgp(lambda t: (P0, P1)[t % 2], 0.1, 0.0, x0, grads)
    for (state, _), (z, _) in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(sgp(0.1).params(state)["x"]), z, rtol=1e-5, atol=1e-5)


def test_sgp_rejects_non_column_stochastic_weights():
    topo = _directed_graph_topology()
    with pytest.raises(ValueError, match=r"column-stochastic.*out_degree"):
        sgp(0.1).init({"x": jnp.zeros((N, 2))}, _ctx(topo, 0))
    bad = out_degree_push_matrix(topo.weights)
    bad[1, 7] = 0.1  # no edge 7 -> 1
    bad[7, 7] -= 0.1
    with pytest.raises(ValueError, match="no edge 7 -> 1"):
        sgp(0.1, push_weights=bad).init({"x": jnp.zeros((N, 2))}, _ctx(topo, 0))
    with pytest.raises(ValueError, match="push_weights"):
        sgp(0.1, push_weights="metropolis")
    with pytest.raises(ValueError, match="step_on"):
        sgp(0.1, step_on="z")


def test_sgp_converges_on_quadratics_one_peer_exponential():
    task = simdl.tasks.random_quadratics(n_workers=8, dim=10, zeta2=1.0, r0=10.0, seed=2)
    topo = simdl.topologies.one_peer_exponential(8)
    res = simdl.simulate(task, sgp(0.01), topo, steps=1500, eval_every=500)
    f0 = 0.5 * np.mean(np.linspace(0.5, 1.0, 10) ** 2) * 100.0  # ≈ f(x0) − f* (r0 = 10)
    assert res.final["suboptimality"] < 1e-3 * f0
    assert res.final["consensus_distance"] < 1e-2
    decayed = simdl.simulate(task, sgp(optax.cosine_decay_schedule(0.01, 1500)), topo, steps=1500, eval_every=1500)
    assert decayed.final["suboptimality"] < 0.1 * res.final["suboptimality"]  # the O(η) bias vanishes as η → 0


def _ref_sgp_rounds(P_at, lr, beta, nesterov, x0, grads, rounds, step_on="numerator"):
    """float64 transcription of SGP with R push-sum rounds: round r of step t mixes (x, w) with P_at(t·R + r).

    Local optimizer: PyTorch-convention momentum (buf ← β buf + g; Nesterov D = g + β buf, heavy ball D = buf), plain
    SGD for β = 0; gradients fed as given (taken at z)."""
    x, w, buf = x0.copy(), np.ones(x0.shape[0]), np.zeros_like(x0)
    out = []
    for t, g in enumerate(grads):
        z = x / w[:, None]
        buf = beta * buf + g
        upd = -lr * ((g + beta * buf) if nesterov else buf)
        x = x + upd if step_on == "numerator" else w[:, None] * (z + upd)
        mats = []
        for r in range(rounds):
            P = P_at(t * rounds + r)
            x, w = P @ x, P @ w
            mats.append(P)
        out.append((x / w[:, None], w.copy(), mats))
    return out


def _bytes_of(mats, model_bytes):
    return sum(((P != 0).sum(axis=0) - 1) for P in mats) * (model_bytes + 4)


def test_sgp_two_rounds_one_peer_exponential_matches_reference():
    """Time-varying graph: round r of step t uses weights_at(2t + r), so each step talks to two different peers."""
    topo = simdl.topologies.one_peer_exponential(N)
    x0, grads = _data(20)
    alg = sgp(0.1, rounds=2)
    ref = _ref_sgp_rounds(topo.weights_at, 0.1, 0.9, True, x0, grads, 2)
    for (state, aux), (z, w, mats) in zip(_run(alg, topo, x0, grads), ref, strict=True):
        np.testing.assert_allclose(np.asarray(alg.params(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.weight), w, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * (D * 4 + 4))  # one peer per round
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), _bytes_of(mats, D * 4))
    # not the same as mixing twice with the step's own graph
    other = _ref_sgp_rounds(lambda k: topo.weights_at(k // 2), 0.1, 0.9, True, x0, grads, 2)
    assert np.abs(other[-1][0] - ref[-1][0]).max() > 1e-3


@pytest.mark.parametrize("step_on", ["numerator", "debiased"])
def test_sgp_two_rounds_directed_graph_matches_push_sum_reference(step_on):
    topo = _directed_graph_topology()
    P = out_degree_push_matrix(topo.weights)
    x0, grads = _data(21)
    alg = sgp(0.05, push_weights="out_degree", step_on=step_on, rounds=2)
    ref = _ref_sgp_rounds(lambda k: P, 0.05, 0.9, True, x0, grads, 2, step_on)
    for (state, aux), (z, w, mats) in zip(_run(alg, topo, x0, grads), ref, strict=True):
        np.testing.assert_allclose(np.asarray(alg.query(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.weight), w, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), _bytes_of(mats, D * 4))
    assert np.abs(ref[-1][1] - 1).max() > 0.05  # the weights really moved away from 1


def test_sgp_rounds_on_a_static_topology_mix_with_w_each_round():
    topo = simdl.topologies.ring(N)  # doubly stochastic, mixed through ctx.mix
    x0, grads = _data(22)
    alg = sgp(0.1, rounds=3)
    ref = _ref_sgp_rounds(lambda k: topo.weights, 0.1, 0.9, True, x0, grads, 3)
    for (state, aux), (z, _, _) in zip(_run(alg, topo, x0, grads), ref, strict=True):
        np.testing.assert_allclose(np.asarray(alg.params(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 3 * 2 * (D * 4 + 4))


def test_sgp_rounds_with_a_custom_sequence_cycle_per_round():
    """Period 2, 3 rounds: step t uses P_{(3t + r) mod 2}, i.e. P0 P1 P0 then P1 P0 P1."""
    topo = _directed_graph_topology()
    P0 = out_degree_push_matrix(topo.weights)
    P1 = np.eye(N)
    x0, grads = _data(23, steps=4)
    alg = sgp(0.1, momentum=0.5, nesterov=False, push_weights=[P0, P1], rounds=3)
    ref = _ref_sgp_rounds(lambda k: (P0, P1)[k % 2], 0.1, 0.5, False, x0, grads, 3)
    for t, ((state, aux), (z, w, mats)) in enumerate(zip(_run(alg, topo, x0, grads), ref, strict=True)):
        np.testing.assert_allclose(np.asarray(alg.params(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.weight), w, rtol=1e-6)
        n_p0 = 2 if t % 2 == 0 else 1
        assert sum(m is P0 for m in mats) == n_p0
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), n_p0 * ((P0 != 0).sum(axis=0) - 1) * (D * 4 + 4))


@pytest.mark.parametrize("rounds", [1, 2])
def test_sgp_momentum_zero_is_plain_sgd(rounds):
    """sgp(lr, momentum=0) works although nesterov defaults to True: Nesterov with β = 0 is plain SGD."""
    alg = sgp(0.1, momentum=0.0, rounds=rounds)
    assert alg.hyperparams["nesterov"] is False and alg.hyperparams["momentum"] == 0.0
    assert alg.hyperparams["rounds"] == rounds
    topo = _directed_graph_topology()
    P = out_degree_push_matrix(topo.weights)
    x0, grads = _data(24)
    alg = sgp(0.1, momentum=0.0, push_weights="out_degree", rounds=rounds)
    ref = _ref_sgp_rounds(lambda k: P, 0.1, 0.0, False, x0, grads, rounds)
    got = _run(alg, topo, x0, grads)
    for (state, _), (z, w, _) in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(alg.params(state)["x"]), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.weight), w, rtol=1e-6)
    # the same as the explicit nesterov=False, and the state holds no momentum buffer
    explicit = _run(sgp(0.1, momentum=0.0, nesterov=False, push_weights="out_degree", rounds=rounds), topo, x0,
                    grads)
    np.testing.assert_array_equal(np.asarray(got[-1][0].params["x"]), np.asarray(explicit[-1][0].params["x"]))
    assert all(leaf.shape != (N, D) for leaf in jax.tree_util.tree_leaves(got[-1][0].opt_state))  # no buffer
    sgp(1e-3, momentum=0.0, optimizer=optax.adam(1e-3))  # an optax optimizer no longer needs nesterov=False


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rounds", [1, 2, 5])
def test_push_sum_rounds_preserve_mass_and_the_debiased_mean(seed, rounds):
    """Column-stochastic P: Σ_i w_i = n and Σ_i x_i are invariant under any number of rounds (zero gradients), so
    the w-weighted mean of the de-biased z stays the initial average."""
    rng = np.random.default_rng(seed)
    topo = simdl.topologies.complete(N)
    mats = []
    for _ in range(3):
        m = rng.random((N, N)) * (rng.random((N, N)) < 0.6) + np.eye(N) * 0.1
        mats.append(m / m.sum(axis=0, keepdims=True))
    x0, _ = _data(30 + seed)
    alg = sgp(0.1, momentum=0.0, push_weights=mats, rounds=rounds)
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    for t in range(4):
        state, _ = alg.step(state, {"x": jnp.zeros((N, D))}, _ctx(topo, t))
        w = np.asarray(state.weight, np.float64)
        z = np.asarray(alg.params(state)["x"], np.float64)
        np.testing.assert_allclose(w.sum(), N, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(state.params["x"]).sum(axis=0), x0.sum(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose((w[:, None] * z).sum(axis=0) / w.sum(), x0.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert np.abs(w - 1).max() > 1e-3  # non-doubly-stochastic: the weights did move


def test_sgp_more_rounds_reach_consensus_faster_and_cost_proportionally():
    task = simdl.tasks.random_quadratics(n_workers=8, dim=10, zeta2=1.0, r0=10.0, seed=2)
    topo = simdl.topologies.one_peer_exponential(8)
    one = simdl.simulate(task, sgp(0.01), topo, steps=200, eval_every=200)
    three = simdl.simulate(task, sgp(0.01, rounds=3), topo, steps=200, eval_every=200)  # 3 rounds: exact average
    assert three.final["consensus_distance"] < 1e-6 < one.final["consensus_distance"]
    np.testing.assert_allclose(three.final["bytes_per_worker"], 3 * one.final["bytes_per_worker"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, "2", None])
def test_sgp_rejects_bad_rounds(bad):
    with pytest.raises(ValueError, match=r"^rounds .*int >= 1, got " + re.escape(repr(bad)) + "$"):
        sgp(0.1, rounds=bad)


# ----------------------------------------------------------------------------------------------------- CHOCO
@pytest.mark.parametrize("order,base_order", [("compress_first", "atc"), ("gossip_first", "cta")])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_choco_identity_gamma_one_equals_dsgd(order, base_order, momentum):
    topo = simdl.topologies.ring(N)
    x0 = np.broadcast_to(np.random.default_rng(5).standard_normal(D), (N, D))  # all workers start equal
    _, grads = _data(5)
    nest = momentum > 0
    a = _run(choco_sgd(0.1, momentum=momentum, nesterov=nest, gamma=1.0, compressor="identity", order=order),
             topo, x0, grads)
    b = _run(dsgd(0.1, momentum=momentum, nesterov=nest, order=base_order), topo, x0, grads)
    for (sa, aux), (sb, _) in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(sa.params["x"]), np.asarray(sb.params["x"]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * D * 4)


def _np_top_k(v, frac):
    k = max(1, int(frac * v.size))
    out = np.zeros_like(v)
    idx = np.argsort(-np.abs(v))[:k]
    out[idx] = v[idx]
    return out


def _np_sign(v):
    return np.mean(np.abs(v)) * np.where(v >= 0, 1.0, -1.0)


def _ref_choco(W, lr, gamma, Q, x0, grads, order):
    x, xh = x0.copy(), np.zeros_like(x0)
    out = []
    for g in grads:
        half = x - lr * g
        if order == "compress_first":
            xh = xh + np.stack([Q(r) for r in half - xh])
            x = half + gamma * (W @ xh - xh)
        else:
            x = half + gamma * (W @ xh - xh)
            xh = xh + np.stack([Q(r) for r in x - xh])
        out.append((x.copy(), xh.copy()))
    return out


@pytest.mark.parametrize("order", ["gossip_first", "compress_first"])
@pytest.mark.parametrize("name,Q,nbytes", [
    ("top_k", lambda v: _np_top_k(v, 0.34), 2 * 8),  # k = 2 of d = 6: values + int32 indices
    ("sign", _np_sign, 4 + 1),
])
def test_choco_matches_numpy_reference(order, name, Q, nbytes):
    topo = simdl.topologies.ring(N)
    x0, grads = _data(6)
    alg = choco_sgd(0.1, gamma=0.3, compressor=name, compression=0.34, order=order)
    got = _run(alg, topo, x0, grads)
    ref = _ref_choco(topo.weights, 0.1, 0.3, Q, x0, grads, order)
    for (state, aux), (x, xh) in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(state.params["x"]), x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.public["x"]), xh, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * nbytes)


@pytest.mark.parametrize("compressor,gamma", [("top_k", 0.2), ("random_k", 0.1), ("qsgd", 0.3), ("sign", 0.2)])
def test_choco_gossip_reaches_exact_average_under_compression(compressor, gamma):
    """CHOCO-Gossip (Theorem 2 of the paper): with any δ > 0 compressor the models converge linearly to the exact
    average, which is preserved at every step (zero gradients isolate the gossip)."""
    topo = simdl.topologies.ring(N)
    x0 = np.random.default_rng(7).standard_normal((N, 40))
    alg = choco_sgd(0.1, gamma=gamma, compressor=compressor, compression=4 if compressor == "qsgd" else 0.25)
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    mixer = make_mixer(topo)

    @jax.jit
    def run(state):
        def body(s, t):
            ctx = Context(t, jax.random.fold_in(jax.random.PRNGKey(1), t), topo, lambda tr: mixer(tr, step=t),
                          np.full(N, 1.0 / N))
            s, _ = alg.step(s, {"x": jnp.zeros((N, 40))}, ctx)
            return s, jnp.max(jnp.abs(jnp.mean(s.params["x"], axis=0) - x0.mean(axis=0)))

        return jax.lax.scan(body, state, jnp.arange(1500, dtype=jnp.int32))

    state, mean_err = run(state)
    assert float(jnp.max(mean_err)) < 1e-5
    xi0 = float(consensus_distance({"x": jnp.asarray(x0)}))
    assert float(consensus_distance(state.params)) < 1e-9 * xi0


def test_choco_converges_to_dsgd_like_fixed_point_with_compression():
    """At a fixed point x = x̂ (the compressed difference vanishes), so CHOCO's limit does not depend on the
    compressor: x = x − η∇F(x) + γ(W − I)x, D-PSGD's fixed point with step η/γ."""
    task = simdl.tasks.random_quadratics(n_workers=N, dim=10, zeta2=1.0, r0=10.0, seed=3)
    topo = simdl.topologies.ring(N)
    res = simdl.simulate(task, choco_sgd(0.02, gamma=0.2), topo, steps=4000, eval_every=2000)
    base = simdl.simulate(task, dsgd(0.1, order="cta"), topo, steps=4000, eval_every=2000)
    np.testing.assert_allclose(np.asarray(res.params["x"]), np.asarray(base.params["x"]), rtol=0, atol=1e-3)
    per_step = 2 * (1 * 8)  # top-10% of d = 10 keeps k = 1 value + index, to 2 neighbours
    assert res.final["bytes_per_worker"] == pytest.approx(4000 * per_step)


def test_choco_rejects_bad_input():
    with pytest.raises(ValueError, match="order"):
        choco_sgd(0.1, order="atc")
    with pytest.raises(ValueError, match="gamma"):
        choco_sgd(0.1, gamma=0.0)
    with pytest.raises(ValueError, match="unknown compressor"):
        choco_sgd(0.1, compressor="topk")
    with pytest.raises(ValueError, match="fraction"):
        choco_sgd(0.1, compression=1.5)
    task = simdl.tasks.random_quadratics(n_workers=8, dim=3, seed=0)
    with pytest.raises(ValueError, match="static"):
        simdl.simulate(task, choco_sgd(0.1), simdl.topologies.one_peer_exponential(8), steps=2)


# ----------------------------------------------------------------------------------------------------- compressors
def test_top_k_keeps_the_k_largest():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((7, 9)).astype(np.float32)
    for frac in (0.01, 0.1, 0.3, 1.0):
        q, nb = C.top_k(frac)(jax.random.PRNGKey(0), jnp.asarray(x))
        k = max(1, int(frac * x.size))
        np.testing.assert_array_equal(np.asarray(q), _np_top_k(x.reshape(-1), frac).reshape(x.shape))
        assert int(np.count_nonzero(np.asarray(q))) == k
        assert float(nb) == k * (4 + 4)


def test_random_k_selection_and_unbiased_scaling():
    x = jnp.arange(1.0, 21.0)
    comp = C.random_k(0.25)
    masks = []
    for s in range(400):
        q, nb = comp(jax.random.PRNGKey(s), x)
        q = np.asarray(q)
        nz = q != 0
        assert nz.sum() == 5 and float(nb) == 5 * 8
        np.testing.assert_array_equal(q[nz], np.asarray(x)[nz])
        masks.append(nz)
    freq = np.mean(masks, axis=0)
    assert np.all(np.abs(freq - 0.25) < 0.1)  # every coordinate is picked with probability k/d
    ub = C.random_k(0.25, unbiased=True)
    qs = jax.vmap(lambda k: ub(k, x)[0])(jax.random.split(jax.random.PRNGKey(1), 20000))
    np.testing.assert_allclose(np.asarray(qs.mean(axis=0)), np.asarray(x), rtol=0.1)


def test_qsgd_is_unbiased_and_on_its_grid():
    x = jnp.asarray(np.random.default_rng(9).standard_normal(32), jnp.float32)
    s = 4
    comp = C.qsgd(s)
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    qs, nbs = jax.vmap(lambda k: comp(k, x))(keys)
    norm = float(jnp.linalg.norm(x))
    se = np.asarray(qs.std(axis=0)) / math.sqrt(len(keys))
    assert np.all(np.abs(np.asarray(qs.mean(axis=0)) - np.asarray(x)) < 5 * se + 1e-6)
    levels = np.asarray(qs[:50]) * s / norm
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # integers: multiples of ‖x‖/s
    np.testing.assert_array_equal(np.sign(np.asarray(qs[:50]))[np.asarray(qs[:50]) != 0],
                                  np.broadcast_to(np.sign(np.asarray(x)), (50, 32))[np.asarray(qs[:50]) != 0])
    assert float(nbs[0]) == 4 + math.ceil(32 * (1 + math.ceil(math.log2(s + 1))) / 8)
    tau = 1 + min(32 / s**2, math.sqrt(32) / s)
    qr, _ = C.qsgd(s, rescale=True)(keys[0], x)
    np.testing.assert_allclose(np.asarray(qr), np.asarray(qs[0]) / tau, rtol=1e-6)
    q0, _ = comp(keys[0], jnp.zeros(5))
    np.testing.assert_array_equal(np.asarray(q0), 0.0)


def test_sign_identity_and_bytes():
    x = jnp.asarray([-2.0, 0.5, 0.0, 3.0, -1.5])
    q, nb = C.sign()(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(np.asarray(q), 1.4 * np.array([-1, 1, 1, 1, -1]), rtol=1e-6)
    assert float(nb) == 4 + 1
    q, nb = C.identity()(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(x))
    assert float(nb) == 5 * 4


@pytest.mark.parametrize("comp", [C.top_k(0.2), C.random_k(0.2), C.qsgd(2, rescale=True)], ids=lambda c: c.name)
def test_contraction_property(comp):
    """E‖Q(x) − x‖² ≤ (1 − δ)‖x‖² (the compressor class of arXiv 1902.00340)."""
    x = jnp.asarray(np.random.default_rng(10).standard_normal(50), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(2), 2000)
    err = jax.vmap(lambda k: jnp.sum(jnp.square(comp(k, x)[0] - x)))(keys)
    assert float(err.mean()) <= (1 - comp.delta(50)) * float(jnp.sum(x * x)) * 1.02


def test_compress_stacked_uses_per_worker_keys_and_sums_bytes():
    tree = {"a": jnp.ones((4, 10)), "b": jnp.ones((4, 3, 2))}
    q, nb = C.compress_stacked(C.random_k(0.5), jax.random.PRNGKey(0), tree)
    assert q["a"].shape == (4, 10) and nb.shape == (4,)
    np.testing.assert_allclose(np.asarray(nb), 5 * 8 + 3 * 8)
    masks = np.asarray(q["a"]) != 0
    assert len({m.tobytes() for m in masks}) > 1  # workers draw different coordinates


def test_compressor_factories_reject_bad_input():
    with pytest.raises(ValueError, match="fraction"):
        C.top_k(0.0)
    with pytest.raises(ValueError, match="fraction"):
        C.random_k(2.0)
    with pytest.raises(ValueError, match="levels"):
        C.qsgd(0)
    with pytest.raises(ValueError, match="unknown compressor.*identity"):
        C.get("gzip")
