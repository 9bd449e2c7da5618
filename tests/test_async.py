"""Asynchronous gossip (simdl.algorithms.asynchronous): AD-PSGD (arXiv 1710.06952) on its event clock against a
numpy D-PSGD transcription and a plain Python event simulation, and randomized gossip (Boyd et al. 2006) against a
numpy transcription and the paper's expected contraction."""

from __future__ import annotations

import heapq

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import optax
import pytest

import simdl
from simdl.algorithms import ALGORITHMS, ad_psgd, dpsgd, randomized_gossip
from simdl.algorithms.asynchronous import (
    compose_pairwise,
    draw_events,
    draw_wakeup,
    expected_gossip_matrix,
    pair_neighbours,
)
from simdl.algorithms.base import Context
from simdl.mixing import dense_mix, make_mixer

N = 6
D = 3


def _ctx(topo, t, compute_time=None, key=0):
    mixer = make_mixer(topo)
    ct = None if compute_time is None else jnp.asarray(np.broadcast_to(compute_time, (topo.n,)), jnp.float32)
    return Context(jnp.int32(t), jax.random.fold_in(jax.random.PRNGKey(key), t), topo,
                   lambda tree: mixer(tree, step=t), np.full(topo.n, 1.0 / topo.n), compute_time=ct)


def _jit_step(alg, topo, compute_time=None):
    """``alg.step`` compiled once, as ``step(state, grads, t)`` with the Context of step t built inside."""
    return jax.jit(lambda state, grads, t: alg.step(state, grads, _ctx(topo, t, compute_time)))


def _lopsided(n=N):
    """A connected graph with unequal degrees (a triangle with a tail and a chord)."""
    g = nx.Graph([(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5), (1, 4)])
    return simdl.topologies.from_networkx(g, weights="metropolis", name="lopsided")


def _pairwise_product(order, partner, n):
    w = np.eye(n)
    for i in order:
        j = partner[i]
        step = np.eye(n)
        step[[i, i, j, j], [i, j, i, j]] = 0.5 if i != j else 1.0
        w = step @ w
    return w


# ------------------------------------------------------------------------------------------------ AD-PSGD
@pytest.mark.parametrize("compute_time,tick", [(None, None), (0.5, None), (0.5, 0.5)])
def test_ad_psgd_equal_constant_times_is_dpsgd_with_random_pairwise_w(compute_time, tick):
    """Equal constant compute times, no staleness: one step is X ← W_t X − η G(X) (D-PSGD, gradient at the
    pre-mixing model) with W_t the product of the n pairwise averages in the step's random order."""
    topo, lr = _lopsided(), 0.1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D))
    alg = ad_psgd(lr, tick=tick)
    state = alg.init({"x": jnp.asarray(x, jnp.float32)}, _ctx(topo, 0))
    base = dpsgd(lr)
    bstate = base.init({"x": jnp.asarray(x, jnp.float32)}, _ctx(topo, 0))
    table, degree = pair_neighbours(topo)
    step = _jit_step(alg, topo, compute_time)
    for t in range(6):
        ctx = _ctx(topo, t, compute_time)
        np.testing.assert_allclose(alg.query(state)["x"], x, atol=1e-5)  # the gradient is taken at x_t itself
        g = rng.standard_normal((N, D))
        order, partner = draw_events(ctx.key, topo, jnp.ones(N, bool), jnp.zeros(N), tick is not None)
        order, partner = np.asarray(order), np.asarray(partner)
        assert sorted(order) == list(range(N))
        assert all(partner[i] in table[i, :degree[i]] for i in range(N))
        w = _pairwise_product(order, partner, N)
        np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-12)  # doubly stochastic: the average is preserved
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
        x = w @ x - lr * g
        state, aux = step(state, {"x": jnp.asarray(g, jnp.float32)}, t)
        np.testing.assert_allclose(state.params["x"], x, atol=1e-5)
        # the same step through simdl's own D-PSGD with ctx.mix = W_t
        wctx = ctx._replace(mix=lambda tree, w=w: dense_mix(jnp.asarray(w, jnp.float32), tree))
        bstate, _ = base.step(bstate, {"x": jnp.asarray(g, jnp.float32)}, wctx)
        np.testing.assert_allclose(state.params["x"], bstate.params["x"], atol=1e-5)
        np.testing.assert_array_equal(aux["updates_applied"], 1.0)
        np.testing.assert_array_equal(aux["staleness"], 0.0)
        assert float(aux["tick_s"]) == (1.0 if compute_time is None else compute_time)
        exchanges = np.zeros(N)
        for i in order:
            if partner[i] != i:
                exchanges[[i, partner[i]]] += 1
        np.testing.assert_array_equal(aux["bytes_sent"], exchanges * D * 4)
        assert float(aux["lr"]) == pytest.approx(lr)


def _event_reference(c, x0, grad, steps, partners, lr):
    """Plain Python AD-PSGD (Algorithm 2 per worker) with constant compute times c: events in time order; at its
    finish worker i averages with its partner, steps with the gradient at its snapshot and re-reads its model."""
    n = len(c)
    x, snap = x0.copy(), x0.copy()
    heap = [(c[i], i) for i in range(n)]
    heapq.heapify(heap)
    now, applied, read_at, out = 0.0, 0, np.zeros(n, int), []
    for t in range(steps):
        f, i = heapq.heappop(heap)
        j = partners[t][i]
        g = grad(snap[i], i)
        x[[i, j]] = 0.5 * (x[i] + x[j])
        x[i] -= lr * g
        tau = applied - read_at[i]
        applied += 1
        read_at[i] = applied
        snap[i] = x[i]
        out.append((x.copy(), f - now, i, tau))
        now = f
        heapq.heappush(heap, (f + c[i], i))
    return out


def test_ad_psgd_heterogeneous_times_match_event_simulation():
    """Distinct constant compute times: each step applies exactly the earliest-finishing worker, with the gradient
    at its (stale) snapshot; the model, tick and staleness τ (updates by others since its read) follow a plain event
    simulation."""
    topo, lr = _lopsided(), 0.05
    c = np.array([1.0, 1.31, 1.73, 2.29, 3.07, 0.87])  # no two finish times within 1e-3 s over the run
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 1.5, (N, D))
    b = rng.standard_normal((N, D))
    x0 = rng.standard_normal((N, D))
    steps = 40
    partners = [np.asarray(draw_events(_ctx(topo, t).key, topo, jnp.ones(N, bool), jnp.zeros(N), False)[1])
                for t in range(steps)]
    ref = _event_reference(c, x0, lambda x, i: a[i] * x - b[i], steps, partners, lr)
    alg = ad_psgd(lr)
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    step = _jit_step(alg, topo, c)
    taus = []
    for t, (x, dt, i, tau) in enumerate(ref):
        xr = np.asarray(alg.query(state)["x"])
        g = a * xr - b
        state, aux = step(state, {"x": jnp.asarray(g, jnp.float32)}, t)
        np.testing.assert_allclose(state.params["x"], x, atol=2e-5)
        assert float(aux["tick_s"]) == pytest.approx(dt, rel=1e-5, abs=1e-5)
        np.testing.assert_array_equal(aux["updates_applied"], np.eye(N)[i])
        assert float(aux["staleness"][i]) == tau
        taus.append(tau)
    assert float(state.clock.sum()) == pytest.approx(sum(r[1] for r in ref), rel=1e-6)
    assert max(taus) > N  # the slowest worker applies gradients of many updates ago


@pytest.mark.parametrize("tick", [None, 1.0])
def test_ad_psgd_commensurate_times_staleness_and_rates(tick):
    """c = (1, 1, 2, 4, 1, 2) s: both clocks tick every second; worker 3 first applies at t = 4 s with τ = the 3 + 5 +
    3 updates of the three ticks before, workers 2 and 5 at t = 2 s with τ = 3; per 8 s the workers apply 8, 8, 4, 2,
    8, 4 updates."""
    topo = _lopsided()
    c = np.array([1.0, 1.0, 2.0, 4.0, 1.0, 2.0])
    alg = ad_psgd(0.1, tick=tick)
    state = alg.init({"x": jnp.zeros((N, D))}, _ctx(topo, 0))
    applied, first = np.zeros(N), {}
    step = _jit_step(alg, topo, c)
    for t in range(8):
        state, aux = step(state, {"x": jnp.zeros((N, D))}, t)
        assert float(aux["tick_s"]) == 1.0
        upd = np.asarray(aux["updates_applied"])
        for i in np.flatnonzero(upd):
            first.setdefault(int(i), (t, float(aux["staleness"][i])))
        applied += upd
    np.testing.assert_array_equal(applied, 8 / c)
    assert first[3] == (3, 3 + 5 + 3)
    assert first[2] == (1, 3) and first[5] == (1, 3)
    assert first[0] == (0, 0)


def test_ad_psgd_fixed_tick_batches_and_preserves_the_average():
    """A fixed tick Δ applies every worker finishing within it (≈ Δ Σ 1/c_i updates per tick; at most one per worker
    per tick) and, with zero gradients, only averages pairwise: the worker mean is preserved."""
    topo = _lopsided()
    rng = np.random.default_rng(3)
    c = np.array([0.3, 1.0, 1.7, 2.4, 0.8, 5.0])
    x0 = rng.standard_normal((N, D))
    alg = ad_psgd(0.1, tick=0.5)
    state = alg.init({"x": jnp.asarray(x0, jnp.float32)}, _ctx(topo, 0))
    step = _jit_step(alg, topo, c)
    applied = np.zeros(N)
    steps = 200
    for t in range(steps):
        state, aux = step(state, {"x": jnp.zeros((N, D))}, t)
        applied += np.asarray(aux["updates_applied"])
    np.testing.assert_allclose(state.params["x"].mean(0), x0.mean(0), atol=1e-5)
    expected = steps * 0.5 / np.maximum(c, 0.5)  # compute times below the tick are rounded up to it
    np.testing.assert_allclose(applied, expected, atol=1.0)
    assert float(np.std(np.asarray(state.params["x"]), axis=0).max()) < 1e-3  # gossip reached consensus


def test_compose_pairwise_matches_sequential_groups():
    """X ← P X + Q U equals applying the groups of equal finish time in turn: each member's pairwise average, in
    order, then the group's updates (a group of one: the paper's average-then-step)."""
    rng = np.random.default_rng(4)
    n = 7
    finishing = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    times = np.array([0.2, 9.0, 0.2, 0.1, 9.0, 0.4, 0.2], np.float32)  # groups {3}, {0, 2, 6}, {5}
    order = np.r_[3, rng.permutation([0, 2, 6]), 5, 1, 4]
    partner = np.array([1, 0, 3, 4, 2, 6, 6])  # worker 6 isolated: averages with itself
    x, u = rng.standard_normal((n, 4)), rng.standard_normal((n, 4)) * finishing[:, None]
    pm, qm, ex = compose_pairwise(jnp.asarray(order), jnp.asarray(partner), jnp.asarray(finishing),
                                  jnp.asarray(times), 1e-7)
    ref, counts = x.copy(), np.zeros(n)
    for group in ([3], list(order[1:4]), [5]):
        for i in group:
            j = partner[i]
            ref[[i, j]] = 0.5 * (ref[i] + ref[j])
            if i != j:
                counts[[i, j]] += 1
        for i in group:
            ref[i] += u[i]
    np.testing.assert_allclose(np.asarray(pm) @ x + np.asarray(qm) @ u, ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pm).sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(ex, counts)
    pm1, qm1, _ = compose_pairwise(jnp.asarray(order), jnp.asarray(partner), jnp.asarray(finishing))
    np.testing.assert_allclose(qm1, np.diag(finishing.astype(float)), atol=0)  # one group: X ← P X + U


def test_ad_psgd_simulate_end_to_end():
    """A compiled run (no system model: every worker takes 1 s, so every step applies all n) trains like D-PSGD
    and reports the async counters: n updates per step, staleness 0, one second per tick."""
    task = simdl.tasks.random_quadratics(n_workers=8, dim=5, zeta2=1.0, r0=5.0, seed=0)
    topo = simdl.topologies.ring(8)
    res = simdl.simulate(task, ad_psgd(0.05), topo, steps=300, eval_every=150)
    ref = simdl.simulate(task, dpsgd(0.05), topo, steps=300, eval_every=300)
    h = res.history
    np.testing.assert_allclose(h["updates_applied"], h["step"])
    np.testing.assert_allclose(h["tick_s"], h["step"])
    np.testing.assert_array_equal(h["staleness"], 0.0)
    assert res.final["suboptimality"] < 1e-2 * res.history["suboptimality"][0] + 1e-3
    assert res.final["suboptimality"] < 10 * ref.final["suboptimality"] + 1e-4


# ------------------------------------------------------------------------------------------ randomized gossip
@pytest.mark.parametrize("lr", [0.0, 0.1])
def test_randomized_gossip_matches_numpy_transcription(lr):
    """One step = one global clock tick: node i wakes (uniformly), steps with its gradient if training, and averages
    with a uniform neighbour j; tick_s ~ Exp(n · rate)."""
    topo, rate = _lopsided(), 2.0
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, D))
    alg = randomized_gossip(lr, rate=rate, momentum=0.5 if lr else 0.0)
    state = alg.init({"x": jnp.asarray(x, jnp.float32)}, _ctx(topo, 0))
    table, degree = pair_neighbours(topo)
    buf, total = np.zeros((N, D)), 0.0
    step = _jit_step(alg, topo)
    for t in range(12):
        ctx = _ctx(topo, t)
        i, j, dt = (np.asarray(v) for v in draw_wakeup(ctx.key, topo, rate))
        i, j = int(i), int(j)
        assert j in table[i, :degree[i]]
        g = rng.standard_normal((N, D))
        if lr:
            buf[i] = 0.5 * buf[i] + g[i]
            x[i] -= lr * buf[i]
        x[[i, j]] = 0.5 * (x[i] + x[j])
        total += float(dt)
        state, aux = step(state, {"x": jnp.asarray(g, jnp.float32)}, t)
        np.testing.assert_allclose(state.params["x"], x, atol=1e-5)
        assert float(aux["tick_s"]) == pytest.approx(float(dt), rel=1e-6) and float(dt) > 0
        np.testing.assert_array_equal(aux["wakeups"], np.eye(N)[i])
        np.testing.assert_array_equal(aux["updates_applied"], np.eye(N)[i] * (lr > 0))
        np.testing.assert_array_equal(aux["bytes_sent"], (np.eye(N)[i] + np.eye(N)[j]) * D * 4)
    assert float(state.clock.sum()) == pytest.approx(total, rel=1e-6)


def test_randomized_gossip_preserves_average_and_contracts_like_lambda2():
    """Boyd et al. 2006: the sum is invariant, and E‖x(t+1) − x̄‖² = (x − x̄)ᵀ E[W] (x − x̄) ≤ λ₂(E[W]) ‖x − x̄‖²
    (equality on the λ₂ eigenvector); checked by Monte-Carlo over 10000 independent ticks. Also
    E[tick_s] = 1/(n·rate)."""
    topo = _lopsided()
    ew = expected_gossip_matrix(topo)
    np.testing.assert_allclose(ew, ew.T, atol=1e-12)
    np.testing.assert_allclose(ew.sum(1), 1.0, atol=1e-12)
    vals, vecs = np.linalg.eigh(ew)
    lam2 = vals[-2]
    assert vals[-1] == pytest.approx(1.0) and lam2 < 1.0
    alg = randomized_gossip(0.0, rate=0.5)
    rng = np.random.default_rng(6)
    v2 = vecs[:, -2]
    keys = jax.random.split(jax.random.PRNGKey(7), 10000)

    @jax.jit
    def ticks(x):
        state = alg.init({"x": x[:, None]}, _ctx(topo, 0))

        def one(key):
            s, aux = alg.step(state, {"x": jnp.zeros((N, 1))}, _ctx(topo, 0)._replace(key=key))
            return s.params["x"][:, 0], aux["tick_s"]

        return jax.vmap(one)(keys)

    for x in (v2, rng.standard_normal(N)):
        x = x - x.mean()
        out, dts = ticks(jnp.asarray(x, jnp.float32))
        out = np.asarray(out, np.float64)
        np.testing.assert_allclose(out.sum(1), x.sum(), atol=1e-5)  # the average is preserved by every tick
        dev = ((out - out.mean(1, keepdims=True)) ** 2).sum(1)
        ratio = dev / (x @ x)
        expect = x @ ew @ x / (x @ x)
        assert abs(ratio.mean() - expect) < 4 * ratio.std() / np.sqrt(len(ratio)) + 1e-6
        assert ratio.mean() <= lam2 + 4 * ratio.std() / np.sqrt(len(ratio))
        assert float(np.mean(dts)) == pytest.approx(1.0 / (N * 0.5), rel=0.05)


def test_randomized_gossip_trains_end_to_end():
    task = simdl.tasks.random_quadratics(n_workers=4, dim=5, zeta2=0.5, r0=5.0, seed=1)
    topo = simdl.topologies.ring(4)
    res = simdl.simulate(task, randomized_gossip(0.05), topo, steps=800, eval_every=400)
    h = res.history
    np.testing.assert_allclose(h["wakeups"] * 4, h["step"])  # one wake-up per step (history: mean over workers)
    assert h["tick_s"][-1] == pytest.approx(800 / 4, rel=0.2)
    assert res.final["suboptimality"] < 0.1 * h["suboptimality"][0]


# -------------------------------------------------------------------------------------- protocol and errors
def test_registry_capabilities_and_requirements():
    for name in ("ad_psgd", "randomized_gossip"):
        alg = ALGORITHMS[name](learning_rate=0.1)
        assert alg.name == name
        assert "async" in alg.capabilities
        assert alg.requires == frozenset({"connected", "static"})
    assert ad_psgd(0.1, tick=0.25).hyperparams["tick"] == 0.25
    assert ad_psgd(optax.constant_schedule(0.1)).hyperparams["learning_rate"].startswith("<function")


def test_validation_errors():
    with pytest.raises(ValueError, match="learning_rate"):
        ad_psgd(-0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        ad_psgd(0.0)
    for bad in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="tick"):
            ad_psgd(0.1, tick=bad)
        with pytest.raises(ValueError, match="rate"):
            randomized_gossip(0.1, rate=bad)
    with pytest.raises(ValueError, match="momentum"):
        ad_psgd(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        randomized_gossip(-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        randomized_gossip(0.0, optimizer=optax.adam(1e-3))
    g = nx.DiGraph([(0, 1), (1, 2), (2, 0)])
    directed = simdl.topologies.from_networkx(g, weights="uniform", name="cycle3")
    for alg in (ad_psgd(0.1), randomized_gossip(0.1)):
        with pytest.raises(ValueError, match="0 -> 1 without 1 -> 0"):
            alg.init({"x": jnp.zeros((3, 1))}, _ctx(directed, 0))
    tv = simdl.topologies.one_peer_exponential(4)
    with pytest.raises(ValueError, match="static"):
        ad_psgd(0.1).init({"x": jnp.zeros((4, 1))}, _ctx(tv, 0))


def test_ad_psgd_with_a_system_model_runs_on_its_own_clock():
    """compute_time = (1, 1, 1, 3) s: every tick is 1 s (sim_time_s = Σ tick_s); the fast workers apply every tick
    with τ = 0, the slow one every third tick with τ = 6 (the fast workers' updates of the two ticks in between)."""
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, zeta2=0.5, r0=2.0, seed=2)
    system = simdl.systems.SystemModel(compute_time=[1.0, 1.0, 1.0, 3.0])
    res = simdl.simulate(task, ad_psgd(0.02), simdl.topologies.ring(4), steps=60, eval_every=30, system=system)
    h = res.history
    np.testing.assert_allclose(h["sim_time_s"], h["tick_s"])
    np.testing.assert_allclose(h["sim_time_s"], h["step"])
    np.testing.assert_allclose(h["updates_applied"][-1], (60 * 3 + 20) / 4)
    np.testing.assert_allclose(h["staleness"][-1], 20 * 6 / 4)


def test_ad_psgd_warns_that_links_are_not_timed():
    """The event clock counts compute time only: latency or finite bandwidth in the system model warn (and leave
    sim_time_s as without them); a compute-only model does not warn."""
    import warnings

    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, zeta2=0.5, seed=2)
    runs = {}
    for name, kw in (("plain", {}), ("latency", {"latency": 0.5}), ("bandwidth", {"bandwidth": 10.0})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[name] = simdl.simulate(task, ad_psgd(0.02), simdl.topologies.ring(4), steps=6, eval_every=3,
                                        system=simdl.systems.SystemModel(compute_time=1.0, **kw))
        msgs = [str(w.message) for w in caught if "event clock" in str(w.message)]
        assert len(msgs) == (0 if name == "plain" else 1), (name, msgs)
    for name in ("latency", "bandwidth"):
        np.testing.assert_array_equal(runs[name].history["sim_time_s"], runs["plain"].history["sim_time_s"])


def _staleness_runner(n, steps, tick=None):
    """``run(c) -> (per-worker, overall)`` mean staleness over ``steps`` ticks with constant compute times ``c``
    (one compiled scan, reused for every ``c``)."""
    topo = simdl.topologies.ring(n)
    alg = ad_psgd(0.1, tick=tick)
    zeros = {"x": jnp.zeros((n, 1))}
    state = alg.init(zeros, _ctx(topo, 0))

    @jax.jit
    def scan(c):
        def body(state, t):
            ctx = _ctx(topo, 0)._replace(step=t, key=jax.random.fold_in(jax.random.PRNGKey(0), t), compute_time=c)
            state, aux = alg.step(state, zeros, ctx)
            return state, (aux["staleness"], aux["updates_applied"])

        return jax.lax.scan(body, state, jnp.arange(steps))[1]

    def run(c):
        s, u = scan(jnp.asarray(c, jnp.float32))
        s, u = np.asarray(s, np.float64).sum(0), np.asarray(u, np.float64).sum(0)
        return s / u, s.sum() / u.sum()

    return run


def test_ad_psgd_staleness_distribution():
    """The documented distribution: with distinct finish times τ_i ≈ Σ_{j≠i} c_i/c_j and the mean over updates is
    ≈ n − 1 whatever the speeds (one worker 3× slower: τ ≈ 3 (n − 1), the others ≈ n − 2 + 1/3); a fixed tick Δ
    counts only the ticks in between, τ_i ≈ (c_i − Δ) Σ_{j≠i} 1/c_j."""
    c = np.array([1.0, 1.31, 1.73, 2.29, 3.07, 0.87])
    others = np.array([sum(1.0 / c[j] for j in range(N) if j != i) for i in range(N)])
    run = _staleness_runner(N, 3000)
    per, mean = run(c)
    np.testing.assert_allclose(per, c * others, rtol=0.02)
    assert mean == pytest.approx(N - 1, rel=0.01)
    per, mean = run([1.0, 1.0013, 0.9991, 1.0027, 0.9983, 3.0])
    np.testing.assert_allclose(per, [N - 2 + 1 / 3] * (N - 1) + [3 * (N - 1)], rtol=0.02)
    assert mean == pytest.approx(N - 1, rel=0.01)
    per, _ = _staleness_runner(N, 3000, tick=0.25)(c)
    np.testing.assert_allclose(per, (c - 0.25) * others, rtol=0.03)
