"""D² (arXiv 1803.07068), Exact Diffusion (arXiv 1702.05122) and gradient tracking (update-tracking form)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.algorithms.base import Context
from simdl.algorithms.d2 import d2, exact_diffusion, laplacian
from simdl.algorithms.gossip import dsgd
from simdl.algorithms.tracking import gradient_tracking, tracker
from simdl.mixing import make_mixer

N = 8
D = 5


def _ctx(topo, t):
    mixer = make_mixer(topo)
    return Context(jnp.int32(t), jax.random.PRNGKey(t), topo, lambda tree: mixer(tree, step=t),
                   np.full(topo.n, 1.0 / topo.n))


def _ring(n, self_weight=None):
    topo = simdl.topologies.ring(n)
    if self_weight is None:
        return topo
    a = (self_weight - topo.weights[0, 0]) / (1 - topo.weights[0, 0])
    return simdl.topologies.ring(n, weights=a * np.eye(n) + (1 - a) * topo.weights)


def _run(alg, topo, x0, grads):
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    states = []
    for t, g in enumerate(grads):
        state, aux = alg.step(state, {"x": jnp.asarray(g, jnp.float32)}, _ctx(topo, t))
        states.append((state, aux))
    return states


def _data(seed, steps=6, n=N):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)), [rng.standard_normal((n, D)) for _ in range(steps)]


def _ref_d2(W, lr, x0, grads, wd=0.0):
    """Tang et al.'s two-step form: X_1 = W(X_0 − η G_0), X_{t+1} = W(2X_t − X_{t−1} − η(G_t − G_{t−1}))."""
    xs, x_prev, g_prev, x = [], None, None, x0
    for g in grads:
        g = g + wd * x
        nxt = W @ (x - lr * g) if x_prev is None else W @ (2 * x - x_prev - lr * (g - g_prev))
        x_prev, g_prev, x = x, g, nxt
        xs.append(x)
    return xs


def _ref_exact_diffusion(W, lr, x0, grads):
    """Yuan et al.: ψ_{k+1} = x_k − μ g_k; φ = ψ_{k+1} + x_k − ψ_k; x_{k+1} = ((I + W)/2) φ; ψ_0 = x_0."""
    Wb = 0.5 * (np.eye(W.shape[0]) + W)
    xs, x, psi = [], x0, x0
    for g in grads:
        psi_new = x - lr * g
        x = Wb @ (psi_new + x - psi)
        psi = psi_new
        xs.append(x)
    return xs


def _ref_tracking(W, lr, x0, grads):
    """Gradient units: x ← W(x − η(g − c)), c ← W(c − g) + g."""
    xs, x, c = [], x0, np.zeros_like(x0)
    for g in grads:
        x, c = W @ (x - lr * (g - c)), W @ (c - g) + g
        xs.append(x)
    return xs


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_d2_matches_numpy_reference(wd):
    topo = _ring(N, self_weight=0.4)
    x0, grads = _data(0)
    got = _run(d2(0.1, weight_decay=wd), topo, x0, grads)
    for (state, aux), ref in zip(got, _ref_d2(topo.weights, 0.1, x0, grads, wd), strict=True):
        np.testing.assert_allclose(np.asarray(state.params["x"]), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * D * 4)


def test_d2_non_circulant_graph_matches_reference():
    topo = simdl.topologies.erdos_renyi(N, 0.5, seed=1)  # neighbour-slot path of the Laplacian
    assert topo.lambda_min > -1 / 3
    x0, grads = _data(1)
    got = _run(d2(0.05), topo, x0, grads)
    for (state, _), ref in zip(got, _ref_d2(topo.weights, 0.05, x0, grads), strict=True):
        np.testing.assert_allclose(np.asarray(state.params["x"]), ref, rtol=1e-5, atol=1e-5)


def test_laplacian_equals_w_minus_identity():
    rng = np.random.default_rng(5)
    y = rng.standard_normal((N, 3, 2))
    for topo in (simdl.topologies.ring(N), simdl.topologies.erdos_renyi(N, 0.4, seed=2),
                 simdl.topologies.star(N), simdl.topologies.ring(1)):
        n = topo.n
        for scale in (1.0, 0.5):
            got = np.asarray(laplacian(topo, jnp.asarray(y[:n], jnp.float32), scale))
            ref = scale * np.einsum("ij,jab->iab", topo.weights - np.eye(n), y[:n])
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_exact_diffusion_matches_numpy_reference():
    topo = _ring(N)
    x0, grads = _data(2)
    got = _run(exact_diffusion(0.1), topo, x0, grads)
    for (state, _), ref in zip(got, _ref_exact_diffusion(topo.weights, 0.1, x0, grads), strict=True):
        np.testing.assert_allclose(np.asarray(state.params["x"]), ref, rtol=1e-5, atol=1e-5)


def test_exact_diffusion_is_d2_with_half_mixing():
    topo = _ring(N)
    w_half = 0.5 * (np.eye(N) + topo.weights)
    half = simdl.topologies.ring(N, weights=w_half)
    x0, grads = _data(3)
    a = _run(exact_diffusion(0.1), topo, x0, grads)
    b = _run(d2(0.1), half, x0, grads)
    for (sa, _), (sb, _) in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(sa.params["x"]), np.asarray(sb.params["x"]), rtol=1e-6, atol=1e-6)


def test_gradient_tracking_matches_numpy_reference():
    topo = _ring(N)
    x0, grads = _data(4)
    got = _run(gradient_tracking(0.1), topo, x0, grads)
    for (state, aux), ref in zip(got, _ref_tracking(topo.weights, 0.1, x0, grads), strict=True):
        np.testing.assert_allclose(np.asarray(state.params["x"]), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), 2 * 2 * D * 4)  # two messages per edge


@pytest.mark.parametrize("topo", [_ring(N), simdl.topologies.one_peer_exponential(N)], ids=["ring", "one_peer"])
def test_tracker_mean_equals_mean_update_at_every_step(topo):
    """The tracking invariant: mean_i Y_t = mean_i U_t = −η mean_i g_t at every step (C keeps worker mean 0)."""
    x0, grads = _data(5, steps=10)
    lr = 0.1
    alg = gradient_tracking(lr)
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    for t, g in enumerate(grads):
        updates = {"x": jnp.asarray(-lr * g, jnp.float32)}
        y = np.asarray(tracker(state, updates)["x"])
        np.testing.assert_allclose(y.mean(axis=0), -lr * g.mean(axis=0), rtol=0, atol=1e-6)
        if t > 0:
            assert np.abs(y - (-lr * g)).max() > 1e-3  # the tracker is not the local update itself
        state, _ = alg.step(state, {"x": jnp.asarray(g, jnp.float32)}, _ctx(topo, t))
        np.testing.assert_allclose(np.asarray(state.correction["x"]).mean(axis=0), 0.0, atol=1e-6)


def _hetero_task():
    return simdl.tasks.random_quadratics(n_workers=16, dim=10, zeta2=10.0, r0=10.0, seed=0)


@pytest.mark.parametrize("name", ["d2", "exact_diffusion", "gradient_tracking"])
def test_exact_convergence_with_constant_step_where_dsgd_is_biased(name):
    task = _hetero_task()
    if name == "d2":
        alg, topo = d2(0.1), _ring(16, self_weight=0.4)  # λ_min of the MH 16-ring is exactly −1/3
    elif name == "exact_diffusion":
        alg, topo = exact_diffusion(0.1), _ring(16)
    else:
        alg, topo = gradient_tracking(0.1), _ring(16)
    res = simdl.simulate(task, alg, topo, steps=3000, eval_every=1000)
    assert res.history["suboptimality"][-1] < 1e-6
    assert res.history["suboptimality"][-2] < 1e-6  # and it stays there (no float32 drift)
    assert res.final["consensus_distance"] < 1e-6
    assert res.final["worker_suboptimality_mean"] < 1e-6
    base = simdl.simulate(task, dsgd(0.1), topo, steps=3000, eval_every=1000)
    assert base.final["suboptimality"] > 1e-3
    assert base.final["consensus_distance"] > 0.1


@pytest.mark.parametrize("n", [8, 16])
def test_d2_accepts_the_even_mh_ring_with_a_warning(n):
    topo = simdl.topologies.ring(n)  # MH ring, even n: λ_min = −1/3 exactly (what the D² authors ran)
    assert abs(topo.lambda_min + 1 / 3) < 1e-12
    with pytest.warns(UserWarning, match=r"lambda_min\(W\) = -0\.333333.*boundary.*not guaranteed"):
        d2(0.1).init({"x": jnp.zeros((n, 3))}, _ctx(topo, 0))


def test_d2_inside_the_condition_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d2(0.1).init({"x": jnp.zeros((15, 3))}, _ctx(simdl.topologies.ring(15), 0))  # odd ring: λ_min > −1/3
        d2(0.1).init({"x": jnp.zeros((16, 3))}, _ctx(_ring(16, self_weight=0.4), 0))
        exact_diffusion(0.1).init({"x": jnp.zeros((16, 3))}, _ctx(simdl.topologies.ring(16), 0))  # (I + W)/2


def test_d2_rejects_lambda_min_below_minus_one_third():
    # circulant 4-ring with self weight 0.1: eigenvalues 0.1 + 0.9 cos(2πk/4), λ_min = −0.8
    w = np.array([[0.1, 0.45, 0.0, 0.45], [0.45, 0.1, 0.45, 0.0], [0.0, 0.45, 0.1, 0.45], [0.45, 0.0, 0.45, 0.1]])
    topo = simdl.topologies.from_weights(w)
    assert topo.lambda_min == pytest.approx(-0.8)
    with pytest.raises(ValueError, match=r"lambda_min\(W\) >= -1/3.*lambda_min = -0\.8\b.*self weight.*exact_diff"):
        d2(0.1).init({"x": jnp.zeros((4, 3))}, _ctx(topo, 0))
    exact_diffusion(0.1).init({"x": jnp.zeros((4, 3))}, _ctx(topo, 0))  # (I + W)/2 has λ_min = 0.1


@pytest.mark.parametrize(("delta", "ok"), [(5e-10, True), (1e-8, False)])
def test_d2_boundary_tolerance(delta, ok):
    topo = _ring(8, self_weight=1 / 3 - delta / 2)  # circulant: λ_min = 2a − 1 = −1/3 − δ
    assert topo.lambda_min == pytest.approx(-1 / 3 - delta, abs=1e-13)
    x = {"x": jnp.zeros((8, 3))}
    if ok:
        with pytest.warns(UserWarning, match="boundary"):
            d2(0.1).init(x, _ctx(topo, 0))
    else:
        with pytest.raises(ValueError, match="lambda_min"):
            d2(0.1).init(x, _ctx(topo, 0))


def test_d2_on_the_even_mh_ring_matches_the_reference():
    topo = simdl.topologies.ring(N)
    x0, grads = _data(11)
    with pytest.warns(UserWarning, match="boundary"):
        got = _run(d2(0.05), topo, x0, grads)
    for (state, _), ref in zip(got, _ref_d2(topo.weights, 0.05, x0, grads), strict=True):
        np.testing.assert_allclose(np.asarray(state.params["x"]), ref, rtol=1e-5, atol=1e-5)


def test_not_doubly_stochastic_is_rejected():
    w = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])  # row- but not column-stochastic
    topo = simdl.topologies.from_weights(w)
    for alg in (d2(0.1), exact_diffusion(0.1), gradient_tracking(0.1)):
        with pytest.raises(ValueError, match="doubly stochastic"):
            alg.init({"x": jnp.zeros((3, 2))}, _ctx(topo, 0))


def test_d2_needs_static_topology():
    task = simdl.tasks.random_quadratics(n_workers=8, dim=3, seed=0)
    with pytest.raises(ValueError, match="static"):
        simdl.simulate(task, exact_diffusion(0.1), simdl.topologies.one_peer_exponential(8), steps=2)


def test_single_worker_is_sgd():
    x0, grads = _data(6, n=1)
    topo = simdl.topologies.ring(1)
    for alg in (d2(0.1), exact_diffusion(0.1), gradient_tracking(0.1)):
        x = x0.copy()
        for (state, _), g in zip(_run(alg, topo, x0, grads), grads, strict=True):
            x = x - 0.1 * g
            np.testing.assert_allclose(np.asarray(state.params["x"]), x, rtol=1e-5, atol=1e-5)
