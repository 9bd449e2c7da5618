"""Gossip and averaging baselines against float64 numpy references of their rules
(docs/algorithms.md#gossip-sgd-dsgd-dpsgd-cdsgd-cdmsgd, #exact-averaging-allreduce-local_sgd-model_averaging_clr)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.algorithms import allreduce, cdmsgd, cdsgd, dpsgd, dsgd, local_sgd, model_averaging_clr
from simdl.algorithms.base import Context
from simdl.mixing import make_mixer

T = simdl.topologies


def _problem(n=6, m=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, m, d)), rng.standard_normal((n, m))


def _grad(A, b, X):
    return np.einsum("imd,im->id", A, np.einsum("imd,id->im", A, X) - b)


def _run_alg(alg, topo, A, b, steps, weights=None):
    """Run alg with exact gradients of f_i = ½‖A_i x − b_i‖² through the public step function."""
    n, _, d = A.shape
    mixer = make_mixer(topo)
    Aj, bj = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    w = np.full(n, 1.0 / n) if weights is None else weights

    def ctx(t):
        return Context(jnp.int32(t), jax.random.PRNGKey(t), topo, lambda tree: mixer(tree, t), w)

    state = alg.init({"x": jnp.zeros((n, d), jnp.float32)}, ctx(0))
    out = []
    step = jax.jit(lambda s, g, t: alg.step(s, g, Context(t, jax.random.PRNGKey(0), topo,
                                                             lambda tree: mixer(tree, t), w)))
    for t in range(steps):
        x = alg.query(state)["x"]
        g = jnp.einsum("imd,im->id", Aj, jnp.einsum("imd,id->im", Aj, x) - bj)
        state, aux = step(state, {"x": g}, jnp.int32(t))
        out.append(np.asarray(alg.params(state)["x"], np.float64))
    return out, aux


def _numpy_gossip(W, A, b, steps, lr, order, beta=0.0, nesterov=False, wd=0.0):
    n, _, d = A.shape
    X, buf, out = np.zeros((n, d)), np.zeros((n, d)), []
    for _ in range(steps):
        g = _grad(A, b, X) + wd * X
        buf = beta * buf + g
        D = g + beta * buf if nesterov else (buf if beta else g)
        X = W @ (X - lr * D) if order == "atc" else W @ X - lr * D
        out.append(X.copy())
    return out


@pytest.mark.parametrize("order", ["atc", "cta"])
@pytest.mark.parametrize("beta,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_dsgd_matches_numpy_step_by_step(order, beta, nesterov):
    A, b = _problem()
    topo = T.ring(6)
    got, aux = _run_alg(dsgd(0.05, momentum=beta, nesterov=nesterov, weight_decay=0.01, order=order), topo, A, b, 8)
    ref = _numpy_gossip(topo.weights, A, b, 8, 0.05, order, beta, nesterov, wd=0.01)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    # ring: each worker sends its model (4 floats) to 2 neighbours
    np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), np.full(6, 2 * 4 * 4))


def test_dsgd_through_simulate_matches_numpy():
    A, b = _problem(n=8, seed=1)
    topo = T.torus(2, 4)
    task = simdl.tasks.quadratics(A, b)
    res = simdl.simulate(task, dsgd(0.05), topo, steps=12, eval_every=4)
    ref = _numpy_gossip(topo.weights, A, b, 12, 0.05, "atc")
    np.testing.assert_allclose(np.asarray(res.params["x"]), ref[-1], rtol=1e-4, atol=1e-5)


def test_dpsgd_cdsgd_cdmsgd_are_cta_variants():
    A, b = _problem(seed=2)
    topo = T.ring(6)
    ref = _numpy_gossip(topo.weights, A, b, 6, 0.03, "cta")
    np.testing.assert_allclose(_run_alg(dpsgd(0.03), topo, A, b, 6)[0][-1], ref[-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run_alg(cdsgd(0.03), topo, A, b, 6)[0][-1], ref[-1], rtol=1e-4, atol=1e-5)
    ref_m = _numpy_gossip(topo.weights, A, b, 6, 0.01, "cta", beta=0.95, nesterov=True)
    np.testing.assert_allclose(_run_alg(cdmsgd(), topo, A, b, 6)[0][-1], ref_m[-1], rtol=1e-4, atol=1e-5)
    assert cdmsgd().hyperparams["momentum"] == 0.95 and cdsgd().hyperparams["learning_rate"] == 0.01


def test_allreduce_equals_single_model_sgd_on_pooled_gradient():
    A, b = _problem(n=5, seed=3)
    got, aux = _run_alg(allreduce(0.1), T.ring(5), A, b, 10)
    x = np.zeros(A.shape[2])
    for t in range(10):
        g = np.mean(_grad(A, b, np.tile(x, (5, 1))), axis=0)
        x = x - 0.1 * g
        np.testing.assert_allclose(got[t], np.tile(x, (5, 1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * 4 / 5 * 4 * 4)


@pytest.mark.parametrize("sync", ["keep", "reset", "average"])
def test_local_sgd_matches_numpy(sync):
    A, b = _problem(n=4, seed=4)
    H, lr, beta = 3, 0.05, 0.9
    got, _ = _run_alg(local_sgd(lr, local_steps=H, momentum=beta, momentum_sync=sync), T.ring(4), A, b, 9)
    X, buf = np.zeros((4, A.shape[2])), np.zeros((4, A.shape[2]))
    for t in range(9):
        g = _grad(A, b, X)
        buf = beta * buf + g
        X = X - lr * buf
        if (t + 1) % H == 0:
            X = np.tile(X.mean(0), (4, 1))
            buf = np.zeros_like(buf) if sync == "reset" else np.tile(buf.mean(0), (4, 1)) if sync == "average" else buf
        np.testing.assert_allclose(got[t], X, rtol=1e-4, atol=1e-5)


def test_local_sgd_weighted_average_uses_worker_weights():
    A, b = _problem(n=3, seed=5)
    w = np.array([0.5, 0.3, 0.2])
    got, _ = _run_alg(local_sgd(0.1, local_steps=2), T.ring(3), A, b, 2, weights=w)
    X = np.zeros((3, A.shape[2]))
    for _ in range(2):
        X = X - 0.1 * _grad(A, b, X)
    np.testing.assert_allclose(got[-1], np.tile(w @ X, (3, 1)), rtol=1e-4, atol=1e-5)


def test_local_sgd_with_one_local_step_is_allreduce():
    A, b = _problem(seed=6)
    a = _run_alg(local_sgd(0.1, local_steps=1), T.ring(6), A, b, 5)[0][-1]
    r = _run_alg(allreduce(0.1), T.ring(6), A, b, 5)[0][-1]
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_model_averaging_clr_cycle_per_round_and_low_point_at_averaging():
    alg = model_averaging_clr(0.2, 0.02, local_epochs=2, steps_per_epoch=3)
    assert alg.hyperparams["local_steps"] == 6
    sched = simdl.schedules.sawtooth(0.2, 0.02, 6)
    lrs = [float(sched(t)) for t in range(12)]
    assert lrs[5] == pytest.approx(0.02) and lrs[11] == pytest.approx(0.02)
    assert lrs[0] > lrs[1] > lrs[5] and lrs[6] == pytest.approx(lrs[0])
    tri = simdl.schedules.triangular(1.0, 0.0, 4)
    assert [float(tri(t)) for t in range(4)] == pytest.approx([0.5, 1.0, 0.5, 0.0])


def test_diffusion_fixed_point_bias_cta_vs_atc():
    """ATC and CTA converge to different fixed points with constant step sizes (documented order matters)."""
    A, b = _problem(n=5, seed=7)
    atc = _run_alg(dsgd(0.1), T.ring(5), A, b, 400)[0][-1]
    cta = _run_alg(dpsgd(0.1), T.ring(5), A, b, 400)[0][-1]
    assert np.abs(atc - cta).max() > 1e-3


@pytest.mark.parametrize("bad", [
    lambda: dsgd(-0.1), lambda: dsgd(0.1, momentum=1.0), lambda: dsgd(0.1, nesterov=True),
    lambda: dsgd(0.1, order="xyz"), lambda: local_sgd(0.1, local_steps=0), lambda: local_sgd(0.1, momentum_sync="x"),
    lambda: dsgd(0.1, weight_decay=-1), lambda: simdl.schedules.cyclical("zigzag", 1, 0, 2),
])
def test_bad_hyperparameters_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_unknown_algorithm_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: .*dsgd"):
        simdl.algorithms.get("dsgdd", learning_rate=0.1)
    with pytest.raises(ValueError, match="bad hyperparameters"):
        simdl.algorithms.get("dsgd", learning_rate=0.1, warp=3)
