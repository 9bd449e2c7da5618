"""RelaySGD's ``fill="previous"`` and RelaySum/Mix (Vogels et al. 2021, arXiv 2110.04175;
docs/algorithms.md#relaysum-relaysgd-relaysum_grad), against a float64 numpy transcription of the authors' training
code (github.com/epfml/relaysgd: ``utils/communication.py`` ``RelayMechanism`` and ``algorithms.py``
``relaysum_model`` with ``relaysum_model_update_ref_state`` / ``relaysum_mix``), plus the properties they state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import simdl
from simdl.algorithms.base import Context
from simdl.algorithms.relay import MIX_FILLS, relaysgd, relaysum_grad, relaysum_mix
from simdl.mixing.relay import drop_mask, relay_plan

T = simdl.topologies


@pytest.fixture()
def x64():
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


# ------------------------------------------------------------------ numpy transcription of the reference code
class RefRelay:
    """One tree's ``RelayMechanism`` (non-overlapping, ``normalization_mode="world_size"``) for all workers at once.

    ``received[j][i]`` / ``counts[j][i]``: what worker j kept from neighbour i at the previous step (a dropped
    pair is deleted: neither used nor relayed)."""

    def __init__(self, tree, n, dim):
        self.tree, self.n = tree, n
        self.received = [{} for _ in range(n)]
        self.counts = [{} for _ in range(n)]
        self.dim = dim

    def step(self, sent, fill, keep):
        """``sent``: (n, d) each worker's ``relay.send(tensor)``; ``fill``: (n, d) each worker's ``initial_state``
        or None; ``keep(i, j)``: the pair ``i → j`` survives. Returns ``receive_average()`` of every worker."""
        tree, n = self.tree, self.n
        msgs, cnts = {}, {}
        for i in range(n):  # isend_to_neighbors: buffer + relayed messages from origins other than the recipient
            for j in tree.neighbors(i):
                msgs[(i, j)] = sent[i] + sum((m for k, m in self.received[i].items() if k != j), np.zeros(self.dim))
                cnts[(i, j)] = 1 + sum(c for k, c in self.counts[i].items() if k != j)
        out = np.empty_like(sent)
        for j in range(n):  # receive_average
            avg, count = sent[j].copy(), 1
            self.received[j], self.counts[j] = {}, {}
            for i in tree.neighbors(j):
                if keep(i, j):
                    self.received[j][i], self.counts[j][i] = msgs[(i, j)], cnts[(i, j)]
                    avg += msgs[(i, j)]
                    count += cnts[(i, j)]
            if count < n and fill is not None:
                avg += fill[j] * (n - count)
            out[j] = avg / n
        return out


def _ref_sgd(beta, nesterov, wd, lr):
    """torch ``_functional.sgd`` (dampening 0) with weight decay added to the gradient first: returns u = −η D."""
    def update(g, x, buf):
        g = g + wd * x
        buf = beta * buf + g if beta > 0 else buf
        d = (g + beta * buf if nesterov else buf) if beta > 0 else g
        return -lr * d, buf
    return update


def _ref_run(topo, x0, grad, steps, lr, algo, alpha=None, fill="initial", beta=0.0, nesterov=False, wd=0.0,
             keeps=None):
    """float64 reference trajectory (steps, n, D): ``algo`` = "model" (RelaySGD) or "mix" (RelaySum/Mix)."""
    n, dim = topo.n, x0.shape[0]
    trees = topo.trees
    nt = len(trees)
    cols = [slice(t, None, nt) for t in range(nt)]
    relays = [RefRelay(tree, n, len(range(t, dim, nt))) for t, tree in enumerate(trees)]
    x = np.tile(x0, (n, 1)).astype(np.float64)
    buf = np.zeros_like(x)
    ref_state = np.tile(x0, (n, 1))  # initial_state: each worker's copy of x⁰
    opt = _ref_sgd(beta, nesterov, wd, lr)
    out = []
    for step in range(steps):
        u, buf = opt(grad(x), x, buf)
        new_x = np.empty_like(x)
        for t, relay in enumerate(relays):
            table = None if keeps is None else keeps[step][t]
            keep = (lambda i, j: True) if table is None else (lambda i, j, table=table: table[(i, j)])
            c = cols[t]
            if algo == "model":  # base_optimizer.step, send(pack(parameters)), parameters = receive_average()
                half = x[:, c] + u[:, c]
                new_x[:, c] = relay.step(half, ref_state[:, c], keep)
            else:  # send(α x + u); x ← (1 − α) x + receive_average()
                fill_t = {"initial": alpha * ref_state[:, c], "unscaled": ref_state[:, c],
                          "previous": alpha * x[:, c]}[fill]
                new_x[:, c] = (1 - alpha) * x[:, c] + relay.step(alpha * x[:, c] + u[:, c], fill_t, keep)
        if algo == "model" and fill == "previous":  # relaysum_model_update_ref_state: set_initial_state(buffer)
            ref_state = new_x.copy()
        x = new_x
        out.append(x.copy())
    return np.stack(out)


# ----------------------------------------------------------------------------------------- simdl side, float64
def _problem(n, seed=0):
    """Per-worker linear gradients on a 2-leaf model (flattened dimension 7, odd on purpose)."""
    rng = np.random.default_rng(seed)
    template = {"a": np.zeros(3), "w": np.zeros((2, 2))}
    dim = 7
    A = rng.standard_normal((n, dim, dim)) / np.sqrt(dim)
    b = rng.standard_normal((n, dim))
    x0 = rng.standard_normal(dim)
    grad = lambda x: np.einsum("iba,ib->ia", A, np.einsum("iab,ib->ia", A, x) - b)
    return template, A, b, x0, grad


def _run(alg, topo, template, A, b, x0, steps, seed=0, zero_grad=False):
    """float64 trajectory (steps, n, D) and bytes_sent (steps, n), driven as the runner drives it."""
    n = topo.n
    _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), template))
    p0 = unravel(jnp.asarray(x0, jnp.float64))
    params = jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (n,) + v.shape), p0)
    Aj, bj = jnp.asarray(A, jnp.float64), jnp.asarray(b, jnp.float64)
    w = np.full(n, 1.0 / n)
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])
    key = jax.random.PRNGKey(seed)

    def body(state, t):
        x = flat(alg.query(state))
        g = jnp.einsum("iba,ib->ia", Aj, jnp.einsum("iab,ib->ia", Aj, x) - bj)
        g = jnp.zeros_like(g) if zero_grad else g
        state, aux = alg.step(state, jax.vmap(unravel)(g), Context(t, jax.random.fold_in(key, t), topo, None, w))
        return state, (flat(alg.params(state)), aux["bytes_sent"])

    state = alg.init(params, Context(jnp.int32(0), key, topo, None, w))
    xs, sent = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps, dtype=jnp.int32))[1])(state)
    assert xs.dtype == jnp.float64
    return np.asarray(xs), np.asarray(sent)


def _keeps(topo, seed, steps, p):
    """The drop tables simdl draws (``drop_mask(fold_in(fold_in(key, step), tree))``) as
    ``keeps[step][tree][(i, j)]``."""
    key = jax.random.PRNGKey(seed)
    plans = [relay_plan(t) for t in topo.trees]
    keeps, dropped = [], 0
    for s in range(steps):
        per_tree = []
        for t, plan in enumerate(plans):
            mask = np.asarray(drop_mask(jax.random.fold_in(jax.random.fold_in(key, s), t), plan.n_edges, p))
            dropped += int((~mask).sum())
            per_tree.append({(int(a), int(c)): bool(k) for a, c, k in zip(plan.src, plan.dst, mask, strict=True)})
        keeps.append(per_tree)
    assert p == 0 or dropped > 0
    return keeps


TOPOS = {"chain": lambda: T.chain(7), "double_binary_trees": lambda: T.double_binary_trees(9),
         "bfs_er": lambda: T.spanning_tree(T.erdos_renyi(10, 0.4, seed=1), root=3)}


# ------------------------------------------------------------------------------------------- fill="previous"
@pytest.mark.parametrize("drop", [0.0, 0.3])
@pytest.mark.parametrize("topo_name", sorted(TOPOS))
def test_relaysgd_previous_fill_matches_reference(topo_name, drop, x64):
    topo = TOPOS[topo_name]()
    template, A, b, x0, grad = _problem(topo.n, seed=4)
    steps, lr, seed = 8, 0.3, 2
    alg = relaysgd(lr, momentum=0.9, weight_decay=0.01, fill="previous", drop_prob=drop)
    xs, _ = _run(alg, topo, template, A, b, x0, steps, seed=seed)
    keeps = _keeps(topo, seed, steps, drop) if drop else None
    ref = _ref_run(topo, x0, grad, steps, lr, "model", fill="previous", beta=0.9, nesterov=True, wd=0.01,
                   keeps=keeps)
    np.testing.assert_allclose(xs, ref, rtol=1e-12, atol=1e-12)
    # the transcription can tell the fills apart: with x⁰ as the fill it is a different trajectory
    other = _ref_run(topo, x0, grad, steps, lr, "model", fill="initial", beta=0.9, nesterov=True, wd=0.01,
                     keeps=keeps)
    assert not np.allclose(other, ref, rtol=1e-6, atol=1e-6)
    init, _ = _run(relaysgd(lr, momentum=0.9, weight_decay=0.01, fill="initial", drop_prob=drop), topo, template,
                   A, b, x0, steps, seed=seed)
    np.testing.assert_allclose(init, other, rtol=1e-12, atol=1e-12)


def test_both_fills_keep_a_consensus_at_x0(x64):
    """Started from a consensus at x⁰ with zero gradients, the previous model is x⁰ and both fills keep it."""
    topo = T.double_binary_trees(9)
    template, A, b, x0, _ = _problem(topo.n)
    for fill in ("initial", "previous"):
        xs, _ = _run(relaysgd(0.3, momentum=0.0, fill=fill), topo, template, A, b, x0, 6, zero_grad=True)
        np.testing.assert_allclose(xs, np.broadcast_to(x0, xs.shape), rtol=1e-14, atol=1e-14)


def _steps_to(history, tol):
    ok = history["suboptimality"] <= tol
    return int(history["step"][np.argmax(ok)]) if ok.any() else None


def test_previous_fill_tolerates_dropped_messages():
    """The paper's unreliable-network claim (Table 5): with 10% of the relay messages lost, RelaySGD filling with
    the previous model still converges close to the optimum, while filling with x⁰ is pulled back towards x⁰ by the
    missing mass at every step."""
    task = simdl.tasks.random_quadratics(16, 10, zeta2=1.0, seed=0)
    topo = T.double_binary_trees(16)
    final = {}
    for fill in ("previous", "initial"):
        r = simdl.simulate(task, relaysgd(0.5, momentum=0.0, fill=fill, drop_prob=0.1), topo, steps=200,
                           eval_every=50)
        final[fill] = float(r.history["suboptimality"][-1])
    assert final["previous"] < 1e-1 and final["initial"] > 1e4 * final["previous"], final


# ------------------------------------------------------------------------------------------------ relaysum_mix
MIX_CASES = [  # (topology, alpha, fill, momentum, nesterov, weight decay, drop)
    ("chain", 0.5, "initial", 0.0, None, 0.0, 0.0),
    ("double_binary_trees", 0.5, "initial", 0.9, None, 0.01, 0.0),
    ("double_binary_trees", 0.3, "unscaled", 0.9, False, 0.0, 0.0),
    ("bfs_er", 0.32, "previous", 0.5, True, 0.0, 0.0),
    ("double_binary_trees", 0.5, "initial", 0.9, None, 0.0, 0.3),
    ("chain", 0.7, "unscaled", 0.0, None, 0.0, 0.25),
    ("bfs_er", 0.5, "previous", 0.9, None, 0.01, 0.3),
]


@pytest.mark.parametrize("case", range(len(MIX_CASES)))
def test_relaysum_mix_matches_reference(case, x64):
    topo_name, alpha, fill, beta, nesterov, wd, drop = MIX_CASES[case]
    topo = TOPOS[topo_name]()
    template, A, b, x0, grad = _problem(topo.n, seed=case)
    steps, lr, seed = 8, 0.2, 3
    alg = relaysum_mix(lr, alpha=alpha, momentum=beta, nesterov=nesterov, weight_decay=wd, fill=fill,
                       drop_prob=drop)
    xs, _ = _run(alg, topo, template, A, b, x0, steps, seed=seed)
    keeps = _keeps(topo, seed, steps, drop) if drop else None
    ref = _ref_run(topo, x0, grad, steps, lr, "mix", alpha=alpha, fill=fill, beta=beta,
                   nesterov=beta > 0 if nesterov is None else nesterov, wd=wd, keeps=keeps)
    np.testing.assert_allclose(xs, ref, rtol=1e-12, atol=1e-12)
    if drop:  # the drops change the trajectory (the test sees them)
        nodrop = _ref_run(topo, x0, grad, steps, lr, "mix", alpha=alpha, fill=fill, beta=beta,
                          nesterov=beta > 0 if nesterov is None else nesterov, wd=wd)
        assert not np.allclose(nodrop, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_relaysum_mix_endpoints_are_relaysgd_and_relaysum_grad(drop, x64):
    """α = 1 relays the models (RelaySGD, fill x⁰); α = 0 relays the updates only (RelaySum/Grad)."""
    topo = T.double_binary_trees(9)
    template, A, b, x0, _ = _problem(topo.n, seed=5)
    kw = dict(momentum=0.9, drop_prob=drop)
    one, sent_mix = _run(relaysum_mix(0.2, alpha=1.0, **kw), topo, template, A, b, x0, 7, seed=1)
    sgd, sent_sgd = _run(relaysgd(0.2, fill="initial", **kw), topo, template, A, b, x0, 7, seed=1)
    np.testing.assert_allclose(one, sgd, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(sent_mix, sent_sgd)  # message + int32 count per tree edge, as RelaySGD
    zero, _ = _run(relaysum_mix(0.2, alpha=0.0, **kw), topo, template, A, b, x0, 7, seed=1)
    grad, _ = _run(relaysum_grad(0.2, **kw), topo, template, A, b, x0, 7, seed=1)
    np.testing.assert_allclose(zero, grad, rtol=1e-13, atol=1e-13)
    half, _ = _run(relaysum_mix(0.2, alpha=0.5, **kw), topo, template, A, b, x0, 7, seed=1)
    assert not np.allclose(half, sgd) and not np.allclose(half, grad)


def test_relaysum_mix_consensus_at_x0_is_a_fixed_point_only_with_the_scaled_fill(x64):
    """Zero gradients from a consensus at x⁰: the scaled fills keep it; the training code's unscaled x⁰ fill
    inflates the models by (1 − α)(n − C_i)/n · x⁰ per step while the tree fills up."""
    topo = T.chain(7)
    template, A, b, x0, _ = _problem(topo.n)
    for fill in ("initial", "previous"):
        xs, _ = _run(relaysum_mix(0.1, alpha=0.5, fill=fill), topo, template, A, b, x0, 8, zero_grad=True)
        np.testing.assert_allclose(xs, np.broadcast_to(x0, xs.shape), rtol=1e-14, atol=1e-14)
    xs, _ = _run(relaysum_mix(0.1, alpha=0.5, fill="unscaled"), topo, template, A, b, x0, 1, zero_grad=True)
    counts = np.array([2, 3, 3, 3, 3, 3, 2])  # C_i at step 0 on a chain: itself and its neighbours
    np.testing.assert_allclose(xs[0], x0[None] * (1 + 0.5 * (7 - counts) / 7)[:, None], rtol=1e-14)


@pytest.mark.parametrize("topo", [T.chain(16), T.double_binary_trees(16)], ids=lambda t: t.name)
def test_relaysum_mix_reaches_the_exact_optimum_whatever_the_heterogeneity(topo):
    """Like RelaySGD, RelaySum/Mix has no heterogeneity bias: every fixed point is a consensus on the optimum of the
    average objective, so it converges to it linearly on random quadratics, as fast for ζ² = 1 as for ζ² = 0.01."""
    steps = {}
    for z in (0.01, 1.0):
        task = simdl.tasks.random_quadratics(16, 10, zeta2=z, seed=0)
        r = simdl.simulate(task, relaysum_mix(0.5, alpha=0.5), topo, steps=200, eval_every=10)
        steps[z] = _steps_to(r.history, 1e-6)
        assert steps[z] is not None, f"RelaySum/Mix on {topo.name}, zeta2={z} did not reach 1e-6"
    assert abs(steps[1.0] - steps[0.01]) <= 10, steps


def test_relaysum_mix_mean_estimation_reaches_the_exact_average():
    task = simdl.tasks.mean_estimation(8, dim=4, noise=0.0, seed=1)
    mu = np.asarray(task.data["mu"], np.float64)
    r = simdl.simulate(task, relaysum_mix(0.5, alpha=0.5), T.binary_tree(8), steps=150, batch_size=1)
    assert r.final["worker_error_max"] < 1e-8
    assert np.abs(mu - mu.mean(0)).max() > 0.1  # the workers' own means are far from it


# ------------------------------------------------------------------------------------- factory and registry
def test_relaysum_mix_registry_and_hyperparams():
    alg = simdl.algorithms.get("relaysum_mix", learning_rate=0.1, alpha=0.3, momentum=0.9)
    assert alg.name == "relaysum_mix" and "tree" in alg.requires
    hp = alg.hyperparams
    assert (hp["alpha"], hp["momentum"], hp["nesterov"], hp["fill"], hp["drop_prob"]) == (0.3, 0.9, True,
                                                                                          "initial", 0.0)
    assert simdl.algorithms.relaysum_mix is relaysum_mix
    default = relaysum_mix(0.1).hyperparams
    assert (default["alpha"], default["momentum"], default["nesterov"]) == (0.5, 0.0, False)
    assert relaysum_mix(0.1, momentum=None).hyperparams["momentum"] == 0.0
    assert relaysgd(0.1, fill="previous").hyperparams["fill"] == "previous"
    assert set(MIX_FILLS) == {"initial", "unscaled", "previous"}


@pytest.mark.parametrize("kw", [dict(alpha=-0.1), dict(alpha=1.5), dict(alpha=float("nan")), dict(alpha=None),
                                dict(alpha="half"), dict(fill="self"),
                                dict(fill="normalize"), dict(fill="x0"), dict(drop_prob=1.0),
                                dict(drop_prob=-0.01), dict(relay_method="dense"), dict(momentum=1.0),
                                dict(optimizer=optax.adam(0.1), momentum=0.9), dict(nesterov=True)])
def test_relaysum_mix_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        relaysum_mix(0.1, **kw)


@pytest.mark.parametrize("fill", ["unscaled", "prev", None])
def test_relaysgd_bad_fill(fill):
    with pytest.raises(ValueError, match="fill"):
        relaysgd(0.1, fill=fill)


def test_relaysum_mix_refuses_non_tree_topologies(x64):
    task = simdl.tasks.random_quadratics(8, 4, seed=0)
    with pytest.raises(ValueError, match="tree"):
        simdl.simulate(task, relaysum_mix(0.1), T.ring(8), steps=2)
    template, A, b, x0, _ = _problem(8)
    with pytest.raises(ValueError, match="spanning trees"):
        _run(relaysum_mix(0.1), T.ring(8), template, A, b, x0, 1)
