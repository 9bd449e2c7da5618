"""Partial participation (simdl.participation): samplers, the runner's frozen workers and renormalised gossip, byte
and clock accounting, bad input, and the [participation] config section."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simdl
from simdl import participation as P
from simdl.algorithms import Algorithm, dsgd
from simdl.mixing import make_mixer
from simdl.runtime import build_step, init_state, per_worker_grads
from simdl.systems import Clock, SystemModel

T = simdl.topologies


@pytest.fixture(scope="module")
def quad():
    return simdl.tasks.random_quadratics(n_workers=4, dim=4, zeta2=1.0, r0=10.0, noise=0.1, seed=1)


@pytest.fixture(scope="module")
def baseline(quad):
    return simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, batch_size=1, eval_every=3)


def _same_history(a, b):
    assert set(b) == set(a) | {"active_steps"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------- equal to no participation


def test_client_sampling_of_all_workers_equals_no_sampling(quad, baseline):
    r = simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, batch_size=1, eval_every=3,
                       participation=P.client_sampling(4))
    _same_history(baseline.history, r.history)
    np.testing.assert_array_equal(r.history["active_steps"], [3.0, 6.0])
    assert r.info["participation"] == {"kind": "client_sampling", "k": 4, "weighted": False}


def test_churn_without_leaving_changes_nothing(quad, baseline):
    r = simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, batch_size=1, eval_every=3,
                       participation=P.markov(p_leave=0.0, p_return=0.3))
    _same_history(baseline.history, r.history)
    assert r.info["participation"]["kind"] == "markov"


# --------------------------------------------------------------------------- samplers


def _masks(sampler, rounds, key=jax.random.PRNGKey(3)):
    def body(state, r):
        state, m = sampler.mask(state, key, r)
        return state, m

    _, masks = jax.jit(lambda: jax.lax.scan(body, sampler.init(), jnp.arange(rounds, dtype=jnp.int32)))()
    return np.asarray(masks)


def test_client_sampling_draws_exactly_k_distinct_workers_per_round_deterministically():
    s = P.sampler(P.client_sampling(3), 8)
    m = _masks(s, 50)
    assert m.shape == (50, 8) and m.dtype == bool
    assert (m.sum(axis=1) == 3).all()
    np.testing.assert_array_equal(m, _masks(s, 50))  # deterministic per key
    assert len({tuple(row) for row in m}) > 10  # different across rounds
    assert not np.array_equal(m, _masks(s, 50, jax.random.PRNGKey(4)))  # and across seeds
    assert abs(m.mean() - 3 / 8) < 0.08 and m.mean(axis=0).min() > 0.1  # every worker gets sampled


def test_weighted_client_sampling_follows_the_weights():
    w = np.array([0.4, 0.3, 0.2, 0.1])
    m = _masks(P.sampler(P.client_sampling(1, weighted=True), 4, w), 4000)
    assert (m.sum(axis=1) == 1).all()
    np.testing.assert_allclose(m.mean(axis=0), w, atol=0.03)
    m2 = _masks(P.sampler(P.client_sampling(2, weighted=True), 4, w), 2000)
    assert (m2.sum(axis=1) == 2).all()
    freq = m2.mean(axis=0)
    assert freq[0] > freq[1] > freq[2] > freq[3]  # without replacement: inclusion ordered like the weights


def test_markov_churn_carries_its_chain():
    m = _masks(P.sampler(P.markov(0.2, 0.6), 64), 400)
    assert m[0].all()  # round 0: everyone on
    on = m[:-1]
    left = (on & ~m[1:]).sum() / on.sum()
    back = (~on & m[1:]).sum() / (~on).sum()
    assert abs(left - 0.2) < 0.03 and abs(back - 0.6) < 0.05
    assert abs(m[100:].mean() - 0.6 / 0.8) < 0.03  # stationary fraction p_return / (p_leave + p_return)
    same = P.sampler(P.markov(0.2, 0.6), 64)
    s, _ = same.mask(same.init(), jax.random.PRNGKey(3), 0)
    assert np.array_equal(np.asarray(same.mask(s, jax.random.PRNGKey(3), 0)[1]), m[0])  # same round: no move


def test_runner_draws_one_mask_per_round_and_passes_compute_times(quad):
    n, steps = 4, 9
    seen = {}

    def init(p, ctx):
        return p, jnp.zeros((n, steps), bool), jnp.zeros((n, steps), jnp.float32)

    def step(state, grads, ctx):
        x, log, ct = state
        seen["compute_time"] = ctx.compute_time
        ct = ct if ctx.compute_time is None else ct.at[:, ctx.step].set(ctx.compute_time)
        active = jnp.ones((n,), bool) if ctx.active is None else ctx.active
        return (x, log.at[:, ctx.step].set(active), ct), {"lr": jnp.float32(0.0),
                                                               "bytes_sent": jnp.zeros((n,), jnp.float32)}

    alg = Algorithm("recorder", init, step, lambda s: s[0], lambda s: s[0], {}, frozenset(), round_length=3,
                    capabilities=frozenset({"participation"}))
    PATTERNS = sys.modules["simdl.systems"].PATTERNS
    PATTERNS["recorder"] = "server"
    try:
        r = simdl.simulate(quad, alg, T.ring(4), steps=steps, batch_size=1, eval_every=3,
                           participation=P.client_sampling(2), system=SystemModel(compute_time=[1.0, 2.0, 3.0, 4.0]))
    finally:
        del PATTERNS["recorder"]
    log, ct = np.asarray(r.state[1]), np.asarray(r.state[2])
    assert (log.sum(axis=0) == 2).all()
    for rnd in range(3):
        block = log[:, 3 * rnd:3 * rnd + 3]
        assert (block == block[:, :1]).all()  # constant within a round of round_length steps
    np.testing.assert_array_equal(ct, np.repeat([[1.0], [2.0], [3.0], [4.0]], steps, axis=1))
    # server rounds: a round lasts as long as its slowest sampled client (free links): 3 local steps each
    c = np.array([1.0, 2.0, 3.0, 4.0])
    expect = sum(3 * c[log[:, 3 * k]].max() for k in range(3))
    assert r.history["sim_time_s"][-1] == pytest.approx(expect)
    np.testing.assert_array_equal(r.history["active_steps"], [1.5, 3.0, 4.5])
    seen.clear()
    simdl.simulate(quad, alg, T.ring(4), steps=3, batch_size=1, eval_every=3)
    assert seen["compute_time"] is None  # no system model, no compute times


# --------------------------------------------------------------------------- gossip over the active workers


def _renormalized(w, a):
    """Numpy transcription of W' (module docstring): rows/columns of inactive workers removed, active rows
    renormalised, inactive rows the identity."""
    n = len(a)
    out = np.eye(n)
    for i in range(n):
        if a[i]:
            row = w[i] * a
            out[i] = row / row.sum()
    return out


def test_one_dsgd_step_with_an_inactive_worker_matches_numpy(quad):
    topo = T.ring(4)
    n = 4
    lr = 0.1
    alg = dsgd(lr)
    mixer = make_mixer(topo, "auto")
    state, worker_keys, k_alg = init_state(quad, alg, topo, mixer, seed=0)
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(5), state.params["x"].shape))
    state = state._replace(params={"x": jnp.asarray(x0, jnp.float32)})
    active = jnp.array([True, True, False, True])
    step = jax.jit(build_step(quad, alg, topo, mixer, batch_size=1))
    new, loss, aux = step(state, jnp.int32(0), quad.data, worker_keys, k_alg, None, active)
    batch = jax.vmap(quad.sample, in_axes=(None, 0, 0, None, None))(quad.data, worker_keys, jnp.arange(n), 0, 1)
    losses, g = per_worker_grads(quad.loss)(state.params, batch)
    w = _renormalized(np.asarray(topo.weights_at(0), np.float64), np.asarray(active, float))
    expect = w @ (x0 - lr * np.asarray(g["x"], np.float64))
    expect[2] = x0[2]  # the inactive worker is frozen
    np.testing.assert_allclose(np.asarray(new.params["x"]), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(new.params["x"])[2], np.asarray(state.params["x"])[2])
    # bytes: worker 2 sends nothing; its neighbours 1 and 3 send to one of their two neighbours only
    full = step(state, jnp.int32(0), quad.data, worker_keys, k_alg, None, jnp.ones(n, bool))[2]["bytes_sent"]
    np.testing.assert_allclose(np.asarray(aux["bytes_sent"]), np.asarray(full) * [1.0, 0.5, 0.0, 0.5])
    assert float(loss) == pytest.approx(float(np.mean(np.asarray(losses)[[0, 1, 3]])))
    np.testing.assert_array_equal(np.asarray(aux["active_steps"]), [1.0, 1.0, 0.0, 1.0])


def test_renormalized_mix_and_difference_compose_with_faulty_w():
    from simdl.faults import Faults, faulty_gossip

    topo = T.torus(3, 3)
    n = topo.n
    g = faulty_gossip(topo, Faults(message_drop=0.4))
    u = jax.random.uniform(jax.random.PRNGKey(1), (g.n_uniforms,))
    wf = np.asarray(g.matrix(u, 0), np.float64)  # the step's faulty W'_t (drops renormalised)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (n, 3)), np.float32)
    a = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    mix = lambda tree: g(tree, 0, u)  # noqa: E731
    diff = lambda tree, scale=1.0: g.difference(tree, 0, u, scale)  # noqa: E731
    w2 = _renormalized(wf, a.astype(float))
    got = np.asarray(P.renormalized_mix(mix, jnp.asarray(a))(jnp.asarray(x)))
    np.testing.assert_allclose(got, w2 @ x, rtol=1e-5, atol=1e-5)
    got_d = np.asarray(P.renormalized_difference(mix, diff, jnp.asarray(a))(jnp.asarray(x), 0.5))
    np.testing.assert_allclose(got_d, 0.5 * (w2 - np.eye(n)) @ x, rtol=1e-5, atol=1e-5)
    everyone = jnp.ones(n, bool)
    np.testing.assert_array_equal(np.asarray(P.renormalized_mix(mix, everyone)(jnp.asarray(x))),
                                  np.asarray(mix(jnp.asarray(x))))


# --------------------------------------------------------------------------- the clock


def test_clock_does_not_wait_for_inactive_workers():
    """A Python event loop on a ring of 5 with per-link latencies: inactive workers take no time, send nothing and
    receive nothing; active receivers wait only for active senders (message size split over active receivers)."""
    n = 5
    topo = T.ring(n)
    rng = np.random.default_rng(0)
    lat = rng.uniform(0.1, 1.0, (n, n))
    compute = np.array([1.0, 2.0, 100.0, 1.5, 0.5])  # worker 2 would be the straggler, but it is inactive
    bw = 50.0
    clock = Clock(SystemModel(compute_time=compute, latency=lat, bandwidth=bw), topo, "dsgd")
    masks = [np.array([1, 1, 0, 1, 1], bool), np.array([1, 0, 0, 1, 1], bool), np.array([1, 1, 1, 1, 1], bool)]
    sent = np.array([100.0, 100.0, 100.0, 100.0, 100.0])
    links = P.out_neighbors(topo)[0]  # [sender, receiver]
    ready = np.zeros(n)
    state = clock.init()
    for t, a in enumerate(masks):
        frac = a * (links.astype(float) @ a) / links.sum(axis=1)
        b = sent * frac  # what the runner reports
        finish = ready + np.where(a, compute, 0.0)
        new = finish.copy()
        for j in range(n):
            if not a[j]:
                continue
            for i in np.flatnonzero(links[:, j]):
                if a[i] and b[i] > 0:
                    size = b[i] / (links[i] & a).sum()
                    new[j] = max(new[j], finish[i] + lat[i, j] + size / bw)
        ready = new
        state = clock.step(state, jnp.asarray(b, jnp.float32), t, jax.random.PRNGKey(0),
                           active=jnp.asarray(a))
        got = float(state.base) + float(state.carry) + np.asarray(state.lead, np.float64)
        np.testing.assert_allclose(got, ready, rtol=1e-5)
        if t == 1:
            assert ready.max() < 100.0  # nobody waited for worker 2's 100 s while it was inactive
    assert ready[[1, 3]].min() > 100.0  # once it is active (last step), its neighbours wait for it
    assert clock.elapsed(state) == pytest.approx(ready.max(), rel=1e-5)


def test_server_round_and_async_clocks():
    c = Clock(SystemModel(compute_time=[1.0, 2.0, 3.0, 4.0], latency=0.5, bandwidth=100.0), T.ring(4), "fedavg",
              round_length=2)
    a = jnp.array([True, False, True, True])
    s = c.step(c.init(), jnp.zeros(4), 0, jax.random.PRNGKey(0), active=a)
    np.testing.assert_allclose(np.asarray(s.lead) + float(s.base), [1.0, 0.0, 3.0, 4.0])  # local steps: own pace
    s = c.step(s, jnp.array([100.0, 0.0, 100.0, 100.0]), 1, jax.random.PRNGKey(0), active=a)
    # slowest sampled client 8 s + upload 0.5 + 1 = 9.5; every worker downloads: + 0.5 + 1
    np.testing.assert_allclose(np.asarray(s.lead) + float(s.base), [11.0] * 4)
    ac = Clock(SystemModel(), T.ring(4), "ad_psgd")
    s = ac.init()
    for t in range(4):
        s = ac.step(s, jnp.zeros(4), t, jax.random.PRNGKey(0), tick=jnp.float32(0.25))
    assert ac.elapsed(s) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tick_s"):
        ac.step(s, jnp.zeros(4), 0, jax.random.PRNGKey(0))


# --------------------------------------------------------------------------- determinism, batches


def test_masks_independent_of_chunking_and_equal_in_a_batch(quad):
    spec = P.markov(0.4, 0.5)
    a = simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, batch_size=1, eval_every=2, participation=spec, seed=3)
    b = simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, batch_size=1, eval_every=3, participation=spec, seed=3)
    np.testing.assert_array_equal(a.history["active_steps"][[2]], b.history["active_steps"][[1]])
    np.testing.assert_allclose(np.asarray(a.params["x"]), np.asarray(b.params["x"]), rtol=1e-6)
    assert a.history["active_steps"][-1] < 6.0  # somebody left
    (c,) = simdl.simulate_batch([quad], lambda hp: dsgd(0.05), [{}], T.ring(4), steps=6, batch_size=1,
                                seeds=[3], eval_every=3, participation=spec)
    np.testing.assert_allclose(c.history["active_steps"], b.history["active_steps"])
    np.testing.assert_allclose(np.asarray(c.params["x"]), np.asarray(b.params["x"]), rtol=1e-5, atol=1e-6)


def test_resume_keeps_the_churn_chain_and_faults_compose(quad, tmp_path):
    kw = dict(batch_size=1, eval_every=3, participation=P.markov(0.5, 0.5), faults={"message_drop": 0.3},
              system=SystemModel(compute_time=1.0, latency=0.1))
    full = simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, **kw)
    simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=3, checkpoint_dir=tmp_path, **kw)
    res = simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, checkpoint_dir=tmp_path, resume=True, **kw)
    for k in ("loss", "active_steps", "sim_time_s", "bytes_per_worker", "messages_lost"):
        np.testing.assert_array_equal(res.history[k], full.history[k], err_msg=k)
    assert 0 < full.history["active_steps"][-1] < 6
    with pytest.raises(ValueError, match="participation"):  # a different spec is a different run
        simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, checkpoint_dir=tmp_path, resume=True,
                       **{**kw, "participation": P.markov(0.5, 0.4)})


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("spec,match", [
    (P.ClientSampling(5), r"client_sampling k=5 is larger than the number of workers n=4"),
    (P.ClientSampling(0), r"client_sampling k must be an integer >= 1 \(workers per round\), got 0"),
    ({"kind": "markov", "p_leave": 1.5, "p_return": 0.1}, r"p_leave must be a probability in \[0, 1\], got 1.5"),
    (P.Markov(0.1, -0.2), r"p_return must be a probability in \[0, 1\], got -0.2"),
    (P.Trace(np.ones((6, 3), bool)), r"trace has shape \(6, 3\); expected \(rounds, 4\)"),
    (P.Trace(np.ones((5, 4), bool)), r"trace has 5 rows but the run has 6 rounds"),
    (P.Trace(np.eye(4, dtype=bool)[[0, 1, 2, 3, 0, 1]] & np.array([[1], [1], [0], [1], [1], [1]], bool)),
     r"row 2 has no active worker"),
    ({"kind": "random"}, r"kind must be one of client_sampling, markov, trace, got 'random'"),
    ({"kind": "client_sampling", "k": 2, "p": 1}, r"unknown \['p'\]"),
])
def test_bad_participation_is_refused_before_compilation(quad, spec, match, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before validation")

    monkeypatch.setattr(sys.modules["simdl.runtime.loop"], "build_chunk", no_compile)
    with pytest.raises(ValueError, match=match) as err:
        simdl.simulate(quad, dsgd(0.05), T.ring(4), steps=6, batch_size=1, participation=spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,needle", [("local_sgd", "use fedavg for local SGD with client sampling"),
                                         ("allreduce", "averages over all workers exactly"),
                                         ("relaysgd", "tree relays")])
def test_algorithms_the_runner_cannot_freeze_are_refused(quad, name, needle, monkeypatch):
    monkeypatch.setattr(sys.modules["simdl.runtime.loop"], "build_chunk", lambda *a, **k: 1 / 0)
    alg = simdl.algorithms.ALGORITHMS[name](0.1)
    topo = T.chain(4) if name == "relaysgd" else T.ring(4)
    with pytest.raises(ValueError, match=needle) as err:
        simdl.simulate(quad, alg, topo, steps=4, batch_size=1, participation=P.client_sampling(2))
    assert "participation works with fedavg" in str(err.value) and "\n" not in str(err.value)


def test_trace_from_csv(tmp_path):
    f = tmp_path / "avail.csv"
    f.write_text("1,1,0,1\n0,1,1,1\n")
    t = P.trace(f)
    np.testing.assert_array_equal(t.mask, [[1, 1, 0, 1], [0, 1, 1, 1]])
    assert P.check_participation(t, 4, steps=4, round_length=2) is t
    np.testing.assert_array_equal(_masks(P.sampler(t, 4), 2), t.mask)
    f.write_text("1,1,0,1\n0,2,1,1\n")
    with pytest.raises(ValueError, match="line 2: '2', expected 0 or 1"):
        P.trace(f)


# --------------------------------------------------------------------------- config


CFG = ('[task]\nkind = "random_quadratics"\nn_workers = 4\ndim = 3\n[train]\nsteps = 4\neval_every = 2\n'
       '[participation]\nkind = "client_sampling"\nk = 2\n[[runs]]\nalgorithm = "dsgd"\nlearning_rate = 0.1\n')


@pytest.mark.parametrize("old,new,needle", [
    ("k = 2", "k = 9", "client_sampling k=9 is larger than the number of workers n=4"),
    ("k = 2", 'k = "2"', "participation.k: '2', expected an integer"),
    ("k = 2", "k = 2\nweighted = 1", "participation.weighted: 1, expected true or false"),
    ("k = 2", "k = 2\np_leave = 0.1", "participation.p_leave: not a key of kind 'client_sampling'"),
    ("k = 2", "k = 2\nspeed = 1", "participation.speed: unknown key"),
])
def test_cli_bad_participation_is_one_line_exit_2(tmp_path, capsys, old, new, needle):
    from simdl.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(CFG.replace(old, new))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simdl: error: ") and "\n" not in err and needle in err, err


def test_simdl_run_uses_the_participation_section(tmp_path):
    from simdl.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(CFG)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    (run,) = json.loads((tmp_path / "o" / "results.json").read_text())["runs"]
    assert run["history"]["active_steps"] == [1.0, 2.0]  # 2 of 4 workers each step


def test_sweep_over_participation_k(tmp_path, capsys):
    from simdl.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(CFG + '[sweep]\n"participation.k" = [1, 4]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    recs = sorted((json.loads(p.read_text()) for p in (out / "runs").glob("*.json")),
                  key=lambda r: r["participation"]["k"])
    assert [r["participation"]["k"] for r in recs] == [1, 4]
    assert [r["history"]["active_steps"] for r in recs] == [[0.5, 1.0], [2.0, 4.0]]
    bad = tmp_path / "b.toml"
    bad.write_text(CFG + '[sweep]\n"participation.k" = [1, 5]\n')
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o2"), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert "client_sampling k=5 is larger than the number of workers n=4" in err and "\n" not in err
