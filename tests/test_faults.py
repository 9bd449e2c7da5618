"""Simulated faults: message drops, link failures, stragglers (simdl.faults) and their wiring into the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl.algorithms import Algorithm, dsgd
from simdl.faults import Faults, as_faults, faulty_gossip, injector, straggler_mask
from simdl.mixing import make_mixer
from simdl.runtime import build_step

T = simdl.topologies


@pytest.fixture(scope="module")
def quad():
    return simdl.tasks.random_quadratics(n_workers=8, dim=8, zeta2=1.0, r0=10.0, noise=0.1, seed=1)


def _numpy_w(topology, alive, step, lost="renormalize"):
    """W'_t rebuilt in numpy from the topology's neighbour slots and a slot mask (message drops)."""
    index, weight = topology.neighbor_slots(step)
    if lost == "renormalize":
        received = np.zeros((topology.n, topology.n), bool)
        for i in range(topology.n):
            for s in range(1, index.shape[1]):
                received[i, index[i, s]] |= bool(alive[i, s]) and weight[i, s] != 0
        return reference_gossip_update(topology.weights_at(step), np.eye(topology.n), received)
    n = topology.n
    w = np.zeros((n, n))
    for i in range(n):
        for s in range(index.shape[1]):
            if s == 0 or alive[i, s]:
                w[i, index[i, s]] += weight[i, s]
            else:
                w[i, i] += weight[i, s]
    return w


def reference_gossip_update(w, x, received):
    """Numpy transcription of the RelaySGD authors' ``GossipMechanism.gossip_update`` with message drops
    (github.com/epfml/relaysgd, utils/communication.py): worker i starts from ``W_ii x_i``, adds ``W_ij x_j`` for
    every neighbour j whose message arrived (``received[i, j]``) and, if the received weight ``W_ii + Σ W_ij`` is
    below 1, divides by it. float64; returns the new (n, d) X."""
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(w.shape[0]):
        tensor = x[i] - (1 - w[i, i]) * x[i]
        total = w[i, i]
        for j in np.flatnonzero(w[i]):
            if j != i and received[i, j]:
                tensor = tensor + w[i, j] * x[j]
                total += w[i, j]
        if total < 1:
            tensor = tensor * (1 / total)
        out[i] = tensor
    return out


def _jitted(g):
    """(alive, mix_eye, matrix, lost) of a FaultyGossip, each ``f(key, step)`` with uniforms drawn from ``key``,
    jitted (fast in tests)."""
    eye = jnp.eye(g.n, dtype=jnp.float32)
    u = lambda key: jax.random.uniform(key, (g.n_uniforms,))
    return (jax.jit(lambda k, t: g.alive(u(k), t)), jax.jit(lambda k, t: g(eye, t, u(k))),
            jax.jit(lambda k, t: g.matrix(u(k), t)), jax.jit(lambda k, t: g.lost(u(k), t)))


def _gossip_only():
    """An algorithm whose step is ``X ← ctx.mix(X)`` (ignores gradients): its new state is W'_t X."""
    def step(state, grads, ctx):
        return ctx.mix(state), {"lr": jnp.float32(0.0), "bytes_sent": jnp.zeros((ctx.n,), jnp.float32)}

    return Algorithm("gossip_only", lambda p, ctx: p, step, lambda s: s, lambda s: s, {})


def test_zero_probabilities_equal_the_fault_free_run_exactly(quad):
    assert as_faults(Faults()) is None and as_faults({"message_drop": 0, "straggler": 0.0}) is None
    base = simdl.simulate(quad, dsgd(0.3, momentum=0.5), T.ring(8), steps=30, eval_every=10, seed=2)
    spec = {"message_drop": 0.0, "link_failure": 0.0, "straggler": 0.0}
    res = simdl.simulate(quad, dsgd(0.3, momentum=0.5), T.ring(8), steps=30, eval_every=10, seed=2, faults=spec)
    np.testing.assert_array_equal(np.asarray(res.params["x"]), np.asarray(base.params["x"]))
    assert res.history.keys() == base.history.keys() and res.info["faults"] is None


@pytest.mark.parametrize("topo", [T.ring(8), T.erdos_renyi(8, 0.5, seed=1), T.one_peer_exponential(8)],
                         ids=["ring", "erdos_renyi", "one_peer"])
@pytest.mark.parametrize("lost", ["renormalize", "self"])
def test_message_drop_w_is_row_stochastic_and_matches_numpy(topo, lost):
    alive_f, mix_f, matrix_f, lost_f = _jitted(faulty_gossip(topo, Faults(message_drop=0.4, lost=lost)))
    dropped = 0
    for t in range(6):
        key = jax.random.fold_in(jax.random.PRNGKey(7), t)
        alive = np.asarray(alive_f(key, t))
        expected = _numpy_w(topo, alive, t, lost)
        w = np.asarray(mix_f(key, t))
        np.testing.assert_allclose(w, expected, atol=1e-6)
        np.testing.assert_allclose(np.asarray(matrix_f(key, t)), expected, atol=1e-6)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
        assert (w >= 0).all()
        _, weight = topo.neighbor_slots(t)
        dropped += int(((weight != 0) & ~alive)[:, 1:].sum())
        np.testing.assert_array_equal(np.asarray(lost_f(key, t)), ((weight != 0) & ~alive).sum(axis=1))
    assert dropped > 0


def test_renormalize_matches_the_reference_on_a_fixed_drop_mask():
    """A hand-picked drop mask on a ring and an Erdős–Rényi graph (uniforms 0 = dropped, 0.99 = delivered), float64
    states mixed by the FaultyGossip against the reference transcription; plus the ``self`` rule's diagonal."""
    jax.config.update("jax_enable_x64", True)
    try:
        for topo in (T.ring(6), T.erdos_renyi(7, 0.6, seed=4)):
            g = faulty_gossip(topo, Faults(message_drop=0.5))
            index, weight = topo.neighbor_slots(0)
            n, k = index.shape
            u = np.full((n, k), 0.99, np.float32)
            u[0, 1] = u[2, 1] = u[2, 2] = 0.0  # worker 0 loses one message, worker 2 two
            u[n - 1, 1:] = 0.0  # the last worker loses all: it keeps its own model
            received = np.zeros((n, n), bool)
            for i in range(n):
                for s in range(1, k):
                    received[i, index[i, s]] |= u[i, s] > 0.5 and weight[i, s] != 0
            x = np.random.default_rng(0).standard_normal((n, 5))
            out = np.asarray(g({"x": jnp.asarray(x)}, 0, jnp.asarray(u.ravel()))["x"])
            ref = reference_gossip_update(topo.weights, x, received)
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(out[n - 1], x[n - 1], rtol=1e-6)
            m = np.asarray(g.matrix(jnp.asarray(u.ravel()), 0), np.float64)
            np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
            assert (m[~received & ~np.eye(n, dtype=bool)] == 0).all()
            # row 0 lost one message: the rest scaled by 1 / (1 - lost weight)
            lost_w = weight[0, 1]
            np.testing.assert_allclose(m[0, 0], topo.weights[0, 0] / (1 - lost_w), rtol=1e-6)
            s_ = np.asarray(faulty_gossip(topo, Faults(message_drop=0.5, lost="self")).matrix(
                jnp.asarray(u.ravel()), 0), np.float64)
            np.testing.assert_allclose(s_[0, 0], topo.weights[0, 0] + lost_w, rtol=1e-6)
            assert not np.allclose(s_, m)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_renormalize_with_zero_self_weight_keeps_the_own_model():
    """W_ii = 0 and every message lost: nothing to average, the worker keeps x_i (no division by zero)."""
    w = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    topo = T.Topology(name="no_self", graph=T.complete(3).graph, weights=w)
    g = faulty_gossip(topo, Faults(message_drop=0.5))
    u = jnp.asarray(np.array([[0.9, 0.0, 0.0], [0.9, 0.9, 0.9], [0.9, 0.0, 0.9]], np.float32).ravel())
    m = np.asarray(g.matrix(u, 0))
    np.testing.assert_allclose(m, [[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]], atol=1e-7)


def test_message_drops_are_per_direction():
    topo = T.ring(16)
    _, _, matrix_f, _ = _jitted(faulty_gossip(topo, Faults(message_drop=0.5)))
    asym = False
    for t in range(4):
        w = np.asarray(matrix_f(jax.random.PRNGKey(t), t))
        asym |= not np.allclose(w, w.T)
    assert asym  # a directed drop: j→i lost while i→j arrives


def test_runner_uses_the_masks_of_its_fault_stream(quad):
    """One runner step of a gossip-only algorithm from X = I gives W'_t, equal to the numpy reconstruction from the
    masks of the run's fault stream (``injector(...).uniforms(alg_key, t)``)."""
    topo = T.ring(8)
    faults = Faults(message_drop=0.4)
    step = jax.jit(build_step(quad, _gossip_only(), topo, make_mixer(topo), 4, faults=faults))
    alg_key = jax.random.PRNGKey(3)
    worker_keys = jax.random.split(jax.random.PRNGKey(4), 8)
    inj = injector(faults, topo)
    alive_f = jax.jit(lambda k, t: inj.gossip.alive(inj.uniforms(k, t)[1], t))
    lost = 0
    for t in (0, 5, 11):
        state = {"x": jnp.eye(8, dtype=jnp.float32)}
        new, _, aux = step(state, jnp.int32(t), quad.data, worker_keys, alg_key)
        alive = np.asarray(alive_f(alg_key, t))
        np.testing.assert_allclose(np.asarray(new["x"]), _numpy_w(topo, alive, t), atol=1e-6)
        lost += float(np.sum(aux["messages_lost"]))
    assert lost > 0
    # lost="self" (the old rule, explicit) goes through the runner too
    pinned = Faults(message_drop=0.4, lost="self")
    step_self = jax.jit(build_step(quad, _gossip_only(), topo, make_mixer(topo), 4, faults=pinned))
    new, _, _ = step_self({"x": jnp.eye(8, dtype=jnp.float32)}, jnp.int32(5), quad.data, worker_keys, alg_key)
    np.testing.assert_allclose(np.asarray(new["x"]), _numpy_w(topo, np.asarray(alive_f(alg_key, 5)), 5, "self"),
                               atol=1e-6)


@pytest.mark.parametrize("topo", [T.ring(8), T.torus(3, 4), T.erdos_renyi(10, 0.4, seed=2)],
                         ids=["ring", "torus", "erdos_renyi"])
def test_link_failures_keep_w_symmetric_doubly_stochastic(topo):
    alive_f, _, matrix_f, _ = _jitted(faulty_gossip(topo, Faults(link_failure=0.5)))
    failed = 0
    for t in range(6):
        key = jax.random.PRNGKey(100 + t)
        alive = np.asarray(alive_f(key, t))
        w = np.asarray(matrix_f(key, t))
        np.testing.assert_allclose(w, _numpy_w(topo, alive, t, "self"), atol=1e-6)  # failed links: weight to self
        np.testing.assert_allclose(w, w.T, atol=1e-7)
        np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-6)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
        failed += int((~alive[:, 1:]).sum())
    assert failed > 0


def _gossip_steps(task, topo, faults, steps=8):
    """``steps`` runner steps of D-SGD with every worker straggling (zero gradients: gossip only) from random X."""
    step = jax.jit(build_step(task, dsgd(0.1), topo, make_mixer(topo), 4, faults=faults))
    x = jax.random.normal(jax.random.PRNGKey(0), (topo.n, 8))
    state = dsgd(0.1).init({"x": x}, None)
    keys = jax.random.split(jax.random.PRNGKey(1), topo.n)
    for t in range(steps):
        state, _, _ = step(state, jnp.int32(t), task.data, keys, jax.random.PRNGKey(2))
    return np.asarray(x), np.asarray(state.params["x"])


def test_link_failures_preserve_the_worker_mean_under_gossip(quad):
    topo = T.ring(8)
    x0, x = _gossip_steps(quad, topo, Faults(link_failure=0.5, straggler=1.0))
    np.testing.assert_allclose(x.sum(axis=0), x0.sum(axis=0), atol=2e-5)
    _, x_clean = _gossip_steps(quad, topo, Faults(straggler=1.0))
    assert not np.allclose(x, x0) and not np.allclose(x, x_clean)  # it mixed, with failures
    _, x_drop = _gossip_steps(quad, topo, Faults(message_drop=0.5, straggler=1.0))
    assert not np.allclose(x_drop.sum(axis=0), x0.sum(axis=0), atol=1e-3)  # drops (row-stochastic) do not


def test_straggler_changes_only_by_mixing(quad):
    """Plain SGD: X⁺ = W (X − η G') with straggling workers' rows of G' zero."""
    topo, lr, n = T.ring(8), 0.1, 8
    faults = Faults(straggler=0.5)
    alg = dsgd(lr)
    step = jax.jit(build_step(quad, alg, topo, make_mixer(topo), 4, faults=faults))
    x = jax.random.normal(jax.random.PRNGKey(5), (n, 8))
    keys = jax.random.split(jax.random.PRNGKey(6), n)
    alg_key = jax.random.PRNGKey(8)
    grads = jax.vmap(jax.grad(quad.loss))(
        {"x": x}, jax.vmap(quad.sample, in_axes=(None, 0, 0, None, None))(quad.data, keys, jnp.arange(n), 3, 4))["x"]
    working = np.asarray(straggler_mask(injector(faults, topo).uniforms(alg_key, 3)[0], 0.5))
    assert working.any() and not working.all()
    state, _, aux = step(alg.init({"x": x}, None), jnp.int32(3), quad.data, keys, alg_key)
    g = np.where(working[:, None], np.asarray(grads), 0.0)
    expected = topo.weights @ (np.asarray(x, np.float64) - lr * g)
    np.testing.assert_allclose(np.asarray(state.params["x"]), expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux["straggler_steps"]), (~working).astype(np.float32))
    # no gossip (n = 1 style check on a single worker): a straggler does not move at all
    solo = simdl.tasks.random_quadratics(n_workers=1, dim=3, seed=0)
    res = simdl.simulate(solo, dsgd(0.1), T.ring(1), steps=5, eval_every=5, faults=Faults(straggler=1.0))
    np.testing.assert_array_equal(np.asarray(res.params["x"]), 0.0)
    assert res.history["straggler_steps"][-1] == 5


ALL = Faults(message_drop=0.2, link_failure=0.1, straggler=0.2)


def test_deterministic_per_seed_and_independent_of_chunk_size(quad):
    alg = simdl.algorithms.gradient_tracking(0.2)
    run = lambda seed, every: simdl.simulate(quad, alg, T.torus(2, 4), steps=42, eval_every=every, seed=seed,
                                             faults=ALL)
    a, b, c = run(1, 7), run(1, 14), run(0, 14)
    np.testing.assert_array_equal(np.asarray(a.params["x"]), np.asarray(b.params["x"]))
    np.testing.assert_array_equal(a.history["messages_lost"][1::2], b.history["messages_lost"])
    np.testing.assert_array_equal(a.history["straggler_steps"][1::2], b.history["straggler_steps"])
    assert not np.array_equal(b.history["messages_lost"], c.history["messages_lost"])
    assert not np.array_equal(np.asarray(b.params["x"]), np.asarray(c.params["x"]))
    assert a.info["faults"] == ALL._asdict()


def test_dense_path_for_high_degree_graphs(quad):
    topo = T.complete(8)
    g = faulty_gossip(topo, Faults(message_drop=0.3))
    assert g.dense
    alive_f, mix_f, _, _ = _jitted(g)
    key = jax.random.PRNGKey(0)
    np.testing.assert_allclose(np.asarray(mix_f(key, 0)), _numpy_w(topo, np.asarray(alive_f(key, 0)), 0), atol=1e-6)
    res = simdl.simulate(quad, dsgd(0.3), topo, steps=10, eval_every=10, faults=Faults(link_failure=0.3))
    assert res.diverged_at is None and res.history["messages_lost"][-1] > 0


@pytest.mark.parametrize("name,topo,needle", [
    ("relaysgd", T.chain(8), "drop_prob"),
    ("sgp", T.one_peer_exponential(8), "rounds=1"),
    ("allreduce", T.complete(8), "averages exactly"),
    ("local_sgd", T.complete(8), "ctx.mix"),
])
def test_algorithms_without_ctx_mix_are_refused(quad, name, topo, needle):
    alg = simdl.algorithms.get(name, learning_rate=0.1)
    if name == "sgp":  # one round per step mixes via ctx.mix; two rounds on a time-varying graph do not
        alg = simdl.algorithms.sgp(0.1, rounds=2)
    with pytest.raises(ValueError, match=needle):
        simdl.simulate(quad, alg, topo, steps=2, faults={"message_drop": 0.1})
    with pytest.raises(ValueError, match="link_failure"):
        simdl.faults.check_algorithm(Faults(link_failure=0.1), alg, topo, quad)
    # stragglers work with every algorithm
    res = simdl.simulate(quad, alg, topo, steps=4, eval_every=4, faults={"straggler": 0.5})
    assert "straggler_steps" in res.history


def test_sgp_message_drops_follow_the_reference_push_sum(quad):
    """SGP on the one-peer exponential graph with drops (lost='renormalize'): a worker whose message was lost keeps
    its model, else it averages ½/½ (the authors' ``push_sum`` with simulated drops); the push-sum weight stays 1.
    Refused with lost='self' or link failures."""
    topo, n = T.one_peer_exponential(8), 8
    faults = Faults(message_drop=0.5, straggler=1.0)  # stragglers: zero gradients, so the step is the gossip only
    alg = simdl.algorithms.sgp(0.1, momentum=0.0)
    simdl.faults.check_algorithm(faults, alg, topo, quad)
    step = jax.jit(build_step(quad, alg, topo, make_mixer(topo), 4, faults=faults))
    inj = injector(faults, topo)
    alive_f = jax.jit(lambda k, t: inj.gossip.alive(inj.uniforms(k, t)[1], t))
    x = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    ctx0 = simdl.algorithms.Context(jnp.int32(0), jax.random.PRNGKey(0), topo, lambda tr: tr,
                                    np.asarray(quad.worker_weights))
    state = alg.init({"x": jnp.asarray(x)}, ctx0)
    keys, alg_key = jax.random.split(jax.random.PRNGKey(2), n), jax.random.PRNGKey(9)
    ref = x.astype(np.float64)
    kept = 0
    for t in range(6):
        state, _, _ = step(state, jnp.int32(t), quad.data, keys, alg_key)
        alive = np.asarray(alive_f(alg_key, t))
        offset = 2 ** (t % 3)  # the authors' push_sum: receive from (rank - offset) mod n
        new = np.empty_like(ref)
        for i in range(n):
            got = alive[i, 1]
            new[i] = 0.5 * ref[i] + 0.5 * ref[(i - offset) % n] if got else ref[i]
            kept += not got
        ref = new
        np.testing.assert_allclose(np.asarray(state.weight), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(alg.params(state)["x"]), ref, atol=1e-5)
    assert kept > 0
    for bad in (Faults(message_drop=0.5, lost="self"), Faults(link_failure=0.2)):
        with pytest.raises(ValueError, match="push-sum"):
            simdl.faults.check_algorithm(bad, alg, topo, quad)


def test_lost_option_values_and_config():
    assert as_faults({"message_drop": 0.1}).lost == "renormalize"
    assert as_faults({"message_drop": 0.1, "lost": "self"}).lost == "self"
    f = simdl.faults.from_config({"message_drop": 0.2, "message_lost": "self", "steps": 3})
    assert f == Faults(message_drop=0.2, lost="self")
    assert simdl.faults.from_config({"message_drop": 0.2}).lost == "renormalize"
    for bad in ("Self", "mean", 1, None):
        with pytest.raises(ValueError, match=r"lost .* must be one of \('renormalize', 'self'\), got") as err:
            as_faults({"message_drop": 0.1, "lost": bad})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="lost"):
        simdl.faults.from_config({"message_lost": "bogus"})  # checked even when every probability is 0
    with pytest.raises(ValueError, match="lost"):
        as_faults(Faults(link_failure=0.1, lost="keep"))


@pytest.mark.parametrize("spec,needle", [
    ({"message_drop": 1.5}, "message_drop"), ({"straggler": -0.1}, "straggler"), ({"link_failure": "x"}, "link"),
    ({"drop": 0.1}, "unknown fault key"), ("0.1", "faults must be"), ({"straggler": float("nan")}, "straggler"),
])
def test_bad_fault_specs(quad, spec, needle):
    with pytest.raises(ValueError, match=needle):
        simdl.simulate(quad, dsgd(0.1), T.ring(8), steps=2, faults=spec)


def test_batched_runs_draw_each_seeds_faults(quad):
    from simdl.runtime import simulate_batch

    fn = lambda hp: dsgd(lambda t: hp["learning_rate"])
    hps = [{"learning_rate": 0.2}, {"learning_rate": 0.3}]
    res = simulate_batch([quad, quad], fn, hps, T.ring(8), steps=20, eval_every=10, seeds=[0, 1], faults=ALL)
    one = simdl.simulate(quad, dsgd(0.3), T.ring(8), steps=20, eval_every=10, seed=1, faults=ALL)
    np.testing.assert_allclose(np.asarray(res[1].params["x"]), np.asarray(one.params["x"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(res[1].history["messages_lost"], one.history["messages_lost"])
    assert not np.array_equal(res[0].history["messages_lost"], res[1].history["messages_lost"])
