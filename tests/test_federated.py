"""FedAvg (any optax server optimizer), FedProx and SCAFFOLD (simdl/algorithms/federated.py;
docs/algorithms.md#federated-learning-fedavg-fedprox-scaffold): equality with local_sgd, float64 numpy
transcriptions of the rules with client sampling, the properties their papers state, and argument checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import simdl
from simdl.algorithms import fedavg, fedprox, local_sgd, scaffold
from simdl.algorithms.base import Context

T = simdl.topologies


def _problem(n=4, m=6, d=3, seed=0, spread=1.0):
    """Heterogeneous least squares f_i = ½‖A_i x − b_i‖² (clients with different optima)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m, d))
    b = spread * rng.standard_normal((n, m))
    return A, b


def _grad(A, b, X):
    return np.einsum("imd,im->id", A, np.einsum("imd,id->im", A, X) - b)


def _ctx(topo, t, weights, active=None):
    return Context(jnp.asarray(t, jnp.int32), jax.random.PRNGKey(0), topo, lambda tree: tree, weights,
                   active=None if active is None else jnp.asarray(active, bool))


class _Runner:
    """Steps an algorithm through its public functions with hand-fed gradients (one compile per active pattern)."""

    def __init__(self, alg, n, d, weights=None, x0=None):
        self.alg, self.topo = alg, T.complete(n)
        self.w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, np.float64)
        x0 = np.zeros(d) if x0 is None else x0
        self.state = alg.init({"x": jnp.asarray(np.tile(x0, (n, 1)), jnp.float32)}, _ctx(self.topo, 0, self.w))
        self._step = jax.jit(lambda s, g, t, a: alg.step(s, g, _ctx(self.topo, t, self.w, a)))
        self._step_all = jax.jit(lambda s, g, t: alg.step(s, g, _ctx(self.topo, t, self.w)))

    def x(self):
        return np.asarray(self.alg.query(self.state)["x"], np.float64)

    def step(self, g, t, active=None):
        g = {"x": jnp.asarray(g, jnp.float32)}
        if active is None:
            self.state, aux = self._step_all(self.state, g, jnp.int32(t))
        else:
            self.state, aux = self._step(self.state, g, jnp.int32(t), jnp.asarray(active, bool))
        return aux


# --------------------------------------------------------------------------------------------------------------
# FedAvg with full participation and server SGD(1.0) is local SGD


def test_fedavg_equals_local_sgd_through_simulate():
    A, b = _problem(n=4, seed=1)
    task = simdl.tasks.quadratics(A, b, noise=0.3)  # stochastic gradients, the same stream in both runs
    kw = dict(steps=12, batch_size=1, eval_every=3, seed=3)
    ref = simdl.simulate(task, local_sgd(0.05, local_steps=3), T.complete(4), **kw)
    got = simdl.simulate(task, fedavg(0.05, local_steps=3), T.complete(4), **kw)
    # equal up to the rounding of x − (x − x̄) in place of x̄ (≲ 1 ulp per round)
    np.testing.assert_allclose(np.asarray(got.params["x"]), np.asarray(ref.params["x"]), rtol=0, atol=1e-6)
    for key in ("suboptimality", "loss"):
        np.testing.assert_allclose(got.history[key], ref.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # bytes differ by design: a FedAvg client uploads one model per round (3 floats), not a ring all-reduce
    np.testing.assert_array_equal(got.history["bytes_per_worker"], 12.0 * np.arange(1, 5))
    assert np.all(got.history["consensus_distance"] < 1e-12)  # every worker holds the server model there


@pytest.mark.parametrize("lr,momentum,weights", [
    (0.05, 0.0, None),
    (0.05, 0.0, [0.1, 0.2, 0.3, 0.4]),
    (lambda t: 0.08 / (1.0 + 0.1 * t), 0.0, [0.1, 0.2, 0.3, 0.4]),  # a schedule runs over the whole training
    (0.03, 0.9, None),  # stateless clients: local momentum reset every round = local_sgd(momentum_sync="reset")
])
def test_fedavg_equals_local_sgd_on_every_step(lr, momentum, weights):
    A, b = _problem(n=4, seed=2)
    sync = "reset" if momentum else "keep"
    ref = _Runner(local_sgd(lr, local_steps=4, momentum=momentum, momentum_sync=sync), 4, 3, weights)
    got = _Runner(fedavg(lr, local_steps=4, momentum=momentum), 4, 3, weights)
    for t in range(12):
        g = _grad(A, b, ref.x())
        ref.step(g, t)
        aux = got.step(g, t)
        np.testing.assert_allclose(got.x(), ref.x(), rtol=0, atol=1e-6, err_msg=f"step {t}")
        if (t + 1) % 4 == 0:
            np.testing.assert_allclose(np.asarray(got.state.server["x"]), got.x()[0], rtol=0, atol=0)
            np.testing.assert_array_equal(np.asarray(aux["bytes_sent"]), np.full(4, 3 * 4.0))
        else:
            np.testing.assert_array_equal(np.asarray(aux["bytes_sent"]), np.zeros(4))


def test_custom_local_optimizer_is_reset_every_round():
    A, b = _problem(n=4, seed=13)
    sgd = _Runner(fedavg(0.05, local_steps=3, optimizer=optax.sgd(0.05)), 4, 3)
    ref = _Runner(fedavg(0.05, local_steps=3), 4, 3)
    adam = _Runner(fedavg(0.05, local_steps=3, optimizer=optax.adam(0.01)), 4, 3)
    fresh = jax.tree_util.tree_map(np.asarray, adam.state.opt_state)
    for t in range(6):
        g = _grad(A, b, ref.x())
        sgd.step(g, t)
        ref.step(g, t)
        adam.step(_grad(A, b, adam.x()), t)
        np.testing.assert_allclose(sgd.x(), ref.x(), rtol=0, atol=1e-6)
        leaves = [np.asarray(u) for u in jax.tree_util.tree_leaves(adam.state.opt_state)]
        same = all(np.array_equal(u, v) for u, v in zip(leaves, jax.tree_util.tree_leaves(fresh), strict=True))
        assert same == ((t + 1) % 3 == 0), t  # stateless clients: fresh Adam moments and count at each round start


# --------------------------------------------------------------------------------------------------------------
# numpy transcriptions with client sampling

ROUNDS_ACTIVE = [[True, True, True, True], [True, False, True, True], [False, True, False, False],
                 [True, True, False, True]]


def _numpy_fedavg_adam(A, b, H, lr, beta, p, actives, slr, b1, b2, eps, mu=0.0):
    n, _, d = A.shape
    x = np.zeros(d)
    X, buf = np.zeros((n, d)), np.zeros((n, d))
    m1, m2, count = np.zeros(d), np.zeros(d), 0
    out, grads, sent = [], [], []
    for act in actives:
        act = np.asarray(act)
        buf[:] = 0.0
        for k in range(H):
            g = _grad(A, b, X)
            grads.append(g)
            gp = g + mu * (X - x)
            buf = beta * buf + gp
            Xn = X - lr * (buf if beta else gp)
            X = np.where(act[:, None], Xn, X)
            sent.append(np.where(act, 4.0 * d, 0.0) if k == H - 1 else np.zeros(n))
            if k == H - 1:
                q = p * act
                if q.sum() > 0:
                    delta = x - (q[:, None] * X).sum(0) / q.sum()
                    count += 1
                    m1 = b1 * m1 + (1 - b1) * delta
                    m2 = b2 * m2 + (1 - b2) * delta**2
                    x = x - slr * (m1 / (1 - b1**count)) / (np.sqrt(m2 / (1 - b2**count)) + eps)
                X = np.tile(x, (n, 1))
            out.append((X.copy(), x.copy()))
    return out, grads, sent


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_fedadam_matches_numpy_with_client_sampling(mu):
    A, b = _problem(n=4, seed=4)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    H, lr, beta, slr, b1, b2, eps = 3, 0.05, 0.5, 0.1, 0.9, 0.99, 1e-3
    ref, grads, sent = _numpy_fedavg_adam(A, b, H, lr, beta, p, ROUNDS_ACTIVE, slr, b1, b2, eps, mu)
    server = optax.adam(slr, b1=b1, b2=b2, eps=eps)
    alg = (fedprox(lr, local_steps=H, mu=mu, server_optimizer=server, momentum=beta) if mu
           else fedavg(lr, local_steps=H, server_optimizer=server, momentum=beta))
    run = _Runner(alg, 4, 3, p)
    for t, (g, (X, x), s) in enumerate(zip(grads, ref, sent, strict=True)):
        aux = run.step(g, t, ROUNDS_ACTIVE[t // H])
        np.testing.assert_allclose(run.x(), X, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(np.asarray(run.state.server["x"]), x, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_array_equal(np.asarray(aux["bytes_sent"]), s)
    assert not np.allclose(ref[-1][1], 0.0)


def _numpy_scaffold(A, b, K, lr_fn, eta_g, actives, wd=0.0):
    n, _, d = A.shape
    x, c = np.zeros(d), np.zeros(d)
    Y, C = np.zeros((n, d)), np.zeros((n, d))
    out, grads = [], []
    t = 0
    for act in actives:
        act = np.asarray(act)
        lrs = []
        for k in range(K):
            g = _grad(A, b, Y)
            grads.append(g)
            lr = lr_fn(t)
            lrs.append(lr)
            Yn = Y - lr * (g + wd * Y - C + c)
            Y = np.where(act[:, None], Yn, Y)
            if k == K - 1:
                S = np.flatnonzero(act)
                C_plus = C - c + (x - Y) / np.sum(lrs)
                if len(S):
                    dy = (Y[S] - x).mean(0)
                    dc = (C_plus[S] - C[S]).mean(0)
                    x = x + eta_g * dy
                    c = c + len(S) / n * dc
                C[S] = C_plus[S]
                Y = np.tile(x, (n, 1))
            out.append((Y.copy(), x.copy(), C.copy(), c.copy()))
            t += 1
    return out, grads


@pytest.mark.parametrize("lr", [0.05, lambda t: 0.06 / (1.0 + 0.1 * t)])
def test_scaffold_matches_numpy_with_client_sampling(lr):
    A, b = _problem(n=4, seed=5)
    K, eta_g, wd = 3, 0.8, 0.01
    lr_fn = lr if callable(lr) else (lambda t: lr)
    ref, grads = _numpy_scaffold(A, b, K, lr_fn, eta_g, ROUNDS_ACTIVE, wd)
    run = _Runner(scaffold(lr, local_steps=K, server_learning_rate=eta_g, weight_decay=wd), 4, 3)
    for t, (g, (Y, x, C, c)) in enumerate(zip(grads, ref, strict=True)):
        aux = run.step(g, t, ROUNDS_ACTIVE[t // K])
        st = run.state
        for name, got, want in (("y", run.x(), Y), ("x", st.server["x"], x), ("c_i", st.controls["x"], C),
                                ("c", st.control["x"], c)):
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} at step {t}")
        want_bytes = np.where(ROUNDS_ACTIVE[t // K], 2 * 4.0 * 3, 0.0) if (t + 1) % K == 0 else np.zeros(4)
        np.testing.assert_array_equal(np.asarray(aux["bytes_sent"]), want_bytes)
    assert np.abs(ref[-1][3]).max() > 1e-3  # the server control variate moved: the test checks something


# --------------------------------------------------------------------------------------------------------------
# FedProx


def test_fedprox_mu_zero_is_fedavg_exactly():
    A, b = _problem(n=4, seed=6)
    server = optax.sgd(0.7, momentum=0.5)
    a = _Runner(fedavg(0.05, local_steps=3, server_optimizer=server, momentum=0.5), 4, 3, [0.1, 0.2, 0.3, 0.4])
    f = _Runner(fedprox(0.05, local_steps=3, mu=0.0, server_optimizer=server, momentum=0.5), 4, 3,
                [0.1, 0.2, 0.3, 0.4])
    for t in range(9):
        g = _grad(A, b, a.x())
        act = ROUNDS_ACTIVE[t // 3]
        a.step(g, t, act)
        f.step(g, t, act)
        np.testing.assert_array_equal(f.x(), a.x())
        np.testing.assert_array_equal(np.asarray(f.state.server["x"]), np.asarray(a.state.server["x"]))


def _drift(alg, A, b, H):
    """Mean ‖x_i − x_server‖² after H − 1 local steps of the first round (before the server update)."""
    run = _Runner(alg, A.shape[0], A.shape[2])
    for t in range(H - 1):
        run.step(_grad(A, b, run.x()), t)
    return float(np.mean(np.sum((run.x() - np.asarray(run.state.server["x"])) ** 2, axis=1)))


def test_fedprox_keeps_clients_closer_to_the_server_model():
    A, b = _problem(n=4, seed=7, spread=3.0)
    H = 6
    drifts = [_drift(alg, A, b, H) for alg in (fedavg(0.05, local_steps=H), fedprox(0.05, local_steps=H, mu=1.0),
                                               fedprox(0.05, local_steps=H, mu=5.0))]
    assert drifts[0] > 0.1
    assert drifts[1] < 0.9 * drifts[0] and drifts[2] < 0.9 * drifts[1], drifts


# --------------------------------------------------------------------------------------------------------------
# SCAFFOLD corrects client drift


def test_scaffold_reaches_the_global_optimum_where_fedavg_drifts():
    A, b = _problem(n=4, m=5, d=3, seed=8, spread=3.0)
    task = simdl.tasks.quadratics(A, b)  # deterministic gradients, clients with different optima
    kw = dict(steps=600, batch_size=1, eval_every=600, seed=0)
    sc = simdl.simulate(task, scaffold(0.02, local_steps=5), T.complete(4), **kw)
    fa = simdl.simulate(task, fedavg(0.02, local_steps=5), T.complete(4), **kw)
    # H = 1 FedAvg is gradient descent on f, which has no drift: the bias below comes from the local steps
    err_sc, err_fa = sc.final["distance_to_opt"], fa.final["distance_to_opt"]
    assert err_sc < 1e-8, err_sc
    assert err_fa > 1e-3 and err_fa > 1e4 * max(err_sc, 1e-12), (err_sc, err_fa)
    x_star = np.asarray(task.data["x_star"], np.float64)
    np.testing.assert_allclose(np.asarray(sc.params["x"]), np.tile(x_star, (4, 1)), atol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# client sampling


def _algs():
    adam = optax.adam(0.1, eps=1e-3)
    return [fedavg(0.05, local_steps=3, server_optimizer=adam, momentum=0.5),
            fedprox(0.05, local_steps=3, mu=0.3, server_optimizer=adam), scaffold(0.05, local_steps=3)]


@pytest.mark.parametrize("i", range(3))
def test_all_active_equals_active_none(i):
    A, b = _problem(n=4, seed=9)
    w = [0.1, 0.2, 0.3, 0.4]
    none, full = _Runner(_algs()[i], 4, 3, w), _Runner(_algs()[i], 4, 3, w)
    for t in range(9):
        g = _grad(A, b, none.x())
        a1, a2 = none.step(g, t), full.step(g, t, [True] * 4)
        np.testing.assert_array_equal(full.x(), none.x())
        for x, y in zip(jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(none.state), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(a1["bytes_sent"]), np.asarray(a2["bytes_sent"]))


@pytest.mark.parametrize("i", range(3))
def test_inactive_clients_are_frozen_and_send_nothing(i):
    A, b = _problem(n=4, seed=10)
    alg = _algs()[i]
    run = _Runner(alg, 4, 3, x0=np.array([1.0, -1.0, 0.5]))
    act = np.array([True, False, True, False])
    for t in range(3):  # round 0: warm up every client (non-trivial client state for the frozen ones)
        run.step(_grad(A, b, run.x()), t)
    before = jax.tree_util.tree_map(np.asarray, run.state)
    for t in range(3, 6):
        g = _grad(A, b, run.x()) + 100.0  # a frozen client's gradient must be ignored
        aux = run.step(g, t, act)
        sent = np.asarray(aux["bytes_sent"])
        assert np.all(sent[~act] == 0)
        if t < 5:
            assert np.all(sent == 0)
            x = run.x()
            np.testing.assert_array_equal(x[~act], np.asarray(before.params["x"])[~act])
            assert not np.allclose(x[act], np.asarray(before.params["x"])[act])
            stacked = [(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree_util.tree_leaves(run.state),
                                                                       jax.tree_util.tree_leaves(before),
                                                                       strict=True) if np.ndim(v) and len(v) == 4]
            for u, v in stacked:  # per-client state (models, optimizer state, control variates) unchanged
                np.testing.assert_array_equal(u[~act], v[~act])
        else:
            assert np.all(sent[act] > 0)
            x = run.x()
            np.testing.assert_array_equal(x, np.tile(np.asarray(run.state.server["x"]), (4, 1)))
            assert not np.allclose(np.asarray(run.state.server["x"]), np.asarray(before.server["x"]))


@pytest.mark.parametrize("i", range(3))
def test_empty_cohort_leaves_the_server_unchanged(i):
    A, b = _problem(n=4, seed=11)
    run = _Runner(_algs()[i], 4, 3)
    for t in range(3):  # one full round first: the server optimizer (Adam) has momentum, SCAFFOLD has c ≠ 0
        run.step(_grad(A, b, run.x()), t)
    before = jax.tree_util.tree_map(np.asarray, run.state)
    for t in range(3, 6):
        aux = run.step(_grad(A, b, run.x()), t, [False] * 4)
        np.testing.assert_array_equal(np.asarray(aux["bytes_sent"]), np.zeros(4))
    for u, v in zip(jax.tree_util.tree_leaves(run.state), jax.tree_util.tree_leaves(before), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # ...and a normal round afterwards moves it again
    for t in range(6, 9):
        run.step(_grad(A, b, run.x()), t)
    assert not np.allclose(np.asarray(run.state.server["x"]), np.asarray(before.server["x"]))


# --------------------------------------------------------------------------------------------------------------
# metadata and argument checks


def test_registry_and_protocol_fields():
    for name, factory in (("fedavg", fedavg), ("fedprox", fedprox), ("scaffold", scaffold)):
        alg = simdl.algorithms.get(name, learning_rate=0.1, local_steps=5)
        assert simdl.algorithms.ALGORITHMS[name] is factory
        assert alg.name == name and alg.round_length == 5
        assert alg.capabilities == frozenset({"participation"}) and alg.requires == frozenset()
    hp = fedavg(0.1, server_optimizer=optax.adam(0.01)).hyperparams
    assert hp["local_steps"] == 4 and hp["weighted"] is True and isinstance(hp["server_optimizer"], str)
    assert fedavg(0.1).hyperparams["server_optimizer"] is None
    assert fedprox(0.1, mu=0.2).hyperparams["mu"] == 0.2
    assert scaffold(0.1, server_learning_rate=0.5).hyperparams["server_learning_rate"] == 0.5


@pytest.mark.parametrize("make,value", [
    (lambda: fedavg(0.1, local_steps=0), "0"),
    (lambda: fedavg(0.1, local_steps=2.5), "2.5"),
    (lambda: fedavg(0.1, server_optimizer="adam"), "'adam'"),
    (lambda: fedavg(0.1, optimizer=0.3), "0.3"),
    (lambda: fedavg(-0.1), "-0.1"),
    (lambda: fedavg(0.1, weighted="yes"), "'yes'"),
    (lambda: fedavg(0.1, momentum=1.5), "1.5"),
    (lambda: fedprox(0.1, mu=-1.0), "-1.0"),
    (lambda: fedprox(0.1, mu=float("inf")), "inf"),
    (lambda: fedprox(0.1, local_steps=-3), "-3"),
    (lambda: scaffold(0.1, momentum=0.9), "0.9"),
    (lambda: scaffold(0.1, server_learning_rate=0.0), "0.0"),
    (lambda: scaffold(0.1, local_steps=0), "0"),
    (lambda: scaffold(0.1, weight_decay=-1e-4), "-0.0001"),
])
def test_bad_arguments_name_the_value(make, value):
    with pytest.raises(ValueError, match=re.escape(value)):
        make()


@pytest.mark.parametrize("make", [lambda: fedavg(0.05, local_steps=3, server_optimizer=optax.adam(0.1, eps=1e-3)),
                                  lambda: scaffold(0.05, local_steps=3)])
def test_runner_participation_and_server_clock(make):
    """Through simdl.simulate: the runner's cohorts reach ctx.active (same trajectory as stepping by hand), only the
    cohort uploads, and a round lasts as long as its slowest sampled client (free links: 3 local steps)."""
    from simdl.participation import trace
    from simdl.systems import SystemModel

    A, b = _problem(n=4, seed=12)
    cohorts = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], bool)
    r = simdl.simulate(simdl.tasks.quadratics(A, b), make(), T.complete(4), steps=9, batch_size=1, eval_every=3,
                       participation=trace(cohorts), system=SystemModel(compute_time=[1.0, 2.0, 3.0, 4.0]))
    run = _Runner(make(), 4, 3)
    for t in range(9):
        run.step(_grad(A, b, run.x()), t, cohorts[t // 3])
    np.testing.assert_allclose(np.asarray(r.params["x"]), run.x(), rtol=1e-5, atol=1e-6)
    assert np.all(r.history["consensus_distance"] < 1e-12)
    per_upload = 12.0 * (2 if make().name == "scaffold" else 1)  # 3 float32 (+ the control variate)
    np.testing.assert_allclose(r.history["bytes_per_worker"], per_upload * 2 / 4 * np.arange(1, 4))
    c = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(r.history["sim_time_s"], np.cumsum([3 * c[m].max() for m in cohorts]), rtol=1e-6)
