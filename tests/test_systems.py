"""The system model and the simulated clock (simdl.systems): exact cases, a Python event loop on random graphs,
chunking independence, batched runs, configs and sweeps, and bad input."""

import heapq
import json
import sys

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

import simdl
from simdl.systems import SystemModel, build_clock, from_config, lognormal, slowdowns
from simdl.topologies.base import build


def quad(n=8, dim=4):
    return simdl.tasks.random_quadratics(n_workers=n, dim=dim, seed=0)


def alg(name, **kw):
    return simdl.algorithms.get(name, learning_rate=0.05, **kw)


# --------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize("name,topo", [("dsgd", "ring"), ("allreduce", "ring"), ("relaysgd", "chain"),
                                       ("local_sgd", "ring"), ("gradient_tracking", "ring")])
def test_unit_compute_free_links_counts_steps(name, topo):
    n = 8
    r = simdl.simulate(quad(n), alg(name), simdl.topologies.get(topo, n), steps=30, batch_size=1, eval_every=7,
                       system=SystemModel(compute_time=1.0, latency=0.0, bandwidth=float("inf")))
    np.testing.assert_array_equal(r.history["sim_time_s"], r.history["step"].astype(float))
    assert r.info["system"]["bandwidth"] == "inf"


def test_one_slow_worker_allreduce_and_dsgd_run_at_its_pace():
    n = 8
    ct = np.ones(n)
    ct[3] = 2.0
    system = SystemModel(compute_time=ct)
    steps = 40
    ar = simdl.simulate(quad(n), alg("allreduce"), simdl.topologies.ring(n), steps=steps, batch_size=1,
                        eval_every=1, system=system)
    np.testing.assert_array_equal(np.diff(ar.history["sim_time_s"], prepend=0.0), 2.0)
    ds = simdl.simulate(quad(n), alg("dsgd"), simdl.topologies.ring(n), steps=steps, batch_size=1, eval_every=1,
                        system=system)
    assert ds.history["sim_time_s"][-1] == 2.0 * steps  # the slow worker is the latest one
    # every worker is paced at 2 s/step once the delay has travelled around the ring (n/2 hops)
    clock = build_clock(system, simdl.topologies.ring(n), "dsgd")
    times = clock.init()
    sent = jnp.full((n,), 8.0)
    ready = []
    for t in range(steps):
        times = clock.step(times, sent, t, jax.random.PRNGKey(0))
        ready.append(float(times.base) + float(times.carry) + np.asarray(times.lead))
    ready = np.asarray(ready)
    np.testing.assert_allclose(np.diff(ready[n // 2:], axis=0), 2.0, rtol=0, atol=1e-6)
    assert np.diff(ready[:3], axis=0).min() == 1.0  # the transient: the slow worker's far neighbours run at 1 s


def test_barrier_ring_allreduce_time():
    n, lat, bw = 4, 0.01, 1e6
    task = quad(n, dim=5)  # one model = 5 float32 = 20 bytes
    r = simdl.simulate(task, alg("allreduce"), simdl.topologies.ring(n), steps=10, batch_size=1, eval_every=5,
                       system=SystemModel(compute_time=0.5, latency=lat, bandwidth=bw))
    step_time = 0.5 + 2 * (n - 1) / n * 20 / bw + 2 * (n - 1) * lat
    np.testing.assert_allclose(r.history["sim_time_s"], [5 * step_time, 10 * step_time], rtol=1e-6)
    # local SGD: only the averaging rounds (every 4th step) communicate
    r = simdl.simulate(task, alg("local_sgd", local_steps=4), simdl.topologies.ring(n), steps=8, batch_size=1,
                       eval_every=4, system=SystemModel(compute_time=0.5, latency=lat, bandwidth=bw))
    np.testing.assert_allclose(r.history["sim_time_s"], [4 * 0.5 + (step_time - 0.5), 2 * (4 * 0.5 + step_time - 0.5)],
                               rtol=1e-6)


# --------------------------------------------------------------------------- against a Python event loop


def event_loop(n, edges, compute, lat, bw, sent, shared=False):
    """Discrete-event simulation: ``compute`` (steps, n) seconds; ``sent`` (n,) bytes per step; messages on the
    directed ``edges`` (sender, receiver). Returns (steps, n) start times of steps 1..steps."""
    steps = compute.shape[0]
    outs = {i: [d for s, d in edges if s == i] for i in range(n)}
    need = {(j, k): 1 + sum(1 for _, d in edges if d == j) for j in range(n) for k in range(steps)}
    start = np.zeros((steps, n))
    heap = [(compute[0, i], 0, i, 0) for i in range(n)]  # (time, kind 0=computed/1=arrived, worker, step)
    heapq.heapify(heap)
    while heap:
        t, kind, i, k = heapq.heappop(heap)
        if kind == 0:
            for j in outs[i]:
                size = sent[i] if shared else sent[i] / len(outs[i])
                heapq.heappush(heap, (t + lat[i, j] + size / bw[i, j], 1, j, k))
        need[(i, k)] -= 1
        if need[(i, k)] == 0:  # events come in time order: the last one needed is the latest
            start[k, i] = t
            if k + 1 < steps:
                heapq.heappush(heap, (t + compute[k + 1, i], 0, i, k + 1))
    return start


def clock_run(clock, sent, steps, key):
    def body(times, t):
        times = clock.step(times, sent, t, key)
        return times, times.base.astype(jnp.float32) + times.carry + times.lead

    _, ready = jax.jit(lambda: jax.lax.scan(body, clock.init(), jnp.arange(steps)))()
    return np.asarray(ready, np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shared", [False, True])
def test_max_plus_matches_event_loop_on_random_graphs(seed, shared):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 12))
    g = nx.erdos_renyi_graph(n, 0.4, seed=seed)
    topo = build(f"er{seed}", g, allow_disconnected=True)
    lat = rng.uniform(0.0, 0.5, (n, n))
    bw = rng.uniform(10.0, 100.0, (n, n)) if not shared else np.repeat(rng.uniform(10.0, 100.0, n)[:, None], n, 1)
    compute = rng.uniform(0.5, 2.0, n)
    system = SystemModel(compute_time=compute, latency=lat, bandwidth=bw if not shared else bw[:, 0],
                         shared_uplink=shared)
    clock = build_clock(system, topo, "dsgd")
    outdeg = topo.out_degree()
    sent = outdeg * 40.0
    steps = 25
    got = clock_run(clock, jnp.asarray(sent, jnp.float32), steps, jax.random.PRNGKey(0))
    edges = [(int(s), int(d)) for d, s in zip(*np.nonzero(topo.weights), strict=True) if s != d]  # W[receiver, sender]
    want = event_loop(n, edges, np.tile(compute, (steps, 1)), lat, bw, sent, shared)
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_event_loop_with_per_step_draws_and_graph_attributes():
    rng = np.random.default_rng(5)
    topo = simdl.topologies.erdos_renyi(9, 0.35, seed=3)
    for u, v in topo.graph.edges:
        topo.graph.edges[u, v]["lat"] = float(rng.uniform(0, 0.2))
        topo.graph.edges[u, v]["bw"] = float(rng.uniform(5, 50))
    lat = np.zeros((9, 9))
    bw = np.ones((9, 9))
    for u, v, d in topo.graph.edges(data=True):
        lat[u, v] = lat[v, u] = d["lat"]
        bw[u, v] = bw[v, u] = d["bw"]
    system = SystemModel(compute_time=slowdowns(0.2, 4.0, base=lognormal(1.0, 0.3)), latency="lat", bandwidth="bw")
    clock = build_clock(system, topo, "dsgd")
    key = jax.random.PRNGKey(7)
    steps = 20
    compute = np.stack([np.asarray(clock.compute_times(key, t), np.float64) for t in range(steps)])
    assert compute.min() > 0 and (compute > 2.5).any()  # some slowdowns happened
    sent = topo.out_degree() * 12.0
    got = clock_run(clock, jnp.asarray(sent, jnp.float32), steps, key)
    edges = [(int(s), int(d)) for d, s in zip(*np.nonzero(topo.weights), strict=True) if s != d]
    np.testing.assert_allclose(got, event_loop(9, edges, compute, lat, bw, sent), rtol=2e-6)


def test_time_varying_topology_uses_each_steps_edges():
    n, steps = 8, 9
    topo = simdl.topologies.one_peer_exponential(n)
    rng = np.random.default_rng(1)
    compute, lat = rng.uniform(0.5, 1.5, n), rng.uniform(0.0, 1.0, (n, n))
    clock = build_clock(SystemModel(compute_time=compute, latency=lat), topo, "dsgd")
    got = clock_run(clock, jnp.full((n,), 4.0), steps, jax.random.PRNGKey(0))
    start, ready = np.zeros(n), []
    for k in range(steps):  # step by step: the phase's edges only
        finish = start + compute
        w = topo.weights_at(k)
        start = np.array([max([finish[j]] + [finish[i] + lat[i, j] for i in range(n) if i != j and w[j, i]])
                          for j in range(n)])
        ready.append(start)
    np.testing.assert_allclose(got, np.asarray(ready), rtol=2e-6)


def test_simulate_matches_event_loop_end_to_end():
    rng = np.random.default_rng(11)
    n, dim = 7, 6
    topo = simdl.topologies.erdos_renyi(n, 0.5, seed=2)
    lat, bw, compute = rng.uniform(0, 0.3, (n, n)), rng.uniform(20, 200, (n, n)), rng.uniform(0.5, 1.5, n)
    r = simdl.simulate(quad(n, dim), alg("dsgd"), topo, steps=12, batch_size=1, eval_every=4,
                       system=SystemModel(compute_time=compute, latency=lat, bandwidth=bw))
    edges = [(int(s), int(d)) for d, s in zip(*np.nonzero(topo.weights), strict=True) if s != d]
    want = event_loop(n, edges, np.tile(compute, (12, 1)), lat, bw, topo.out_degree() * 4.0 * dim)
    np.testing.assert_allclose(r.history["sim_time_s"], want[[3, 7, 11]].max(axis=1), rtol=2e-6)


# --------------------------------------------------------------------------- chunking, batching, checkpoints


def test_independent_of_chunking_and_batched_matches_single():
    n = 8
    system = SystemModel(compute_time=slowdowns(0.1, 5.0, base=lognormal(1.0, 0.5)), latency=0.05, bandwidth=1e3)
    topo = simdl.topologies.ring(n)
    a = simdl.simulate(quad(n), alg("dsgd"), topo, steps=24, batch_size=1, eval_every=4, seed=3, system=system)
    b = simdl.simulate(quad(n), alg("dsgd"), topo, steps=24, batch_size=1, eval_every=12, seed=3, system=system)
    np.testing.assert_array_equal(a.history["sim_time_s"][2::3], b.history["sim_time_s"])
    runs = simdl.simulate_batch([quad(n)] * 2, lambda hp: alg("dsgd"), [{}, {}], topo, steps=24, batch_size=1,
                                eval_every=12, seeds=[3, 4], system=system)
    np.testing.assert_allclose(runs[0].history["sim_time_s"], b.history["sim_time_s"], rtol=1e-6)
    assert not np.allclose(runs[1].history["sim_time_s"], b.history["sim_time_s"])  # its own draws
    fixed = system._replace(seed=9)
    runs = simdl.simulate_batch([quad(n)] * 2, lambda hp: alg("dsgd"), [{}, {}], topo, steps=24, batch_size=1,
                                eval_every=12, seeds=[3, 4], system=fixed)
    np.testing.assert_array_equal(runs[0].history["sim_time_s"], runs[1].history["sim_time_s"])
    assert runs[0].info["system"]["seed"] == 9


def test_resume_keeps_the_clock(tmp_path):
    n = 4
    system = SystemModel(compute_time=lognormal(1.0, 0.5))
    kw = dict(batch_size=1, eval_every=5, system=system)
    full = simdl.simulate(quad(n), alg("dsgd"), simdl.topologies.ring(n), steps=10, **kw)
    simdl.simulate(quad(n), alg("dsgd"), simdl.topologies.ring(n), steps=5, checkpoint_dir=tmp_path, **kw)
    res = simdl.simulate(quad(n), alg("dsgd"), simdl.topologies.ring(n), steps=10, checkpoint_dir=tmp_path,
                         resume=True, **kw)
    np.testing.assert_array_equal(res.history["sim_time_s"], full.history["sim_time_s"])
    with pytest.raises(ValueError, match="system"):
        simdl.simulate(quad(n), alg("dsgd"), simdl.topologies.ring(n), steps=10, checkpoint_dir=tmp_path,
                       resume=True, batch_size=1, eval_every=5, system=SystemModel(compute_time=2.0))


def test_no_system_no_column():
    r = simdl.simulate(quad(4), alg("dsgd"), simdl.topologies.ring(4), steps=4, batch_size=1, eval_every=2)
    assert "sim_time_s" not in r.history and "system" not in r.info


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,match", [
    ({"compute_time": -1.0}, "compute_time must be finite and >= 0"),
    ({"compute_time": float("nan")}, "compute_time must be finite"),
    ({"compute_time": np.ones(3)}, r"shape \(4,\)"),
    ({"latency": float("nan")}, "latency must be seconds"),
    ({"latency": -0.1}, "latency must be seconds"),
    ({"latency": np.zeros((3, 3))}, r"latency must be .*shape \(3, 3\)"),
    ({"bandwidth": 0.0}, "bandwidth must be bytes/s, > 0"),
    ({"bandwidth": -5.0}, "bandwidth must be bytes/s"),
    ({"bandwidth": np.ones(4)}, r"bandwidth must be .*shape \(4,\)"),
    ({"bandwidth": "bw"}, "has no 'bw' attribute"),
    ({"seed": -1}, "seed must be None or an integer"),
    ({"shared_uplink": "yes"}, "shared_uplink must be"),
])
def test_bad_input_is_refused_before_compilation(kw, match, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before validation")

    monkeypatch.setattr(sys.modules["simdl.runtime.loop"], "build_chunk", no_compile)
    with pytest.raises(ValueError, match=match) as err:
        simdl.simulate(quad(4), alg("dsgd"), simdl.topologies.ring(4), steps=4, batch_size=1, system=SystemModel(**kw))
    assert "\n" not in str(err.value)


def test_bad_distributions_and_unknown_algorithm():
    with pytest.raises(ValueError, match="lognormal sigma"):
        lognormal(1.0, -1.0)
    with pytest.raises(ValueError, match="lognormal mean"):
        lognormal(0.0, 1.0)
    with pytest.raises(ValueError, match="slowdowns p"):
        slowdowns(1.5, 2.0)
    with pytest.raises(ValueError, match="slowdowns factor"):
        slowdowns(0.1, float("inf"))
    fancy = alg("dsgd")._replace(name="my_algorithm")
    with pytest.raises(ValueError, match="my_algorithm.*simdl.systems.PATTERNS"):
        build_clock(SystemModel(), simdl.topologies.ring(4), fancy)


# --------------------------------------------------------------------------- configs and sweeps


def test_from_config():
    assert from_config(None) is None
    s = from_config({"compute_time": {"distribution": "slowdowns", "p": 0.1, "factor": 3.0,
                                      "base": {"distribution": "lognormal", "mean": 1.0, "sigma": 0.2}},
                     "latency": 0.001, "bandwidth": [1e9, 1e9, 2e9, 1e9], "shared_uplink": True, "seed": 1})
    assert s.compute_time.base.sigma == 0.2 and s.bandwidth.shape == (4,) and s.shared_uplink
    build_clock(s, simdl.topologies.ring(4), "dsgd")
    with pytest.raises(ValueError, match=r"unknown \[system\] key"):
        from_config({"latncy": 1.0})
    with pytest.raises(ValueError, match="distribution"):
        from_config({"compute_time": {"distribution": "pareto"}})
    with pytest.raises(ValueError, match="missing"):
        from_config({"compute_time": {"distribution": "lognormal", "mean": 1.0}})


SWEEP = """
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
[train]
steps = 6
eval_every = 3
batch_size = 1
[system]
compute_time = [1.0, 1.0, 2.0, 1.0]
latency = 0.0
bandwidth = inf
[[runs]]
algorithm = "allreduce"
learning_rate = 0.1
[sweep]
"train.seed" = [0, 1]
"""


def test_sweep_uses_the_system_section(tmp_path, capsys):
    from simdl.cli import main

    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    recs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert len(recs) == 2
    for rec in recs:
        assert rec["history"]["sim_time_s"] == [6.0, 12.0] and rec["system"]["latency"] == 0.0
    bad = tmp_path / "b.toml"
    bad.write_text(SWEEP.replace("latency = 0.0", "latency = -1.0"))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "latency must be seconds" in capsys.readouterr().err


def test_simdl_run_uses_the_system_section(tmp_path):
    """``simdl run`` with a ``[system]`` table: constant compute 1 s, free links → sim_time_s = step, per seed."""
    import json

    from simdl.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('[task]\nkind = "random_quadratics"\nn_workers = 4\ndim = 3\n[train]\nsteps = 6\neval_every = 3\n'
                   'seeds = [0, 1]\n[system]\ncompute_time = 1.0\n[[runs]]\nalgorithm = "dsgd"\nlearning_rate = 0.1\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    (run,) = json.loads((tmp_path / "o" / "results.json").read_text())["runs"]
    assert run["history"]["sim_time_s"] == [3.0, 6.0]
    assert all(sr["history"]["sim_time_s"] == [3.0, 6.0] for sr in run["seed_runs"])
